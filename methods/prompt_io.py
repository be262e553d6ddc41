"""Prompt checkpoints: a few kilobytes that turn one frozen base model into a task.

One safetensors file holds the method's tensors, and its text header holds the method
name, the method config, the fingerprint of the base model it was trained on, the kind of
checkpoint, and the SHA-256 of every tensor in the file (`tensors_sha256`, defined in
minitransformer/checkpoint.py). Loading refuses, with a message naming the file, what is
wrong and what to do: a file that is truncated or not safetensors, tensors that do not
match their hash (one flipped byte is caught), a prompt for another base model, an unknown
method, tensors that do not fit, or NaN/inf values. safetensors stores raw numbers only,
so loading a prompt can never execute code.

Two kinds, written in the header:
- `kind="serving"` (the default): what inference needs, collapsed. A prefix trained with
  the MLP reparameterisation keeps only the keys/values the MLP produces; a P-tuning
  encoder is folded into the soft prompt it produces (`to_soft_prompt`; the header says
  `collapsed_from: p_tuning`). The logits are the trained model's.
- `kind="training"`: everything needed to continue training exactly: every trainable
  tensor of the method (the prefix MLP, the P-tuning encoder), and the run's `TrainState`
  (optimizer moments and step, the batch sampler's and torch's random states, the curves
  so far). `load_prompt` rebuilds the model, `load_train_state` the state, and
  `train(model, cfg, resume=state)` continues as if the run had never stopped.

A full fine-tune is no prompt: its checkpoint is a base model. `save_prompt` refuses it and
names `save_checkpoint(model.base, directory)`; `FullFineTuneModel(load_checkpoint(directory))`
reloads it.

Files written before the hash existed are refused with the one-time command that adds it:
    python -m methods.prompt_io add-hash FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minitransformer import MiniTransformer, fingerprint
from minitransformer.checkpoint import HASH_KEY, first_non_finite, tensors_sha256, verify_sha256
from minitransformer.files import atomic_write, to_json

from . import registry
from .full_finetune import FullFineTuneModel
from .heads import NLUModel, head_from_config
from .p_tuning import PTuningModel
from .prefix_tuning import PrefixTuningModel
from .prompt_model import PromptModel
from .train import TrainState, trainable_parameters
from .train_state import state_from_tensors, state_to_tensors

FORMAT = "minitransformer-prompt-v1"
KINDS = ("serving", "training")
REQUIRED = ("method", "config", "base_fingerprint")  # header entries every prompt file has


# -- saving ----------------------------------------------------------------------------------
def save_prompt(model: PromptModel | NLUModel, path: str | Path, kind: str = "serving",
                state: TrainState | None = None) -> Path:
    """Write `model`'s prompt to `path` (atomically): a serving checkpoint, or a training one with `state`.

    kind="serving": the collapsed prompt inference needs. kind="training": every trainable
    tensor plus `state` (`result.state` of `train(...)`), so the run can resume exactly.
    A method with a task head (heads.NLUModel) keeps the head's tensors (`head.*`) beside the
    prompt's, and the header says which head for which task: the hash and the base
    fingerprint cover both.
    """
    path = Path(path)
    nlu, model = (model, model.model) if isinstance(model, NLUModel) else (None, model)
    if nlu is not None and kind == "training":
        raise ValueError("resuming the training of a method with a task head is not supported: train_nlu keeps "
                         "no TrainState; save it with kind='serving' (prompt and head, for inference)")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}; 'serving' for inference, "
                         "'training' to resume training later")
    if isinstance(model, FullFineTuneModel):
        raise ValueError("a full fine-tune changes every weight of its model: its checkpoint is a base model, not "
                         "a prompt; save it with save_checkpoint(model.base, directory) and reload it with "
                         "FullFineTuneModel(load_checkpoint(directory))")
    if kind == "serving":
        if state is not None:
            raise ValueError("a serving checkpoint holds no training state; pass kind='training' to keep it")
        method, config, tensors, header = serving_form(model)
    else:
        method, config, tensors, header = model.method_name, model.config, dict(model.prompt_state_dict()), {}
        state_tensors, state_header = encode_state(model, state)
        tensors.update(state_tensors)
        header["train_state"] = state_header
    if nlu is not None:
        tensors.update(nlu.head_state_dict())  # `head.*`: never a method's own name
        header["head"] = json.dumps(nlu.head_config())
    tensors = {n: t.detach().contiguous().cpu() for n, t in tensors.items()}
    bad = first_non_finite(tensors)
    if bad is not None:
        raise ValueError(f"refusing to save {path}: tensor {bad!r} holds NaN or inf (training diverged: lower the "
                         "learning rate); nothing was written")
    base = model.base
    metadata = {"format": FORMAT, "kind": kind, "method": method, "config": json.dumps(config.to_dict()),
                "base_fingerprint": fingerprint(base), "base_dtype": str(base.wte.weight.dtype),
                HASH_KEY: tensors_sha256(tensors), **header}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def serving_form(model: PromptModel) -> tuple[str, object, dict[str, torch.Tensor], dict[str, str]]:
    """(method, config, tensors, extra header) of what inference needs; the model itself is left as it is.

    A prefix MLP is replaced by its output (exactly what `collapse()` keeps), a P-tuning
    encoder by the soft prompt it produces; every other method is stored as it is. (Computed
    with autograd on, as in the forward pass: the numbers served are the numbers trained.)
    """
    if isinstance(model, PrefixTuningModel) and model.config.prefix_projection:
        tensors = {"embedding.weight": model.prefix_vectors().detach().clone()}  # (P, L * 2 * C)
        return model.method_name, replace(model.config, prefix_projection=False), tensors, {}
    if isinstance(model, PTuningModel):
        soft = model.to_soft_prompt()
        return soft.method_name, soft.config, soft.prompt_state_dict(), {"collapsed_from": model.method_name}
    return model.method_name, model.config, model.prompt_state_dict(), {}


def encode_state(model: PromptModel, state: TrainState | None) -> tuple[dict[str, torch.Tensor], str]:
    """`model`'s run state as tensors plus a JSON header entry (train_state.state_to_tensors),
    refused unless it is the state of this model's own parameters."""
    if state is None:
        raise ValueError("a training checkpoint needs the run's state: pass state=result.state, from "
                         "train(model, cfg) or train(model, cfg, stop_after=N)")
    names = list(trainable_parameters(model))
    if state.param_names != names:
        raise ValueError(f"the training state is of the parameters {state.param_names}, this model has {names}; "
                         "pass the state of this model's own run")
    tensors, header = state_to_tensors(state)
    return tensors, to_json(header, indent=None)


