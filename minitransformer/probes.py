"""Probes: what the model computes inside, read through PyTorch hooks.

Lessons and tests want to look at the hidden states entering each block, what each block
puts out, and the attention weights of every layer. The model returns none of these, and
it should not have to: the probes here read them through PyTorch hooks
(`register_forward_pre_hook`, `register_forward_hook`) for the length of one forward pass,
then remove the hooks. The model knows nothing of them.

Each probe takes `model` (a MiniTransformer, or a method that wraps one as `.base`) and the
arguments to pass to `model(...)`, runs it once without gradients, and returns one tensor
per layer. They read the reference model: with the engine on (engine.py) the blocks do
other work (prompt positions skipped, queries cut), so switch it off first.

    entering_states(model, ids, mask)     # L x (B, T, C): what enters each block
    block_outputs(model, ids, mask)       # L x (B, T, C): what each block puts out
    attention_weights(model, ids, mask)   # L x (B, H, T, K): softmax(q k^T / sqrt(D)), masked
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import causal_mask
from .model import MiniTransformer


def base_of(model) -> MiniTransformer:
    """The MiniTransformer inside `model`; refuses one whose engine is on."""
    base = model if isinstance(model, MiniTransformer) else model.base
    if type(base) is not MiniTransformer:
        raise ValueError(f"the probes read the reference model, and this one runs as {type(base).__name__}: "
                         f"call minitransformer.engine.disable(model) first")
    return base


def run_with_hooks(model, modules, register: str, hook, args, kwargs) -> list:
    """Run model(*args, **kwargs) once, without gradients, with `hook` on each module; return what it
    returned, per module, in order. `register` is "pre" (hook(module, inputs)) or "post" (+ output)."""
    seen: list = [None] * len(modules)

    def keep(index):
        if register == "pre":
            return lambda module, inputs: seen.__setitem__(index, hook(module, inputs))
        return lambda module, inputs, output: seen.__setitem__(index, hook(module, inputs, output))

    adders = {"pre": "register_forward_pre_hook", "post": "register_forward_hook"}
    handles = [getattr(m, adders[register])(keep(i)) for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def entering_states(model, *args, **kwargs) -> list[torch.Tensor]:
    """Per block, the hidden states entering it (after any `hidden_prompts` overwrite): L x (B, T, C).

    T counts every position the blocks process: a soft prompt's or deep prompt's P come first.
    """
    blocks = base_of(model).blocks
    return run_with_hooks(model, blocks, "pre", lambda _, inputs: inputs[0].detach(), args, kwargs)


def block_outputs(model, *args, **kwargs) -> list[torch.Tensor]:
    """Per block, what it puts out (the residual stream after it): L x (B, T, C)."""
    blocks = base_of(model).blocks
    return run_with_hooks(model, blocks, "post", lambda _, __, out: out.detach(), args, kwargs)


def attention_inputs(module, inputs) -> tuple:
    """What one attention module was handed: (module, x, allowed, prefix, past k or None, past v or None)."""
    x, allowed, prefix, kv_cache = (list(inputs) + [None] * 4)[:4]
    past = kv_cache.layers[module.layer_index] if kv_cache is not None and module.layer_index < len(
        kv_cache.layers) else (None, None)  # read before this call extends the cache
    return (module, x.detach(), allowed, prefix, *past)


def attention_weights(model, *args, **kwargs) -> list[torch.Tensor]:
    """Per layer, the attention weights the model computes: L x (B, H, T, K).

    Recomputed from what each attention module received: softmax(q k^T / sqrt(D)) under its
    mask. K = P + S: a layer given a prefix has its P prefix columns first; a layer without
    one has only the sequence's S keys (the cache, then this call's). Dropout is not applied.
    """
    seen = run_with_hooks(model, [b.attn for b in base_of(model).blocks], "pre", attention_inputs, args, kwargs)
    return [recomputed_weights(attn, x, allowed, prefix, past_k) for attn, x, allowed, prefix, past_k, _ in seen]


@torch.no_grad()
def recomputed_weights(attn, x, allowed, prefix, past_k) -> torch.Tensor:
    """One layer's softmax(q k^T / sqrt(D)) from what its attention module was handed, (B, H, T, K)."""
    B, T, C = x.shape
    q, k, _ = (attn.split_heads(t) for t in attn.c_attn(x).split(C, dim=2))  # (B, H, T, D) each
    if past_k is not None:
        k = torch.cat([past_k, k], dim=2)  # (B, H, S, D): the cached keys first
    if prefix is not None:
        k = torch.cat([prefix[0].to(k.dtype).expand(B, -1, -1, -1), k], dim=2)  # (B, H, P + S, D)
    if allowed is None:  # plain causal (the engine's causal_kernel): the T queries are the last T of the keys'
        allowed = causal_mask(T, k.shape[2], x.device)  # (T, K)
    allowed = allowed[..., -k.shape[2]:]  # as attention reads it: a layer without a prefix, the last S columns
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)  # (B, H, T, K)
    return F.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
