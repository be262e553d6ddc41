"""Claims the suite did not protect; each test fails on a planted bug.

Each of these claims was checked by nothing, by one test only, or only by the slow training
tests, so a bug planted against it went unnoticed. Every test here runs in well under a
second and names, in its docstring, the planted bug it was seen to catch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ATOL, METHOD_FACTORIES, P, sharpened
from torch import nn

from methods import (
    DeepPromptConfig,
    DeepPromptModel,
    FullFineTuneModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    SoftPromptConfig,
    SoftPromptModel,
    TrainConfig,
    check_freezing,
)
from methods.lora import LoRAConfig, LoRAModel
from methods.train import answer_loss, make_optimizer
from minitransformer import CharTokenizer, MiniTransformer, ModelConfig
from minitransformer.attention import causal_mask
from minitransformer.data import IGNORE_INDEX, example_batch

ALL_METHODS = {**METHOD_FACTORIES,
               "lora": lambda base, seed=0, p=P: LoRAModel(base, LoRAConfig(r=2, seed=seed)),
               "full_finetune": lambda base, seed=0, p=P: FullFineTuneModel(base)}
PROMPT_METHODS = [name for name in ALL_METHODS if name != "full_finetune"]  # the base stays frozen


def batch(with_name=False):
    return example_batch(CharTokenizer(), "rev", ["abc", "defgh", "xyzzy", "mn"], with_name)


# -- the base stays in eval mode while a prompt trains ---------------------------------------


@pytest.fixture
def dropout_base(small_config) -> MiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(**{**small_config.to_dict(), "dropout": 0.5})
    return sharpened(MiniTransformer(config).eval())


def test_a_dropout_base_is_random_in_training_mode(dropout_base):
    """The premise of the test below: with dropout 0.5, a base in training mode is not deterministic."""
    ids, mask, _ = batch()
    dropout_base.train()
    assert not torch.equal(dropout_base(ids, attention_mask=mask), dropout_base(ids, attention_mask=mask))
    dropout_base.eval()


@pytest.mark.parametrize("name", PROMPT_METHODS)
def test_prompt_training_keeps_the_base_in_eval_mode(name, dropout_base):
    """Planted: `PromptModel.train` without its `self.base.eval()` (the base then trains with dropout on)."""
    model = ALL_METHODS[name](dropout_base)
    ids, mask, _ = batch()
    model.eval()
    with torch.no_grad():
        evaluated = model(ids, mask)
    model.train()
    assert model.training
    assert [n for n, m in model.base.named_modules() if m.training] == []
    with torch.no_grad():
        first, second = model(ids, mask), model(ids, mask)
    assert torch.equal(first, second)
    assert torch.equal(first, evaluated)


def test_full_fine_tuning_does_train_its_copy_with_dropout(dropout_base):
    """The exception: full fine-tuning trains its copied base itself, so there train mode should turn
    dropout on (it is an ordinary model being fine-tuned); it is left out of the test above."""
    model = FullFineTuneModel(dropout_base)
    ids, mask, _ = batch()
    model.train()
    assert model.base.training
    with torch.no_grad():
        assert not torch.equal(model(ids, mask), model(ids, mask))
    assert not dropout_base.training  # the shared base it was copied from is untouched


# -- each alarm of the freezing check fires on its own --------------------------------------


def alarms(report):
    return {"requires_grad_outside_prompt": report.requires_grad_outside_prompt,
            "base_with_gradient": report.base_with_gradient, "base_changed": report.base_changed,
            "prompt_unchanged": report.prompt_unchanged}


def only(**fired):
    return {**{name: [] for name in ("requires_grad_outside_prompt", "base_with_gradient", "base_changed",
                                     "prompt_unchanged")}, **fired}


def test_freezing_check_passes_a_correct_method(small_model):
    report = check_freezing(METHOD_FACTORIES["p_tuning_mlp"](small_model), batch(), steps=1)
    assert report.ok and alarms(report) == only()


def test_freezing_alarm_requires_grad_outside_the_prompt_fires_alone(small_model):
    """Planted: `outside = []` in check_freezing (the alarm switched off)."""
    model = METHOD_FACTORIES["soft_prompt"](small_model)
    model.base.register_parameter("stray", nn.Parameter(torch.zeros(3)))  # trainable, outside, never used
    report = check_freezing(model, batch(), steps=1)
    assert not report.ok
    assert alarms(report) == only(requires_grad_outside_prompt=["base.stray"])


def test_freezing_alarms_name_a_base_weight_left_trainable(small_model):
    """A base weight left with requires_grad: alarm 1 names it, and alarm 2 (it got a gradient);
    the base does not change, since the optimizer holds only the prompt.
    Planted: either alarm switched off in check_freezing."""
    model = METHOD_FACTORIES["soft_prompt"](small_model)
    model.base.blocks[1].ln_2.weight.requires_grad_(True)
    report = check_freezing(model, batch(), steps=1)
    assert not report.ok
    assert alarms(report) == only(requires_grad_outside_prompt=["base.blocks.1.ln_2.weight"],
                                  base_with_gradient=["blocks.1.ln_2.weight"])


def test_freezing_alarm_base_with_gradient_fires_alone(small_model):
    """A method that unfreezes a base weight inside its forward (after the requires_grad check ran).
    Planted: `base_with_gradient=[]` in check_freezing."""
    model = METHOD_FACTORIES["prefix"](small_model)

    def unfreeze(module, args):
        module.base.ln_f.weight.requires_grad_(True)
    model.register_forward_pre_hook(unfreeze)
    report = check_freezing(model, batch(), steps=1)
    assert not report.ok
    assert alarms(report) == only(base_with_gradient=["ln_f.weight"])


def test_freezing_alarm_base_changed_fires_alone(small_model):
    """A method that writes into a base weight in its forward. Planted: `base_changed=[]` in check_freezing."""
    model = METHOD_FACTORIES["deep_prompt"](small_model)

    def nudge(module, args):
        with torch.no_grad():
            module.base.blocks[0].attn.c_proj.bias.add_(1e-3)
    model.register_forward_pre_hook(nudge)
    report = check_freezing(model, batch(), steps=1)
    assert not report.ok
    assert alarms(report) == only(base_changed=["blocks.0.attn.c_proj.bias"])


def test_freezing_alarm_prompt_unchanged_fires_alone(small_model):
    """Planted: `prompt_unchanged=[]` in check_freezing."""
    model = METHOD_FACTORIES["p_tuning_mlp"](small_model)
    model.prompt_encoder.mlp_head[2].bias.requires_grad_(False)  # one prompt parameter frozen by mistake
    report = check_freezing(model, batch(), steps=1)
    assert not report.ok
    assert alarms(report) == only(prompt_unchanged=["prompt_encoder.mlp_head.2.bias"])


# -- a partial deep prompt sits on the bottom layers -----------------------------------------


def deep_prompt_by_hand(model: DeepPromptModel, ids: torch.Tensor) -> torch.Tensor:
    """The layerwise deep prompt written out, independent of the model's forward: embed, add
    positions, and before each block l in 1..k-1 replace h[:, :P] with that layer's prompt."""
    base, prompts = model.base, model.prompts  # (k, P, C)
    k, P_, _ = prompts.shape
    B, T = ids.shape
    h = torch.cat([prompts[0].expand(B, -1, -1), base.wte(ids)], dim=1)  # layer 0: prepended
    h = h + base.wpe(torch.arange(P_ + T))
    for layer, block in enumerate(base.blocks):
        if 1 <= layer < k:
            h = torch.cat([prompts[layer].expand(B, -1, -1), h[:, P_:]], dim=1)
        h = block(h, causal_mask(P_ + T, P_ + T))  # no padding: plain causal attention
    return (base.ln_f(h) @ base.wte.weight.T)[:, P_:]


