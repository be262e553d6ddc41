"""The engine computes exactly what the reference computes: every shortcut, every method.

One matrix: for each policy (each shortcut alone, made to run on this CPU, all of them, the
CPU's and the GPU's columns of `engine.POLICY`), each method and each kind of input (padded,
with the loss's bool mask; unpadded, with the last n positions), the logits and every trained
parameter's gradient with the engine on equal those of the reference. The policy is an
argument of `engine.enable`, so the GPU's shortcuts run here on a CPU; nothing is monkeypatched.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import ATOL, METHOD_FACTORIES, P

from methods import FullFineTuneModel, PrefixTuningConfig, PrefixTuningModel
from methods.lora import LoRAModel
from minitransformer import CharTokenizer, engine, generate
from minitransformer.data import IGNORE_INDEX, example_batch
from minitransformer.engine import BOTH, POLICY, Rule, only

# a prefix rides in placeholder rows only where attention masks causally itself
POLICIES = {name: only(name, "causal_kernel") if name == "prefix_rows" else only(name) for name in POLICY}
POLICIES.update({"all": engine.ALL_ON, "cpu": engine.acting_as("cpu"), "gpu": engine.acting_as("cuda")})
METHODS = {**METHOD_FACTORIES, "lora": lambda base: lora_with_update(base), "full_finetune": FullFineTuneModel,
           # a prefix on layers 0 and 2 only: layer 1 attends without the P prefix columns
           "prefix_some_layers": lambda base: PrefixTuningModel(base, PrefixTuningConfig(P, prefix_layers=(0, 2)))}


def lora_with_update(base):
    model = LoRAModel(base)
    with torch.no_grad():
        for B in model.lora_B.values():
            B.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))  # a non-zero update: B's gradient is
    return model  # not the only one that matters


def inputs(kind):
    """(ids, mask, logits_to_keep, targets of the kept logits)."""
    ids, mask, labels = example_batch(CharTokenizer(), "rev", ["abc", "defgh", "xyzzy", "mn"], False)
    if kind == "padded":
        keep = labels != IGNORE_INDEX
        return ids, mask, keep, labels[keep]
    ids = ids[:, -6:]  # every row unpadded
    return ids, None, 3, ids[:, -3:].roll(-1, 1)


def logits_and_gradients(model, ids, mask, keep, targets):
    model.zero_grad()
    logits = model(ids, mask, logits_to_keep=keep)
    torch.nn.functional.cross_entropy(logits.flatten(0, -2), targets.flatten()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


@pytest.mark.parametrize("kind", ["padded", "unpadded"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("policy", POLICIES)
def test_engine_equals_reference(small_model, policy, method, kind):
    model = METHODS[method](small_model)
    batch = inputs(kind)
    reference = logits_and_gradients(model, *batch)
    engine.enable(model, policy=POLICIES[policy])
    fast = logits_and_gradients(model, *batch)
    engine.disable(model)
    torch.testing.assert_close(fast[0], reference[0], rtol=0, atol=ATOL)
    assert fast[1].keys() == reference[1].keys() and reference[1]
    for name, grad in reference[1].items():
        assert grad.abs().max() > 0, name  # a gradient that is there to compare
        torch.testing.assert_close(fast[1][name], grad, rtol=0, atol=ATOL, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_engine_generates_what_the_reference_generates(small_model, method):
    model = METHODS[method](small_model).eval()
    prompt = torch.tensor([CharTokenizer().encode("abc="), CharTokenizer().encode("xyz=")])
    reference = generate(model, prompt, 6)
    engine.enable(model, policy=engine.ALL_ON)
    assert torch.equal(generate(model, prompt, 6), reference)


def test_enable_and_disable_leave_the_parameters_alone(small_model):
    before = {n: p.clone() for n, p in small_model.state_dict().items()}
    engine.enable(small_model)
    assert engine.is_enabled(small_model) and small_model.state_dict().keys() == before.keys()
    engine.disable(small_model)
    assert not engine.is_enabled(small_model) and type(small_model.blocks[0].attn).__name__ == "CausalSelfAttention"
    assert all(torch.equal(p, before[n]) for n, p in small_model.state_dict().items())


def test_the_policy_names_real_shortcuts(small_model):
    with pytest.raises(ValueError, match="unknown shortcut"):
        engine.enable(small_model, policy={"warp_drive": Rule(BOTH, "")})
    with pytest.raises(ValueError, match="unknown shortcut"):
        engine.without(POLICY, "warp_drive")
    assert all(r.why for r in POLICY.values())


def reference_sources() -> dict[str, str]:
    """The source of each of the three reference files (attention.py, block.py, model.py)."""
    return {name: (Path(engine.__file__).parent / f"{name}.py").read_text() for name in ("attention", "block", "model")}


def test_the_reference_never_imports_the_engine():
    """Planted: `from .engine import ...` in model.py (say, to switch a shortcut on from the reference)."""
    for name, source in reference_sources().items():
        tree = ast.parse(source)
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [m for m in imported if "engine" in m], (name, imported)


def test_the_reference_stays_plain():
    """The three reference files hold no device checks and at most 16 branches (`if` and
    conditional expressions; nanoGPT's whole model.py has 16), so a shortcut for speed cannot
    creep back into the path a student reads. Planted: `if x.device.type == "cuda":` in
    attention.py, or any new branch. A shortcut belongs in the engine (engine.POLICY)."""
    branches = 0
    for name, source in reference_sources().items():
        branches += sum(isinstance(node, (ast.If, ast.IfExp)) for node in ast.walk(ast.parse(source)))
        assert not [w for w in ("device.type", "is_cuda", "_ON") if w in source], name
    assert branches <= 16, f"{branches} branches in attention.py, block.py and model.py; move a shortcut to the engine"
