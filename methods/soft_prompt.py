"""Soft prompt tuning (Lester, Al-Rfou & Constant 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning").

A hard prompt is a few real tokens in front of the input (`rev:` in `rev:abc=cba.`) that
tell a frozen model what to do. A *soft* prompt keeps the idea and drops the vocabulary:
P free vectors in embedding space, prepended to the input's token embeddings,

    h_0 = [p_1, ..., p_P, E[x_1], ..., E[x_T]] + W_pos[0 .. P+T-1]        (B, P + T, C)

and trained by gradient descent while every weight of the model stays frozen (§2). Only
P * C numbers are learned: 2,048 for P = 16 on our 128-wide model.

Initialisation matters for small models (§3.2, Fig. 3b), so three are offered, with
Hugging Face PEFT's names:
- RANDOM: Gaussian noise with the scale of the model's own token embeddings;
- SAMPLE_VOCAB: the embeddings of P tokens drawn at random from the vocabulary;
- TEXT: the embeddings of a string such as the task name, repeated or cut to P tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from minitransformer import CharTokenizer, MiniTransformer
from minitransformer.validation import check_token_ids

from .prompt_model import PromptConfig, PromptModel, check_choice
from .token_init import sample_token_ids

INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")


@dataclass
class SoftPromptConfig(PromptConfig):
    prompt_tuning_init: str = field(default="RANDOM", metadata={"help": f"one of {INITS}"})
    prompt_tuning_init_text: str | None = field(default=None, metadata={"help": "the text for TEXT init"})
    seed: int = field(default=0, metadata={"help": "seed for RANDOM and SAMPLE_VOCAB initialisation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "prompt_tuning_init", INITS)
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            raise ValueError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text, e.g. the task name 'rev:'")


def initial_prompt(base: MiniTransformer, config: SoftPromptConfig) -> torch.Tensor:
    """The (P, C) starting point of the soft prompt, per `config.prompt_tuning_init`."""
    P, generator = config.num_virtual_tokens, torch.Generator().manual_seed(config.seed)
    table = base.wte.weight.detach()  # (V, C)
    if config.prompt_tuning_init == "RANDOM":
        return torch.randn(P, table.shape[1], generator=generator).to(table.device) * table.std()
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        return table[sample_token_ids(base, P, generator)].clone()
    ids = CharTokenizer().encode(config.prompt_tuning_init_text)
    ids = (ids * (P // len(ids) + 1))[:P]  # repeat, then cut to P tokens
    return table[torch.tensor(ids)].clone()


class SoftPromptModel(PromptModel):
    method_name = "soft_prompt"
    injects = "input_embeddings"  # learned vectors in front of the input embeddings
    config_class = SoftPromptConfig

    def __init__(self, base: MiniTransformer, config: SoftPromptConfig | None = None) -> None:
        super().__init__(base, config or SoftPromptConfig())
        self.prompt = nn.Parameter(initial_prompt(base, self.config))  # (P, C): all that is trained

    def prompt_state(self) -> torch.Tensor:
        return self.prompt[None]  # (1, P, C)

    def hooks_for(self, state, input_ids, attention_mask, first_call):
        prompt = state if first_call else None  # (B|1, P, C); the cache holds it afterwards
        return prepend_prompt(self.base, prompt, input_ids, attention_mask, self.config.num_virtual_tokens)


def prepend_prompt(base: MiniTransformer, prompt: torch.Tensor | None, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None, num_virtual_tokens: int) -> dict:
    """The soft prompt's one idea: P vectors in front of the input (P-tuning and deep prompts reuse it).

    First call: `inputs_embeds = [prompt; E[input_ids]]`, (B, P + T, C). Later calls (the KV
    cache already holds the prompt positions, `prompt` is None): the new tokens as ids.
    Either way the attention mask gains P ones in front: virtual tokens are never padding
    (no mask, no padding: it stays None).
    """
    B = input_ids.shape[0]
    mask = None if attention_mask is None else \
        torch.cat([attention_mask.new_ones(B, num_virtual_tokens), attention_mask], dim=1)  # (B, P + S)
    if prompt is None:
        return {"input_ids": input_ids, "attention_mask": mask}
    check_token_ids(base.config, input_ids)  # embedded here, not by the base: refuse ids it does not have
    tokens = base.wte(input_ids)  # (B, T, C)
    embeds = torch.cat([prompt.to(tokens.dtype).expand(B, -1, -1), tokens], dim=1)  # (B, P + T, C)
    return {"inputs_embeds": embeds, "attention_mask": mask}
