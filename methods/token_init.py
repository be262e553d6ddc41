"""Starting a prompt from real tokens instead of noise.

Li & Liang (2021, §7.4) found that a prefix initialised with the activations of real words
trains better than a random one (in their low-data settings), and Lester et al. (2021, §3.2) that a soft prompt started
from vocabulary embeddings beats noise for smaller models. Two helpers serve every method
that does this (soft prompt, deep prompt, prefix tuning): draw P real token ids, and read
what the frozen model computes for them at every layer.
"""

from __future__ import annotations

import torch

from minitransformer import MiniTransformer


@torch.no_grad()
def activations_of_tokens(base: MiniTransformer, token_ids: torch.Tensor) -> tuple[list, list]:
    """Hidden states entering each block, and each block's keys/values, for a row of real tokens.

    Returns `hidden` (L entries of (P, C)) and `keys_values` (L pairs of (H, P, D)). Deep
    prompts and prefixes can start from these instead of noise: Li & Liang (2021, §7.4)
    found that initialising a prefix with the activations of real words trains better.
    """
    entering = []
    hooks = [b.register_forward_pre_hook(lambda _, args: entering.append(args[0])) for b in base.blocks]
    try:
        base(token_ids[None])
    finally:
        for h in hooks:
            h.remove()
    kvs = [b.attn.keys_values(b.ln_1(x)) for b, x in zip(base.blocks, entering)]
    return [x[0] for x in entering], [(k[0], v[0]) for k, v in kvs]


def sample_token_ids(base: MiniTransformer, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n random ids of real (non-padding) tokens: id 0 is `<pad>` in our tokenizer."""
    return torch.randint(1, base.config.vocab_size, (n,), generator=generator).to(base.wte.weight.device)
