"""The model's math: attention paths agree, causality holds, the hooks do what they claim."""

from __future__ import annotations

import pytest
import torch
from conftest import ATOL

from minitransformer import KVCache, generate
from minitransformer.attention import attention_allowed


def random_ids(config, B=3, T=12, seed=1):
    return torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_explicit_attention_equals_sdpa(small_model, small_config):
    ids = random_ids(small_config)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # one left-padded row exercises the padding mask too
    small_model.set_attention_implementation(use_sdpa=True)
    fused = small_model(ids, attention_mask=mask)
    small_model.set_attention_implementation(use_sdpa=False)
    explicit = small_model(ids, attention_mask=mask)
    small_model.set_attention_implementation(use_sdpa=True)
    torch.testing.assert_close(fused[mask.bool()], explicit[mask.bool()], rtol=0, atol=ATOL)


def test_no_logit_depends_on_a_later_token(small_model, small_config):
    ids = random_ids(small_config, B=1, T=16)
    logits = small_model(ids)
    for t in range(15):
        changed = ids.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % small_config.vocab_size
        after = small_model(changed)
        # positions <= t see exactly the same tokens, so their logits are bitwise equal
        assert torch.equal(after[0, : t + 1], logits[0, : t + 1]), f"position <= {t} saw a later token"
        assert not torch.allclose(after[0, t + 1:], logits[0, t + 1:]), "the change had no effect at all"


def test_kv_cache_forward_equals_full_forward(small_model, small_config):
    ids = random_ids(small_config, T=10)
    full = small_model(ids)
    cache = KVCache()
    first = small_model(ids[:, :6], kv_cache=cache)
    rest = [small_model(ids[:, t:t + 1], kv_cache=cache) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, rtol=0, atol=ATOL)


def reference_greedy(model, ids, n):
    """Greedy decoding the slow, obvious way: the whole sequence through the model each step."""
    for _ in range(n):
        next_id = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_cached_generation_equals_full_forward_greedy(small_model, small_config):
    ids = random_ids(small_config, T=8)
    assert torch.equal(generate(small_model, ids, 10), reference_greedy(small_model, ids, 10))
    assert torch.equal(generate(small_model, ids, 10, use_cache=False), reference_greedy(small_model, ids, 10))


def test_left_padded_batch_generates_like_single_rows(small_model, small_config):
    long, short = random_ids(small_config, B=1, T=9, seed=2), random_ids(small_config, B=1, T=5, seed=3)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    out = generate(small_model, batch, 6, attention_mask=mask)
    assert torch.equal(out[0], generate(small_model, long, 6)[0])
    assert torch.equal(out[1, 4:], generate(small_model, short, 6)[0])


