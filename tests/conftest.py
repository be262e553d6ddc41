"""Shared fixtures: a small random model for fast math checks, and the shipped base model."""

from __future__ import annotations

import pytest
import torch

from methods import (
    DeepPromptConfig,
    DeepPromptModel,
    PrefixTuningConfig,
    PrefixTuningModel,
    PTuningConfig,
    PTuningModel,
    SoftPromptConfig,
    SoftPromptModel,
)
from minitransformer import DEFAULT_CHECKPOINT, CharTokenizer, MiniTransformer, ModelConfig, load_checkpoint

# float32 sums the same numbers in a different order on different code paths (fused vs
# explicit attention, one concatenated sequence vs a prefix); at these sizes the logits
# then differ by ~1e-6. 1e-5 is tight enough that any real mistake (a wrong mask entry,
# a shifted position) shows up orders of magnitude larger.
ATOL = 1e-5

P = 4  # prompt length of the small test instances
# One small instance of every prompt method variant: (base, seed, prompt length) -> model.
METHOD_FACTORIES = {
    "soft_prompt": lambda base, seed=0, p=P: SoftPromptModel(base, SoftPromptConfig(p, seed=seed)),
    "soft_prompt_text": lambda base, seed=0, p=P: SoftPromptModel(base, SoftPromptConfig(p, "TEXT", "rev:")),
    "soft_prompt_vocab": lambda base, seed=0, p=P: SoftPromptModel(base, SoftPromptConfig(p, "SAMPLE_VOCAB",
                                                                                          seed=seed)),
    "p_tuning_mlp": lambda base, seed=0, p=P: PTuningModel(base, PTuningConfig(p, "MLP", 16, seed=seed)),
    "p_tuning_lstm": lambda base, seed=0, p=P: PTuningModel(base, PTuningConfig(p, "LSTM", 16, seed=seed)),
    "deep_prompt": lambda base, seed=0, p=P: DeepPromptModel(base, DeepPromptConfig(p, seed=seed)),
    "prefix": lambda base, seed=0, p=P: PrefixTuningModel(base, PrefixTuningConfig(p, seed=seed)),
    "prefix_projection": lambda base, seed=0, p=P: PrefixTuningModel(
        base, PrefixTuningConfig(p, prefix_projection=True, encoder_hidden_size=16, seed=seed)),
}


@pytest.fixture
def small_config() -> ModelConfig:
    return ModelConfig(vocab_size=41, block_size=32, d_model=32, n_layer=3, n_head=4)


@pytest.fixture
def small_model(small_config) -> MiniTransformer:
    torch.manual_seed(0)
    return sharpened(MiniTransformer(small_config).eval())


def sharpened(model: MiniTransformer) -> MiniTransformer:
    """Larger-than-init weights make attention patterns sharp, so bugs show."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def base_model() -> MiniTransformer:
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="session")
def tokenizer() -> CharTokenizer:
    return CharTokenizer()
