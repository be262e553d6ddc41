"""The shortcuts that make training and generation fast compute exactly what the plain paths do.

The engine's shortcuts (minitransformer/engine.py) are switched on with `engine.enable(model,
policy=...)`; a policy that runs the GPU's shortcuts here (`engine.acting_as("cuda")`) is an
argument, never a patched global. tests/test_engine.py is the matrix of all of them; here
each is looked at on its own, with the route it takes.

- attention without padding: no mask is built, the kernel masks causally itself;
- the token ids' range is read from the device once per call (a GPU waits for each read);
- `logits_to_keep`: the head, and the last block's output projection and MLP (on a CPU its queries too),
  run only where logits are read;
- a GPU's head padded to 64 columns: the padding dropped, or kept at -inf (same loss and gradients);
- a deep prompt on every layer runs as the key/value prefix it amounts to (per layer, or stacked);
- LoRA adds its low-rank path to the layer outputs instead of forming W + BA;
- in generation, a prefix (and the MLP that makes it) and LoRA's factors are computed once, not per token.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import ATOL, METHOD_FACTORIES, P, sharpened

from methods import DeepPromptConfig, DeepPromptModel, FullFineTuneModel, PrefixTuningConfig, PrefixTuningModel
from methods.lora import LoRAModel
from methods.train import answer_loss
from minitransformer import CharTokenizer, KVCache, MiniTransformer, engine, generate
from minitransformer.attention import attention_allowed, causal_mask
from minitransformer.data import IGNORE_INDEX, example_batch


def batch():
    return example_batch(CharTokenizer(), "rev", ["abc", "defgh", "xyzzy", "mn"], False)


def test_causal_mask_is_the_loop_definition():
    T, S = 3, 7  # 3 new queries after 4 earlier keys (a prefix or the cache)
    expected = torch.tensor([[j <= (S - T) + i for j in range(S)] for i in range(T)])
    assert torch.equal(causal_mask(T, S), expected)


def test_without_padding_the_mask_is_plain_causal():
    """What the model skips building when nothing is padded (it passes None instead)."""
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, 0] = 0
    allowed = attention_allowed(mask, 5, 3)
    assert allowed.shape == (2, 1, 5, 8)
    assert torch.equal(allowed[0, 0], causal_mask(5, 8))  # the unpadded row: plain causal
    assert not torch.equal(allowed[1, 0], causal_mask(5, 8))


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("prefix_len, past", [(0, 0), (3, 0), (0, 4), (3, 4)])
def test_unmasked_attention_equals_the_explicit_causal_mask(small_model, use_sdpa, prefix_len, past):
    """Without padding attention masks causally itself: the square, or the lower-right mask."""
    attn = engine.enable(small_model, policy=engine.ALL_ON).blocks[0].attn
    attn.use_sdpa = use_sdpa
    B, T, C, H, D = 2, 5, 32, 4, 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, C, generator=g)
    prefix = (torch.randn(B, H, prefix_len, D, generator=g),) * 2 if prefix_len else None

    def run(allowed):
        cache = KVCache()
        if past:
            cache.extend(0, torch.randn(B, H, past, D, generator=torch.Generator().manual_seed(1)),
                         torch.randn(B, H, past, D, generator=torch.Generator().manual_seed(2)))
        return attn(x, allowed, prefix, cache)

    explicit = causal_mask(T, prefix_len + past + T).expand(B, 1, T, -1)
    torch.testing.assert_close(run(None), run(explicit), rtol=0, atol=ATOL)


@pytest.mark.parametrize("batched_prefix", [True, False])
def test_prefix_in_placeholder_rows_equals_the_lower_right_mask(small_model, batched_prefix):
    """A GPU's route for a prefix: P placeholder rows in front, their keys/values overwritten by the
    prefix, the plain causal square. The real rows' outputs equal the lower-right-masked attention's,
    whatever the placeholder rows hold."""
    attn = engine.enable(small_model, policy=engine.ALL_ON).blocks[0].attn
    B, T, C, H, D, prefix_len = 2, 5, 32, 4, 8, 3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, C, generator=g)
    prefix = tuple(torch.randn(B if batched_prefix else 1, H, prefix_len, D, generator=g) for _ in range(2))
    junk = torch.randn(B, prefix_len, C, generator=g)
    out = attn(torch.cat([junk, x], dim=1), None, prefix, prefix_rows=True)  # (B, P + T, C)
    torch.testing.assert_close(out[:, prefix_len:], attn(x, None, prefix), rtol=0, atol=ATOL)


def test_prefix_gradients_with_placeholder_rows(small_model):
    """The placeholder rows get no gradient path into anything real: the prefix's gradient is the same."""
    model = PrefixTuningModel(small_model, PrefixTuningConfig(P, seed=1))
    ids, mask, labels = batch()
    ids = ids[:, -6:]  # keep rows unpadded: the placeholder path is the unmasked one

    def prefix_grad():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
        return model.embedding.weight.grad.clone()

    plain = prefix_grad()
    engine.enable(model, policy=engine.acting_as("cuda"))
    torch.testing.assert_close(prefix_grad(), plain, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["prefix", "prefix_projection", "deep_prompt"])
