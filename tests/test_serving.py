"""Serving many tasks from one base model: a mixed batch equals its rows run alone, for every method.

The independent computation each time is the plainest one: the task's own prompt model
on that row's real tokens alone, batch of one, no padding. Tolerances: conftest.ATOL
(float32 summation order differs between a batch and a single row).
"""

from __future__ import annotations

import pytest
import torch
from conftest import ATOL, METHOD_FACTORIES, P
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from methods import (
    DeepPromptConfig,
    DeepPromptModel,
    FullFineTuneModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    PromptRegistry,
    SoftPromptConfig,
    SoftPromptModel,
    TrainConfig,
    save_prompt,
    train,
)
from methods.lora import LoRAModel
from minitransformer import generate

METHODS = {name: f for name, f in METHOD_FACTORIES.items() if not name.startswith("soft_prompt_")}
ROWS = [[5, 9, 2, 30, 7], [11, 3], [7, 3, 12, 19, 1, 4, 8], [5, 9, 2, 30, 7]]  # rows 0 and 3: same tokens
NAMES = ["task0", "task1", "task2", "task1"]  # ... different tasks
SLOW = settings(max_examples=20, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def base_stays_bitwise_unchanged(small_model):
    """Whatever a test does, the shared base model's weights come out bit for bit as they went in."""
    before = {n: t.clone() for n, t in small_model.state_dict().items()}
    yield
    assert all(torch.equal(t, small_model.state_dict()[n]) for n, t in before.items())


def registry_of(base, method, n_tasks=3, p=P) -> PromptRegistry:
    registry = PromptRegistry(base)
    for k in range(n_tasks):
        registry.add(f"task{k}", METHODS[method](base, seed=k, p=p))
    return registry


def pad(rows, lefts, width=None):
    """Row b at column lefts[b], padding (id 0, mask 0) around it: any mix of left and right padding."""
    width = width or max(len(r) + left for r, left in zip(rows, lefts))
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for b, (row, left) in enumerate(zip(rows, lefts)):
        ids[b, left:left + len(row)], mask[b, left:left + len(row)] = torch.tensor(row), 1
    return ids, mask


def assert_rows_equal_alone(registry, names, rows, ids, mask):
    logits = registry.forward(names, ids, mask)  # (B, T, V)
    for b, (name, row) in enumerate(zip(names, rows)):
        alone = registry.models[name](torch.tensor([row]))[0]  # (T_b, V): the task's own model, row alone
        torch.testing.assert_close(logits[b][mask[b].bool()], alone, rtol=0, atol=ATOL)
    return logits


# -- mixed batches -----------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_rows_equal_each_row_alone(method, side, small_model):
    registry = registry_of(small_model, method)
    width = max(map(len, ROWS))
    ids, mask = pad(ROWS, [width - len(r) if side == "left" else 0 for r in ROWS])
    logits = assert_rows_equal_alone(registry, NAMES, ROWS, ids, mask)
    real0, real3 = logits[0][mask[0].bool()], logits[3][mask[3].bool()]
    assert (real0 - real3).abs().max() > 100 * ATOL, "same tokens, different tasks: the prompts must matter"


@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_generates_like_each_row_alone(method, small_model):
    registry = registry_of(small_model, method)
    width = max(map(len, ROWS))
    ids, mask = pad(ROWS, [width - len(r) for r in ROWS])  # generation appends on the right: pad left
    out = registry.generate(NAMES, ids, 6, attention_mask=mask)
    uncached = registry.generate(NAMES, ids, 6, attention_mask=mask, use_cache=False)
    assert torch.equal(out, uncached)
    for b, (name, row) in enumerate(zip(NAMES, ROWS)):
        alone = generate(registry.models[name], torch.tensor([row]), 6)[0]
        assert torch.equal(out[b, width - len(row):], alone), f"row {b} ({name})"


@pytest.mark.parametrize("method", METHODS)
def test_mixed_batch_generation_makes_the_prompt_states_once(method, small_model, monkeypatch):
    registry = registry_of(small_model, method)
    calls = []
    for model in registry.models.values():
        make_state = model.prompt_state
        monkeypatch.setattr(model, "prompt_state", lambda make_state=make_state: calls.append(1) or make_state())
    ids, mask = pad(ROWS, [max(map(len, ROWS)) - len(r) for r in ROWS])
    registry.generate(NAMES, ids, 6, attention_mask=mask)
    assert len(calls) == 3  # one per task of the batch, on the first call; the 5 decoding steps reuse them


@pytest.mark.parametrize("method", METHODS)
def test_a_rows_logits_do_not_depend_on_its_padding(method, small_model):
    registry = registry_of(small_model, method, n_tasks=2)
    row = [7, 3, 12, 19]
    alone = registry.models["task1"](torch.tensor([row]))[0]
    ids, mask = pad([row] * 4, [0, 3, 1, 2], width=7)  # right-padded, left-padded, both sides
    logits = registry.forward(["task1"] * 4, ids, mask)
    for b in range(4):
        torch.testing.assert_close(logits[b][mask[b].bool()], alone, rtol=0, atol=ATOL)


def test_complete_decodes_each_rows_continuation(small_model, tokenizer):
    registry = registry_of(small_model, "soft_prompt", n_tasks=2)
    texts, names = ["abc=", "defgh="], ["task0", "task1"]
    answers = registry.complete(names, texts, 5)
    for text, name, answer in zip(texts, names, answers):
        ids = generate(registry.models[name], torch.tensor([tokenizer.encode(text)]), 5, eos_id=tokenizer.eos_id)
        assert answer == tokenizer.decode(ids[0, len(text):]).split(".")[0]


# -- property-based: random shapes, prompt lengths, batch sizes, padding ------------------------
@st.composite
def mixed_batches(draw, left_only=False):
    method = draw(st.sampled_from(sorted(METHODS)))
    p, n_tasks, B = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    rows = [draw(st.lists(st.integers(1, 40), min_size=1, max_size=8)) for _ in range(B)]
    names = [f"task{draw(st.integers(0, n_tasks - 1))}" for _ in range(B)]
    if left_only:
        width = max(map(len, rows)) + draw(st.integers(0, 2))
        lefts = [width - len(r) for r in rows]
    else:
        lefts = [draw(st.integers(0, 3)) for _ in range(B)]
    return method, p, n_tasks, names, rows, lefts


@SLOW
@given(case=mixed_batches())
def test_property_mixed_padded_batch_equals_rows_alone(case, small_model):
    method, p, n_tasks, names, rows, lefts = case
    registry = registry_of(small_model, method, n_tasks, p)
    ids, mask = pad(rows, lefts)  # row b starts at lefts[b]; shorter rows are right-padded too
    assert_rows_equal_alone(registry, names, rows, ids, mask)


@settings(SLOW, max_examples=15, derandomize=True)  # fixed examples: greedy ties can never make it flaky
@given(case=mixed_batches(left_only=True))
def test_property_mixed_batch_generation_equals_rows_alone(case, small_model):
    method, p, n_tasks, names, rows, lefts = case
    registry = registry_of(small_model, method, n_tasks, p)
    ids, mask = pad(rows, lefts)
    out = registry.generate(names, ids, 4, attention_mask=mask)
    for b, (name, row) in enumerate(zip(names, rows)):
        assert torch.equal(out[b, lefts[b]:], generate(registry.models[name], torch.tensor([row]), 4)[0])


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_saved_and_loaded_prompts_serve_identical_logits(method, small_model, tmp_path):
    registry = registry_of(small_model, method)
    loaded = PromptRegistry(small_model)
    for name in registry.names:
        method_name = registry.models[name].method_name
        loaded.load(name, save_prompt(registry.models[name], tmp_path / f"{name}.safetensors"), method_name)
    ids, mask = pad(ROWS, [0, 5, 0, 2])
    # the same numbers through the same operations: bit for bit (a collapsed prefix is the MLP's exact output)
    assert torch.equal(loaded.forward(NAMES, ids, mask), registry.forward(NAMES, ids, mask))


# -- refusals of the registry ------------------------------------------------------------------
@pytest.fixture
def mixed_registry(small_model):
    """Two soft prompts of length P, one of length P - 1, one prefix, two deep prompts of different depth."""
    registry = registry_of(small_model, "soft_prompt", n_tasks=2)
    registry.add("short", SoftPromptModel(small_model, SoftPromptConfig(P - 1)))
    registry.add("prefix", METHODS["prefix"](small_model, seed=0))
    registry.add("deep_all", DeepPromptModel(small_model, DeepPromptConfig(P)))
    registry.add("deep_two", DeepPromptModel(small_model, DeepPromptConfig(P, prompt_layers=2)))
    registry.add("prefix_bottom", PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_layers=(0,))))
    registry.add("prefix_top", PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_layers=(2,))))
    return registry


