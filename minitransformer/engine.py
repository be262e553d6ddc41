"""The engine: every shortcut that exists for speed alone, in one place, off until asked for.

The reference model (`attention.py`, `block.py`, `model.py`) computes the math in order and
nothing else. The engine computes exactly the same function, faster, by the shortcuts
below. It is switched on by one call, where speed is asked for (where nanoGPT calls
`torch.compile`):

    engine.enable(model)                      # a MiniTransformer, or a method that wraps one
    engine.enable(model, policy=engine.acting_as("cuda"))   # the policy is an argument (tests)
    engine.disable(model)                     # the reference again

`enable` swaps the classes of the model, its blocks and their attention for the subclasses
here (same parameters, same state dict, same hooks); `disable` swaps them back. The
reference never imports this file. tests/test_engine.py runs every shortcut and every
method with the engine on and off and compares logits and every trained parameter's gradient.

Which shortcut runs on which device, and why: `POLICY`, the one table. A shortcut runs
where the model's weights live when that device type is in its `on` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache, attention_allowed, causal_mask
from .block import Block
from .model import MiniTransformer, check_context
from .validation import check_forward_inputs, check_logits_to_keep


@dataclass(frozen=True)
class Rule:
    on: frozenset[str]  # device types ("cpu", "cuda") where the shortcut runs
    why: str


BOTH, CPU, GPU = frozenset({"cpu", "cuda"}), frozenset({"cpu"}), frozenset({"cuda"})
POLICY: dict[str, Rule] = {
    "causal_kernel": Rule(BOTH, "without padding no (B, 1, T, S) mask is built: SDPA masks the causal square "
                                "itself (is_causal: the flash/cuDNN kernels on a GPU), one query needs no mask, "
                                "and anything else gets a small (T, S) lower-right mask"),
    "last_block_cut": Rule(BOTH, "the last block's output projection and MLP (9 C^2 of its 12 C^2 weights) run "
                                 "only from the first position whose logits are read"),
    "query_cut": Rule(CPU, "the last block attends from the read queries only: a CPU does less work; a GPU's "
                           "fused kernels are fastest on the whole causal square"),
    "vocab_padding": Rule(GPU, "the head padded to a multiple of 64 rows (with GPT-2's odd 50,257 cuBLAS falls "
                               "back to a ~3x slower kernel); a CPU gains nothing"),
    "prefix_rows": Rule(GPU, "a prefix rides in P placeholder rows and is attended as the plain causal square "
                             "(cuDNN's kernel); a CPU runs the lower-right mask as fast, without the extra rows"),
    "deep_prompt_as_prefix": Rule(BOTH, "prompts at every layer act only through the keys and values they make: "
                                        "computed for all layers at once (stacked weights), the P prompt "
                                        "positions need no queries, attention or MLP"),
}
ALL_ON = {name: Rule(BOTH, rule.why) for name, rule in POLICY.items()}


def acting_as(device_type: str, policy: Mapping[str, Rule] = POLICY) -> dict[str, Rule]:
    """What `policy` runs on `device_type`, run on every device: `acting_as("cuda")` runs the GPU's
    shortcuts on a CPU (how the tests check them without a GPU)."""
    return {name: Rule(BOTH if device_type in rule.on else frozenset(), rule.why) for name, rule in policy.items()}


def only(*names: str) -> dict[str, Rule]:
    """These shortcuts on every device, the others nowhere (to look at one shortcut alone)."""
    return {name: Rule(BOTH if name in names else frozenset(), rule.why) for name, rule in POLICY.items()}


def without(policy: Mapping[str, Rule], *names: str) -> dict[str, Rule]:
    """`policy` with the shortcuts `names` switched off everywhere (the benchmark's --disable)."""
    unknown = set(names) - set(POLICY)
    if unknown:
        raise ValueError(f"unknown shortcut(s) {sorted(unknown)}; the engine's shortcuts are {sorted(POLICY)}")
    return {name: Rule(frozenset(), rule.why) if name in names else rule for name, rule in policy.items()}


def base_of(model):
    """The MiniTransformer inside `model` (a method wraps it as `.base`)."""
    return model if isinstance(model, MiniTransformer) else model.base


def enable(model, policy: Mapping[str, Rule] = POLICY, padded_logits: bool = False):
    """Switch the engine on for `model` (a MiniTransformer or a method around one); returns `model`.

    `padded_logits=True` (a training loss that accepts them): where the head is padded, the
    extra logits stay, at -inf, instead of being cut off (see `FastMiniTransformer.head`).
    """
    unknown = set(policy) - set(POLICY)
    if unknown:
        raise ValueError(f"unknown shortcut(s) {sorted(unknown)}; the engine's shortcuts are {sorted(POLICY)}")
    base = base_of(model)
    base.__class__ = FastMiniTransformer
    base.policy = {name: policy.get(name, Rule(frozenset(), "")) for name in POLICY}
    base.padded_logits = padded_logits
    for block in base.blocks:
        block.__class__ = FastBlock
        block.attn.__class__ = FastAttention
    return model


def disable(model):
    """The reference path again; returns `model`."""
    base = base_of(model)
    if isinstance(base, FastMiniTransformer):
        base.__class__ = MiniTransformer
        del base.policy, base.padded_logits
        for block in base.blocks:
            block.__class__ = Block
            block.attn.__class__ = CausalSelfAttention
    return model


def is_enabled(model) -> bool:
    return isinstance(base_of(model), FastMiniTransformer)


class FastMiniTransformer(MiniTransformer):
    def uses(self, shortcut: str) -> bool:
        return self.wte.weight.device.type in self.policy[shortcut].on

    def hidden_states(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, position_ids=None,
                      hidden_prompts=None, prefix_kv=None, kv_cache=None, logits_to_keep=None):
        """`MiniTransformer.hidden_states`, with the shortcuts `self.policy` allows on this device."""
        if self.uses("deep_prompt_as_prefix") and hidden_prompts is not None:
            as_prefix = self.deep_prompt_as_prefix(input_ids, inputs_embeds, attention_mask, position_ids,
                                                   hidden_prompts, prefix_kv, kv_cache, logits_to_keep)
            if as_prefix is not None:
                inputs_embeds, attention_mask, position_ids, prefix_kv, logits_to_keep = as_prefix
                hidden_prompts = None
        past = len(kv_cache) if kv_cache is not None else 0
        prefix_len = check_forward_inputs(
            self.config, input_ids, inputs_embeds, attention_mask, position_ids,
            hidden_prompts, prefix_kv, past,
        )
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        check_logits_to_keep(logits_to_keep, B, T)
        causal_kernel = self.uses("causal_kernel")
        if position_ids is None and attention_mask is None and causal_kernel:  # no padding: positions count on
            # known on the host: no read of a value back from a GPU (each one stalls it)
            position_ids = torch.arange(prefix_len + past, prefix_len + past + T, device=x.device)  # (T,)
            if prefix_len + past + T > self.config.block_size:
                check_context(self.config, position_ids, prefix_len + past + T)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.long, device=x.device)
            if position_ids is None:
                position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, past:] + prefix_len  # (B, T)
            check_context(self.config, position_ids, prefix_len + past + T)
        x = self.drop(x + self.wpe(position_ids))  # (B, T, C)
        # without padding None: plain causal masking, which attention applies itself
        padded = attention_mask is not None and not (causal_kernel and bool(attention_mask.all()))
        allowed = attention_allowed(attention_mask, T, prefix_len) if padded else None

        # A GPU attends fastest in the plain causal square. With a prefix and nothing else in
        # front, P placeholder rows ride in front of the stream, and each layer overwrites their
        # keys/values with its prefix (FastAttention.prefix_in_rows): the same attention.
        prefix_rows = prefix_len > 0 and allowed is None and kv_cache is None and hidden_prompts is None \
            and all(kv is not None for kv in prefix_kv) and self.blocks[0].attn.use_sdpa and self.uses("prefix_rows")
        if prefix_rows:
            x = torch.cat([x.new_zeros(B, prefix_len, x.shape[2]), x], dim=1)  # (B, P + T, C)
        # The last block's output is read only where logits are: its output projection and MLP
        # run at the last n positions, from the first one read (all T still give keys and values;
        # with query_cut only those n are queries too).
        n = positions_read(logits_to_keep, T) if self.uses("last_block_cut") else T
        cut_queries = self.uses("query_cut")
        for layer, block in enumerate(self.blocks):
            if hidden_prompts is not None and hidden_prompts[layer] is not None:
                prompt = hidden_prompts[layer]  # (B|1, P, C)
                x = torch.cat([prompt.to(x.dtype).expand(B, -1, -1), x[:, prompt.shape[1]:]], dim=1)  # replace first P
            prefix = prefix_kv[layer] if prefix_kv is not None else None
            seen = allowed if prefix is not None or allowed is None else allowed[..., prefix_len:]  # no P columns
            last = layer == len(self.blocks) - 1
            x = block(x, seen, prefix, kv_cache, n if last and n < x.shape[1] else None, prefix_rows, cut_queries)
        x = x[:, -n:]  # (B, n, C)
        if isinstance(logits_to_keep, torch.Tensor):
            x = x[logits_to_keep[:, -n:]]  # (N, C)
        elif logits_to_keep is not None:
            x = x[:, -logits_to_keep:]
        return self.ln_f(x)  # (B, n, C) or (N, C)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits, (..., C) -> (..., V): the tied head x E^T.

        GPU matrix units want sizes in multiples of 64; with an odd V (GPT-2's 50257) cuBLAS
        falls back to a kernel ~3x slower. So (`vocab_padding`) E gets zero rows up to a multiple
        of 64 and their logits are dropped. Dropping them costs a copy in the backward (the
        gradient widened back to the padded width). A training loss that can take the padded
        width enables the engine with `padded_logits=True`: the extra logits then stay, at -inf.
        They are no token: softmax gives them probability 0 and gradient 0, so the loss and
        every gradient are the same (and a GPT-2-small prompt-training step on an H100 ~7% shorter).
        """
        E = self.wte.weight  # (V, C)
        pad = -E.shape[0] % 64
        if not pad or not self.uses("vocab_padding"):
            return F.linear(x, E)
        padded = F.pad(E, (0, 0, 0, pad))  # (V + pad, C)
        if self.padded_logits:
            minus_inf = F.pad(E.new_zeros(E.shape[0]), (0, pad), value=float("-inf"))  # (V + pad,): 0s, then -inf
            return F.linear(x, padded, minus_inf)  # (..., V + pad)
        return F.linear(x, padded)[..., :E.shape[0]]  # (..., V)

    def deep_prompt_as_prefix(self, input_ids, inputs_embeds, attention_mask, position_ids, hidden_prompts,
                              prefix_kv, kv_cache, logits_to_keep):
        """Prompts at every layer as the key/value prefix they amount to, or None where that is not exact.

        A deep prompt (methods/deep_prompt.py) puts P vectors in front of the input (layer 0)
        and replaces the first P hidden states entering every later block. What the real
        tokens read from those positions is only their keys and values,
        block_l.attn.c_attn(block_l.ln_1(p_l))[:, C:]; their own outputs are overwritten by the
        next layer's prompt, or never read. So the same function is: those keys and values as
        a prefix, and the real tokens alone through the blocks. They are made for all L layers
        at once, each with its own LayerNorm and projection weights stacked along a batch
        dimension: three kernels instead of ~3 L tiny ones (a GPU otherwise waits at the start
        of every step while the host launches each). Exact when the prompt is at every layer
        (layer 0's in the input rows), no cache, no prefix, default positions, the prompt
        positions unpadded and their logits not read.
        """
        L, C = self.config.n_layer, self.config.d_model
        if inputs_embeds is None or inputs_embeds.dim() != 3 or len(hidden_prompts) != L or L < 2 \
                or hidden_prompts[-1] is None:
            return None
        P = hidden_prompts[-1].shape[1]
        exact = hidden_prompts[0] is None \
            and all(p is not None and p.shape[1] == P for p in hidden_prompts[1:]) \
            and kv_cache is None and prefix_kv is None and position_ids is None \
            and not any(b.attn.c_attn._forward_hooks for b in self.blocks)
        T = inputs_embeds.shape[1]
        if not exact or P >= T or positions_read(logits_to_keep, T) > T - P:
            return None
        if attention_mask is not None and not bool(attention_mask[:, :P].all()):
            return None  # padded prompt positions: the reference's business
        B = inputs_embeds.shape[0]
        layer_0 = inputs_embeds[:, :P] + self.wpe.weight[:P]  # (B, P, C): what enters block 0 there
        hidden = torch.stack([layer_0] + [p.to(layer_0.dtype).expand(B, -1, -1) for p in hidden_prompts[1:]])
        ln_1s, c_attns = [b.ln_1 for b in self.blocks], [b.attn.c_attn for b in self.blocks]
        normed = F.layer_norm(hidden, (C,), eps=ln_1s[0].eps) * torch.stack([ln.weight for ln in ln_1s])[:, None, None]
        if self.config.bias:
            normed = normed + torch.stack([ln.bias for ln in ln_1s])[:, None, None]  # (L, B, P, C): each ln_1
        keys_values = normed @ torch.stack([a.weight[C:] for a in c_attns]).transpose(1, 2)[:, None]  # (L, B, P, 2C)
        if self.config.bias:
            keys_values = keys_values + torch.stack([a.bias[C:] for a in c_attns])[:, None, None]  # each c_attn's
        H, D = self.config.n_head, self.config.head_dim
        kv = keys_values.view(L, B, P, 2, H, D).permute(0, 3, 1, 4, 2, 5)  # (L, 2, B, H, P, D)
        prefix = [(kv[l, 0], kv[l, 1]) for l in range(L)]
        if attention_mask is not None:  # the literal positions: real tokens counted after the P prompt ones
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, P:]  # (B, T - P)
            attention_mask = attention_mask[:, P:]
        if isinstance(logits_to_keep, torch.Tensor):
            logits_to_keep = logits_to_keep[:, P:]  # (an int n <= T - P keeps the same last n)
        return inputs_embeds[:, P:], attention_mask, position_ids, prefix, logits_to_keep


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


def positions_read(logits_to_keep: int | torch.Tensor | None, T: int) -> int:
    """How many of the last positions have their logits read: T (None), n (an int), or from the
    first position any row of a (B, T) bool mask keeps to the end (a read of the mask)."""
    if logits_to_keep is None:
        return T
    if isinstance(logits_to_keep, int):
        return logits_to_keep
    read = logits_to_keep.any(dim=0).nonzero()  # (k, 1) columns with some logit read
    return T - int(read[0, 0]) if len(read) else 1
