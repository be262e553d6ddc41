"""The engine: every shortcut that exists for speed alone, in one place, off until asked for.

The reference model (`attention.py`, `block.py`, `model.py`) computes the math in order and
nothing else. The engine computes exactly the same function, faster, by the shortcuts
below. It is switched on by one call, where speed is asked for (where nanoGPT calls
`torch.compile`):

    engine.enable(model)                      # a MiniTransformer, or a method that wraps one
    engine.enable(model, policy=engine.acting_as("cuda"))   # the policy is an argument (tests)
    engine.disable(model)                     # the reference again

`enable` swaps the classes of the model, its blocks and their attention for the subclasses
that hold the shortcuts (same parameters, same state dict, same hooks): `engine_model.py`
(the model: masks, positions, placeholder rows, the last-block cut, the padded head, a deep
prompt as a prefix) and `engine_attention.py` (the block and attention that take those
paths); `disable` swaps them back. This file is the switch and the policy. The
reference never imports this file. tests/test_engine.py runs every shortcut and every
method with the engine on and off and compares logits and every trained parameter's gradient.

Which shortcut runs on which device, and why: `POLICY`, the one table. A shortcut runs
where the model's weights live when that device type is in its `on` set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .attention import CausalSelfAttention
from .block import Block
from .engine_attention import FastAttention, FastBlock
from .engine_model import FastMiniTransformer
from .model import MiniTransformer


@dataclass(frozen=True)
class Rule:
    on: frozenset[str]  # device types ("cpu", "cuda") where the shortcut runs
    why: str


BOTH, CPU, GPU = frozenset({"cpu", "cuda"}), frozenset({"cpu"}), frozenset({"cuda"})
POLICY: dict[str, Rule] = {
    "causal_kernel": Rule(BOTH, "without padding no (B, 1, T, S) mask is built: SDPA masks the causal square "
                                "itself (is_causal: the flash/cuDNN kernels on a GPU), one query needs no mask, "
                                "and anything else gets a small (T, S) lower-right mask"),
    "last_block_cut": Rule(BOTH, "the last block's output projection and MLP (9 C^2 of its 12 C^2 weights) run "
                                 "only from the first position whose logits are read"),
    "query_cut": Rule(CPU, "the last block attends from the read queries only: a CPU does less work; a GPU's "
                           "fused kernels are fastest on the whole causal square"),
    "vocab_padding": Rule(GPU, "the head padded to a multiple of 64 rows (with GPT-2's odd 50,257 cuBLAS falls "
                               "back to a ~3x slower kernel); a CPU gains nothing"),
    "prefix_rows": Rule(GPU, "a prefix rides in P placeholder rows and is attended as the plain causal square "
                             "(cuDNN's kernel); a CPU runs the lower-right mask as fast, without the extra rows"),
    "deep_prompt_as_prefix": Rule(BOTH, "prompts at every layer act only through the keys and values they make: "
                                        "computed for all layers at once (stacked weights), the P prompt "
                                        "positions need no queries, attention or MLP"),
}
ALL_ON = {name: Rule(BOTH, rule.why) for name, rule in POLICY.items()}


def acting_as(device_type: str, policy: Mapping[str, Rule] = POLICY) -> dict[str, Rule]:
    """What `policy` runs on `device_type`, run on every device: `acting_as("cuda")` runs the GPU's
    shortcuts on a CPU (how the tests check them without a GPU)."""
    return {name: Rule(BOTH if device_type in rule.on else frozenset(), rule.why) for name, rule in policy.items()}


def only(*names: str) -> dict[str, Rule]:
    """These shortcuts on every device, the others nowhere (to look at one shortcut alone)."""
    return {name: Rule(BOTH if name in names else frozenset(), rule.why) for name, rule in POLICY.items()}


def without(policy: Mapping[str, Rule], *names: str) -> dict[str, Rule]:
    """`policy` with the shortcuts `names` switched off everywhere (the benchmark's --disable)."""
    unknown = set(names) - set(POLICY)
    if unknown:
        raise ValueError(f"unknown shortcut(s) {sorted(unknown)}; the engine's shortcuts are {sorted(POLICY)}")
    return {name: Rule(frozenset(), rule.why) if name in names else rule for name, rule in policy.items()}


def base_of(model):
    """The MiniTransformer inside `model` (a method wraps it as `.base`)."""
    return model if isinstance(model, MiniTransformer) else model.base


def enable(model, policy: Mapping[str, Rule] = POLICY, padded_logits: bool = False):
    """Switch the engine on for `model` (a MiniTransformer or a method around one); returns `model`.

    `padded_logits=True` (a training loss that accepts them): where the head is padded, the
    extra logits stay, at -inf, instead of being cut off (see `FastMiniTransformer.head`).
    """
    unknown = set(policy) - set(POLICY)
    if unknown:
        raise ValueError(f"unknown shortcut(s) {sorted(unknown)}; the engine's shortcuts are {sorted(POLICY)}")
    base = base_of(model)
    base.__class__ = FastMiniTransformer
    base.policy = {name: policy.get(name, Rule(frozenset(), "")) for name in POLICY}
    base.padded_logits = padded_logits
    for block in base.blocks:
        block.__class__ = FastBlock
        block.attn.__class__ = FastAttention
    return model


def disable(model):
    """The reference path again; returns `model`."""
    base = base_of(model)
    if isinstance(base, FastMiniTransformer):
        base.__class__ = MiniTransformer
        del base.policy, base.padded_logits
        for block in base.blocks:
            block.__class__ = Block
            block.attn.__class__ = CausalSelfAttention
    return model


def is_enabled(model) -> bool:
    return isinstance(base_of(model), FastMiniTransformer)
