"""Full fine-tuning: the reference point every prompt method is measured against.

Every weight of a *copy* of the base model is trained (the shared base stays untouched,
so prompt methods can keep using it). It has the same interface as the prompt methods,
so the training loop, evaluation and generation treat it the same way; the question
each prompt method answers is how close it gets to this with a tiny fraction of the
trainable parameters.

Saving: a full fine-tune is a new base model, not a prompt, so it is saved as a base
checkpoint, hash and all, and `save_prompt` refuses it, naming this:

    save_checkpoint(model.base, directory)                  # the trained copy
    model = FullFineTuneModel(load_checkpoint(directory))   # the same logits
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from minitransformer import MiniTransformer

from .prompt_model import PromptModel


@dataclass
class FullFineTuneConfig:
    num_virtual_tokens: int = 0  # no prompt: the model itself changes

    def to_dict(self) -> dict:
        return {"num_virtual_tokens": 0}


class FullFineTuneModel(PromptModel):
    method_name = "full_finetune"
    injects = "weights"  # every weight of a copy of the model
    config_class = FullFineTuneConfig

    def __init__(self, base: MiniTransformer, config: FullFineTuneConfig | None = None) -> None:
        copied = copy.deepcopy(base)
        super().__init__(copied, config or FullFineTuneConfig())
        copied.requires_grad_(True)  # unfreeze the copy: every weight trains

    def train(self, mode: bool = True) -> FullFineTuneModel:
        # Unlike a prompt method's frozen base, the copy here *is* the model being trained:
        # its dropout follows the mode, as in any fine-tuning (PromptModel.train keeps a base in eval).
        nn.Module.train(self, mode)
        return self

    def state_for_call(self, kv_cache) -> None:
        return None  # no prompt: the weights themselves were trained

    def hooks_for(self, state, input_ids, attention_mask, first_call):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def prompt_parameters(self):
        return dict(self.base.named_parameters(prefix="base"))
