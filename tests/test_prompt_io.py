"""Prompt checkpoints: only the method's tensors, checked on load, and never unpickled.

A prompt file is safetensors (raw numbers) plus a text header: method, config, and the
fingerprint of the base model. Each refusal is asserted by error type and message.
"""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from methods import (
    PrefixTuningConfig,
    PrefixTuningModel,
    PromptRegistry,
    PTuningConfig,
    PTuningModel,
    SoftPromptConfig,
    SoftPromptModel,
    load_prompt,
    save_prompt,
)
from minitransformer.checkpoint import tensors_sha256

P = 4


@pytest.fixture(autouse=True)
def base_stays_bitwise_unchanged(small_model):
    before = {n: t.clone() for n, t in small_model.state_dict().items()}
    yield
    assert all(torch.equal(t, small_model.state_dict()[n]) for n, t in before.items())


def test_prefix_checkpoint_stores_only_the_collapsed_keys_values(small_model, tmp_path):
    model = PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_projection=True, encoder_hidden_size=16))
    path = save_prompt(model, tmp_path / "prefix.safetensors")
    c = small_model.config
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
        header = f.metadata()
    assert shapes == {"embedding.weight": (P, c.n_layer * 2 * c.d_model)}
    assert '"prefix_projection": false' in header["config"]
    assert hasattr(model, "transform") and model.config.prefix_projection  # the trained model is left as it was


class Payload:
    """What a malicious pickle does: run code on load (here, create a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_never_unpickles(small_model, tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="damaged"):
        load_prompt(small_model, evil)
    assert not marker.exists()

    def refuse(*args, **kwargs):
        raise AssertionError("loading a prompt must not unpickle anything")
    path = save_prompt(PTuningModel(small_model, PTuningConfig(P, "LSTM", 16)), tmp_path / "ok.safetensors")
    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    PromptRegistry(small_model).load("ok", path)


def rewrite(path, out, metadata=None, tensor=None):
    """A copy of a prompt file with its header or tensor changed (and the hash of the new tensors
    recorded, as a writer of such a file would: each check below is reached, not the hash's)."""
    with safe_open(str(path), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    header.update(metadata or {})
    if tensor is not None:
        tensors = {k: tensor(t) for k, t in tensors.items()}
        header["tensors_sha256"] = tensors_sha256(tensors)
    save_file(tensors, out, metadata=header)
    return out


def nan_at_0(t):
    return t.index_fill(1, torch.tensor([0]), float("nan"))


def truncated(path, tmp_path):
    (tmp_path / "cut.st").write_bytes(path.read_bytes()[:-7])
    return tmp_path / "cut.st"


LOAD_REFUSALS = {  # name: (make (base, file, method) from (base, good file, tmp_path), message)
    "another base model": (lambda base, path, tmp: (type(base)(base.config), path, None),
                           "trained for base model .* load the base checkpoint"),
    "another method": (lambda base, path, tmp: (base, path, "prefix_tuning"),
                       "holds a 'soft_prompt' prompt, not 'prefix_tuning'; load it as 'soft_prompt'"),
    "NaN values": (lambda base, path, tmp: (base, rewrite(path, tmp / "n.st", tensor=nan_at_0), None),
                   "'prompt' .* holds NaN or inf values"),
    "inf values": (lambda base, path, tmp: (base, rewrite(path, tmp / "i.st", tensor=lambda t: t / 0), None),
                   "NaN or inf"),
    "unknown method": (lambda base, path, tmp: (base, rewrite(path, tmp / "m.st", {"method": "adapter"}), None),
                       "unknown method 'adapter'"),
    "not a prompt file": (lambda base, path, tmp: (base, rewrite(path, tmp / "f.st", {"format": "x"}), None),
                          "not a prompt checkpoint"),
    "invalid config": (lambda base, path, tmp: (base, rewrite(path, tmp / "c.st",
                                                              {"config": '{"num_virtual_tokens": 0}'}), None),
                       "config .* is not valid"),
    "tensors that do not fit": (lambda base, path, tmp: (base, rewrite(path, tmp / "s.st",
                                                                       {"config": '{"num_virtual_tokens": 5}'}), None),
                                "do not fit"),
    "truncated file": (lambda base, path, tmp: (base, truncated(path, tmp), None), "damaged"),
    "missing file": (lambda base, path, tmp: (base, tmp / "missing.st", None), "not a readable"),
}


@pytest.mark.parametrize("case", LOAD_REFUSALS)
def test_loading_refuses_foreign_damaged_or_invalid_prompts(case, small_model, tmp_path):
    path = save_prompt(SoftPromptModel(small_model, SoftPromptConfig(P)), tmp_path / "p.safetensors")
    make, message = LOAD_REFUSALS[case]
    base, bad, method = make(small_model, path, tmp_path)
    with pytest.raises(ValueError, match=message):
        load_prompt(base, bad, method)