def test_sampling_is_reproducible_with_a_seeded_generator(small_model, small_config):
    ids = random_ids(small_config, T=4)
    a = generate(small_model, ids, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    b = generate(small_model, ids, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_zero_length_prefix_changes_nothing(small_model, small_config):
    ids = random_ids(small_config)
    c = small_config
    empty = [(torch.zeros(1, c.n_head, 0, c.head_dim), torch.zeros(1, c.n_head, 0, c.head_dim))] * c.n_layer
    assert torch.equal(small_model(ids, prefix_kv=empty), small_model(ids))


def keys_values_of(model, ids):
    """Each layer's keys and values for `ids`, read off the hidden states entering each block."""
    entering = []
    hooks = [b.register_forward_pre_hook(lambda _, args: entering.append(args[0])) for b in model.blocks]
    model(ids)
    for h in hooks:
        h.remove()
    return [block.attn.keys_values(block.ln_1(x)) for block, x in zip(model.blocks, entering)]


def test_prefix_of_real_tokens_equals_those_tokens_in_front(small_model, small_config):
    front, ids = random_ids(small_config, T=5, seed=4), random_ids(small_config, T=7, seed=5)
    prefix = keys_values_of(small_model, front)  # (B, H, 5, D) per layer
    with_prefix = small_model(ids, prefix_kv=prefix)  # positions start at P=5 by default
    in_front = small_model(torch.cat([front, ids], dim=1))[:, 5:]
    torch.testing.assert_close(with_prefix, in_front, rtol=0, atol=ATOL)


def test_a_prefix_on_some_layers_equals_the_blocks_run_by_hand(small_model, small_config):
    """A prefix on the middle layer only, in a padded batch, against the blocks called one by one
    with masks built for each (P prefix columns where the layer has a prefix, none where not).
    Planted: a layer without a prefix reading the mask's first S columns instead of its last S,
    or positions not starting at P."""
    c, P, T = small_config, 3, 6
    ids = random_ids(c, B=2, T=T, seed=7)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 left-padded
    g = torch.Generator().manual_seed(8)
    kv = tuple(torch.randn(1, c.n_head, P, c.head_dim, generator=g) for _ in range(2))
    prefix_kv = [None] * c.n_layer
    prefix_kv[1] = kv
    h = small_model.wte(ids) + small_model.wpe((mask.cumsum(1) - 1).clamp(min=0) + P)  # (B, T, C)
    for block, prefix in zip(small_model.blocks, prefix_kv):
        h = block(h, attention_allowed(mask, T, P if prefix is not None else 0), prefix)
    by_hand = small_model.head(small_model.ln_f(h))
    ours = small_model(ids, attention_mask=mask, prefix_kv=prefix_kv)
    torch.testing.assert_close(ours[mask.bool()], by_hand[mask.bool()], rtol=0, atol=ATOL)  # the real tokens


def test_hidden_prompt_at_layer_zero_equals_embedding_replacement(small_model, small_config):
    ids = random_ids(small_config, T=8)
    prompt = torch.randn(1, 3, small_config.d_model)
    prompts = [prompt] + [None] * (small_config.n_layer - 1)
    replaced = small_model(ids, hidden_prompts=prompts)
    # independently: the hidden state entering block 0 is wte + wpe, so feeding
    # (prompt - wpe) at the first 3 positions as input embeddings must give the same
    first = prompt.expand(3, -1, -1) - small_model.wpe(torch.arange(3))
    reference = small_model(inputs_embeds=torch.cat([first, small_model.wte(ids)[:, 3:]], dim=1))
    torch.testing.assert_close(replaced, reference, rtol=0, atol=ATOL)


def test_padding_does_not_change_real_tokens_logits(small_model, small_config):
    ids = random_ids(small_config, B=1, T=6)
    alone = small_model(ids)
    pad = torch.zeros(1, 3, dtype=torch.long)
    left = small_model(torch.cat([pad, ids], 1), attention_mask=torch.tensor([[0] * 3 + [1] * 6]))
    right = small_model(torch.cat([ids, pad], 1), attention_mask=torch.tensor([[1] * 6 + [0] * 3]))
    torch.testing.assert_close(left[:, 3:], alone, rtol=0, atol=ATOL)
    torch.testing.assert_close(right[:, :6], alone, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_ids": torch.tensor([[1, 2, 99]])}, "vocab_size"),
        ({"input_ids": torch.tensor([[1, -2, 3]])}, "vocab_size"),
        ({"input_ids": torch.ones(1, 40, dtype=torch.long)}, "block_size"),
        ({"input_ids": torch.tensor([1, 2, 3])}, "2-D"),
        ({"input_ids": torch.ones(1, 3)}, "integer"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 4)}, "attention_mask"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "inputs_embeds": torch.zeros(1, 3, 32)}, "exactly one"),
        ({"inputs_embeds": torch.zeros(1, 3, 31)}, "inputs_embeds"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long),
          "prefix_kv": [(torch.zeros(1, 4, 2, 5), torch.zeros(1, 4, 2, 5))] * 3}, "head_dim"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long),
          "prefix_kv": [(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))] * 2}, "one entry per layer"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long),
          "hidden_prompts": [torch.zeros(1, 5, 32)] * 3}, "placeholder"),
    ],
)
def test_bad_input_raises_a_clear_error(small_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_model(**kwargs)
