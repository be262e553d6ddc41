"""Saving and loading a model safely: safetensors weights plus a JSON config, both checked.

A checkpoint is a folder with two files:
- `config.json`: the `ModelConfig`, the SHA-256 of the weights (`tensors_sha256`, see
  `tensors_sha256`) and free-form metadata such as how the model was trained;
- `model.safetensors`: the weights, a flat name -> tensor table.

safetensors stores raw numbers only, so loading one cannot run code, unlike a pickled
`torch.save` file, which can execute arbitrary objects as it loads. Before any weight is
copied into a model, loading checks, and refuses with an error naming the file, what is
wrong and what to do:
- the config matches the model (a checkpoint made for another model names the difference);
- the weights file is readable safetensors (not truncated, not a pickle);
- the weights hash to the SHA-256 in config.json (one flipped byte is caught);
- the names and shapes match the config;
- every weight is finite (a diverged model's NaN weights would give NaN logits).

Every file is written atomically (`files.atomic_write`): a crash mid-save leaves the old
file or the new one, never half of each. The weights are written first, then config.json;
a crash between the two leaves a hash that does not match, which loading refuses loudly.

Checkpoints written before the hash existed are refused with the one-time command that
adds it:  python -m minitransformer.checkpoint add-hash DIRECTORY
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .files import atomic_write, atomic_write_text, to_json
from .model import MiniTransformer

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "base"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
HASH_KEY = "tensors_sha256"  # where config.json (and a prompt file's header) keeps the hash


# -- hashing and checking tensors (shared with prompt files: methods/prompt_io.py) -------------
def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's numbers exactly as stored: C order, native (little-endian) bytes, any dtype.

    Viewed as bytes first, so dtypes numpy lacks (bfloat16) work too; for every dtype the
    bytes are those `tensor.numpy().tobytes()` gives where numpy has the dtype.
    """
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # reshape: a 0-d tensor has no byte view
    return memoryview(flat.view(torch.uint8).numpy())


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """The SHA-256 (hex) of a name -> tensor table: what a checkpoint records to prove it is intact.

    Exactly what is hashed, tensor by tensor in sorted name order:
        the UTF-8 line  "<name>\\t<dtype>\\t<shape>\\n"   e.g. "wte.weight\\tfloat32\\t[41, 128]\\n"
        then the tensor's raw bytes (C order, little-endian: the bytes safetensors stores).
    The dtype and shape fix how many bytes follow, so no two tables hash the same text.
    Any change to a name, a dtype, a shape or one bit of data changes the hash.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}\t{str(t.dtype).removeprefix('torch.')}\t{list(t.shape)}\n".encode())
        digest.update(raw_bytes(t))
    return digest.hexdigest()


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or inf (None: all finite)."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not torch.isfinite(t).all():
            return name
    return None


def verify_sha256(tensors: dict[str, torch.Tensor], recorded: str | None, where: str, fix_missing: str) -> None:
    """Refuse tensors whose hash is not the recorded one; `fix_missing` says how to add a missing hash."""
    if recorded is None:
        raise ValueError(f"{where} records no {HASH_KEY}: it was written before checkpoints carried a hash "
                         f"of their tensors, so it cannot be checked for damage. If you trust it, add the "
                         f"hash once with: {fix_missing}")
    actual = tensors_sha256(tensors)
    if actual != recorded:
        raise ValueError(f"the tensors of {where} do not match the SHA-256 it records (recorded "
                         f"{recorded[:12]}..., the data hashes to {actual[:12]}...): the file is damaged or was "
                         "changed after saving; restore it from a copy, or save it again")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (never unpickled); an unreadable file is refused."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}): it is damaged, truncated or "
                         "not a safetensors file at all (a pickle is never loaded); restore it from a copy, "
                         "or save it again") from error


# -- base checkpoints --------------------------------------------------------------------------
def save_checkpoint(model: MiniTransformer, directory: str | Path, metadata: dict | None = None) -> Path:
    """Write `model` to `directory` (model.safetensors, then config.json with its hash), atomically.

    A model with NaN or inf weights is refused before anything is written.
    """
    directory = Path(directory)
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    bad = first_non_finite(state)
    if bad is not None:
        raise ValueError(f"refusing to save {directory}: weight {bad} holds NaN or inf (training diverged: "
                         "lower the learning rate, or save an earlier model); nothing was written")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    content = {"model_config": model.config.to_dict(), HASH_KEY: tensors_sha256(state), "metadata": metadata or {}}
    atomic_write_text(directory / CONFIG_FILE, to_json(content, indent=2))
    return directory


def read_content(directory: str | Path) -> dict:
    """config.json as a dict: model_config, tensors_sha256 (if recorded) and metadata."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"no {CONFIG_FILE} in {directory}; is this a checkpoint folder written by save_checkpoint?")
    try:
        content = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({error}): it is damaged; restore it from a copy, "
                         "or save the checkpoint again") from error
    if not isinstance(content, dict) or "model_config" not in content:
        raise ValueError(f"{path} holds no model_config; is this a checkpoint folder written by save_checkpoint?")
    return content


