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

Without the MLP, the prefix starts from the keys/values of P random real tokens (§7.2:
initialising with real words' activations trains better than noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from minitransformer import MiniTransformer, ModelConfig

from .prompt_model import PromptConfig, PromptModel, check_int
from .token_init import activations_of_tokens, sample_token_ids


@dataclass
class PrefixTuningConfig(PromptConfig):
    prefix_projection: bool = field(default=False, metadata={"help": "reparameterise the prefix with an MLP"})
    encoder_hidden_size: int = field(default=128, metadata={"help": "the MLP's hidden width"})
    seed: int = field(default=0, metadata={"help": "seed for the initialisation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prefix_projection, bool):
            raise ValueError(f"PrefixTuningConfig.prefix_projection must be True or False, "
                             f"got {self.prefix_projection!r}")
        check_int(self, "encoder_hidden_size", 1, "pass the MLP's hidden width, e.g. encoder_hidden_size=128")


def split_prefix(vectors: torch.Tensor, c: ModelConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(B, P, L * 2 * C) prefix vectors -> per layer (keys, values), each (B, H, P, D)."""
    B, P, _ = vectors.shape
    kv = vectors.view(B, P, c.n_layer, 2, c.n_head, c.head_dim)  # layout: layer, k/v, head, dim
    kv = kv.permute(2, 3, 0, 4, 1, 5)  # (L, 2, B, H, P, D)
    return [(kv[l, 0], kv[l, 1]) for l in range(c.n_layer)]


class PrefixTuningModel(PromptModel):
    method_name = "prefix_tuning"
    config_class = PrefixTuningConfig
    prompt_in_cache = False  # the prefix lives outside the sequence and the cache: it goes in on every call

    def __init__(self, base: MiniTransformer, config: PrefixTuningConfig | None = None) -> None:
        super().__init__(base, config or PrefixTuningConfig())
        P, C, L = self.config.num_virtual_tokens, base.config.d_model, base.config.n_layer
        generator = torch.Generator().manual_seed(self.config.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            if self.config.prefix_projection:
                self.embedding = nn.Embedding(P, C)  # E_prefix: (P, C)
                self.transform = nn.Sequential(nn.Linear(C, self.config.encoder_hidden_size), nn.Tanh(),
                                               nn.Linear(self.config.encoder_hidden_size, L * 2 * C))
                return
        _, kvs = activations_of_tokens(base, sample_token_ids(base, P, generator))
        stacked = torch.stack([torch.stack(kv) for kv in kvs])  # (L, 2, H, P, D)
        self.embedding = nn.Embedding.from_pretrained(stacked.permute(3, 0, 1, 2, 4).reshape(P, L * 2 * C),
                                                      freeze=False)  # (P, L * 2 * C)

    def prefix_vectors(self) -> torch.Tensor:
        """(P, L * 2 * C): every layer's keys and values, per prefix position."""
        if self.config.prefix_projection:
            return self.transform(self.embedding.weight)
        return self.embedding.weight

    def prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the prefix keys and values, each (1, H, P, D)."""
        return split_prefix(self.prompt_state(), self.base.config)

    def prompt_state(self) -> torch.Tensor:
        return self.prefix_vectors()[None]  # (1, P, L * 2 * C)

    def hooks_for(self, state, input_ids, attention_mask, first_call):
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "prefix_kv": split_prefix(state, self.base.config)}

    @torch.no_grad()
    def collapse(self) -> None:
        """Fold the MLP away: keep only the prefix it produces. Outputs stay identical (§4.3)."""
        if not self.config.prefix_projection:
            return
        vectors = self.prefix_vectors().detach().clone()
        del self.transform
        self.embedding = nn.Embedding.from_pretrained(vectors, freeze=False)
        self.config = replace(self.config, prefix_projection=False)
