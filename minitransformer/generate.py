"""Greedy and sampled decoding, with a KV cache.

A language model predicts one token at a time. Generating n tokens naively re-runs the
whole, growing sequence n times. With a KV cache the first call (the "prefill") runs the
prompt once and stores every layer's keys and values; each later call feeds only the one
new token, whose query attends to the cached keys. Same numbers, far less work; a test
checks that cached and uncached decoding give identical tokens.

`generate` works with anything callable as `model(ids, attention_mask=..., kv_cache=...,
logits_to_keep=1)` that returns logits (B, 1, V) for the last position: the base model,
and every prompt method's wrapper. Only the last position's logits are computed: the
head is the largest matrix of a GPT-2-sized model, and the prefill has many positions.
"""

from __future__ import annotations

import torch

from .attention import KVCache


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,  # (B, T), left-padded if rows differ in length
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,  # (B, T)
    temperature: float = 0.0,  # 0 means greedy: always the most likely token
    top_k: int | None = None,  # sample only among the k most likely tokens
    eos_id: int | None = None,  # stop a row once it produces this token
    pad_id: int = 0,  # what finished rows get after their end-of-sequence token
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return (B, T + new) token ids: the input followed by the generated continuation."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    if input_ids.shape[0] and not bool(attention_mask[:, -1].all()):
        raise ValueError("generation appends on the right, so pad batches on the left (pad_side='left')")
    _check_room(model, attention_mask, max_new_tokens)

    ids, mask = input_ids, attention_mask
    cache = KVCache() if use_cache else None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        fresh = ids if not use_cache or len(cache) == 0 else ids[:, -1:]  # the prefill, then one token
        logits = model(fresh, attention_mask=mask, kv_cache=cache, logits_to_keep=1)[:, -1, :]  # (B, V)
        next_id = _choose(logits, temperature, top_k, generator)  # (B,)
        next_id = torch.where(finished, torch.full_like(next_id, pad_id), next_id)
        ids = torch.cat([ids, next_id[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(next_id)[:, None]], dim=1)
        if eos_id is not None:
            finished |= next_id == eos_id
            if bool(finished.all()):
                break
    return ids


def _check_room(model, attention_mask: torch.Tensor, max_new_tokens: int) -> None:
    """Refuse, before generating anything, a generation that would run past the context.

    Each row's real tokens, the prompt's P virtual tokens (`num_virtual_tokens` in a prompt
    method's config), and every new token but the last (which is never fed back) need a
    position. Models that do not show a `block_size` are left to their own checks.
    """
    base = getattr(model, "base", model)
    block_size = getattr(getattr(base, "config", None), "block_size", None)
    if not max_new_tokens or not isinstance(block_size, int) or attention_mask.numel() == 0:
        return
    virtual = getattr(getattr(model, "config", None), "num_virtual_tokens", 0) if base is not model else 0
    longest = int(attention_mask.sum(dim=1).max())  # real tokens of the longest row
    fits = block_size - virtual - longest + 1  # new tokens that fit: the last one needs no position
    if max_new_tokens > fits:
        prompt = f"the prompt's {virtual} virtual tokens + " if virtual else ""
        advice = f"ask for at most {fits} new tokens (max_new_tokens), or shorten the input" if fits > 0 else \
            f"no new token fits: shorten the input to at most {block_size - virtual} tokens"
        raise ValueError(f"{prompt}{longest} input tokens + {max_new_tokens} new tokens do not fit the context "
                         f"block_size={block_size}; {advice}")


def _choose(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
