"""Each method's math and bookkeeping: freezing, parameter counts, equivalences, padding, caching, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ATOL, METHOD_FACTORIES, P

from methods import (
    DeepPromptConfig,
    DeepPromptModel,
    FullFineTuneModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    PTuningConfig,
    SoftPromptConfig,
    SoftPromptModel,
    check_freezing,
    load_prompt,
    save_prompt,
)
from methods.lora import LoRAConfig, LoRAModel
from methods.token_init import activations_of_tokens
from minitransformer import CharTokenizer, generate
from minitransformer.data import example_batch

FACTORIES = METHOD_FACTORIES


def batch(with_name=False):
    return example_batch(CharTokenizer(), "rev", ["abc", "defgh", "xyzzy", "mn"], with_name)


@pytest.mark.parametrize("name", FACTORIES)
def test_only_the_prompt_trains(name, small_model):
    model = FACTORIES[name](small_model)
    report = check_freezing(model, batch(), steps=3)
    assert report.ok, str(report)
    assert all(not n.startswith("base.") for n in report.prompt_parameters)


def test_the_freezing_check_catches_full_fine_tuning(small_model):
    original = {n: t.clone() for n, t in small_model.state_dict().items()}
    report = check_freezing(FullFineTuneModel(small_model), batch(), steps=1)
    assert not report.ok and report.base_changed  # the check sees the trained weights change ...
    assert all(torch.equal(t, small_model.state_dict()[n]) for n, t in original.items())  # ... of a copy


def test_parameter_counts_match_the_closed_forms(small_model):
    c = small_model.config
    C, L, h = c.d_model, c.n_layer, 16
    counts = {name: sum(p.numel() for p in f(small_model).prompt_parameters().values())
              for name, f in FACTORIES.items()}
    assert counts["soft_prompt"] == P * C
    assert counts["deep_prompt"] == P * C * L
    assert counts["prefix"] == P * 2 * C * L
    mlp = P * C + (C * h + h) + (h * h + h) + (h * C + C)
    assert counts["p_tuning_mlp"] == mlp
    lstm_layer = lambda inp: 2 * (4 * h * inp + 4 * h * h + 8 * h)  # two directions, W_ih, W_hh, two biases
    lstm = P * C + lstm_layer(C) + lstm_layer(2 * h) + (2 * h * 2 * h + 2 * h) + (2 * h * C + C)
    assert counts["p_tuning_lstm"] == lstm
    assert counts["prefix_projection"] == P * C + (C * h + h) + (h * 2 * C * L + 2 * C * L)
    model = FACTORIES["prefix_projection"](small_model)
    model.collapse()
    assert sum(p.numel() for p in model.prompt_parameters().values()) == P * 2 * C * L
    total = small_model.num_parameters() + P * C
    assert FACTORIES["soft_prompt"](small_model).trainable_parameters_summary() == (
        f"trainable params: {P * C:,} || all params: {total:,} || trainable%: {100 * P * C / total:.4f}")


def test_deep_prompt_without_its_later_layers_is_the_soft_prompt(small_model):
    deep = DeepPromptModel(small_model, DeepPromptConfig(P, prompt_layers=1))
    soft = SoftPromptModel(small_model, SoftPromptConfig(P))
    with torch.no_grad():
        soft.prompt.copy_(deep.prompts[0])
    ids, mask, _ = batch()
    assert torch.equal(deep(ids, mask), soft(ids, mask))
    full_deep = DeepPromptModel(small_model, DeepPromptConfig(P))
    assert not torch.allclose(full_deep(ids, mask), deep(ids, mask)), "later-layer prompts must matter"


def test_collapsed_prefix_gives_the_same_logits(small_model):
    model = FACTORIES["prefix_projection"](small_model)
    ids, mask, _ = batch()
    before = model(ids, mask)
    model.collapse()
    assert not hasattr(model, "transform") and not model.config.prefix_projection
    torch.testing.assert_close(model(ids, mask), before, rtol=0, atol=ATOL)


def test_prefix_of_real_tokens_equals_those_tokens_in_front(small_model):
    front = torch.tensor([5, 9, 2, 30])
    model = PrefixTuningModel(small_model, PrefixTuningConfig(P))
    _, kvs = activations_of_tokens(small_model, front)
    stacked = torch.stack([torch.stack(kv) for kv in kvs])  # (L, 2, H, P, D)
    with torch.no_grad():
        model.embedding.weight.copy_(stacked.permute(3, 0, 1, 2, 4).reshape(P, -1))
    ids = torch.tensor([[7, 3, 12, 19, 1, 4]])
    expected = small_model(torch.cat([front[None], ids], dim=1))[:, P:]
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", FACTORIES)
def test_padded_batch_rows_equal_unpadded_rows(name, small_model):
    model = FACTORIES[name](small_model)
    tok = CharTokenizer()
    texts = ["abc=cba", "defgh=hgfed", "m=m"]
    for side in ("left", "right"):
        ids, mask = tok.batch_encode(texts, pad_side=side)
        logits = model(ids, mask)
        for i, text in enumerate(texts):
            alone = model(torch.tensor([tok.encode(text)]))[0]
            torch.testing.assert_close(logits[i][mask[i].bool()], alone, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", FACTORIES)
def test_cached_generation_equals_uncached(name, small_model):
    model = FACTORIES[name](small_model).eval()
    ids, mask = CharTokenizer().batch_encode(["abc=", "defgh="], pad_side="left")
    cached = generate(model, ids, 6, attention_mask=mask)
    assert torch.equal(cached, generate(model, ids, 6, attention_mask=mask, use_cache=False))


@pytest.mark.parametrize("name", FACTORIES)
def test_save_and_load_round_trip(name, small_model, tmp_path):
    model = FACTORIES[name](small_model)
    check_freezing(model, batch(), steps=1)  # move the prompt away from its initialisation
    path = save_prompt(model, tmp_path / "prompt.safetensors")
    assert path.stat().st_size < 64_000
    loaded = load_prompt(small_model, path)
    ids, mask, _ = batch()
    torch.testing.assert_close(loaded(ids, mask), model(ids, mask), rtol=0, atol=ATOL)


def test_loading_refuses_mismatches(small_model, tmp_path):
    path = save_prompt(FACTORIES["soft_prompt"](small_model), tmp_path / "p.safetensors")
    other = type(small_model)(small_model.config)  # same shape, different weights
    with pytest.raises(ValueError, match="trained for base model"):
        load_prompt(other, path)
    with pytest.raises(ValueError, match="not 'prefix_tuning'"):
        load_prompt(small_model, path, method="prefix_tuning")
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="damaged"):
        load_prompt(small_model, tmp_path / "bad.safetensors")


def test_bad_configs_are_refused(small_model):
    with pytest.raises(ValueError, match="prompt_tuning_init_text"):
        SoftPromptConfig(P, "TEXT")
    with pytest.raises(ValueError, match="one of"):
        PTuningConfig(P, "GRU")
    with pytest.raises(ValueError, match="prompt_layers"):
        DeepPromptModel(small_model, DeepPromptConfig(P, prompt_layers=9))
    with pytest.raises(ValueError, match="no room"):
        SoftPromptModel(small_model, SoftPromptConfig(small_model.config.block_size))
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        SoftPromptConfig(0)


@pytest.mark.parametrize("name", ["p_tuning_mlp", "p_tuning_lstm"])
def test_p_tuning_folds_into_a_soft_prompt_with_the_same_logits(name, small_model):
    model = METHOD_FACTORIES[name](small_model)
    check_freezing(model, batch(), steps=1)  # move the encoder away from its initialisation
    soft = model.to_soft_prompt()
    ids, mask, _ = batch()
    torch.testing.assert_close(soft(ids, mask), model(ids, mask), rtol=0, atol=ATOL)
    assert sum(p.numel() for p in soft.prompt_parameters().values()) == P * small_model.config.d_model


def test_a_one_layer_deep_prompt_starts_as_the_vocabulary_soft_prompt(small_model):
    deep = DeepPromptModel(small_model, DeepPromptConfig(P, prompt_layers=1, seed=3))
    soft = SoftPromptModel(small_model, SoftPromptConfig(P, "SAMPLE_VOCAB", seed=3))
    assert torch.equal(deep.prompts[0], soft.prompt)


def test_lora_starts_at_the_base_model_and_trains_only_its_matrices(small_model):
    model = LoRAModel(small_model, LoRAConfig(r=2))
    ids, mask, _ = batch()
    assert torch.equal(model(ids, mask), small_model(ids, attention_mask=mask))  # B = 0, so W' = W exactly
    report = check_freezing(model, batch(), steps=2)
    assert report.ok, str(report)
    C, L, r = small_model.config.d_model, small_model.config.n_layer, 2
    per_layer = r * (C + 3 * C) + r * (C + C)  # c_attn: (3C, C); c_proj: (C, C); each gets A (r, in) and B (out, r)
    assert sum(report.prompt_parameters.values()) == L * per_layer


def test_lora_equals_the_base_with_its_update_merged_into_the_weights(small_model):
    model = LoRAModel(small_model, LoRAConfig(r=2))
    check_freezing(model, batch(), steps=2)  # B moves away from zero
    merged = copy.deepcopy(small_model)
    with torch.no_grad():
        for name, W in model.merged_weights().items():
            merged.get_parameter(name).copy_(W)
    ids, mask, _ = batch()
    torch.testing.assert_close(model(ids, mask), merged(ids, attention_mask=mask), rtol=0, atol=ATOL)
    assert not torch.allclose(model(ids, mask), small_model(ids, attention_mask=mask))
