"""What every prompt method shares: a frozen base model, a few trainable parameters, one forward.

A prompt method never changes the base model's weights. It adds a handful of parameters
(the "prompt") and injects them through the hooks `MiniTransformer.forward` exposes:

    method          hook it uses                               trainable parameters
    soft prompt     inputs_embeds: P vectors before the input   P*C
    P-tuning        inputs_embeds, vectors from an encoder      encoder (collapses to P*C)
    deep prompt     inputs_embeds + hidden_prompts per layer    P*C*L
    prefix tuning   prefix_kv: P keys/values per layer          P*2*C*L

`PromptModel` does the shared work once: it freezes the base (`requires_grad=False`, kept
in eval mode), checks the caller's input, asks the method for its hooks, runs the base,
and returns logits for the real tokens only, so `logits[:, t]` always lines up with
`input_ids[:, t]` whichever method is in use.

Each method writes two small functions in its own file:
- `prompt_state()`: its prompt as one tensor with a leading batch dimension of 1, e.g.
  (1, P, C), whatever parameters produce it (an encoder, an MLP);
- `hooks_for(state, ...)`: the base model's keyword arguments for a state of 1 *or B*
  rows. With B rows, each row of the batch gets its own prompt, so prompts of several
  tasks can share one forward pass (serving.py stacks them), and nothing outside the
  method's file needs to know how it injects its prompt.
`forward(...)` runs the base with `hooks_for(prompt_state(), ...)`: one model, one prompt.

With a KV cache (generation), a prompt made of positions (soft prompt, P-tuning, deep
prompt) is computed once, on the first call; the cache then holds the virtual positions,
and later calls only extend the attention mask. A prefix lives outside the cache and is
passed on every call (`prompt_in_cache = False`); it is computed on the first call and
kept beside the cache (`state_for_call`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from minitransformer import KVCache, MiniTransformer
from minitransformer.validation import check_attention_mask, check_logits_to_keep, check_token_ids


def check_int(config, name: str, minimum: int, fix: str) -> None:
    """Refuse a config field that is not an integer >= `minimum`; `fix` tells the user what to pass.

    Every config checks its fields as it is built, so a bad value stops the run at once,
    with the field named, instead of meaning something else silently later.
    """
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{type(config).__name__}.{name} must be an integer >= {minimum}, got {value!r}; {fix}")


def check_choice(config, name: str, choices: tuple[str, ...]) -> None:
    """Refuse a config field that is not one of `choices`."""
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}; "
                         f"pass one of {', '.join(map(repr, choices))}")


@dataclass
class PromptConfig:
    num_virtual_tokens: int = field(default=16, metadata={"help": "P: how many virtual tokens the prompt has"})

    def __post_init__(self) -> None:
        check_int(self, "num_virtual_tokens", 1, "pass the prompt length P, e.g. num_virtual_tokens=16")

    def to_dict(self) -> dict:
        return asdict(self)


class PromptModel(nn.Module):
    """A frozen base model plus one method's prompt parameters.

    Subclasses write `prompt_state` and `hooks_for`.
    """

    method_name: ClassVar[str] = ""  # what a checkpoint calls this class (methods/registry.py lists them)
    injects: ClassVar[str] = ""  # where the trained numbers enter the frozen model (methods/injection.py draws it)
    config_class: ClassVar[type] = PromptConfig
    prompt_in_cache: ClassVar[bool] = True  # after the first call, the KV cache holds the prompt

    def __init__(self, base: MiniTransformer, config: PromptConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ValueError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        if config.num_virtual_tokens >= base.config.block_size:
            raise ValueError(f"num_virtual_tokens={config.num_virtual_tokens} leaves no room in the context "
                             f"(block_size={base.config.block_size}); use a shorter prompt")
        base.requires_grad_(False)
        self.base = base.eval()
        self.config = config

    def train(self, mode: bool = True) -> PromptModel:
        super().train(mode)
        self.base.eval()  # the frozen base never switches to training behaviour (dropout)
        return self

    def prompt_state(self) -> torch.Tensor:
        """The prompt as one tensor with a leading batch dimension of 1, e.g. (1, P, C)."""
        raise NotImplementedError(f"{type(self).__name__} has no prompt state to serve")

    def hooks_for(self, state: torch.Tensor | None, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  first_call: bool) -> dict:
        """The keyword arguments for `self.base(...)` given a state of 1 or B rows (None: the cache holds it)."""
        raise NotImplementedError(f"{type(self).__name__} does not take a prompt state")

    def state_layout(self) -> tuple:
        """What a prompt state means beyond its shape (one serving batch must share it): none by default."""
        return ()

    def needs_state(self, first_call: bool) -> bool:
        """Whether this call must be given the prompt state (always, unless the cache holds it)."""
        return first_call or not self.prompt_in_cache

    def state_for_call(self, kv_cache: KVCache | None) -> torch.Tensor | None:
        """This model's own prompt state, if this call needs it.

        In generation a prefix goes in on every decoding step, but it does not change
        between steps: it is computed once, on the first call, and kept with the KV cache
        (an encoder or MLP runs once per generation, not once per token).
        """
        if not self.needs_state(is_first_call(kv_cache)):
            return None
        return kept_with_cache(kv_cache, "prompt_state", self.prompt_state)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for the T real tokens of `input_ids`; virtual positions are dropped.

        `logits_to_keep` (over the real tokens): the last n positions, or a (B, T) bool mask
        giving (N, V), as in `MiniTransformer.forward`.
        """
        attention_mask = self.check_inputs(input_ids, attention_mask, kv_cache)
        hooks = self.hooks_for(self.state_for_call(kv_cache), input_ids, attention_mask, is_first_call(kv_cache))
        return self.run_base(hooks, input_ids, kv_cache, logits_to_keep)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The base's final hidden states (B, T, C) for the T real tokens, as prompted: what a task
        head reads (heads.py). `logits_to_keep` selects rows as in `forward`, giving (B, n, C) or (N, C)."""
        attention_mask = self.check_inputs(input_ids, attention_mask, None)
        hooks = self.hooks_for(self.state_for_call(None), input_ids, attention_mask, True)
        return self.run_base(hooks, input_ids, None, logits_to_keep, hidden=True)

    def forward_with(self, state: torch.Tensor | None, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                     logits_to_keep: int | torch.Tensor | None = None, hidden: bool = False) -> torch.Tensor:
        """`forward` with the prompt state given: a state of B rows gives row b the prompt `state[b]`
        (`hidden=True`: the final hidden states instead of the logits, as `hidden_states`)."""
        attention_mask = self.check_inputs(input_ids, attention_mask, kv_cache)
        if state is None and self.needs_state(is_first_call(kv_cache)):
            raise ValueError("this call needs the prompt state (the first call, or a prefix on any call)")
        if state is not None and state.shape[0] not in (1, input_ids.shape[0]):
            raise ValueError(f"the prompt state has {state.shape[0]} rows but the batch has {input_ids.shape[0]}; "
                             "give one prompt per row, or one for all")
        hooks = self.hooks_for(state, input_ids, attention_mask, is_first_call(kv_cache))
        return self.run_base(hooks, input_ids, kv_cache, logits_to_keep, hidden)

    def run_base(self, hooks: dict, input_ids: torch.Tensor, kv_cache: KVCache | None,
                 logits_to_keep: int | torch.Tensor | None, hidden: bool = False) -> torch.Tensor:
        """Run the frozen base with these hooks, computing the head at real tokens only
        (`hidden=True`: no head, the final hidden states there)."""
        B, T = input_ids.shape
        check_logits_to_keep(logits_to_keep, B, T)
        if logits_to_keep is None:
            logits_to_keep = T  # the real tokens: the virtual positions in front get no logits
        elif isinstance(logits_to_keep, torch.Tensor) and "inputs_embeds" in hooks:
            virtual = hooks["inputs_embeds"].shape[1] - T  # P prompt positions in front of the real tokens
            logits_to_keep = F.pad(logits_to_keep, (virtual, 0), value=False)  # (B, P + T)
        run = self.base.hidden_states if hidden else self.base
        return run(**hooks, kv_cache=kv_cache, logits_to_keep=logits_to_keep)

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     kv_cache: KVCache | None) -> torch.Tensor | None:
        """Refuse bad input before the prompt goes in front of it; return the (B, S) mask (None: no padding).

        The base model checks its own input, but a prompt method turns `input_ids` into
        embeddings first, and an error there would not name the fix. The P virtual
        positions also count against the context: a row's real tokens plus P must fit.
        """
        # (their range is checked once, where they are embedded: by the base, or by prepend_prompt)
        B, T = check_token_ids(self.base.config, input_ids, values=False)
        if B == 0 or T == 0:
            raise ValueError(f"empty input of shape {(B, T)}: need at least one row and one token")
        cached = not is_first_call(kv_cache)  # the base checks the cached length (P may be in it)
        if attention_mask is None and not cached:
            longest = T  # no padding: every row has T real tokens (and the mask stays None: nothing to read)
        else:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            check_attention_mask(attention_mask, B, attention_mask.shape[-1] if cached else T)
            longest = int(attention_mask.sum(dim=1).max())  # real tokens of the longest row, cache included
        P, block_size = self.config.num_virtual_tokens, self.base.config.block_size
        if P + longest > block_size:
            raise ValueError(f"the prompt's {P} virtual tokens + {longest} real tokens = {P + longest} positions "
                             f"exceed the context block_size={block_size}; shorten the input to at most "
                             f"{block_size - P} tokens or use a shorter prompt (num_virtual_tokens)")
        return attention_mask

    # -- parameters --------------------------------------------------------------------------
    def prompt_parameters(self) -> dict[str, nn.Parameter]:
        """The method's own parameters: everything that is not part of the base model."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("base.")}

    def trainable_parameters_summary(self) -> str:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}"

    def print_trainable_parameters(self) -> None:
        """The familiar one-liner of Hugging Face PEFT: trainable / all / %."""
        print(self.trainable_parameters_summary())

    def prompt_state_dict(self) -> dict[str, torch.Tensor]:
        """What a prompt checkpoint stores (see prompt_io.py): the method's own tensors."""
        return {n: p.detach() for n, p in self.prompt_parameters().items()}


def is_first_call(kv_cache: KVCache | None) -> bool:
    """No cache, or an empty one: this call sees the whole input (and must be given the prompt)."""
    return kv_cache is None or len(kv_cache) == 0


def kept_with_cache(kv_cache: KVCache | None, key: str, make):
    """`make()`, made once per generation: on the first call, then kept in the cache's extras
    under `key` for the decoding steps (no cache: made on every call)."""
    if kv_cache is None:
        return make()
    if is_first_call(kv_cache) or key not in kv_cache.extras:
        kv_cache.extras[key] = make()
    return kv_cache.extras[key]
