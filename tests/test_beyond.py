"""Issue 19, beyond the four methods: prompts on a chosen set of layers, soft prompt transfer,
prompt ensembles and residual reparameterisation. Each claim against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import ATOL, P, sharpened

from methods import PrefixTuningConfig, PrefixTuningModel, PTuningConfig, PTuningModel, SoftPromptModel
from methods.ensemble import PromptEnsemble, majority_vote
from methods.prompt_io import load_prompt, save_prompt
from methods.soft_prompt import SoftPromptConfig
from methods.train import answer_loss
from methods.transfer import prompt_similarity, source_prompt, transferred_soft_prompt
from minitransformer import CharTokenizer, MiniTransformer, ModelConfig, sample_inputs
from minitransformer.data import example_batch, format_prompt
from minitransformer.evaluate import predict

# -- a prefix on a chosen set of layers ---------------------------------------------------------


def prefix_by_hand(model: PrefixTuningModel, ids: torch.Tensor) -> torch.Tensor:
    """Prefix tuning written out, independent of the model's forward: embed at positions P.., then in every
    block explicit softmax attention over [prefix keys; real keys] on the chosen layers, the real keys alone
    on the others; residuals, MLP, final LayerNorm and the tied head."""
    base, c = model.base, model.base.config
    B, T = ids.shape
    P_, H, D = model.config.num_virtual_tokens, c.n_head, c.head_dim
    stored = model.prefix_vectors().view(P_, len(model.layers), 2, H, D)  # the layout documented in the file
    h = base.wte(ids) + base.wpe(torch.arange(P_, P_ + T))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for layer, block in enumerate(base.blocks):
        q, k, v = block.attn.c_attn(block.ln_1(h)).split(c.d_model, dim=2)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        allowed = causal
        if layer in model.layers:
            i = model.layers.index(layer)
            pk, pv = (stored[:, i, j].permute(1, 0, 2)[None].expand(B, -1, -1, -1) for j in (0, 1))  # (B, H, P, D)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            allowed = torch.cat([torch.ones(T, P_, dtype=torch.bool), causal], dim=1)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(~allowed, float("-inf"))
        out = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, c.d_model)
        h = h + block.attn.c_proj(out)
        h = h + block.mlp(block.ln_2(h))
    return base.ln_f(h) @ base.wte.weight.T


@pytest.fixture
def four_layers(small_config) -> MiniTransformer:
    torch.manual_seed(1)
    return sharpened(MiniTransformer(ModelConfig(**{**small_config.to_dict(), "n_layer": 4})).eval())


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("layers", [(0,), (3,), (2, 3), (0, 2), (1, 2, 3)])
def test_a_prefix_on_a_set_of_layers_equals_the_hand_written_reference(layers, projection, four_layers):
    """Planted: split_prefix giving the prefix to the bottom len(layers) layers instead of the chosen ones."""
    model = PrefixTuningModel(four_layers, PrefixTuningConfig(P, prefix_projection=projection,
                                                              encoder_hidden_size=16, prefix_layers=layers, seed=3))
    if not projection:
        with torch.no_grad():
            model.embedding.weight.add_(torch.randn(model.embedding.weight.shape,
                                                    generator=torch.Generator().manual_seed(5)))
    ids = torch.randint(1, 41, (2, 7), generator=torch.Generator().manual_seed(len(layers)))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), prefix_by_hand(model, ids), rtol=0, atol=ATOL)


def test_a_prefix_on_every_layer_is_the_default_and_matches_the_reference(four_layers):
    model = PrefixTuningModel(four_layers, PrefixTuningConfig(P, prefix_layers=(3, 1, 0, 2), seed=3))
    default = PrefixTuningModel(four_layers, PrefixTuningConfig(P, seed=3))
    ids = torch.randint(1, 41, (2, 7), generator=torch.Generator().manual_seed(0))
    assert model.config.prefix_layers == (0, 1, 2, 3)  # sorted: bottom first
    with torch.no_grad():
        torch.testing.assert_close(model(ids), default(ids), rtol=0, atol=0)
        torch.testing.assert_close(model(ids), prefix_by_hand(model, ids), rtol=0, atol=ATOL)


def test_a_prefix_on_some_layers_stores_numbers_for_those_layers_only(four_layers):
    C = four_layers.config.d_model
    for layers in [(0,), (1, 3), (0, 1, 2)]:
        model = PrefixTuningModel(four_layers, PrefixTuningConfig(P, prefix_layers=layers))
        assert sum(p.numel() for p in model.prompt_parameters().values()) == P * 2 * C * len(layers)
        kv = model.prefix_kv()
        assert [l for l, entry in enumerate(kv) if entry is not None] == list(layers)


@pytest.mark.parametrize("layers, words", [((), "empty"), ((0, 0), "twice"), ((-1,), "0..")])
def test_a_bad_layer_set_is_refused_by_the_config(layers, words):
    with pytest.raises(ValueError, match=words):
        PrefixTuningConfig(P, prefix_layers=layers)


def test_a_layer_the_base_model_does_not_have_is_refused(four_layers):
    with pytest.raises(ValueError, match=r"0\.\.3"):
        PrefixTuningModel(four_layers, PrefixTuningConfig(P, prefix_layers=(1, 4)))


def test_a_layer_set_from_a_json_config_is_a_tuple():
    assert PrefixTuningConfig(P, prefix_layers=[3, 2]).prefix_layers == (2, 3)


def test_a_prefix_on_some_layers_saves_and_loads_its_layers(four_layers, tmp_path):
    model = PrefixTuningModel(four_layers, PrefixTuningConfig(P, prefix_projection=True, encoder_hidden_size=16,
                                                              prefix_layers=(1, 3)))
    loaded = load_prompt(four_layers, save_prompt(model, tmp_path / "layers.safetensors"))  # collapsed, for serving
    assert loaded.config.prefix_layers == (1, 3) and loaded.layers == (1, 3)
    torch.testing.assert_close(loaded.prefix_vectors(), model.prefix_vectors(), rtol=0, atol=0)


# -- soft prompt transfer -----------------------------------------------------------------------


def test_a_transferred_prompt_starts_as_the_saved_source_prompt(small_model, tmp_path):
    source = SoftPromptModel(small_model, SoftPromptConfig(P, seed=4))
    with torch.no_grad():
        source.prompt.add_(1.0)  # as if trained: far from any initialisation
    path = save_prompt(source, tmp_path / "source.safetensors")
    model = transferred_soft_prompt(small_model, path, SoftPromptConfig(P, "SAMPLE_VOCAB", seed=9))
    assert torch.equal(model.prompt.detach(), source.prompt.detach())
    assert model.prompt.requires_grad and set(model.prompt_parameters()) == {"prompt"}
    ids = torch.randint(1, 41, (2, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), source(ids), rtol=0, atol=0)  # the same model, before training


def test_a_transfer_refuses_a_prompt_from_another_base_model(small_model, small_config, tmp_path):
    path = save_prompt(SoftPromptModel(small_model, SoftPromptConfig(P)), tmp_path / "source.safetensors")
    torch.manual_seed(7)
    other = MiniTransformer(small_config).eval()
    with pytest.raises(ValueError, match="was trained for base model"):
        transferred_soft_prompt(other, path)


def test_a_transfer_refuses_a_prompt_of_another_length_or_method(small_model, tmp_path):
    path = save_prompt(SoftPromptModel(small_model, SoftPromptConfig(P)), tmp_path / "source.safetensors")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        transferred_soft_prompt(small_model, path, SoftPromptConfig(P + 1))
    prefix = save_prompt(PrefixTuningModel(small_model, PrefixTuningConfig(P)), tmp_path / "prefix.safetensors")
    with pytest.raises(ValueError, match="prefix_tuning"):
        source_prompt(small_model, prefix)


def test_prompt_similarity_on_a_hand_example():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # per token: cosines (1, 1, 0, 0) -> 0.5; average tokens: cos((.5, .5), (1, 0)) = 1 / sqrt(2)
    assert prompt_similarity(a, b) == pytest.approx(0.5, abs=1e-12)
    assert prompt_similarity(a, b, "average_tokens") == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert prompt_similarity(a, -a, "average_tokens") == pytest.approx(-1.0, abs=1e-12)
    assert prompt_similarity(a, 3 * a[[1, 0]]) == pytest.approx(prompt_similarity(a, a), abs=1e-12)  # order, scale


# -- prompt ensembles ---------------------------------------------------------------------------


def test_the_vote_takes_the_most_frequent_answer_and_breaks_ties_by_the_lowest_prompt():
    assert majority_vote(["ab", "ba", "ba"]) == "ba"
    assert majority_vote(["x", "y", "y", "x", "z"]) == "x"  # x and y tie; prompt 0 said x
    assert majority_vote(["y", "x", "x", "y"]) == "y"
    assert majority_vote(["q"]) == "q"
    with pytest.raises(ValueError):
        majority_vote([])


def test_the_ensembles_one_batch_gives_each_prompt_the_answers_it_gives_alone(base_model):
    members = [SoftPromptModel(base_model, SoftPromptConfig(4, "TEXT", text)) for text in ("rev:", "srt:", "cpy:")]
    members.append(SoftPromptModel(base_model, SoftPromptConfig(4, "SAMPLE_VOCAB", seed=1)))
    ensemble = PromptEnsemble(base_model, members)
    tokenizer = CharTokenizer()
    texts = [format_prompt("rev", x, with_name=False) for x in sample_inputs("rev", "test", 7)]
    together = ensemble.member_answers(texts, 9, batch_size=3)  # 3 texts x 4 prompts per batch, padded
    for model, answers in zip(members, together):
        assert answers == predict(model, tokenizer, texts, 8)
    assert together[0] != together[1]  # the prompts differ, so a mix-up would show
    assert ensemble.complete(texts, 9) == [majority_vote([a[k] for a in together]) for k in range(len(texts))]


def test_ensemble_exact_match_scores_each_prompt_and_the_vote(base_model):
    members = [SoftPromptModel(base_model, SoftPromptConfig(4, "TEXT", "rev:")) for _ in range(2)]
    members.append(SoftPromptModel(base_model, SoftPromptConfig(4, "TEXT", "cpy:")))
    scores = PromptEnsemble(base_model, members).exact_match("rev", sample_inputs("rev", "test", 20))
    assert scores["members"][0] == scores["members"][1] > 0.9 > scores["members"][2]
    assert scores["vote"] == scores["members"][0]  # two of three prompts reverse


# -- residual reparameterisation ----------------------------------------------------------------


def test_residual_encoders_have_the_papers_parameter_count(small_model):
    C, L, h = small_model.config.d_model, small_model.config.n_layer, 16
    ptuning = PTuningModel(small_model, PTuningConfig(P, "RESIDUAL_MLP", h))
    assert sum(p.numel() for p in ptuning.prompt_parameters().values()) == \
        P * C + (C * h + h) + (h * C + C) + 2 * C  # embedding, down, up, LayerNorm
    W = L * 2 * C
    prefix = PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_projection=True, encoder_hidden_size=h,
                                                               encoder_reparameterization_type="RESIDUAL_MLP"))
    assert sum(p.numel() for p in prefix.prompt_parameters().values()) == P * W + (W * h + h) + (h * W + W) + 2 * W


def test_a_residual_encoder_is_its_embedding_plus_the_layernormed_mlp(small_model):
    model = PTuningModel(small_model, PTuningConfig(P, "RESIDUAL_MLP", 16))
    e, mlp = model.prompt_encoder.embedding.weight, model.prompt_encoder.mlp_head
    down, up, norm = mlp[0], mlp[2], mlp[3]
    by_hand = e + F.layer_norm(up(torch.relu(down(e))), (e.shape[1],), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(model.prompt_state()[0], by_hand, rtol=0, atol=1e-6)
    assert torch.equal(e, small_model.wte.weight[torch.randint(1, 41, (P,), generator=torch.Generator()
                                                                .manual_seed(0))])  # starts at real tokens


def few_steps(model, steps=3, lr=0.1):
    tokenizer = CharTokenizer()
    inputs = sample_inputs("rev", "train", 8)
    ids, mask, labels = example_batch(tokenizer, "rev", inputs)
    optimizer = torch.optim.AdamW([p for p in model.prompt_parameters().values() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        answer_loss(model, (ids, mask, labels)).backward()
        optimizer.step()
    return ids, mask


def test_a_trained_residual_p_tuning_encoder_folds_into_a_soft_prompt(small_model):
    model = PTuningModel(small_model, PTuningConfig(P, "RESIDUAL_MLP", 16))
    ids, mask = few_steps(model)
    with torch.no_grad():
        trained = model(ids, mask)
        torch.testing.assert_close(model.to_soft_prompt()(ids, mask), trained, rtol=0, atol=ATOL)


def test_a_trained_residual_prefix_collapses_to_a_plain_prefix(small_model, tmp_path):
    model = PrefixTuningModel(small_model, PrefixTuningConfig(P, prefix_projection=True, encoder_hidden_size=16,
                                                              encoder_reparameterization_type="RESIDUAL_MLP"))
    ids, mask = few_steps(model)
    with torch.no_grad():
        trained = model(ids, mask)
        path = save_prompt(model, tmp_path / "residual.safetensors")
        model.collapse()
        assert not hasattr(model, "transform") and not model.config.prefix_projection
        torch.testing.assert_close(model(ids, mask), trained, rtol=0, atol=ATOL)
        torch.testing.assert_close(load_prompt(small_model, path)(ids, mask), trained, rtol=0, atol=ATOL)


def test_a_residual_option_is_refused_by_name_when_unknown():
    with pytest.raises(ValueError, match="RESIDUAL_MLP"):
        PrefixTuningConfig(P, prefix_projection=True, encoder_reparameterization_type="RESIDUAL")
    with pytest.raises(ValueError, match="RESIDUAL_MLP"):
        PTuningConfig(P, "RESIDUAL")

