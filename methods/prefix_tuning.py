"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Instead of vectors at the input, learn what attention reads: for every layer l, P keys
and P values placed in front of that layer's own (§4.2),

    K_l = [K^prefix_l ; x W_k],   V_l = [V^prefix_l ; x W_v]           (B, H, P + T, D)
    out = softmax(q K_l^T / sqrt(D)) V_l

Queries attend to the prefix; the prefix is never a query, never passes through a
LayerNorm or projection, and costs P * 2 * C * L numbers. Because a prefix stands for P
tokens in front of the input, positions continue after it (the input starts at P), as
in the reference implementation and in Hugging Face PEFT.

Reparameterisation (§4.3): optimising these numbers directly was unstable in the paper,
so during training they are produced by a small MLP from a smaller matrix,

    [K; V] = MLP(E_prefix),   E_prefix: (P, C),  MLP: C -> hidden -> L * 2 * C (tanh)

After training the MLP is not needed: `collapse()` runs it once and keeps only its
output, the P * 2 * C * L numbers, and the logits are unchanged (a test checks this).

Without the MLP, the prefix starts from the keys/values of P random real tokens (§7.4:
initialising with real words' activations trains better than noise, above all with little data).

Residual reparameterisation (Razdaibiedina et al. 2023, "Residual Prompt Tuning", §3),
`encoder_reparameterization_type="RESIDUAL_MLP"`: the MLP is put *beside* the prefix, not
in front of it,

    [K; V] = X + LayerNorm(W_up ReLU(W_down X)),   X: (P, L * 2 * C), from real tokens

so each number can stay a free parameter (the skip) or take the shared network's output.
The paper reports this stabilises prompt training. It collapses like the MLP.

Which layers (P-tuning v2 §4.4, "prompt depth"): `prefix_layers` names the layers that get
a prefix, e.g. (2, 3) for the top two of four; the others get none (`prefix_kv[l] = None`:
they attend to the real tokens only). Every stored number belongs to a prefixed layer, so
the prefix costs P * 2 * C * len(prefix_layers). None (the default) means every layer.
(One mixed serving batch must use one layer set: a prefix state does not say its layers, so
`state_layout` names them and serving refuses a batch that mixes two.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from minitransformer import MiniTransformer, ModelConfig

from .prompt_model import PromptConfig, PromptModel, check_choice, check_int
from .token_init import activations_of_tokens, sample_token_ids

ENCODERS = ("MLP", "RESIDUAL_MLP")  # the reparameterisation, when prefix_projection is on


@dataclass
class PrefixTuningConfig(PromptConfig):
    prefix_projection: bool = field(default=False, metadata={"help": "reparameterise the prefix with an MLP"})
    encoder_hidden_size: int = field(default=128, metadata={"help": "the MLP's hidden width"})
    seed: int = field(default=0, metadata={"help": "seed for the initialisation"})
    encoder_reparameterization_type: str = field(default="MLP", metadata={
        "help": f"with prefix_projection, one of {ENCODERS}: Li & Liang's MLP from (P, C), or Residual Prompt "
                "Tuning's prefix + LayerNorm(MLP(prefix)) (ignored without prefix_projection)"})
    prefix_layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "the layers that get a prefix, e.g. (2, 3); None: every layer"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prefix_projection, bool):
            raise ValueError(f"PrefixTuningConfig.prefix_projection must be True or False, "
                             f"got {self.prefix_projection!r}")
        check_int(self, "encoder_hidden_size", 1, "pass the MLP's hidden width, e.g. encoder_hidden_size=128")
        check_choice(self, "encoder_reparameterization_type", ENCODERS)
        if self.prefix_layers is not None:
            self.prefix_layers = check_layers(self.prefix_layers, "PrefixTuningConfig.prefix_layers")


def check_layers(layers, name: str, n_layer: int | None = None) -> tuple[int, ...]:
    """A set of layer indices as a sorted tuple; refuses an empty set, repeats, non-integers, and
    (given n_layer) indices outside 0..n_layer-1. (A list from a JSON config is accepted.)"""
    fix = "pass the layer indices that get prompts, e.g. (2, 3), or None for every layer"
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise ValueError(f"{name} must be a tuple of layer indices, got {layers!r}; {fix}")
    layers = tuple(layers)
    if not layers:
        raise ValueError(f"{name} is empty: a prompt on no layer does nothing; {fix}")
    if any(isinstance(l, bool) or not isinstance(l, int) for l in layers):
        raise ValueError(f"{name} must hold integers, got {layers!r}; {fix}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{name} names a layer twice: {layers!r}; {fix}")
    top = n_layer - 1 if n_layer is not None else None
    if min(layers) < 0 or (top is not None and max(layers) > top):
        raise ValueError(f"{name} must lie in 0..{top if top is not None else 'n_layer - 1'} (the base model's "
                         f"layers, bottom first), got {layers!r}; {fix}")
    return tuple(sorted(layers))


def split_prefix(vectors: torch.Tensor, c: ModelConfig,
                 layers: tuple[int, ...] | None = None) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """(B, P, L' * 2 * C) prefix vectors -> per layer (keys, values), each (B, H, P, D).

    `layers`: the L' layers the vectors are for, in order (None: all L); every other layer gets None.
    """
    B, P, _ = vectors.shape
    layers = tuple(range(c.n_layer)) if layers is None else layers
    kv = vectors.view(B, P, len(layers), 2, c.n_head, c.head_dim)  # layout: layer, k/v, head, dim
    kv = kv.permute(2, 3, 0, 4, 1, 5)  # (L', 2, B, H, P, D)
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * c.n_layer
    for i, layer in enumerate(layers):
        out[layer] = (kv[i, 0], kv[i, 1])
    return out


class ResidualMLP(nn.Module):
    """x + LayerNorm(W_up ReLU(W_down x)): Residual Prompt Tuning's reparameterisation (their `ResMLP`)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.LayerNorm(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


class PrefixTuningModel(PromptModel):
    method_name = "prefix_tuning"
    injects = "keys_values"  # keys and values in front of every layer's own
    config_class = PrefixTuningConfig
    prompt_in_cache = False  # the prefix lives outside the sequence and the cache: it goes in on every call

    def __init__(self, base: MiniTransformer, config: PrefixTuningConfig | None = None) -> None:
        super().__init__(base, config or PrefixTuningConfig())
        P, C = self.config.num_virtual_tokens, base.config.d_model
        n_layer, chosen = base.config.n_layer, self.config.prefix_layers
        self.layers = tuple(range(n_layer)) if chosen is None else \
            check_layers(chosen, "PrefixTuningConfig.prefix_layers", n_layer)  # the prefixed layers, L' of them
        width, hidden = len(self.layers) * 2 * C, self.config.encoder_hidden_size  # L' * 2 * C
        mlp = self.config.prefix_projection and self.config.encoder_reparameterization_type == "MLP"
        generator = torch.Generator().manual_seed(self.config.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            if mlp:
                self.embedding = nn.Embedding(P, C)  # E_prefix: (P, C)
                self.transform = nn.Sequential(nn.Linear(C, hidden), nn.Tanh(), nn.Linear(hidden, width))
                return
            if self.config.prefix_projection:  # RESIDUAL_MLP: beside the prefix, which starts from real tokens
                self.transform = ResidualMLP(width, hidden)
        _, kvs = activations_of_tokens(base, sample_token_ids(base, P, generator))
        stacked = torch.stack([torch.stack(kvs[l]) for l in self.layers])  # (L', 2, H, P, D)
        self.embedding = nn.Embedding.from_pretrained(stacked.permute(3, 0, 1, 2, 4).reshape(P, width),
                                                      freeze=False)  # (P, L' * 2 * C)

    def prefix_vectors(self) -> torch.Tensor:
        """(P, L' * 2 * C): every prefixed layer's keys and values, per prefix position."""
        if self.config.prefix_projection:
            return self.transform(self.embedding.weight)
        return self.embedding.weight

    def prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the prefix keys and values, each (1, H, P, D); None for a layer without a prefix."""
        return split_prefix(self.prompt_state(), self.base.config, self.layers)

    def prompt_state(self) -> torch.Tensor:
        return self.prefix_vectors()[None]  # (1, P, L' * 2 * C)

    def hooks_for(self, state, input_ids, attention_mask, first_call):
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "prefix_kv": split_prefix(state, self.base.config, self.layers)}

    def state_layout(self) -> tuple:
        return ("prefix_layers", self.layers)  # the same (1, P, L' * 2C) on other layers means other numbers

    @torch.no_grad()
    def collapse(self) -> None:
        """Fold the MLP away: keep only the prefix it produces. Outputs stay identical (§4.3)."""
        if not self.config.prefix_projection:
            return
        vectors = self.prefix_vectors().detach().clone()
        del self.transform
        self.embedding = nn.Embedding.from_pretrained(vectors, freeze=False)
        self.config = replace(self.config, prefix_projection=False)