@pytest.mark.parametrize("logits_to_keep", [None, 2])
def test_prefix_methods_with_placeholder_rows(small_model, name, logits_to_keep):
    """Every method that hands the base a prefix gives the same logits through the placeholder rows,
    and the placeholder rows reach attention (the model really took that route)."""
    model = METHOD_FACTORIES[name](small_model).eval()
    ids = batch()[0][:, -6:]
    plain = model(ids, logits_to_keep=logits_to_keep)
    engine.enable(model, policy=engine.acting_as("cuda"))  # a deep prompt runs as its prefix there too
    seen = []
    hook = small_model.blocks[0].attn.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    torch.testing.assert_close(model(ids, logits_to_keep=logits_to_keep), plain, rtol=0, atol=ATOL)
    hook.remove()
    assert seen == [P + ids.shape[1]]


@pytest.mark.parametrize("on", [False, True])
@pytest.mark.parametrize("name", [*METHOD_FACTORIES, "lora", "full_finetune"])
def test_token_ids_are_read_once_per_call(small_model, monkeypatch, name, on):
    """The range check reads the ids back from the device (on a GPU, a wait): once per call, by whichever
    embeds them (the base, or the method that puts a prompt in front), not once more by the method."""
    extra = {"lora": lambda base: LoRAModel(base), "full_finetune": FullFineTuneModel}
    model = {**METHOD_FACTORIES, **extra}[name](small_model)
    if on:
        engine.enable(model)
    reads, aminmax = [], torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda t: reads.append(t) or aminmax(t))
    model(batch()[0])
    assert len(reads) == 1


@pytest.mark.parametrize("name", METHOD_FACTORIES)
def test_no_mask_means_no_padding(small_model, name):
    """Without a mask the model reads nothing back from the device (positions simply count on):
    the same logits as an all-ones mask, which takes the general path."""
    model = METHOD_FACTORIES[name](small_model).eval()
    ids = batch()[0][:, -6:]
    torch.testing.assert_close(model(ids), model(ids, torch.ones_like(ids)), rtol=0, atol=ATOL)


@pytest.mark.parametrize("on", [False, True])
def test_base_logits_to_keep(small_model, on):
    if on:
        engine.enable(small_model)  # the last block cut short
    ids, mask, labels = batch()
    full = small_model(ids, attention_mask=mask)
    # the last block then runs fewer rows, whose kernels may round differently: equal up to float rounding
    torch.testing.assert_close(small_model(ids, attention_mask=mask, logits_to_keep=2), full[:, -2:], rtol=0, atol=ATOL)
    keep = labels != IGNORE_INDEX
    torch.testing.assert_close(small_model(ids, attention_mask=mask, logits_to_keep=keep), full[keep], rtol=0, atol=ATOL)