def read_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    """The checkpoint's `ModelConfig` and its free-form metadata."""
    content = read_content(directory)
    return ModelConfig.from_dict(content["model_config"]), content.get("metadata", {})


def load_checkpoint(directory: str | Path = DEFAULT_CHECKPOINT) -> MiniTransformer:
    """Build the model a checkpoint describes and load its weights (in eval mode)."""
    config, _ = read_config(directory)
    model = MiniTransformer(config)
    load_weights(model, directory)
    return model.eval()


def load_weights(model: MiniTransformer, directory: str | Path) -> None:
    """Copy a checkpoint's weights into an existing model, refusing any mismatch or damage."""
    directory = Path(directory)
    content = read_content(directory)
    config = ModelConfig.from_dict(content["model_config"])
    if config != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in config.to_dict().items() if getattr(model.config, k) != v}
        raise ValueError(
            f"checkpoint {directory} was made for another model: (checkpoint, this model) differ in {diff}; "
            "build the model with load_checkpoint(directory) instead"
        )
    state = read_safetensors(directory / WEIGHTS_FILE)
    verify_sha256(state, content.get(HASH_KEY), f"checkpoint {directory}",
                  f"python -m minitransformer.checkpoint add-hash {directory}")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match the model: missing {missing}, unexpected {unexpected}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(expected[name].shape)}")
    bad = first_non_finite(state)
    if bad is not None:
        raise ValueError(f"checkpoint {directory} holds NaN or inf in weight {bad}: the model it was saved from "
                         "had diverged; load an earlier checkpoint, or pretrain again with a lower learning rate")
    model.load_state_dict(state)


def add_hash(directory: str | Path) -> str:
    """One-time migration: record the SHA-256 of an old checkpoint's weights in its config.json.

    Only for a checkpoint you trust (the hash certifies the weights as they are now). The
    weights file is not touched; non-finite weights are refused; a hash already recorded
    must match (a damaged checkpoint is never re-certified). Returns the hash.
    """
    directory = Path(directory)
    content = read_content(directory)
    state = read_safetensors(directory / WEIGHTS_FILE)
    bad = first_non_finite(state)
    if bad is not None:
        raise ValueError(f"checkpoint {directory} holds NaN or inf in weight {bad}; not adding a hash to it")
    digest = tensors_sha256(state)
    if HASH_KEY in content:
        verify_sha256(state, content[HASH_KEY], f"checkpoint {directory}", "")
        return digest
    content = {"model_config": content["model_config"], HASH_KEY: digest,
               **{k: v for k, v in content.items() if k != "model_config"}}
    atomic_write_text(directory / CONFIG_FILE, to_json(content, indent=2))
    return digest


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: identifies a base model exactly.

    Prompt checkpoints store it, so a prompt trained for one base model is never
    silently applied to another. (Names and raw bytes in sorted order; a bfloat16 copy of
    a model is another model, with another fingerprint.)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(raw_bytes(tensor))
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m minitransformer.checkpoint",
                                     description="add-hash: record the SHA-256 of old checkpoints' weights")
    parser.add_argument("command", choices=["add-hash"])
    parser.add_argument("directories", nargs="+", help="checkpoint folders (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    for directory in args.directories:
        print(f"{directory}: {HASH_KEY} {add_hash(directory)}")


if __name__ == "__main__":
    main(sys.argv[1:])
