"""One Transformer block: attention, then an MLP, each added back to the residual stream.

    x = x + Attention(LayerNorm(x))
    x = x + MLP(LayerNorm(x))

This is the pre-LayerNorm arrangement of GPT-2 (Radford et al. 2019, §2.3): normalising
the input of each sub-layer, not its output, keeps a clean identity path from the
embeddings to the output, which makes deep stacks train without warm-up tricks. The MLP
widens to 4C, applies GELU (GPT-2's tanh approximation), and narrows back to C.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import CausalSelfAttention, KVCache
from .config import ModelConfig


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C) -> (B, T, 4C) -> (B, T, C)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        allowed: torch.Tensor,  # (B, 1, T, P + S) bool: may query i see key j?
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,  # (B|1, H, P, D) each
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), allowed, prefix, kv_cache)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))
        return x