IDS, MASK = pad(ROWS[:2], [0, 0])
REGISTRY_REFUSALS = {  # name: (call on (registry, base), message)
    "unknown task": (lambda r, b: r.forward(["task0", "xyz"], IDS, MASK),
                     r"unknown task 'xyz' \(row 1\); known tasks: \['deep_all', 'deep_two', 'prefix', 'prefix_bottom', "
                     r"'prefix_top', 'short', 'task0', 'task1'\]"),
    "two methods": (lambda r, b: r.forward(["task0", "prefix"], IDS, MASK),
                    "one batch must use one method, but its tasks use .*split the batch by method"),
    "two prompt lengths": (lambda r, b: r.forward(["task0", "short"], IDS, MASK), "must have one shape"),
    "two depths": (lambda r, b: r.forward(["deep_all", "deep_two"], IDS, MASK), "must have one shape"),
    # the same state shape, (1, P, 2C), for another layer: planted, a batch that stacks them anyway
    "two layer sets": (lambda r, b: r.forward(["prefix_bottom", "prefix_top"], IDS, MASK),
                       r"must have one shape.*prefix_layers.*\(0,\).*prefix_layers.*\(2,\)"),
    "too few names": (lambda r, b: r.forward(["task0"], IDS, MASK), "got 1 task names for a batch of 2"),
    "one string": (lambda r, b: r.forward("task0", IDS, MASK), r"one task name per row, e.g. \['task0'\] \* 2"),
    "empty batch": (lambda r, b: r.forward([], IDS[:0], MASK[:0]), "empty batch"),
    "1-D input": (lambda r, b: r.forward(["task0"], IDS[0], MASK[0]), r"\(B, T\) tensor"),
    "a taken name": (lambda r, b: r.add("task0", METHODS["soft_prompt"](b, seed=5)), "already registered"),
    "an empty name": (lambda r, b: r.add("", METHODS["soft_prompt"](b, seed=5)), "non-empty string"),
    "full fine-tuning": (lambda r, b: r.add("ft", FullFineTuneModel(b)), "no prompt to serve"),
    "LoRA": (lambda r, b: r.add("lora", LoRAModel(b)), "no prompt to serve"),
    "another base": (lambda r, b: r.add("x", METHODS["soft_prompt"](type(b)(b.config), seed=0)),
                     "another base model object"),
}


