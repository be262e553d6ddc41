"""The engine's model: `MiniTransformer.hidden_states` and `head` with the shortcuts of `engine.POLICY`.

Switched on by `engine.enable(model)` (engine.py), which gives the model this class; the
reference (model.py) never imports it. tests/test_engine.py proves it equal to the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import attention_allowed
from .model import MiniTransformer
from .validation import check_context, check_forward_inputs, check_logits_to_keep, per_layer


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
        layers = zip(self.blocks, per_layer(hidden_prompts, self.config), per_layer(prefix_kv, self.config))
        for block, prompt, prefix in layers:
            if prompt is not None:  # (B|1, P, C)
                x = torch.cat([prompt.to(x.dtype).expand(B, -1, -1), x[:, prompt.shape[1]:]], dim=1)  # replace first P
            last = block is self.blocks[-1]
            x = block(x, allowed, prefix, kv_cache, n if last and n < x.shape[1] else None, prefix_rows, cut_queries)
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
        a prefix, and the real tokens alone through the blocks. They are made in two groups,
        layer 0's from the B input rows and the others' from the prompts themselves (one copy,
        not B), each group's LayerNorm and projection weights stacked along a batch dimension:
        six kernels instead of ~3 L tiny ones (a GPU otherwise waits at the start of every step
        while the host launches each). Exact when the prompt is at every layer
        (layer 0's in the input rows), no cache, no prefix, default positions, the prompt
        positions unpadded and their logits not read.
        """
        L = self.config.n_layer
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
        layer_0 = inputs_embeds[:, :P] + self.wpe.weight[:P]  # (B, P, C): what enters block 0 there
        batch = max(p.shape[0] for p in hidden_prompts[1:])  # 1 unless a prompt differs per row
        upper = torch.stack([p.to(layer_0.dtype).expand(batch, -1, -1) for p in hidden_prompts[1:]])  # (L-1, B|1, P, C)
        # layer 0's rows come from the input (one per row); the others' are the prompts themselves, not B copies
        prefix = self.stacked_keys_values(self.blocks[:1], layer_0[None]) \
            + self.stacked_keys_values(self.blocks[1:], upper)
        if attention_mask is not None:  # the literal positions: real tokens counted after the P prompt ones
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, P:]  # (B, T - P)
            attention_mask = attention_mask[:, P:]
        if isinstance(logits_to_keep, torch.Tensor):
            logits_to_keep = logits_to_keep[:, P:]  # (an int n <= T - P keeps the same last n)
        return inputs_embeds[:, P:], attention_mask, position_ids, prefix, logits_to_keep

    def stacked_keys_values(self, blocks, hidden: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`block.attn.keys_values(block.ln_1(h))` for each of L' blocks and its (b, P, C) hidden states,
        as three kernels: the blocks' LayerNorm and key/value weights stacked. hidden (L', b, P, C) ->
        L' pairs (k, v), each (b, H, P, D)."""
        L, b, P, C = hidden.shape
        ln_1s, c_attns = [block.ln_1 for block in blocks], [block.attn.c_attn for block in blocks]
        normed = F.layer_norm(hidden, (C,), eps=ln_1s[0].eps) * torch.stack([ln.weight for ln in ln_1s])[:, None, None]
        if self.config.bias:
            normed = normed + torch.stack([ln.bias for ln in ln_1s])[:, None, None]  # (L', b, P, C): each ln_1
        keys_values = normed @ torch.stack([a.weight[C:] for a in c_attns]).transpose(1, 2)[:, None]  # (L', b, P, 2C)
        if self.config.bias:
            keys_values = keys_values + torch.stack([a.bias[C:] for a in c_attns])[:, None, None]  # each c_attn's
        H, D = self.config.n_head, self.config.head_dim
        kv = keys_values.view(L, b, P, 2, H, D).permute(0, 3, 1, 4, 2, 5)  # (L', 2, b, H, P, D)
        return [(kv[l, 0], kv[l, 1]) for l in range(L)]


def positions_read(logits_to_keep: int | torch.Tensor | None, T: int) -> int:
    """How many of the last positions have their logits read: T (None), n (an int), or from the
    first position any row of a (B, T) bool mask keeps to the end (a read of the mask)."""
    if logits_to_keep is None:
        return T
    if isinstance(logits_to_keep, int):
        return logits_to_keep
    read = logits_to_keep.any(dim=0).nonzero()  # (k, 1) columns with some logit read
    return T - int(read[0, 0]) if len(read) else 1
