"""Prompt checkpoints: a few kilobytes that turn one frozen base model into a task.

One safetensors file holds the method's tensors, and its header holds, as text, the
method name, the method config, and the fingerprint of the base model it was trained on.
Loading checks all three and refuses, with a message naming the fix: a prompt for another
base model, an unknown method, tensors that do not fit, or NaN/inf values. safetensors
stores raw numbers only, so loading a prompt can never execute code.

A prefix-tuning prompt trained with the MLP reparameterisation is saved collapsed: only
the final keys/values, which is all inference needs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from minitransformer import MiniTransformer, fingerprint

from .prompt_model import PromptModel

FORMAT = "minitransformer-prompt-v1"


def save_prompt(model: PromptModel, path: str | Path) -> Path:
    path = Path(path)
    if hasattr(model, "collapse") and getattr(model.config, "prefix_projection", False):
        model = copy.deepcopy(model)
        model.collapse()
    tensors = {n: t.contiguous().cpu() for n, t in model.prompt_state_dict().items()}
    metadata = {"format": FORMAT, "method": model.method_name, "config": json.dumps(model.config.to_dict()),
                "base_fingerprint": fingerprint(model.base)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata=metadata)
    return path


def load_prompt(base: MiniTransformer, path: str | Path, method: str | None = None) -> PromptModel:
    """Rebuild a prompt model on `base` from a saved prompt; `method` (optional) must match."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors prompt file ({error}); is it damaged?") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a prompt checkpoint (format {metadata.get('format')!r}, need {FORMAT!r})")
    missing = [k for k in ("method", "config", "base_fingerprint") if k not in metadata]
    if missing:
        raise ValueError(f"{path} lacks {missing} in its header; the prompt file is damaged, save it again")
    saved_method = metadata["method"]
    if method is not None and method != saved_method:
        raise ValueError(f"{path} holds a {saved_method!r} prompt, not {method!r}; load it as {saved_method!r}")
    if saved_method not in PromptModel.registry:
        raise ValueError(f"unknown method {saved_method!r} in {path}; known: {sorted(PromptModel.registry)}")
    expected, actual = metadata["base_fingerprint"], fingerprint(base)
    if expected != actual:
        raise ValueError(f"{path} was trained for base model {expected}, but this base model is {actual}; "
                         "load the base checkpoint the prompt was trained with")
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"tensor {name!r} in {path} holds NaN or inf values; the prompt is damaged")

    cls = PromptModel.registry[saved_method]
    try:
        config = cls.config_class(**json.loads(metadata["config"]))
    except (TypeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ValueError(f"the {saved_method} config in {path} is not valid ({error}); the file is damaged "
                         "or was written by another version") from error
    model = cls(base, config)
    own = model.prompt_state_dict()
    if set(own) != set(tensors) or any(own[n].shape != t.shape for n, t in tensors.items()):
        raise ValueError(f"the tensors in {path} ({ {n: tuple(t.shape) for n, t in tensors.items()} }) do not fit "
                         f"a {saved_method} model with that config ({ {n: tuple(t.shape) for n, t in own.items()} })")
    with torch.no_grad():
        for name, p in model.prompt_parameters().items():
            p.copy_(tensors[name])
    return model.to(base.wte.weight.device).eval()  # parameters made outside the base start on the CPU