@pytest.mark.parametrize("case", REGISTRY_REFUSALS)
def test_registry_refuses_what_it_cannot_serve(case, mixed_registry, small_model):
    call, message = REGISTRY_REFUSALS[case]
    with pytest.raises(ValueError, match=message):
        call(mixed_registry, small_model)


def test_registry_refuses_a_prompt_with_nan_or_inf(small_model):
    model = METHODS["soft_prompt"](small_model, seed=0)
    with torch.no_grad():
        model.prompt[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        PromptRegistry(small_model).add("x", model)


def test_mixing_p_tuning_encoders_is_allowed(small_model):
    """MLP and LSTM encoders are one method class with one (1, P, C) state: they share a batch."""
    registry = PromptRegistry(small_model)
    registry.add("mlp", METHODS["p_tuning_mlp"](small_model, seed=0))
    registry.add("lstm", METHODS["p_tuning_lstm"](small_model, seed=1))
    ids, mask = pad(ROWS[:2], [0, 3])
    assert_rows_equal_alone(registry, ["mlp", "lstm"], ROWS[:2], ids, mask)


# -- reproducibility -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["soft_prompt", "p_tuning_lstm", "deep_prompt", "prefix_projection"])
def test_same_seed_gives_the_same_loss_curve_bit_for_bit(method, small_model):
    cfg = TrainConfig(task="rev", steps=4, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=100,
                      n_train=32, n_val=4, n_test=4, seed=3)
    runs = []
    for _ in range(2):
        model = METHODS[method](small_model, seed=0)
        runs.append((train(model, cfg, progress=False).loss, model.prompt_state_dict()))
    (loss_a, prompt_a), (loss_b, prompt_b) = runs
    assert loss_a == loss_b and len(set(loss_a)) > 1  # equal floats, and the loss did move
    assert all(torch.equal(prompt_a[n], prompt_b[n]) for n in prompt_a)
