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
`scaled_dot_product_attention`; a test proves the two agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

# Where the model's last block attends from the queries whose output is read only (`keep_last`):
# a CPU does less work; a GPU's fused kernels are fastest on the whole causal square.
QUERIES_CUT_ON = {"cpu"}


class KVCache:
    """Keys and values of every position processed so far, one (k, v) pair per layer."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.extras: dict = {}  # what a caller computes on the first call and reuses on later ones

    def __len__(self) -> int:
        """Number of cached positions (the prefix is not part of the cache)."""
        return 0 if not self.layers else self.layers[0][0].shape[2]

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
        allowed: torch.Tensor | None,  # (B, 1, T, P + S) bool: may query i see key j? None: plain causal
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,  # (B, H, P, D) each
        kv_cache: KVCache | None = None,
        keep_last: int | None = None,  # n: only the last n positions' outputs are read
        prefix_rows: bool = False,  # x's first P rows are placeholders for the prefix (see prefix_in_rows)
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), or (B, n, C) with `keep_last=n`: then the output projection
        runs on those n positions only (the model's last block, when logits are read there alone)."""
        qkv = self.c_attn(x)  # (B, T, 3C): q, k, v side by side
        if prefix_rows:
            out = self.prefix_in_rows(qkv, prefix)  # (B, T, C), the first P rows placeholders still
        else:
            # Only the last n queries are read: a CPU attends from those alone (QUERIES_CUT_ON).
            cut = keep_last is not None and x.device.type in QUERIES_CUT_ON
            out = self.attend(qkv, allowed, prefix, kv_cache, keep_last if cut else None)  # (B, T or n, C)
        if keep_last is not None:
            out = out[:, -keep_last:]  # (B, n, C)
        return self.resid_dropout(self.c_proj(out))

    def attend(self, qkv: torch.Tensor, allowed: torch.Tensor | None, prefix: tuple[torch.Tensor, torch.Tensor] | None,
               kv_cache: KVCache | None, last_queries: int | None = None) -> torch.Tensor:
        """Every head's softmax(q k^T / sqrt(D)) v, the heads side by side: (B, T, 3C) -> (B, T, C).
        With `last_queries=n` only the last n positions ask (every position still gives keys and
        values): (B, n, C), the same as the last n rows of the whole."""
        B, C = qkv.shape[0], qkv.shape[2] // 3
        q, k, v = (self.split_heads(t) for t in qkv.split(C, dim=2))  # (B, H, T, D) each
        if kv_cache is not None:
            k, v = kv_cache.extend(self.layer_index, k, v)  # (B, H, S, D), S = past + T
        if prefix is not None:
            prefix_k, prefix_v = prefix
            # (in k's dtype: under bf16 autocast the projections give bf16, a prefix parameter is fp32)
            k = torch.cat([prefix_k.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)  # (B, H, P + S, D)
            v = torch.cat([prefix_v.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        if last_queries is not None:
            q = q[:, :, -last_queries:]  # (B, H, n, D)
            allowed = allowed[:, :, -last_queries:] if allowed is not None else None  # (B, 1, n, P + S)
        T, S = q.shape[2], k.shape[2]  # queries, keys

        if self.use_sdpa:
            dropout = self.attn_dropout.p if self.training else 0.0
            # No padding and as many keys as queries: let the fused kernel apply the causal mask
            # itself (and skip the masked blocks). Same function, no (T, S) mask.
            if allowed is None and S == T:  # no prefix, no cache, no cut: the plain causal square
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
            elif allowed is None and T == 1:  # one query (generation's next token) sees every key
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            else:  # the queries are the last T of the S positions: the lower-right causal mask
                mask = causal_mask(T, S, q.device) if allowed is None else allowed  # (T, S) or (B, 1, T, S)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            if allowed is None:
                allowed = causal_mask(T, S, q.device)  # (T, P + S)
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, T, P + S)
            scores = scores.masked_fill(~allowed, float("-inf"))
            weights = self.attn_dropout(F.softmax(scores, dim=-1))
            out = weights @ v  # (B, H, T, D)
        return out.transpose(1, 2).reshape(B, T, C)  # heads side by side again: (B, T, C)

    def prefix_in_rows(self, qkv: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The same attention to a prefix, computed as a plain causal square (a GPU's fastest kernel).

        The model has put P placeholder rows in front of the T real ones (`MiniTransformer.forward`).
        Here their keys and values are overwritten with the prefix, in place: under the causal
        mask of the (P + T) square every real query then sees all P prefix keys and the real keys
        up to itself, which is exactly the lower-right mask of `attend`. The placeholders' own
        queries and outputs are junk that only placeholder rows ever read (and their keys and
        values are overwritten again in the next layer), so nothing real depends on them, and the
        model drops them at the end. Writing P rows costs nothing next to joining the prefix to
        every layer's keys and values, which copies the whole (B, P + T, 3C) tensor and its gradient.
        (The rows are written through an index, not a slice: `torch.compile` then writes them in
        place, where for a slice it makes a new copy of the whole tensor.)
        """
        B, S, C = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        prefix_k, prefix_v = (t.to(qkv.dtype).transpose(1, 2).flatten(2) for t in prefix)  # (B|1, P, C) each
        rows = torch.arange(prefix_k.shape[1], device=qkv.device)  # the P placeholder rows
        qkv[:, rows] = torch.cat([torch.zeros_like(prefix_k), prefix_k, prefix_v], dim=2)  # (B|1, P, 3C): q = 0
        q, k, v = (self.split_heads(t) for t in qkv.split(C, dim=2))  # (B, H, P + T, D) each
        dropout = self.attn_dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)  # (B, H, P + T, D)
        return out.transpose(1, 2).reshape(B, S, C)  # (B, P + T, C)


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
    Without padding every row is `causal_mask(T, P + S)`; the model then passes None
    instead, and attention applies the causal mask itself (or lets a fused kernel do it).
    """
    B, S = attention_mask.shape
    query_pos = torch.arange(S - num_new, S, device=attention_mask.device)[:, None]  # (T, 1)
    key_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    allowed = (key_pos <= query_pos) & attention_mask[:, None, :].bool()  # (B, T, S)
    allowed |= key_pos == query_pos  # the diagonal
    prefix = torch.ones(B, num_new, prefix_len, dtype=torch.bool, device=attention_mask.device)
    return torch.cat([prefix, allowed], dim=2)[:, None]  # (B, 1, T, P + S)
