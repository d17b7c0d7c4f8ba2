#!/usr/bin/env python3
"""Print a refer-toolkit refs file (refs(unc).p, refs(google).p, refs(umd).p) as JSON.

    python3 scripts/refer_to_json.py 'refs(unc).p' [refs.json]

`elfin-train prepare refcoco` runs this itself when given a pickle; the JSON
it writes is accepted there too. The toolkit's files are Python 2 pickles:
their byte strings are decoded as UTF-8 (Latin-1 where that fails). Only
plain data is accepted: a pickle that names any class or function is refused,
so unpickling cannot run code.
"""
import json
import pickle
import sys


class PlainData(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a refs file holds only lists, dicts, strings and numbers")


def text(value):
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {text(k): text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [text(v) for v in value]
    return value


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        refs = text(PlainData(f, encoding="bytes").load())
    if not isinstance(refs, list):
        print(f"{argv[1]}: expected a list of refs, found {type(refs).__name__}", file=sys.stderr)
        return 1
    if len(argv) == 3:
        with open(argv[2], "w", encoding="utf-8") as out:
            json.dump(refs, out)
    else:
        json.dump(refs, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
