"""Multi-head causal self-attention, with the math in plain sight.

For each head h, with queries, keys and values projected from the hidden states x:

    q = x W_q,  k = x W_k,  v = x W_v                      (B, H, T, D) each
    scores = q k^T / sqrt(D)                               (B, H, T, S)
    scores[i, j] = -inf where key j may not be seen by query i
    out = softmax(scores) v                                (B, H, T, D)

and the heads are concatenated and projected back to width C (Vaswani et al. 2017, §3.2).

Two hooks make prompt methods possible without changing this file:
- a **key/value prefix** `(prefix_k, prefix_v)`, each (B, H, P, D): P extra keys and
  values placed in front of the sequence's own. Queries attend to them, they never
  become queries, and the mask always lets every query see them. This is exactly the
  "prefix" of prefix tuning (Li & Liang 2021, §4.2) and of P-tuning v2.
- a **KV cache**: keys and values of earlier positions kept between calls, so generation
  processes one new token per step instead of the whole sequence again.

`use_sdpa=True` swaps the explicit four lines for PyTorch's fused
`scaled_dot_product_attention`, which computes the same thing; a test proves the two agree.
(The shortcuts that exist for speed alone live in `engine.py`.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class KVCache:
    """Keys and values of every position processed so far, one (k, v) pair per layer."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.extras: dict = {}  # what a caller computes on the first call and reuses on later ones

    def __len__(self) -> int:
        """Number of cached positions (the prefix is not part of the cache)."""
        return self.layers[0][0].shape[2] if self.layers else 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this call's (B, H, T, D) keys/values to layer `layer`; return all of them."""
        if layer == len(self.layers):
            self.layers.append((k, v))
        else:
            past_k, past_v = self.layers[layer]
            self.layers[layer] = (torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2))
        return self.layers[layer]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        self.layer_index = layer_index  # which slot of a KVCache belongs to this layer
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)  # heads back to C
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.use_sdpa = True

    def split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values this layer makes from hidden states x (B, T, C), each (B, H, T, D).

        Prefix tuning's "prefix from real tokens" test uses this to build a prefix
        that must act exactly like those tokens placed in front of the input.
        """
        _, k, v = self.c_attn(x).split(x.shape[-1], dim=2)
        return self.split_heads(k), self.split_heads(v)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        allowed: torch.Tensor,  # (B, 1, T, P + S) or (T, P + S) bool: may query i see key j?
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,  # (B|1, H, P, D) each
        kv_cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (self.split_heads(t) for t in self.c_attn(x).split(C, dim=2))  # (B, H, T, D) each
        if kv_cache is not None:
            k, v = kv_cache.extend(self.layer_index, k, v)  # (B, H, S, D), S = past + T
        if prefix is not None:
            prefix_k, prefix_v = prefix  # (in k's dtype: under bf16 a prefix parameter is still fp32)
            k = torch.cat([prefix_k.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)  # (B, H, P + S, D)
            v = torch.cat([prefix_v.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        allowed = allowed[..., -k.shape[2]:]  # the mask's columns for these keys (a layer without a prefix: the last S)

        if self.use_sdpa:  # the same four lines as below, fused into one kernel
            dropout = self.attn_dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, P + S)
            scores = scores.masked_fill(~allowed, float("-inf"))
            weights = self.attn_dropout(F.softmax(scores, dim=-1))
            out = weights @ v  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(out))


def causal_mask(num_queries: int, num_keys: int, device=None) -> torch.Tensor:
    """(T, S) bool, True where query i may see key j: the T queries are the last T of the S
    keys' positions (any keys before them, a prefix or the cache, are visible to all)."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril(num_keys - num_queries)


def attention_allowed(
    attention_mask: torch.Tensor,  # (B, S): 1 = real token, 0 = padding; covers cache + current
    num_new: int,  # T, the positions processed in this call (the last T of S)
    prefix_len: int = 0,  # P, keys in front that every query may see
) -> torch.Tensor:
    """Which keys each query may attend to: (B, 1, T, P + S) bool.

    A query sees a key when the key is not padding and does not lie in the future
    (causality); prefix keys are always visible. A query also always sees itself, so a
    padding position (whose output nobody reads) never has an all-masked, NaN row.
    Without padding every row is `causal_mask(T, P + S)`.
    """
    B, S = attention_mask.shape
    query_pos = torch.arange(S - num_new, S, device=attention_mask.device)[:, None]  # (T, 1)
    key_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    allowed = (key_pos <= query_pos) & attention_mask[:, None, :].bool()  # (B, T, S)
    allowed |= key_pos == query_pos  # the diagonal
    prefix = torch.ones(B, num_new, prefix_len, dtype=torch.bool, device=attention_mask.device)
    return torch.cat([prefix, allowed], dim=2)[:, None]  # (B, 1, T, P + S)
