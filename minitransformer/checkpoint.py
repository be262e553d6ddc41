"""Saving and loading a model safely: safetensors weights plus a JSON config.

A checkpoint is a folder with two files:
- `config.json`: the `ModelConfig` (and free-form metadata such as how it was trained);
- `model.safetensors`: the weights, a flat name -> tensor table.

safetensors stores raw numbers only, so loading one cannot run code, unlike a pickled
`torch.save` file, which can execute arbitrary objects as it loads. Before any weight is
copied, the names and shapes are checked against the config, and a checkpoint made for
another model is refused with an error naming the difference.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .model import MiniTransformer

DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "base"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_checkpoint(model: MiniTransformer, directory: str | Path, metadata: dict | None = None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_FILE)
    content = {"model_config": model.config.to_dict(), "metadata": metadata or {}}
    (directory / CONFIG_FILE).write_text(json.dumps(content, indent=2) + "\n")
    return directory


def read_config(directory: str | Path) -> tuple[ModelConfig, dict]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"no {CONFIG_FILE} in {directory}; is this a checkpoint folder written by save_checkpoint?")
    content = json.loads(path.read_text())
    return ModelConfig.from_dict(content["model_config"]), content.get("metadata", {})


def load_checkpoint(directory: str | Path = DEFAULT_CHECKPOINT) -> MiniTransformer:
    """Build the model a checkpoint describes and load its weights (in eval mode)."""
    config, _ = read_config(directory)
    model = MiniTransformer(config)
    load_weights(model, directory)
    return model.eval()


def load_weights(model: MiniTransformer, directory: str | Path) -> None:
    """Copy a checkpoint's weights into an existing model, refusing any mismatch."""
    config, _ = read_config(directory)
    if config != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in config.to_dict().items() if getattr(model.config, k) != v}
        raise ValueError(
            f"checkpoint {directory} was made for another model: (checkpoint, this model) differ in {diff}; "
            "build the model with load_checkpoint(directory) instead"
        )
    state = load_file(Path(directory) / WEIGHTS_FILE)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match the model: missing {missing}, unexpected {unexpected}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, "
                             f"the model expects {tuple(expected[name].shape)}")
    model.load_state_dict(state)


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's config and weights: identifies a base model exactly.

    Prompt checkpoints store it, so a prompt trained for one base model is never
    silently applied to another.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
