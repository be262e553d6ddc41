"""The engine's block and attention: the last-block cut, the query cut, SDPA's own causal masking
and a prefix in placeholder rows (`engine.POLICY`). Given to the blocks by `engine.enable`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache, causal_mask
from .block import Block


class FastBlock(Block):
    def forward(self, x, allowed, prefix=None, kv_cache=None, keep_last=None, prefix_rows=False, cut_queries=False):
        """(B, T, C) -> (B, T, C); with `keep_last=n` the output at the last n positions only, (B, n, C):
        every position still attends (and gives keys and values), but only those n are projected
        and go through the MLP (the model's last block, when only their logits are read)."""
        attended = self.attn(self.ln_1(x), allowed, prefix, kv_cache, keep_last, prefix_rows, cut_queries)
        x = x[:, -attended.shape[1]:] + attended  # (B, T or n, C)
        x = x + self.mlp(self.ln_2(x))
        return x


class FastAttention(CausalSelfAttention):
    def forward(self, x, allowed, prefix=None, kv_cache=None, keep_last=None, prefix_rows=False, cut_queries=False):
        """(B, T, C) -> (B, T, C), or (B, n, C) with `keep_last=n`: then the output projection
        runs on those n positions only (the model's last block, when logits are read there alone)."""
        qkv = self.c_attn(x)  # (B, T, 3C): q, k, v side by side
        if prefix_rows:
            out = self.prefix_in_rows(qkv, prefix)  # (B, T, C), the first P rows placeholders still
        else:
            cut = keep_last is not None and cut_queries
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
            k = torch.cat([prefix_k.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)  # (B, H, P + S, D)
            v = torch.cat([prefix_v.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        if allowed is not None:
            allowed = allowed[..., -k.shape[2]:]  # the mask's columns for these keys (no prefix here: the last S)
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
            scores = q @ k.transpose(-2, -1) / self.head_dim ** 0.5  # (B, H, T, P + S)
            scores = scores.masked_fill(~allowed, float("-inf"))
            weights = self.attn_dropout(F.softmax(scores, dim=-1))
            out = weights @ v  # (B, H, T, D)
        return out.transpose(1, 2).reshape(B, T, C)  # heads side by side again: (B, T, C)

    def prefix_in_rows(self, qkv: torch.Tensor, prefix: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The same attention to a prefix, computed as a plain causal square (a GPU's fastest kernel).

        The model has put P placeholder rows in front of the T real ones (`FastMiniTransformer`).
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
