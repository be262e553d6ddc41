"""The probes (minitransformer/probes.py) read what the model really computes, and the picture of
where each method injects (methods/injection.py) draws every method the registry knows."""

from __future__ import annotations

import matplotlib
import pytest
import torch
from conftest import ATOL, METHOD_FACTORIES, P

from methods import DeepPromptConfig, DeepPromptModel, PrefixTuningConfig, PrefixTuningModel, registry
from methods.injection import draw_injection
from minitransformer import KVCache, engine
from minitransformer.probes import attention_weights, block_outputs, entering_states

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more threads only contend
    yield
    torch.set_num_threads(threads)


def batch(small_config, padded: bool):
    torch.manual_seed(1)
    ids = torch.randint(0, small_config.vocab_size, (3, 9))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :3] = 0  # left padding
        mask[2, 6:] = 0  # right padding
    return ids, mask


def attention_outputs(base, model, args, kwargs):
    """Per layer, (what the attention module received, what it returned), from hooks of the test's own."""
    received, returned = [], []
    handles = [b.attn.register_forward_pre_hook(lambda _, a: received.append(a)) for b in base.blocks]
    handles += [b.attn.register_forward_hook(lambda _, __, out: returned.append(out)) for b in base.blocks]
    with torch.no_grad():
        model(*args, **kwargs)
    for h in handles:
        h.remove()
    return received, returned


def check_weights_reproduce_attention(base, model, *args, **kwargs):
    weights = attention_weights(model, *args, **kwargs)
    received, returned = attention_outputs(base, model, args, kwargs)
    assert len(weights) == len(received) == base.config.n_layer
    for block, w, (x, _, prefix, _), out in zip(base.blocks, weights, received, returned):
        B, T, C = x.shape
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=ATOL)  # each query's weights sum to 1
        assert not w.requires_grad  # read, not part of a graph
        _, v = block.attn.keys_values(x)  # (B, H, T, D)
        if prefix is not None:
            v = torch.cat([prefix[1].expand(B, -1, -1, -1), v], dim=2)  # (B, H, P + T, D)
        assert w.shape == (B, base.config.n_head, T, v.shape[2])
        recomputed = block.attn.c_proj((w @ v).transpose(1, 2).reshape(B, T, C))
        assert torch.allclose(recomputed, out, atol=ATOL)
    return weights


@pytest.mark.parametrize("padded", [False, True])
def test_weights_reproduce_the_plain_model(small_model, small_config, padded):
    ids, mask = batch(small_config, padded)
    check_weights_reproduce_attention(small_model, small_model, ids, attention_mask=mask)


@pytest.mark.parametrize("method", ["prefix", "deep_prompt", "soft_prompt"])
def test_weights_reproduce_a_method(small_model, small_config, method):
    model = METHOD_FACTORIES[method](small_model)
    ids, mask = batch(small_config, padded=True)
    weights = check_weights_reproduce_attention(small_model, model, ids, mask)
    expected_keys = P + ids.shape[1]  # a prefix's P columns, or the P prompt positions in the sequence
    assert all(w.shape[-1] == expected_keys for w in weights)


def test_a_prefix_on_some_layers_only(small_model, small_config):
    model = PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_layers=(0, 2)))
    ids, mask = batch(small_config, padded=True)
    weights = check_weights_reproduce_attention(small_model, model, ids, mask)
    T = ids.shape[1]
    assert [w.shape[-1] for w in weights] == [P + T, T, P + T]  # layer 1 has no prefix columns


def test_weights_with_a_kv_cache(small_model, small_config):
    ids, _ = batch(small_config, padded=False)
    whole = attention_weights(small_model, ids)  # L x (B, H, 9, 9)
    cache = KVCache()
    with torch.no_grad():
        small_model(ids[:, :6], kv_cache=cache)
    cached = attention_weights(small_model, ids[:, 6:], kv_cache=cache)  # the six cached keys and three new ones
    for w, c in zip(whole, cached):
        assert c.shape[-2:] == (3, 9)
        assert torch.allclose(c, w[:, :, 6:], atol=ATOL)  # the last three queries of the whole sequence


def test_entering_states_start_from_the_embeddings(small_model, small_config):
    ids, mask = batch(small_config, padded=False)
    states = entering_states(small_model, ids, attention_mask=mask)
    positions = torch.arange(ids.shape[1])
    assert torch.equal(states[0], small_model.wte(ids) + small_model.wpe(positions))
    outputs = block_outputs(small_model, ids, attention_mask=mask)
    for later, output in zip(states[1:], outputs[:-1]):
        assert torch.equal(later, output)  # what leaves block l enters block l + 1


def test_entering_states_show_the_deep_prompt(small_model, small_config):
    model = DeepPromptModel(small_model, DeepPromptConfig(P))
    ids, mask = batch(small_config, padded=True)
    states = entering_states(model, ids, mask)
    for layer in range(1, small_config.n_layer):  # layer 0's prompt is prepended, the others overwrite
        assert torch.equal(states[layer][:, :P], model.prompts[layer].expand(3, -1, -1))


def test_probes_refuse_the_engine(small_model, small_config):
    ids, _ = batch(small_config, padded=False)
    engine.enable(small_model)
    try:
        with pytest.raises(ValueError, match="engine"):
            attention_weights(small_model, ids)
    finally:
        engine.disable(small_model)


@pytest.mark.parametrize("highlight", [None, *registry.METHODS,
                                       *sorted({m.model_class.injects for m in registry.METHODS.values()})])
def test_draw_injection_draws_every_method(highlight):
    import matplotlib.pyplot as plt
    fig = draw_injection(highlight)
    assert isinstance(fig, matplotlib.figure.Figure)
    plt.close(fig)


def test_draw_injection_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="soft_prompt"):  # the message lists what it knows
        draw_injection("soft_promt")
