#!/usr/bin/env python3
"""Convert the reference's cached CIDEr document frequencies (a pickle such as
OFA's caption_data/cider_cached_tokens/coco-valid-words.p) into the JSON file
that elfin reads with --eval-cider-cached-tokens:

    {"ref_len": <number of reference images>,
     "document_frequency": {"<n-gram words joined by single spaces>": <count>, ...}}

The pickle holds a dict with `document_frequency` (n-gram tuple of words ->
number of images whose references contain it) and `ref_len` (may be a numpy
float; numpy must then be importable). Python-2 pickles are read as the
reference reads them (encoding latin1).

Usage: /opt/elfin/venv/bin/python scripts/convert_cider_df.py IN.p OUT.json
"""
import argparse
import json
import math
import pickle
import sys


def convert(data):
    if not isinstance(data, dict) or "document_frequency" not in data or "ref_len" not in data:
        raise ValueError("expected a dict with keys 'document_frequency' and 'ref_len'")
    ref_len = float(data["ref_len"])
    if not math.isfinite(ref_len) or ref_len < 1:
        raise ValueError(f"ref_len must be the number of reference images, got {data['ref_len']!r}")
    frequencies = {}
    for ngram, count in data["document_frequency"].items():
        words = (ngram,) if isinstance(ngram, str) else tuple(ngram)
        if not 1 <= len(words) <= 4 or any(not isinstance(w, str) or not w or w.split() != [w] for w in words):
            raise ValueError(f"n-gram {ngram!r} is not a tuple of 1 to 4 whitespace-free words")
        key = " ".join(words)
        if key in frequencies:
            raise ValueError(f"n-gram {key!r} appears twice")
        frequencies[key] = float(count)
    return {"ref_len": ref_len, "document_frequency": frequencies}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pickle", help="the reference's cached document-frequency pickle")
    parser.add_argument("json", help="output JSON file")
    args = parser.parse_args()
    try:
        with open(args.pickle, "rb") as f:
            data = pickle.load(f, encoding="latin1")
        converted = convert(data)
    except (OSError, pickle.UnpicklingError, ValueError, ModuleNotFoundError) as err:
        sys.exit(f"convert_cider_df: {args.pickle}: {err}")
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(converted, f, ensure_ascii=False)
    print(f"convert_cider_df: {len(converted['document_frequency'])} n-grams, "
          f"ref_len {converted['ref_len']:g} -> {args.json}")


if __name__ == "__main__":
    main()