# -- loading ---------------------------------------------------------------------------------
def read_prompt_file(path: str | Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The header and tensors of a prompt file, checked: readable, a prompt file, intact, finite."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors prompt file ({error}); it is damaged or truncated: "
                         "restore it from a copy, or save the prompt again") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prompt checkpoint (format {metadata.get('format')!r}, need {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise ValueError(f"{path} lacks {missing} in its header; the prompt file is damaged, save it again")
    migrate = f"python -m methods.prompt_io add-hash {path}"
    verify_sha256(tensors, metadata.get(HASH_KEY), f"prompt file {path}", migrate)
    if metadata.get("kind", "serving") not in KINDS:
        raise ValueError(f"{path} says it is a {metadata['kind']!r} checkpoint, not one of {KINDS}; "
                         "the header is damaged, save the prompt again")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise ValueError(f"tensor {bad!r} in {path} holds NaN or inf values; the prompt is damaged "
                         "(or its training diverged): train it again with a lower learning rate")
    return metadata, tensors


def load_prompt(base: MiniTransformer, path: str | Path, method: str | None = None) -> PromptModel | NLUModel:
    """Rebuild a prompt model on `base` from a saved prompt; `method` (optional) must match.

    A serving file gives the collapsed model (a P-tuning prompt comes back as the soft prompt
    it folds into; `method="p_tuning"` accepts it); a training file gives the model with
    every trainable tensor (the prefix MLP, the P-tuning encoder), ready to resume. A file
    saved with a task head gives the method with its head (an `NLUModel`).
    """
    metadata, tensors = read_prompt_file(path)
    saved_method = metadata["method"]
    if method is not None and method not in (saved_method, metadata.get("collapsed_from")):
        raise ValueError(f"{path} holds a {saved_method!r} prompt, not {method!r}; load it as {saved_method!r}")
    cls = registry.checkpoint_class(saved_method)  # methods/registry.py: the one table of methods
    if cls is None:
        known = sorted({m.model_class.method_name for m in registry.METHODS.values()})
        raise ValueError(f"unknown method {saved_method!r} in {path}; known: {known}")
    check_base(base, metadata, path)
    try:
        config = cls.config_class(**json.loads(metadata["config"]))
    except (TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"the {saved_method} config in {path} is not valid ({error}); the file is damaged "
                         "or was written by another version") from error
    model = cls(base, config)
    own = model.prompt_state_dict()
    saved = {n: t for n, t in tensors.items()  # the method's own (not optimizer/..., rng/..., head.*)
             if "/" not in n and not n.startswith("head.")}
    if set(own) != set(saved) or any(own[n].shape != t.shape for n, t in saved.items()):
        raise ValueError(f"the tensors in {path} ({ {n: tuple(t.shape) for n, t in saved.items()} }) do not fit "
                         f"a {saved_method} model with that config ({ {n: tuple(t.shape) for n, t in own.items()} })")
    with torch.no_grad():
        for name, p in model.prompt_parameters().items():
            p.copy_(saved[name])
    model = model.to(base.wte.weight.device).eval()  # parameters made outside the base start on the CPU
    if "head" not in metadata:
        return model
    try:
        nlu = head_from_config(model, json.loads(metadata["head"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"the task head described in {path} is not valid ({error}); the file is damaged "
                         "or was written by another version") from error
    nlu.load_head_state(tensors)
    return nlu.eval()


def check_base(base: MiniTransformer, metadata: dict[str, str], path: str | Path) -> None:
    """Refuse a prompt trained for another base model (a bfloat16 copy of a base is another base)."""
    expected, actual = metadata["base_fingerprint"], fingerprint(base)
    if expected == actual:
        return
    saved_dtype, dtype = metadata.get("base_dtype"), str(base.wte.weight.dtype)
    hint = (f" (the prompt was saved with a {saved_dtype} base, this base is {dtype}: load it onto the base it "
            f"was saved with, then cast the loaded model with .to(...))") if saved_dtype and saved_dtype != dtype \
        else ""
    raise ValueError(f"{path} was trained for base model {expected}, but this base model is {actual}{hint}; "
                     "load the base checkpoint the prompt was trained with")


def load_train_state(path: str | Path) -> TrainState:
    """The `TrainState` of a training checkpoint, for `train(model, cfg, resume=state)`."""
    metadata, tensors = read_prompt_file(path)
    if metadata.get("kind", "serving") != "training":
        raise ValueError(f"{path} is a serving checkpoint (collapsed, for inference): it holds no training state; "
                         "resume from a checkpoint saved with save_prompt(..., kind='training', state=result.state)")
    try:
        return state_from_tensors(json.loads(metadata["train_state"]), tensors)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the training state in {path} is incomplete or not valid ({error!r}); the header is "
                         "damaged or was written by another version: save the training checkpoint again") from error


# -- migration -------------------------------------------------------------------------------
def add_hash(path: str | Path) -> str:
    """One-time migration: record the SHA-256 of an old prompt file's tensors in its header (and kind=serving).

    Only for a file you trust; the tensors are kept as they are, non-finite ones are
    refused, and a hash already recorded must match. Returns the hash.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors prompt file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prompt checkpoint (format {metadata.get('format')!r}, need {FORMAT!r})")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise ValueError(f"tensor {bad!r} in {path} holds NaN or inf values; not adding a hash to it")
    if HASH_KEY in metadata:
        verify_sha256(tensors, metadata[HASH_KEY], f"prompt file {path}", "")
        return metadata[HASH_KEY]
    metadata.setdefault("kind", "serving")  # files written before kinds existed were collapsed for serving
    metadata[HASH_KEY] = tensors_sha256(tensors)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return metadata[HASH_KEY]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m methods.prompt_io",
                                     description="add-hash: record the SHA-256 of old prompt files' tensors")
    parser.add_argument("command", choices=["add-hash"])
    parser.add_argument("files", nargs="+", help="prompt files (.safetensors) written by save_prompt")
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"{path}: {HASH_KEY} {add_hash(path)}")


if __name__ == "__main__":
    main(sys.argv[1:])
