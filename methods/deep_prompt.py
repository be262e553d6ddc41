"""Deep prompt tuning, layerwise form (the idea of P-tuning v2: Liu et al. 2022, §3.2).

A soft prompt acts only at the input: every layer above sees only what the frozen layers
below made of it. The argument for deep prompts is that such a prompt's influence fades on
its way up a deep model. In this project's 4-layer base it does not: lesson 07 measures
that swapping a trained soft prompt for its starting point changes the real tokens' states
by more, not less, at every layer up, and that the real queries attend to it at every
layer. What a deep prompt adds here is freedom (a directly trained vector at every layer,
instead of whatever the frozen layers make of the input prompt), not reach. Deep prompts
give every layer its own P vectors:

    layer 0:   h_0 = [p^0_1..p^0_P, E[x]] + W_pos           prepended, as a soft prompt
    layer l>0: h_{l-1}[:, :P] := p^l_1..p^l_P                the prompt positions are overwritten

so each block's attention sees fresh, directly trained vectors at the prompt positions.
Trainable: P * C * L numbers. With only layer 0 kept (`prompt_layers=1`) this is exactly
the soft prompt, which a test checks.

The same function, computed as a prefix. When every layer has a prompt, the outputs at
the prompt positions are never read: each layer's are overwritten by the next layer's
prompt, the last layer's get no logits. All the text positions take from them is what
attention reads, the keys and values each layer makes from its prompt,
K_l, V_l = LN_l(p^l) W_k, W_v (for layer 0, of p^0 + W_pos[0..P-1]). So the text positions
could run alone, handed those keys and values as a *prefix* (`as_prefix()`): the same
logits, without the queries, attention outputs and MLPs of P positions in every layer.
The default is the layerwise form above, through the base model's `hidden_prompts` hook;
`as_prefix=True` takes the prefix route, and a test proves the two equal. (Where speed is
asked for, the engine, minitransformer/engine.py, takes that route by itself, for all
layers at once.)

How this differs from prefix tuning (prefix_tuning.py): a deep prompt is a *hidden
state*. At every layer it goes through LayerNorm and the key/value projections, and it
is also a query: the prompt positions attend among themselves and produce outputs (which
the next layer's prompt then overwrites). A prefix is the *keys and values themselves*,
injected after the projections, and it is never a query. The P-tuning v2 reference code
in fact realises "deep prompts" as per-layer key/value prefixes (through GPT-2's
`past_key_values`), i.e. as prefix tuning; the layerwise hidden-state form here is the
literal reading of "prompts at every layer" and costs half the parameters (C, not 2C,
per position per layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from minitransformer import MiniTransformer

from .prompt_model import PromptConfig, PromptModel, check_choice, check_int
from .soft_prompt import prepend_prompt
from .token_init import activations_of_tokens, sample_token_ids

INITS = ("SAMPLE_VOCAB", "RANDOM")


@dataclass
class DeepPromptConfig(PromptConfig):
    prompt_layers: int | None = field(default=None, metadata={
        "help": "how many layers, from the bottom, get prompts (None: all; 1: a plain soft prompt)"})
    init: str = field(default="SAMPLE_VOCAB", metadata={
        "help": "SAMPLE_VOCAB: each layer's hidden states of P random real tokens; RANDOM: noise of that scale"})
    seed: int = field(default=0, metadata={"help": "seed for the initialisation"})
    as_prefix: bool = field(default=False, metadata={
        "help": "with prompts at every layer, hand the base the key/value prefix they amount to (same logits)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "init", INITS)
        if self.prompt_layers is not None:  # 0 is not "all layers": None is
            check_int(self, "prompt_layers", 1, "pass None for prompts at every layer, or 1..n_layer for that "
                      "many layers from the bottom (1: a plain soft prompt)")


class DeepPromptModel(PromptModel):
    method_name = "deep_prompt"
    injects = "hidden_states"  # the hidden states entering every layer
    config_class = DeepPromptConfig

    def __init__(self, base: MiniTransformer, config: DeepPromptConfig | None = None) -> None:
        super().__init__(base, config or DeepPromptConfig())
        n_layer = base.config.n_layer
        layers = n_layer if self.config.prompt_layers is None else self.config.prompt_layers
        if not 1 <= layers <= n_layer:
            raise ValueError(f"prompt_layers must be in 1..{n_layer} (the base model's layers), got {layers}; "
                             f"pass at most {n_layer}, or None for every layer")
        generator = torch.Generator().manual_seed(self.config.seed)
        token_ids = sample_token_ids(base, self.config.num_virtual_tokens, generator)
        hidden, _ = activations_of_tokens(base, token_ids)
        # Layer 0 is prepended as input embeddings, and the model adds position embeddings to
        # those itself: start it from the tokens' embeddings alone, exactly as a SAMPLE_VOCAB
        # soft prompt does. Later layers replace hidden states: start them from real ones.
        hidden[0] = base.wte(token_ids).detach()
        init = torch.stack(hidden[:layers])  # (L', P, C): what real tokens look like entering each layer
        if self.config.init == "RANDOM":
            noise = torch.randn(init.shape, generator=generator).to(init.device)
            init = noise * init.std(dim=(1, 2), keepdim=True)
        self.prompts = nn.Parameter(init)  # (L', P, C)
        self.computed_as_prefix = self.config.as_prefix and layers == n_layer
        self.prompt_in_cache = not self.computed_as_prefix  # a prefix goes in on every call

    def prompt_state(self) -> torch.Tensor:
        return self.prompts[None]  # (1, L', P, C)

    def hooks_for(self, state, input_ids, attention_mask, first_call):
        P = self.config.num_virtual_tokens
        if self.computed_as_prefix:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "prefix_kv": self.as_prefix(state)}
        if not first_call:  # the cache holds the prompt positions of every layer
            return prepend_prompt(self.base, None, input_ids, attention_mask, P)
        hooks = prepend_prompt(self.base, state[:, 0], input_ids, attention_mask, P)  # (B|1, P, C) at layer 0
        layers = state.shape[1]
        hooks["hidden_prompts"] = [None] + [state[:, l] for l in range(1, layers)] \
            + [None] * (self.base.config.n_layer - layers)  # layer 0 was prepended above
        return hooks

    def as_prefix(self, state: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The keys and values each layer makes from its prompt, per layer (k, v), each (B|1, H, P, D).

        Layer l's prompt enters block l as its hidden states at the prompt positions (layer 0's
        with the position embeddings added), so what block l's attention reads there is
        block_l.attn.keys_values(block_l.ln_1(p^l)): a prefix.
        """
        P, dtype = self.config.num_virtual_tokens, self.base.wte.weight.dtype
        prefix = []
        for layer, block in enumerate(self.base.blocks):
            entering = state[:, layer].to(dtype)  # (B|1, P, C)
            if layer == 0:
                entering = entering + self.base.wpe.weight[:P]  # layer 0 is the input: positions 0..P-1
            prefix.append(block.attn.keys_values(block.ln_1(entering)))
        return prefix