def test_padded_head_gives_the_same_loss_and_gradients(small_model):
    """The head's padding to a multiple of 64 (on a GPU; here by the policy): dropped, the logits are the
    unpadded ones; kept, the extra 23 columns are -inf, and the loss and the prompt's gradient are the same."""
    model = METHOD_FACTORIES["soft_prompt"](small_model)
    ids = batch()[0]

    def loss_and_grad():
        model.zero_grad()
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
        return logits.detach(), model.prompt.grad.clone()

    plain_logits, plain_grad = loss_and_grad()
    engine.enable(model, policy=engine.acting_as("cuda"))
    dropped_logits, dropped_grad = loss_and_grad()
    assert dropped_logits.shape[-1] == 41
    engine.enable(model, policy=engine.acting_as("cuda"), padded_logits=True)
    kept_logits, kept_grad = loss_and_grad()
    assert kept_logits.shape[-1] == 64 and bool((kept_logits[..., 41:] == float("-inf")).all())
    for logits, grad in [(dropped_logits, dropped_grad), (kept_logits[..., :41], kept_grad)]:
        torch.testing.assert_close(logits, plain_logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(grad, plain_grad, rtol=0, atol=ATOL)


def test_the_last_block_runs_only_where_logits_are_read(small_model, monkeypatch):
    """Its MLP sees the last n positions (an int), or those from the first column a mask keeps;
    on a CPU its attention has only those queries too (the engine's `query_cut`)."""
    engine.enable(small_model, policy=engine.acting_as("cpu"))
    ids, mask, labels = batch()  # (4, T)
    seen, queries = [], []
    small_model.blocks[-1].mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    attn = small_model.blocks[-1].attn
    attend = attn.attend

    def counting_attend(*args):
        out = attend(*args)  # (B, queries, C)
        queries.append(out.shape[1])
        return out
    monkeypatch.setattr(attn, "attend", counting_attend)
    keep = labels != IGNORE_INDEX
    small_model(ids, attention_mask=mask, logits_to_keep=2)
    small_model(ids, attention_mask=mask, logits_to_keep=keep)
    small_model(ids, attention_mask=mask)
    first_read = int(keep.any(dim=0).nonzero()[0, 0])
    assert seen == queries == [2, ids.shape[1] - first_read, ids.shape[1]] and 0 < first_read


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("name", [*METHOD_FACTORIES, "full_finetune"])
def test_the_last_block_cut_short_gives_the_same_gradients(small_model, name, use_sdpa):
    """The loss on the kept logits has the gradients of the loss on the same logits of a full forward
    (padded rows, so the cut attention keeps its padding mask), with either attention path."""
    small_model.set_attention_implementation(use_sdpa)
    model = FullFineTuneModel(small_model) if name == "full_finetune" else METHOD_FACTORIES[name](small_model)
    engine.enable(model, policy=engine.acting_as("cpu"))
    ids, mask, labels = batch()
    keep = labels != IGNORE_INDEX

    def gradients(cut_short):
        model.zero_grad()
        logits = model(ids, mask, logits_to_keep=keep) if cut_short else model(ids, mask)[keep]  # (N, V)
        torch.nn.functional.cross_entropy(logits, labels[keep]).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    full, cut = gradients(False), gradients(True)
    assert full.keys() == cut.keys() and full
    for k in full:
        torch.testing.assert_close(cut[k], full[k], rtol=0, atol=ATOL, msg=k)


@pytest.mark.parametrize("bad", [0, 99, True, torch.ones(4, 3, dtype=torch.bool), torch.ones(4, 9)])
def test_bad_logits_to_keep_is_refused(small_model, bad):
    ids, mask, _ = batch()
    with pytest.raises(ValueError, match="logits_to_keep"):
        small_model(ids, attention_mask=mask, logits_to_keep=bad)


@pytest.mark.parametrize("name", METHOD_FACTORIES)
def test_method_logits_to_keep_selects_real_tokens(small_model, name):
    model = METHOD_FACTORIES[name](small_model).eval()
    ids, mask, labels = batch()
    full = model(ids, mask)
    keep = labels != IGNORE_INDEX
    torch.testing.assert_close(model(ids, mask, logits_to_keep=keep), full[keep], rtol=0, atol=ATOL)
    torch.testing.assert_close(model(ids, mask, logits_to_keep=1), full[:, -1:], rtol=0, atol=ATOL)


@pytest.mark.parametrize("padded, bias", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("route", ["as_prefix", "engine"])
def test_deep_prompt_as_prefix_equals_the_literal_form(small_model, small_config, padded, bias, route):
    """The keys and values the prompts make, as a prefix, act as each layer's prompt would: per layer
    (`as_prefix=True`), or all layers' made at once with stacked weights (the engine)."""
    if not bias:  # a base without biases: prefix_vectors must skip them too
        small_model = sharpened(MiniTransformer(dataclasses.replace(small_config, bias=False)).eval())
    literal = DeepPromptModel(small_model, DeepPromptConfig(P, seed=3))
    fast = DeepPromptModel(small_model, DeepPromptConfig(P, seed=3, as_prefix=route == "as_prefix"))
    assert not literal.computed_as_prefix and fast.computed_as_prefix == (route == "as_prefix")
    ids, mask, _ = batch()
    if not padded:
        ids, mask = ids[:, :5], torch.ones_like(ids[:, :5])
    literal_logits = literal(ids, mask)
    literal.zero_grad()
    answer_loss(literal, batch()).backward()
    literal_grad = literal.prompts.grad.clone()
    prompt = torch.tensor([CharTokenizer().encode("abc=")])
    literal_tokens = generate(literal, prompt, 5)
    if route == "engine":
        engine.enable(small_model, policy=engine.only("deep_prompt_as_prefix"))
    torch.testing.assert_close(fast(ids, mask), literal_logits, rtol=0, atol=ATOL)
    # ... and so do their gradients, which is what training sees
    fast.zero_grad()
    answer_loss(fast, batch()).backward()
    torch.testing.assert_close(fast.prompts.grad, literal_grad, rtol=0, atol=ATOL)
    assert torch.equal(generate(fast, prompt, 5), literal_tokens)


def test_a_partial_deep_prompt_keeps_the_literal_form(small_model):
    assert not DeepPromptModel(small_model, DeepPromptConfig(P, prompt_layers=2)).computed_as_prefix


@pytest.mark.parametrize("name", ["prefix_projection", "deep_prompt"])
def test_generation_computes_the_prefix_once(small_model, name):
    """The MLP that makes a prefix; a deep prompt's prompts go into the base once (the cache then holds them)."""
    calls = []
    if name == "deep_prompt":
        model = DeepPromptModel(small_model, DeepPromptConfig(P))
        small_model.register_forward_pre_hook(
            lambda module, args, kwargs: calls.append(1) if kwargs.get("hidden_prompts") else None, with_kwargs=True)
    else:
        model = PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_projection=True, encoder_hidden_size=16))
        model.transform.register_forward_hook(lambda *_: calls.append(1))
    out = generate(model, torch.tensor([CharTokenizer().encode("abc=")]), 6)
    assert len(calls) == 1  # one prefill + 5 decoding steps, one run of the MLP (or of the deep prompt)
    calls.clear()
    assert torch.equal(generate(model, torch.tensor([CharTokenizer().encode("abc=")]), 6, use_cache=False), out)
    assert len(calls) == 6  # without a cache there is nothing to keep it in: once per call


def test_lora_hooks_are_removed_after_each_call(small_model):
    model = LoRAModel(small_model)
    ids, mask, _ = batch()
    model(ids, mask)
    assert all(not m._forward_hooks for m in small_model.modules())


def test_generation_computes_the_lora_factors_once(small_model):
    """The cast and scaled factors do not change between tokens: made once per generation, kept with the cache."""
    model = LoRAModel(small_model)
    with torch.no_grad():
        for B in model.lora_B.values():
            B.normal_()  # a non-zero update, so the factors matter
    calls, factors = [], model.low_rank_factors
    model.low_rank_factors = lambda dtype: calls.append(dtype) or factors(dtype)
    prompt = torch.tensor([CharTokenizer().encode("abc=")])
    out = generate(model, prompt, 6)
    assert len(calls) == 1  # one prefill + 5 decoding steps
    assert torch.equal(generate(model, prompt, 6, use_cache=False), out)
    assert len(calls) == 7  # without a cache: once per call
