"""Mixed-task serving with heads: generation, classification and tagging rows in one forward pass.

serving.py stacks the prompts of many tasks so that one frozen base serves them all in one
batch (Lester et al. 2021, Fig. 2). A head does not change that: the base runs once for the
whole batch and returns its final hidden states (`PromptRegistry.forward(..., hidden=True)`),
then each row is read its own way: a generation row through the tied LM head, a classifier
row through its head at its last real token, a tagger row through its head at every token
(P-tuning v2's heads, heads.py). Nothing of a head touches the base, so one row's answer is
the same as it would be alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .heads import NLUModel, last_token_mask
from .nlu_tasks import CLASSIFICATION
from .serving import PromptRegistry


def add_nlu(registry: PromptRegistry, name: str, model: NLUModel, heads: dict[str, NLUModel]) -> None:
    """Serve an understanding model under `name`: its prompt in the registry, its head in `heads`."""
    registry.add(name, model.model)
    heads[name] = model.eval()


@torch.no_grad()
def mixed_forward(registry: PromptRegistry, heads: dict[str, NLUModel], names: Sequence[str],
                  input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One output per row: next-token logits (T, V) for a generation task, class logits (K,) for
    a classifier, tag logits (T, K) for a tagger; row b prompted by `names[b]`, all in one base pass."""
    hidden = registry.forward(names, input_ids, attention_mask, hidden=True)  # (B, T, C)
    last = last_token_mask(input_ids, attention_mask)  # (B, T)
    outputs = []
    for b, name in enumerate(names):
        if name not in heads:  # a generation task: the tied LM head
            outputs.append(registry.base.head(hidden[b]))  # (T, V)
        elif heads[name].kind == CLASSIFICATION:
            outputs.append(heads[name].read(hidden[b][last[b]][0], registry.base.head))  # (K,)
        else:
            outputs.append(heads[name].read(hidden[b], registry.base.head))  # (T, K)
    return outputs
