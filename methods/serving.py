"""Serving many tasks from one frozen base model: each row of a batch with its own prompt.

A prompt is a few kilobytes; the base model is the expensive part. So one base model can
serve every task at once, and a batch may mix tasks: row 0 reverses, row 1 sorts, and
both go through *one* forward pass. This is the practical promise of prompt tuning
(Lester et al. 2021, Figure 2: "mixed-task inference"): the prompts differ, the model does not.

It works because every hook of the base model takes one prompt per row, and every
method's `hooks_for(state, ...)` accepts a prompt state of B rows (prompt_model.py):

    states = [prompt_state() of row b's task]        each (1, ...), e.g. (1, P, C)
    state  = cat(states, dim=0)                       (B, ...): row b gets its own prompt
    logits = model.forward_with(state, input_ids, attention_mask)

The registry knows nothing of how any method injects its prompt; it only stacks states.
Stacking needs one shape, so all rows of a batch must use the same method class and the
same prompt shape (P, and for deep prompts the number of prompted layers); anything else
is refused with an error naming the rows. Rows may differ in length: pad them (left for
generation) and pass the attention mask, exactly as for a single-task batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from minitransformer import CharTokenizer, KVCache, MiniTransformer, generate
from minitransformer.evaluate import predict

from .prompt_io import load_prompt
from .prompt_model import PromptModel, is_first_call, kept_with_cache


class PromptRegistry:
    """Named prompts, all on one base model; `forward`/`generate` take one task name per row.

        registry = PromptRegistry(base)
        registry.load("dsc", "prompts/dsc.safetensors")   # checked against `base`, never unpickled
        registry.add("rol", rol_model)                    # a prompt model built on the same `base`
        registry.complete(["dsc", "rol"], ["abc=", "hello="], max_new_tokens=8)   # -> two answers
    """

    def __init__(self, base: MiniTransformer) -> None:
        self.base = base.eval()
        self.models: dict[str, PromptModel] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.models

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    def add(self, name: str, model: PromptModel) -> PromptModel:
        """Serve `model` under `name`. It must be a prompt method built on this registry's base."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a task name must be a non-empty string, got {name!r}")
        if name in self.models:
            raise ValueError(f"task {name!r} is already registered; pick another name")
        if not isinstance(model, PromptModel) or type(model).prompt_state is PromptModel.prompt_state:
            raise ValueError(f"{type(model).__name__} has no prompt to serve; the registry serves prompt methods "
                             f"(soft prompt, P-tuning, deep prompt, prefix tuning)")
        if model.base is not self.base:
            raise ValueError(f"the model for {name!r} was built on another base model object; build it on "
                             "registry.base, or save it (save_prompt) and registry.load(name, path)")
        with torch.no_grad():
            state = model.prompt_state()
        if not bool(torch.isfinite(state).all()):
            raise ValueError(f"the prompt of {name!r} holds NaN or inf values; it cannot be served")
        self.models[name] = model.eval()
        return model

    def load(self, name: str, path: str | Path, method: str | None = None) -> PromptModel:
        """Load a prompt saved with `save_prompt` (checked: base fingerprint, method, values) and serve it."""
        return self.add(name, load_prompt(self.base, path, method))

    def models_for(self, names: Sequence[str], batch_size: int) -> list[PromptModel]:
        """The prompt model of every row; refuses unknown names and batches that cannot be stacked."""
        if batch_size == 0:
            raise ValueError("empty batch: need at least one row (and one task name per row)")
        if isinstance(names, str):
            raise ValueError(f"give one task name per row, e.g. [{names!r}] * {batch_size}, not a single string")
        if len(names) != batch_size:
            raise ValueError(f"got {len(names)} task names for a batch of {batch_size} rows; give one per row")
        for row, name in enumerate(names):
            if name not in self.models:
                raise ValueError(f"unknown task {name!r} (row {row}); known tasks: {self.names}")
        models = [self.models[n] for n in names]
        kinds = {type(m).__name__ for m in models}
        if len(kinds) > 1:
            by_kind = {k: sorted({n for n, m in zip(names, models) if type(m).__name__ == k}) for k in kinds}
            raise ValueError(f"one batch must use one method, but its tasks use {by_kind}; "
                             "split the batch by method")
        return models

    def stacked_state(self, names: Sequence[str], models: list[PromptModel]) -> torch.Tensor:
        """cat of the rows' prompt states: (B, ...). Each task's state is computed once."""
        states = {n: self.models[n].prompt_state() for n in dict.fromkeys(names)}  # (1, ...) per task
        shapes = {n: (*s.shape[1:], *self.models[n].state_layout()) for n, s in states.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"the prompts of one batch must have one shape, got {shapes}; "
                             "split the batch by prompt length (num_virtual_tokens) and layers")
        return torch.cat([states[n] for n in names], dim=0)  # (B, ...)

    def forward(self, names: Sequence[str], input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, logits_to_keep: int | torch.Tensor | None = None,
                hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for the real tokens, row b prompted by task `names[b]` (`hidden=True`: the
        final hidden states (B, T, C) instead, for task heads: nlu_serving.py)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a (B, T) tensor of token ids")
        models = self.models_for(names, input_ids.shape[0])
        state = None
        if models[0].needs_state(is_first_call(kv_cache)):  # a prefix goes in on every step: made once
            state = kept_with_cache(kv_cache, "stacked_state", lambda: self.stacked_state(names, models))
        return models[0].forward_with(state, input_ids, attention_mask, kv_cache, logits_to_keep, hidden)

    def bind(self, names: Sequence[str]) -> BoundPrompts:
        """A model-like callable for this row layout, e.g. for `minitransformer.generate`."""
        return BoundPrompts(self, list(names))

    def generate(self, names: Sequence[str], input_ids: torch.Tensor, max_new_tokens: int,
                 **kwargs) -> torch.Tensor:
        """`minitransformer.generate` with row b prompted by `names[b]`: (B, T + new) ids. Pad on the left."""
        return generate(self.bind(names), input_ids, max_new_tokens, **kwargs)

    def complete(self, names: Sequence[str], texts: Sequence[str], max_new_tokens: int,
                 tokenizer: CharTokenizer | None = None) -> list[str]:
        """Greedy continuations of `texts`, row b by task `names[b]`, each cut before the first end token."""
        if not texts:
            raise ValueError("empty batch: need at least one text (and one task name per text)")
        # `predict` pads on the left, generates and cuts at the end token; one chunk keeps rows and names aligned
        return predict(self.bind(names), tokenizer or CharTokenizer(), list(texts), max_new_tokens - 1,
                       batch_size=len(texts))


class BoundPrompts:
    """A registry bound to one batch's task names: callable like a prompt model."""

    def __init__(self, registry: PromptRegistry, names: list[str]) -> None:
        self.registry, self.names = registry, names

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 kv_cache: KVCache | None = None, logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        return self.registry.forward(self.names, input_ids, attention_mask, kv_cache, logits_to_keep)

    def parameters(self):
        """The base model's parameters (what `evaluate.predict` reads the device from)."""
        return self.registry.base.parameters()
