#!/usr/bin/env python3
"""COCO caption metrics through pycocoevalcap itself, as the reference's
coco_eval.py computes them: COCOEvalCap's image set (the predicted images),
its PTB tokenization, then the chosen scorers.

    coco_caption_eval.py PREDICTIONS.json REFERENCES.json [--metrics METEOR,SPICE] [--json OUT.json]

PREDICTIONS is the reference's result format ([{"image_id", "caption"}, ...]),
REFERENCES is COCO caption format. Metrics: Bleu (Bleu_1..4), METEOR, ROUGE_L,
CIDEr, SPICE; default METEOR,SPICE (`elfin-train score coco` computes the
others in Rust). Prints one JSON object; a metric that cannot run here (no
Java, SPICE's Stanford models not downloaded) is "SKIP: <reason>".
Exit 2 on a usage error or unreadable input.
"""

import argparse
import json
import os
import shutil
import sys

ALL_METRICS = ["Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]


def fail(message):
    print(f"coco_caption_eval.py: {message}", file=sys.stderr)
    sys.exit(2)


def spice_missing_models():
    import pycocoevalcap.spice as spice
    from pycocoevalcap.spice.get_stanford_models import JAR, SPICELIB

    jar = os.path.join(os.path.dirname(spice.__file__), SPICELIB, f"{JAR}.jar")
    if not os.path.exists(jar):
        return (f"SPICE needs {jar} (Stanford CoreNLP 3.6.0 and its models), which pycocoevalcap "
                "downloads on first use; it is not there and cannot be fetched offline")
    return None


def scorer(name):
    if name == "Bleu":
        from pycocoevalcap.bleu.bleu import Bleu
        return Bleu(4)
    if name == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor
        return Meteor()
    if name == "ROUGE_L":
        from pycocoevalcap.rouge.rouge import Rouge
        return Rouge()
    if name == "CIDEr":
        from pycocoevalcap.cider.cider import Cider
        return Cider()
    from pycocoevalcap.spice.spice import Spice
    return Spice()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions")
    parser.add_argument("references")
    parser.add_argument("--metrics", default="METEOR,SPICE", help="comma-separated, from " + ",".join(ALL_METRICS))
    parser.add_argument("--json", help="also write the scores to this file")
    args = parser.parse_args()
    metrics = [m for m in args.metrics.split(",") if m]
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        fail(f"unknown metric(s) {unknown}; choose from {ALL_METRICS}")
    try:
        from pycocotools.coco import COCO
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as e:
        fail(f"{e}; install pycocoevalcap (scripts/setup.sh does)")
    if shutil.which("java") is None:
        out = {m: "SKIP: no Java runtime (java not on PATH); PTB tokenization needs it" for m in metrics}
        print(json.dumps(out))
        return
    for path in (args.predictions, args.references):
        if not os.path.isfile(path):
            fail(f"{path}: no such file")

    # What coco_eval.py does: the predicted images only, in the references' order.
    import contextlib
    with contextlib.redirect_stdout(sys.stderr):
        coco = COCO(args.references)
        results = coco.loadRes(args.predictions)
        ids = results.getImgIds()
        gts = {i: coco.imgToAnns[i] for i in ids}
        res = {i: results.imgToAnns[i] for i in ids}
        tokenizer = PTBTokenizer()
        gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)

    out = {}
    for name in metrics:
        if name == "SPICE" and (reason := spice_missing_models()):
            out[name] = f"SKIP: {reason}"
            continue
        try:
            with contextlib.redirect_stdout(sys.stderr):
                score, _ = scorer(name).compute_score(gts, res)
        except (OSError, RuntimeError, ValueError) as e:
            out[name] = f"SKIP: {name} failed to run: {e}"
            continue
        if name == "Bleu":
            out.update({f"Bleu_{k + 1}": float(s) for k, s in enumerate(score)})
        else:
            out[name] = float(score)
    out["count"] = len(ids)
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
