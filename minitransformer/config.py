"""The shape of the model, in one dataclass.

Every size the model has is a field here, so a checkpoint is fully described by this
dataclass plus its weights (saved as JSON beside the safetensors file). The defaults are
the shipped toy base model: about 0.8M parameters, small enough to pretrain on a laptop
CPU in minutes and big enough to learn the synthetic tasks in `data.py` perfectly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 41  # characters of the toy corpus, padding included (see tokenizer.py)
    block_size: int = 128  # context length: the most positions one sequence may use
    d_model: int = 128  # width of the residual stream, C in the shape comments
    n_layer: int = 4  # number of Transformer blocks, L
    n_head: int = 4  # attention heads per block, H; d_model must divide evenly
    dropout: float = 0.0  # the toy tasks need none; kept so the knob is visible
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2
    layer_norm_eps: float = 1e-5  # GPT-2's value; needed for exact parity with it

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "d_model", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                "choose n_head so every head gets d_model // n_head dimensions"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head, D in the shape comments."""
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; is this a config for another model?")
        return cls(**values)
