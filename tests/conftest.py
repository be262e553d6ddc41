"""Shared fixtures: a small random model for fast math checks, and the shipped base model."""

from __future__ import annotations

import pytest
import torch

from minitransformer import DEFAULT_CHECKPOINT, CharTokenizer, MiniTransformer, ModelConfig, load_checkpoint

# float32 sums the same numbers in a different order on different code paths (fused vs
# explicit attention, one concatenated sequence vs a prefix); at these sizes the logits
# then differ by ~1e-6. 1e-5 is tight enough that any real mistake (a wrong mask entry,
# a shifted position) shows up orders of magnitude larger.
ATOL = 1e-5


@pytest.fixture
def small_config() -> ModelConfig:
    return ModelConfig(vocab_size=41, block_size=32, d_model=32, n_layer=3, n_head=4)


@pytest.fixture
def small_model(small_config) -> MiniTransformer:
    torch.manual_seed(0)
    model = MiniTransformer(small_config).eval()
    with torch.no_grad():  # larger-than-init weights make attention patterns sharp, so bugs show
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def base_model() -> MiniTransformer:
    return load_checkpoint(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="session")
def tokenizer() -> CharTokenizer:
    return CharTokenizer()
