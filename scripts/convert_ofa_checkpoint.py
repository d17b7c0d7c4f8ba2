#!/usr/bin/env python3
"""Convert an OFA (fairseq) checkpoint into a safetensors file elfin loads.

The input is a `torch.save`d dict whose `model` entry is the state dict and
whose `args` (argparse.Namespace) and/or `cfg` (OmegaConf, with `cfg.model` a
Namespace) hold the training arguments. The output holds every tensor of the
state dict under its original name. The three tied token-embedding names are
stored once: the header metadata `aliases` maps `decoder.embed_tokens.weight`
and `decoder.output_projection.weight` to `encoder.embed_tokens.weight` when
their values are equal. The training arguments go, as JSON, into the
metadata key `args` and into a sidecar `OUTPUT.args.json`.

fairseq and omegaconf need not be installed: their pickled objects are read
as plain data.
"""

import argparse
import enum
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path

TIED = "encoder.embed_tokens.weight"
TIED_ALIASES = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
# Classes from these packages are never imported: the checkpoint may come from
# a different version of them, and we only want their data.
OPAQUE_PACKAGES = ("fairseq", "omegaconf")


class ConversionError(Exception):
    """A problem with the user's input, reported without a traceback."""


class Pickled:
    """Stand-in for a class we don't import: keeps what the pickle gives it."""

    # The pickle protocol creates objects with `cls.__new__(cls, *args)`, or
    # calls `cls(*args)`; either way the arguments end up here.
    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        return self

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        if self.state is None:
            self.state = {}
        self.state[key] = value


def stand_in(module, name):
    # A subclass per pickled class so that `cls.__new__(cls)` works as the
    # pickle protocol expects; the name only helps debugging.
    return type(name, (Pickled,), {"__module__": f"converted.{module}"})


class PermissiveUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.split(".")[0] in OPAQUE_PACKAGES:
            return stand_in(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return stand_in(module, name)


class permissive_pickle:
    """The `pickle_module` handed to `torch.load`."""

    Unpickler = PermissiveUnpickler

    @staticmethod
    def load(file, **kwargs):
        return PermissiveUnpickler(file, **kwargs).load()


def plain(value):
    """Turns Namespaces, OmegaConf nodes and stand-ins into JSON-ready data."""
    if isinstance(value, argparse.Namespace):
        return {k: plain(v) for k, v in sorted(vars(value).items())}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, Pickled):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            # OmegaConf containers keep their data in `_content`, leaf nodes in `_val`.
            for field in ("_content", "_val"):
                if field in state:
                    return plain(state[field])
            return plain(state)
        if state is not None:
            return plain(state)
        if len(value.args) == 1 and not value.kwargs:  # e.g. an Enum member: Cls(value)
            return plain(value.args[0])
        return plain(list(value.args)) if value.args else plain(value.kwargs)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def training_args(checkpoint):
    """The flat argument namespace the model was built from, as a dict."""
    args = checkpoint.get("args")
    if args is not None:
        return plain(args)
    cfg = plain(checkpoint.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"]
    return None


def read_checkpoint(path):
    import torch

    if not path.exists():
        raise ConversionError(f"{path}: no such file")
    if not path.is_file():
        raise ConversionError(f"{path}: not a file (give the checkpoint .pt file itself)")
    try:
        checkpoint = torch.load(
            path, map_location="cpu", weights_only=False, pickle_module=permissive_pickle
        )
    except Exception as err:  # torch raises many kinds for a damaged file
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint; is it truncated or corrupted "
            f"(a partial download or copy)? ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ConversionError(
            f"{path}: holds a {type(checkpoint).__name__}, not the dict a fairseq/OFA "
            "checkpoint is; expected keys such as `model`, `cfg`, `args`"
        )
    if "model" not in checkpoint:
        keys = ", ".join(sorted(map(str, checkpoint))) or "none"
        raise ConversionError(
            f"{path}: has no `model` entry (top-level keys: {keys}); "
            "this does not look like a fairseq/OFA checkpoint"
        )
    return checkpoint


def model_tensors(checkpoint, path):
    import torch

    state = checkpoint["model"]
    if not isinstance(state, dict) or not state:
        raise ConversionError(f"{path}: `model` is not a non-empty state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: `model` entries that are not tensors: {', '.join(map(str, bad[:10]))}")
    return {str(k): v.detach() for k, v in state.items()}


def split_aliases(tensors):
    """Drops tied copies of the token embedding; returns the alias map."""
    import torch

    aliases = {}
    if TIED in tensors:
        for name in TIED_ALIASES:
            if name in tensors and torch.equal(tensors[name], tensors[TIED]):
                aliases[name] = TIED
                del tensors[name]
    return aliases


def storable(tensors):
    """Contiguous tensors that share no storage, as safetensors requires."""
    seen = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def write_atomically(path, write):
    """Writes through a temporary file in the same folder, so that a failed run
    leaves no half-written output behind."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # not mkstemp's private 0600
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def convert(source, output):
    from safetensors.torch import save_file

    checkpoint = read_checkpoint(source)
    tensors = model_tensors(checkpoint, source)
    args = training_args(checkpoint)
    aliases = split_aliases(tensors)
    metadata = {"format": "pt", "source": source.name}
    if aliases:
        metadata["aliases"] = json.dumps(aliases, sort_keys=True)
    if args is not None:
        metadata["args"] = json.dumps(args, sort_keys=True)
        if isinstance(args.get("arch"), str):
            metadata["arch"] = args["arch"]

    if not output.parent.is_dir():
        raise ConversionError(f"{output.parent}: output folder does not exist")
    write_atomically(output, lambda tmp: save_file(storable(tensors), tmp, metadata=metadata))
    sidecar = output.with_name(output.name.removesuffix(".safetensors") + ".args.json")
    if args is not None:
        write_atomically(sidecar, lambda tmp: Path(tmp).write_text(json.dumps(args, indent=1, sort_keys=True) + "\n"))
    return len(tensors), aliases, args, sidecar


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: convert_ofa_checkpoint.py ofa_tiny.pt -o ofa_tiny.safetensors "
        "(writes ofa_tiny.safetensors and ofa_tiny.args.json); then "
        "`elfin-train model --arch ofa_tiny --checkpoint ofa_tiny.safetensors`.",
    )
    parser.add_argument("checkpoint", type=Path, help="the reference checkpoint (.pt) to read")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the .safetensors file to write (default: the checkpoint's name with .safetensors)",
    )
    opts = parser.parse_args(argv)
    output = opts.output or opts.checkpoint.with_suffix(".safetensors")
    if output.suffix != ".safetensors":
        parser.error(f"--output must end in .safetensors, got {output}")
    if output.resolve() == opts.checkpoint.resolve():
        parser.error("--output would overwrite the checkpoint itself")
    try:
        count, aliases, args, sidecar = convert(opts.checkpoint, output)
    except ConversionError as err:
        print(f"convert_ofa_checkpoint: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {output}: {count} tensors, {len(aliases)} tied names stored as aliases")
    if args is None:
        print("warning: the checkpoint has no `args` or `cfg.model`; no training arguments saved", file=sys.stderr)
    else:
        print(f"wrote {sidecar}: training arguments (arch {args.get('arch', '?')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
