"""Load Hugging Face GPT-2 weights into our model.

Our architecture is GPT-2's (pre-LayerNorm blocks, learned positions, tanh-GELU, tied
head), with the same parameter names, so this file is a name map plus one twist: GPT-2
stores its linear layers as `Conv1D` modules whose weight is (in, out), the transpose of
`nn.Linear`'s (out, in).

Two uses:
- a check nobody here can fool: copy a randomly initialised `GPT2LMHeadModel` into our
  model and compare logits (tests/test_hf_parity.py);
- real weights: a user with GPT-2 on disk can run every prompt method on it.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .model import MiniTransformer

_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def config_from_gpt2(hf_config) -> ModelConfig:
    """Our ModelConfig for a `transformers.GPT2Config`, refusing variants we do not implement."""
    unsupported = {
        "activation_function": (hf_config.activation_function, "gelu_new"),
        "n_inner": (hf_config.n_inner, None),
        "scale_attn_weights": (hf_config.scale_attn_weights, True),
        "scale_attn_by_inverse_layer_idx": (hf_config.scale_attn_by_inverse_layer_idx, False),
        "reorder_and_upcast_attn": (hf_config.reorder_and_upcast_attn, False),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported and not (name == "n_inner" and value == 4 * hf_config.n_embd):
            raise ValueError(f"GPT2Config.{name}={value!r} is not supported (only {supported!r})")
    return ModelConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions, d_model=hf_config.n_embd,
        n_layer=hf_config.n_layer, n_head=hf_config.n_head, dropout=0.0, bias=True,
        layer_norm_eps=hf_config.layer_norm_epsilon,
    )


def our_name(hf_name: str) -> str:
    """`transformer.h.3.attn.c_attn.weight` -> `blocks.3.attn.c_attn.weight`."""
    name = hf_name.removeprefix("transformer.")
    return "blocks." + name[2:] if name.startswith("h.") else name


@torch.no_grad()
def from_gpt2(hf_model) -> MiniTransformer:
    """A MiniTransformer holding a copy of a `GPT2LMHeadModel`'s weights."""
    model = MiniTransformer(config_from_gpt2(hf_model.config))
    ours = model.state_dict()
    copied = set()
    for hf_name, tensor in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" or hf_name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the head is tied to wte; the others are fixed causal-mask buffers in old versions
        name = our_name(hf_name)
        if name not in ours:
            raise ValueError(f"GPT-2 parameter {hf_name} has no counterpart ({name}) in MiniTransformer")
        value = tensor.t() if hf_name.endswith(_TRANSPOSED) else tensor
        if value.shape != ours[name].shape:
            raise ValueError(f"{hf_name}: shape {tuple(value.shape)} does not fit {name} {tuple(ours[name].shape)}")
        ours[name].copy_(value)
        copied.add(name)
    if copied != set(ours):
        raise ValueError(f"GPT-2 weights left these parameters unset: {sorted(set(ours) - copied)}")
    return model.eval()
