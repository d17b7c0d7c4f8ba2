"""pycocoevalcap on many small caption sets at once, for tests/eval_coco.rs.

Input (argv[1]): [[{"prediction": "...", "references": ["...", ...]}, ...], ...]
(a list of sets, each a list of images). Every caption is PTB-tokenized by
pycocoevalcap's PTBTokenizer (the Stanford jar, one call for all references
and one for all predictions, as COCOEvalCap does per evaluation), then each
set is scored with pycocoevalcap's Bleu(4), Rouge and Cider.
Prints [{"tokens": [...predictions tokenized...], "Bleu_1": ..., ..., "ROUGE_L": ..., "CIDEr": ...}, ...].
"""
import contextlib
import json
import sys

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

sets = json.load(open(sys.argv[1]))
gts, res = {}, {}
for s, images in enumerate(sets):
    for i, image in enumerate(images):
        gts[f"{s}/{i}"] = [{"caption": r} for r in image["references"]]
        res[f"{s}/{i}"] = [{"caption": image["prediction"]}]
    # The lexer looks at the next line; a line that starts with no capital
    # keeps each set's tokens what they are when the set is tokenized alone.
    gts[f"{s}/end"] = res[f"{s}/end"] = [{"caption": "|"}]
with contextlib.redirect_stdout(sys.stderr):
    tokenizer = PTBTokenizer()
    gts, res = tokenizer.tokenize(gts), tokenizer.tokenize(res)
out = []
for s, images in enumerate(sets):
    keys = [f"{s}/{i}" for i in range(len(images))]
    g = {k: gts[k] for k in keys}
    r = {k: res[k] for k in keys}
    with contextlib.redirect_stdout(sys.stderr):
        bleu, _ = Bleu(4).compute_score(g, r)
        rouge, _ = Rouge().compute_score(g, r)
        cider, _ = Cider().compute_score(g, r)
    row = {f"Bleu_{k + 1}": float(b) for k, b in enumerate(bleu)}
    row.update({"ROUGE_L": float(rouge), "CIDEr": float(cider)})
    row["tokens"] = [r[k][0] for k in keys]
    row["reference_tokens"] = [g[k] for k in keys]
    out.append(row)
print(json.dumps(out))
