"""The freezing check: proof that a method trains its prompt and nothing else.

Three claims, each checked directly rather than assumed from `requires_grad` flags:
1. before training, only the method's own parameters require gradients;
2. after a few optimizer steps, no base parameter holds a gradient, and every base
   tensor is bitwise identical to before;
3. every prompt parameter changed (the prompt really is being trained).

`loss_fn(model, batch)` is the loss to train on: by default the answer loss of generation;
an understanding model (heads.py, its head counted with the prompt) passes `nlu_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .prompt_model import PromptModel
from .train import answer_loss


@dataclass
class FreezingReport:
    prompt_parameters: dict[str, int]  # name -> number of elements
    requires_grad_outside_prompt: list[str]  # claim 1: should be empty
    base_with_gradient: list[str]  # claim 2: should be empty
    base_changed: list[str]  # claim 2: should be empty
    prompt_unchanged: list[str]  # claim 3: should be empty
    base_tensors: int

    @property
    def ok(self) -> bool:
        return not (self.requires_grad_outside_prompt or self.base_with_gradient or self.base_changed
                    or self.prompt_unchanged)

    def __str__(self) -> str:
        lines = [f"prompt parameters (trained): {self.prompt_parameters}",
                 f"base tensors checked: {self.base_tensors}",
                 f"requires_grad outside the prompt: {self.requires_grad_outside_prompt or 'none'}",
                 f"base parameters that received a gradient: {self.base_with_gradient or 'none'}",
                 f"base tensors changed: {self.base_changed or 'none (bitwise identical)'}",
                 f"prompt parameters unchanged: {self.prompt_unchanged or 'none (all changed)'}",
                 "FREEZING CHECK PASSED" if self.ok else "FREEZING CHECK FAILED"]
        return "\n".join(lines)


def check_freezing(model: PromptModel, batch: tuple[torch.Tensor, ...], steps: int = 3, lr: float = 1e-2,
                   loss_fn: Callable[..., torch.Tensor] = answer_loss) -> FreezingReport:
    """Run `steps` AdamW steps of `loss_fn` on `batch` (input_ids, attention_mask, labels) and check the claims."""
    prompt = model.prompt_parameters()
    prompt_ids = {id(p) for p in prompt.values()}
    outside = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in prompt_ids]
    base_before = {n: t.detach().clone() for n, t in model.base.state_dict().items()}
    prompt_before = {n: p.detach().clone() for n, p in prompt.items()}

    optimizer = torch.optim.AdamW(list(prompt.values()), lr=lr)  # the optimizer sees only the prompt
    base_with_grad = set()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        base_with_grad |= {n for n, p in model.base.named_parameters() if p.grad is not None}
        optimizer.step()

    base_after = model.base.state_dict()
    return FreezingReport(
        prompt_parameters={n: p.numel() for n, p in prompt.items()},
        requires_grad_outside_prompt=outside,
        base_with_gradient=sorted(base_with_grad),
        base_changed=[n for n, t in base_before.items() if not torch.equal(t, base_after[n])],
        prompt_unchanged=[n for n, p in prompt.items() if torch.equal(prompt_before[n], p.detach())],
        base_tensors=len(base_before),
    )
