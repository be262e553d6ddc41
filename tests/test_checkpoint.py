"""Checkpoints: a round trip keeps every bit; a checkpoint for another model is refused."""

from __future__ import annotations

import json

import pytest
import torch

from minitransformer import MiniTransformer, ModelConfig, load_checkpoint, load_weights, save_checkpoint
from minitransformer.checkpoint import WEIGHTS_FILE


def test_save_load_round_trip_is_exact(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path, {"note": "test"})
    loaded = load_checkpoint(tmp_path)
    assert loaded.config == small_model.config
    for (name, a), (_, b) in zip(small_model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    ids = torch.randint(0, 41, (2, 9))
    assert torch.equal(loaded(ids), small_model(ids))


def test_checkpoint_for_another_config_is_refused(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    other = MiniTransformer(ModelConfig(vocab_size=41, block_size=32, d_model=64, n_layer=3, n_head=4))
    with pytest.raises(ValueError, match="d_model"):
        load_weights(other, tmp_path)


def test_weights_that_contradict_their_config_are_refused(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    content = json.loads((tmp_path / "config.json").read_text())
    content["model_config"]["n_layer"] = 2
    (tmp_path / "config.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="unexpected"):
        load_checkpoint(tmp_path)


def test_a_pickle_is_never_loaded(small_model, tmp_path):
    save_checkpoint(small_model, tmp_path)
    torch.save(small_model.state_dict(), tmp_path / WEIGHTS_FILE)  # a pickle where safetensors belongs
    with pytest.raises(Exception, match="(?i)header|safetensor|deserializ"):
        load_checkpoint(tmp_path)


def test_missing_or_foreign_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_config": {"n_embd": 3}}))
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        load_checkpoint(tmp_path)
