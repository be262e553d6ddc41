"""The methods really learn, on the frozen shipped base model (short runs, so CI stays fast).

The full-length numbers quoted in the README come from `python -m methods`; these runs are
shortened versions of the same claims, with the thresholds of the claims themselves.
"""

from __future__ import annotations

import importlib

import torch

from methods import PrefixTuningConfig, PrefixTuningModel, SoftPromptConfig, SoftPromptModel, TrainConfig, train
from methods.compare import task_name_text


def fingerprint_of(base):
    return {n: t.clone() for n, t in base.state_dict().items()}


def test_a_soft_prompt_recovers_a_task_whose_name_was_removed(base_model):
    before = fingerprint_of(base_model)
    model = SoftPromptModel(base_model, SoftPromptConfig(16, "RANDOM"))
    result = train(model, TrainConfig(task="rev", with_task_name=False, steps=60, lr=1e-1, eval_every=60,
                                      n_val=100, n_test=200), progress=False)
    assert result.initial_val_exact_match < 0.05  # without its name, the model does not know the task
    assert result.test_exact_match >= 0.95
    assert all(torch.equal(t, base_model.state_dict()[n]) for n, t in before.items())


def test_task_name_initialisation_starts_above_random(base_model):
    cfg = TrainConfig(task="rev", with_task_name=False, steps=1, lr=1e-9, eval_every=1, n_val=100, n_test=20)
    starts = {}
    for init, text in [("RANDOM", None), ("TEXT", task_name_text("rev", 16))]:
        model = SoftPromptModel(base_model, SoftPromptConfig(16, init, text))
        starts[init] = train(model, cfg, progress=False).initial_val_exact_match
    assert starts["TEXT"] > starts["RANDOM"] + 0.5, starts


def test_a_prefix_learns_a_held_out_task_with_under_3_percent_of_the_parameters(base_model):
    model = PrefixTuningModel(base_model, PrefixTuningConfig(16))
    result = train(model, TrainConfig(task="rsh", steps=STEPS_HELD_OUT, lr=2e-1, eval_every=STEPS_HELD_OUT,
                                      n_val=100, n_test=200), progress=False)
    assert result.trainable_params / result.base_params < 0.03
    assert result.initial_val_exact_match < 0.05
    assert result.test_exact_match >= 0.95


STEPS_HELD_OUT = 150


def test_the_run_seed_never_changes_the_data_split(base_model, monkeypatch):
    from minitransformer import sample_inputs

    train_module = importlib.import_module("methods.train")  # the module, not the `train` function

    seeds = []

    def spy(task, split, n, seed):
        seeds.append(seed)
        return sample_inputs(task, split, n, seed)

    monkeypatch.setattr(train_module, "sample_inputs", spy)
    model = SoftPromptModel(base_model, SoftPromptConfig(4))
    train(model, TrainConfig(task="rol", steps=1, seed=7, n_train=64, n_val=4, n_test=4, batch_size=4, eval_every=1),
          progress=False)
    assert seeds == [0, 0, 0]  # train, val and test come from the corpus's one split
