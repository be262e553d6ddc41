"""Soft prompt transfer (Vu, Lester, Constant, Al-Rfou & Cer 2022, "SPoT: Better Frozen Model
Adaptation through Soft Prompt Transfer").

A soft prompt is a few vectors that steer one frozen model to one task. SPoT asks whether
the prompt of one task is a better place to *start* another task's prompt than noise or
random vocabulary: train a prompt on a source task, copy it in as the target task's
initial prompt, and train on. Only the starting point changes; the method, its
parameters and its training are a plain soft prompt's (soft_prompt.py).

The source prompt comes from a prompt checkpoint (prompt_io.py), so the checkpoint's base
fingerprint guards the transfer: a prompt means something only to the base model it was
trained on, and `load_prompt` refuses one made for another base.

SPoT also reads prompts as *task embeddings* (§4): the more similar two tasks' prompts,
the more one should help the other. Its two measures, both here:
- "average tokens": the cosine of the two prompts' mean vectors, cos(mean_i a_i, mean_j b_j);
- "per token" (the default): the mean cosine over every pair of prompt vectors,
  (1 / (P_a P_b)) sum_i sum_j cos(a_i, b_j), which does not depend on the order of the tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from minitransformer import MiniTransformer

from .prompt_io import load_prompt
from .soft_prompt import SoftPromptConfig, SoftPromptModel

SIMILARITIES = ("per_token", "average_tokens")


def source_prompt(base: MiniTransformer, path: str | Path) -> torch.Tensor:
    """The (P, C) prompt saved at `path`, checked against `base` (fingerprint, values; prompt_io.load_prompt).

    A soft prompt's serving file, or a P-tuning one (saved as the soft prompt its encoder makes).
    """
    model = load_prompt(base, path)
    if not isinstance(model, SoftPromptModel):
        raise ValueError(f"{path} holds a {model.method_name!r} prompt; soft prompt transfer starts a soft prompt "
                         "from a soft prompt (or a P-tuning prompt, saved as one): save a soft prompt first")
    return model.prompt.detach().clone()


def transferred_soft_prompt(base: MiniTransformer, source: str | Path | torch.Tensor,
                            config: SoftPromptConfig | None = None) -> SoftPromptModel:
    """A soft prompt on `base` whose initial prompt is the source task's: a prompt file or a (P, C) tensor.

    `config` (optional) sets everything else (its seed still seeds nothing of the prompt,
    which is the source's); its P must be the source's. The model is built as usual, then
    its prompt is overwritten with the source (soft_prompt.py keeps its own initialisations).
    """
    prompt = source_prompt(base, source) if isinstance(source, (str, Path)) else source.detach()
    if prompt.dim() != 2 or prompt.shape[1] != base.config.d_model:
        raise ValueError(f"a source prompt must be (P, C={base.config.d_model}), got {tuple(prompt.shape)}")
    config = config or SoftPromptConfig(prompt.shape[0])
    if config.num_virtual_tokens != prompt.shape[0]:
        raise ValueError(f"the source prompt has P={prompt.shape[0]} vectors but the config asks for "
                         f"num_virtual_tokens={config.num_virtual_tokens}; use the source's length")
    model = SoftPromptModel(base, config)
    with torch.no_grad():
        model.prompt.copy_(prompt.to(model.prompt.device, model.prompt.dtype))
    return model


def prompt_similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "per_token") -> float:
    """SPoT's task similarity of two (P, C) prompts (module docstring): "per_token" or "average_tokens"."""
    if kind not in SIMILARITIES:
        raise ValueError(f"kind must be one of {SIMILARITIES}, got {kind!r}")
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"two prompts (P, C) of one width, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.detach().double(), b.detach().double()
    if kind == "average_tokens":
        return float(F.cosine_similarity(a.mean(0), b.mean(0), dim=0))
    return float((F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).mean())  # (P_a, P_b) cosines, averaged