@pytest.fixture
def four_layer_model(small_config) -> MiniTransformer:
    torch.manual_seed(1)
    return sharpened(MiniTransformer(ModelConfig(**{**small_config.to_dict(), "n_layer": 4})).eval())


@pytest.mark.parametrize("as_prefix", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_a_deep_prompt_of_k_layers_sits_on_the_bottom_k(k, as_prefix, four_layer_model):
    """Planted: hooks_for placing the k layers' prompts on the top layers (`[None] * (L - k) + prompts`)."""
    model = DeepPromptModel(four_layer_model, DeepPromptConfig(P, prompt_layers=k, as_prefix=as_prefix, seed=k))
    with torch.no_grad():
        model.prompts.add_(torch.randn(model.prompts.shape, generator=torch.Generator().manual_seed(5)))
    ids = torch.randint(1, 41, (2, 7), generator=torch.Generator().manual_seed(k))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), deep_prompt_by_hand(model, ids), rtol=0, atol=ATOL)


# -- prompts "from real tokens" are those tokens in front, at initialisation ------------------


def sampled_tokens(base: MiniTransformer, seed: int) -> torch.Tensor:
    """The P token ids a method with this seed draws (written out, not through token_init)."""
    return torch.randint(1, base.config.vocab_size, (P,), generator=torch.Generator().manual_seed(seed))


