"""Our model against `transformers`' GPT2LMHeadModel, an implementation nobody here wrote."""

from __future__ import annotations

import pytest
import torch
from conftest import ATOL
from transformers import GPT2Config, GPT2LMHeadModel

from minitransformer.hf_gpt2 import from_gpt2

SHAPES = [  # (vocab, positions, width, layers, heads)
    (41, 64, 32, 2, 4),
    (50, 32, 48, 3, 3),
    (101, 128, 64, 4, 8),
]


def random_gpt2(vocab, positions, width, layers, heads, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=width, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # random LayerNorm gains and biases, so every parameter matters
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_gpt2(shape):
    hf = random_gpt2(*shape)
    ours = from_gpt2(hf)
    ids = torch.randint(0, shape[0], (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_logits_match_gpt2_with_padding_mask(shape):
    hf = random_gpt2(*shape, seed=2)
    ours = from_gpt2(hf)
    ids = torch.randint(0, shape[0], (3, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 11:] = 0  # right padding
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # HF needs these spelled out for left padding
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask)  # our default positions are the same cumsum
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)


def test_unsupported_gpt2_variant_is_refused():
    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, activation_function="relu"))
    with pytest.raises(ValueError, match="activation_function"):
        from_gpt2(hf)
