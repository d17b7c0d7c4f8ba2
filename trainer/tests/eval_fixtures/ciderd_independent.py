"""An independent CIDEr-D, written from docs/evaluation.md and the spec's
formulas (not from the reference's code), used by trainer/tests/eval_cider.rs
to cross-check the Rust scorer.

stdin: {"samples": [[hyp, [ref, ...]], ...], "df": null | {"ref_len": N, "document_frequency": {...}}}
stdout: {"scores": [per-image CIDEr-D, ...]}
"""
import json
import math
import sys
from collections import Counter


def grams(sentence, k):
    words = sentence.split()
    return Counter(" ".join(words[i:i + k]) for i in range(len(words) - k + 1))


def cider_d(samples, df=None, n=4, sigma=6.0):
    if df is None:
        counts = Counter()
        for _, refs in samples:
            counts.update({g for r in refs for k in range(1, n + 1) for g in grams(r, k)})
        ref_len, freq = len(samples), counts
    else:
        ref_len, freq = df["ref_len"], df["document_frequency"]
    log_n = math.log(ref_len)

    def vectors(sentence):
        per_order = []
        for k in range(1, n + 1):
            per_order.append({g: tf * (log_n - math.log(max(1.0, freq.get(g, 0.0))))
                              for g, tf in grams(sentence, k).items()})
        return per_order, max(0, len(sentence.split()) - 1)

    scores = []
    for hyp, refs in samples:
        vh, lh = vectors(hyp)
        total = 0.0
        for ref in refs:
            vr, lr = vectors(ref)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for h, r in zip(vh, vr):
                dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in h.items())
                nh = math.sqrt(sum(w * w for w in h.values()))
                nr = math.sqrt(sum(w * w for w in r.values()))
                total += (dot / (nh * nr) if nh and nr else dot) * penalty
        scores.append(10.0 * total / n / len(refs))
    return scores


if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump({"scores": cider_d(request["samples"], request.get("df"))}, sys.stdout)