REAL_TOKEN_INITS = {
    "prefix": lambda base, seed: PrefixTuningModel(base, PrefixTuningConfig(P, seed=seed)),
    "deep_prompt": lambda base, seed: DeepPromptModel(base, DeepPromptConfig(P, seed=seed)),
    "deep_prompt_layerwise": lambda base, seed: DeepPromptModel(base, DeepPromptConfig(P, as_prefix=False,
                                                                                       seed=seed)),
    "deep_prompt_2_layers": lambda base, seed: DeepPromptModel(base, DeepPromptConfig(P, prompt_layers=2,
                                                                                      seed=seed)),
    "soft_prompt_vocab": lambda base, seed: SoftPromptModel(base, SoftPromptConfig(P, "SAMPLE_VOCAB", seed=seed)),
}


@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("name", REAL_TOKEN_INITS)
def test_a_prompt_from_real_tokens_starts_as_those_tokens_in_front(name, seed, small_model):
    """Planted: the prefix's (L, 2, H, P, D) activations flattened in another layout (heads before
    k/v); the deep prompt's hidden states taken one layer too high; both still train to 95%."""
    model = REAL_TOKEN_INITS[name](small_model, seed)
    front = sampled_tokens(small_model, seed)
    ids = torch.randint(1, 41, (3, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[2, 4:] = 0  # right padding
    with torch.no_grad():
        expected = small_model(torch.cat([front.expand(3, -1), ids], dim=1),
                               attention_mask=torch.cat([torch.ones(3, P, dtype=torch.long), mask], dim=1))[:, P:]
        got = model(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)


# -- folding a trained encoder away keeps the logits -----------------------------------------


def trained(model, steps=3, lr=0.1):
    """A few large AdamW steps, so the encoder is far from its initialisation."""
    params = [p for p in model.prompt_parameters().values() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        answer_loss(model, batch()).backward()
        optimizer.step()
    return model


def test_collapsing_a_trained_prefix_mlp_keeps_the_logits(small_model):
    """Planted: collapse() keeping the prefix the MLP gave at construction (right for an untrained MLP only)."""
    model = METHOD_FACTORIES["prefix_projection"](small_model)
    ids, mask, _ = batch()
    with torch.no_grad():
        initial = model(ids, mask)
    trained(model)
    with torch.no_grad():
        before = model(ids, mask)
        assert (before - initial).abs().max() > 0.1  # training moved it
        model.collapse()
        assert not hasattr(model, "transform")
        torch.testing.assert_close(model(ids, mask), before, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["p_tuning_mlp", "p_tuning_lstm"])
def test_folding_a_trained_p_tuning_encoder_keeps_the_logits(name, small_model):
    """Planted: to_soft_prompt() running a freshly seeded encoder (right for an untrained one only)."""
    model = METHOD_FACTORIES[name](small_model)
    ids, mask, _ = batch()
    with torch.no_grad():
        initial = model(ids, mask)
    trained(model)
    with torch.no_grad():
        before = model(ids, mask)
        assert (before - initial).abs().max() > 0.1
        torch.testing.assert_close(model.to_soft_prompt()(ids, mask), before, rtol=0, atol=ATOL)


# -- the loss grades the answer only; the optimizer holds the method's parameters only --------


def graded_cross_entropy(model, input_ids, attention_mask, labels):
    """Cross-entropy over the graded labels only, from the full logits (independent of answer_loss)."""
    graded = labels != IGNORE_INDEX
    logits = model(input_ids, attention_mask)  # (B, T, V)
    return F.cross_entropy(logits[graded], labels[graded])


@pytest.mark.parametrize("name", ALL_METHODS)
def test_the_loss_is_cross_entropy_over_the_graded_labels_only(name, small_model):
    """Planted: answer_loss reading the logits one position off (`graded.roll(1, 1)`), and averaging over
    every position of the batch instead of the graded ones."""
    model = ALL_METHODS[name](small_model)
    ids, mask, labels = batch(with_name=True)
    assert 0 < int((labels != IGNORE_INDEX).sum()) < int(mask.sum())  # some real tokens are not graded
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(model, (ids, mask, labels)),
                                   graded_cross_entropy(model, ids, mask, labels), rtol=0, atol=1e-6)


def test_the_loss_reads_graded_labels_and_nothing_else(small_model):
    """Changing a graded label changes the loss; ungrading a label removes exactly that position; the ids
    at padding positions change nothing.
    Planted: answer_loss taking its targets from input_ids shifted by one instead of from labels."""
    model = METHOD_FACTORIES["soft_prompt"](small_model)
    ids, mask, labels = batch()
    loss = answer_loss(model, (ids, mask, labels))
    row, col = (labels != IGNORE_INDEX).nonzero()[0].tolist()
    changed = labels.clone()
    changed[row, col] = (labels[row, col] + 1) % 41
    assert not torch.allclose(answer_loss(model, (ids, mask, changed)), loss)
    ungraded = labels.clone()
    ungraded[row, col] = IGNORE_INDEX
    torch.testing.assert_close(answer_loss(model, (ids, mask, ungraded)),
                               graded_cross_entropy(model, ids, mask, ungraded), rtol=0, atol=1e-6)
    assert not torch.allclose(answer_loss(model, (ids, mask, ungraded)), loss)
    padded = ids.clone()
    padded[mask == 0] = 7  # the padding's ids (right padding: after every graded position)
    torch.testing.assert_close(answer_loss(model, (padded, mask, labels)), loss, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_the_optimizer_holds_exactly_the_methods_parameters(name, small_model):
    """Planted: make_optimizer over every parameter with requires_grad (`model.parameters()`), and over all
    but the last prompt parameter."""
    model = ALL_METHODS[name](small_model)
    model.base.ln_f.weight.requires_grad_(True)  # a base weight left trainable by mistake stays out
    optimizer = make_optimizer(model, TrainConfig())
    held = [p for group in optimizer.param_groups for p in group["params"]]
    expected = [p for p in model.prompt_parameters().values() if p.requires_grad]
    assert len({id(p) for p in held}) == len(held)  # no parameter twice
    assert {id(p) for p in held} == {id(p) for p in expected}
    if name != "full_finetune":
        assert all(p is not model.base.ln_f.weight for p in held)
        assert not any(n.startswith("base.") for n in model.prompt_parameters())
