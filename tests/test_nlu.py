"""Understanding tasks, heads, metrics, training, serving and the nlu experiment (issue 18)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ATOL, METHOD_FACTORIES

from experiments import nlu
from experiments.common import Context
from methods import FullFineTuneModel, check_freezing
from methods.heads import NLUModel, last_token_mask, make_head
from methods.lora import LoRAModel
from methods.metrics import accuracy, span_f1, spans
from methods.nlu_serving import add_nlu, mixed_forward
from methods.nlu_tasks import (
    NLU_TASKS,
    best_lookup,
    lookup_baseline,
    majority_baseline,
    nlu_batch,
    repeat_tags,
    sample_nlu_inputs,
)
from methods.serving import PromptRegistry
from methods.train_nlu import NLUTrainConfig, nlu_loss, train_nlu
from minitransformer import CharTokenizer, engine
from minitransformer.data import TASKS


@pytest.mark.parametrize("task", NLU_TASKS)
def test_splits_are_disjoint_and_names_new(task):
    splits = {s: set(sample_nlu_inputs(task, s, 300)) for s in ("train", "val", "test")}
    assert not splits["train"] & splits["val"] and not splits["train"] & splits["test"] and not splits["val"] & \
        splits["test"]
    assert task not in TASKS


def test_classes_are_balanced():
    labels = [NLU_TASKS["pal"].solve(x) for x in sample_nlu_inputs("pal", "train", 400)]
    assert labels.count(0) == labels.count(1) == 200


def test_a_tag_is_not_a_function_of_the_character():
    assert repeat_tags("abcab") == [0, 0, 0, 1, 2]  # O O O B I
    assert repeat_tags("aab")[1] == 1 and repeat_tags("ab")[0] == 0  # `a` is B in one input, O in another
    assert repeat_tags("abab")[3] == 2 and repeat_tags("cbab")[3] == 1  # `b` is I in one, B in another


def test_baselines_on_a_hand_example():
    assert majority_baseline("pal", ["aba", "abc", "xyx"], ["abb", "ccc"]) == 0.5  # "yes" always: 1 of 2
    table, default = best_lookup("rep", ["aab", "abb"])  # gold: O B O / O O B
    assert default == 0 and lookup_baseline("rep", ["aab", "abb"], ["aab", "abb"]) == pytest.approx(
        span_f1([["O", "B", "O"], ["O", "O", "B"]], [[["O", "B", "I"][table.get(c, 0)] for c in x]
                                                     for x in ("aab", "abb")]))


def test_span_f1_by_hand():
    assert spans(["B", "I", "O", "B"]) == {("", 0, 1), ("", 3, 3)}
    assert spans(["O", "I", "I", "B-X", "I-Y"]) == {("", 1, 2), ("X", 3, 3), ("Y", 4, 4)}  # an I after O starts one
    # gold 2 spans, predicted 2, 1 exact: P = R = 1/2
    assert span_f1([["B", "I", "O", "B"]], [["B", "O", "O", "B"]]) == pytest.approx(0.5)
    # gold (0,1); predicted (0,1), (3,3): P = 1/2, R = 1: F1 = 2/3
    assert span_f1([["B", "I", "O", "O"]], [["B", "I", "O", "I"]]) == pytest.approx(2 / 3)
    assert span_f1([["O"]], [["O"]]) == 0.0 and accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not a BIO tag"):
        spans(["X"])


def batch_of(task):
    return nlu_batch(CharTokenizer(), task, {"pal": ["abcba", "abca", "xyx"], "rep": ["abcab", "aab", "cbab"]}[task])


def method(name, base):
    return {"lora": lambda b: LoRAModel(b), "full_finetune": FullFineTuneModel}.get(name, METHOD_FACTORIES.get(name))(
        base)


@pytest.mark.parametrize("head", ["linear", "verbalizer"])
@pytest.mark.parametrize("task", NLU_TASKS)
@pytest.mark.parametrize("name", ["soft_prompt", "p_tuning_mlp", "deep_prompt", "prefix", "lora"])
def test_only_the_prompt_and_head_train(name, task, head, small_model):
    model = NLUModel(method(name, small_model), make_head(head, task, 32), task)
    report = check_freezing(model, batch_of(task), steps=2, loss_fn=nlu_loss)
    assert report.ok, str(report)
    assert ("head.score.weight" in report.prompt_parameters) == (head == "linear")


@pytest.mark.parametrize("head", ["linear", "verbalizer"])
@pytest.mark.parametrize("task", NLU_TASKS)
@pytest.mark.parametrize("name", ["soft_prompt", "deep_prompt", "prefix"])
def test_a_head_reads_the_same_with_the_engine_on(name, task, head, small_model):
    """What `--device cuda` trains (the engine's GPU shortcuts, run here on a CPU) equals the reference:
    the loss and every trained gradient. Planted: the engine's last-block cut reading the wrong rows."""
    def loss_and_grads(model):
        model.zero_grad()
        loss = nlu_loss(model, batch_of(task))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model = NLUModel(method(name, small_model), make_head(head, task, 32), task)
    reference = loss_and_grads(model)
    engine.enable(model.model, policy=engine.acting_as("cuda"))
    try:
        torch.testing.assert_close(loss_and_grads(model), reference, rtol=0, atol=ATOL)
    finally:
        engine.disable(model.model)


@pytest.mark.parametrize("head", ["linear", "verbalizer"])
def test_full_fine_tuning_trains_a_copy_with_the_head(head, small_model):
    original = copy.deepcopy(small_model.state_dict())
    model = NLUModel(FullFineTuneModel(small_model), make_head(head, "pal", 32), "pal")
    report = check_freezing(model, batch_of("pal"), steps=1, loss_fn=nlu_loss)
    assert not report.prompt_unchanged and not report.requires_grad_outside_prompt  # the copy and head all train
    assert all(torch.equal(t, small_model.state_dict()[n]) for n, t in original.items())  # the shared base: not


def test_the_head_is_counted(small_model):
    model = NLUModel(METHOD_FACTORIES["soft_prompt"](small_model), make_head("linear", "rep", 32), "rep")
    assert sum(p.numel() for p in model.prompt_parameters().values()) == 4 * 32 + 3 * 32 + 3
    assert set(model.head_state_dict()) == {"head.score.weight", "head.score.bias"}


def test_the_linear_head_reads_the_last_real_token(small_model):
    ids, mask, _ = batch_of("pal")
    model = NLUModel(METHOD_FACTORIES["prefix"](small_model), make_head("linear", "pal", 32), "pal").eval()
    with torch.no_grad():
        alone = [model(ids[b: b + 1, : int(mask[b].sum())]) for b in range(3)]
        assert torch.allclose(model(ids, mask), torch.cat(alone), atol=ATOL)
    assert last_token_mask(ids, mask).sum(dim=1).tolist() == [1, 1, 1]


def test_mixed_task_serving_equals_each_row_alone(small_model):
    registry, heads = PromptRegistry(small_model), {}
    registry.add("rev", METHOD_FACTORIES["prefix"](small_model, seed=1))
    add_nlu(registry, "pal", NLUModel(METHOD_FACTORIES["prefix"](small_model, seed=2),
                                      make_head("linear", "pal", 32, seed=3), "pal"), heads)
    add_nlu(registry, "rep", NLUModel(METHOD_FACTORIES["prefix"](small_model, seed=4),
                                      make_head("verbalizer", "rep", 32), "rep"), heads)
    tok = CharTokenizer()
    texts = ["abc=", "abcba=", "abab="]
    ids, mask = tok.batch_encode(texts, pad_side="right")
    outputs = mixed_forward(registry, heads, ["rev", "pal", "rep"], ids, mask)
    with torch.no_grad():
        gen = registry.models["rev"](*tok.batch_encode(texts[:1]))[0]  # (T, V)
        cls = heads["pal"](*tok.batch_encode(texts[1:2]))[0]  # (K,)
        tag = heads["rep"](*tok.batch_encode(texts[2:]))[0]  # (T, K)
    torch.testing.assert_close(outputs[0][:4], gen, rtol=0, atol=ATOL)
    torch.testing.assert_close(outputs[1], cls, rtol=0, atol=ATOL)
    torch.testing.assert_close(outputs[2][:5], tag, rtol=0, atol=ATOL)  # the padded batch is one column wider


def test_a_short_run_learns(base_model):
    torch.manual_seed(0)
    model = NLUModel(METHOD_FACTORIES["prefix"](base_model, p=16), make_head("linear", "rep", 128), "rep")
    cfg = NLUTrainConfig(task="rep", steps=60, batch_size=32, lr=2e-1, eval_every=60, n_train=1000, n_val=100,
                         n_test=200)
    result = train_nlu(model, cfg, progress=False)
    assert result.test_score > result.baseline + 0.1, result.to_dict()  # 0.41 vs 0.23 when written


def test_the_experiment_runs_quick(tmp_path):
    ctx = Context(quick=True, seeds=(0,), cache=str(tmp_path))
    report = nlu.run(ctx)
    cfg = nlu.QUICK
    assert len(report["runs"]) == len(cfg.sizes) * len(cfg.tasks) * len(cfg.heads) * len(cfg.methods)
    nlu.plot(report, tmp_path / "nlu.png")
    assert (tmp_path / "nlu.png").is_file()
    full = nlu.Config()
    assert len(full.sizes) >= 3 and len(full.methods) == 6


# -- checkpoints and the command line ------------------------------------------------------------
@pytest.mark.parametrize("head", ["linear", "verbalizer"])
@pytest.mark.parametrize("name", ["soft_prompt", "prefix_projection"])
def test_a_prompt_with_its_head_saves_and_loads_to_the_same_logits(name, head, small_model, tmp_path):
    from methods import load_prompt, save_prompt

    nlu_model = NLUModel(METHOD_FACTORIES[name](small_model), make_head(head, "rep", small_model.config.d_model, 3),
                         "rep")
    with torch.no_grad():  # a head that is not its initialisation: loading must copy it, not rebuild it
        for p in nlu_model.head.parameters():
            p.add_(0.5)
    ids, mask, _ = nlu_batch(CharTokenizer(), "rep", sample_nlu_inputs("rep", "test", 6))
    path = save_prompt(nlu_model, tmp_path / "tagger.safetensors")
    loaded = load_prompt(small_model, path)
    assert isinstance(loaded, NLUModel) and loaded.head_kind == head and loaded.task == "rep"
    assert set(loaded.head_state_dict()) == set(nlu_model.head_state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded(ids, mask), nlu_model.eval()(ids, mask), atol=ATOL)


def test_a_flipped_byte_in_a_saved_head_is_refused(small_model, tmp_path):
    from methods import load_prompt, save_prompt

    nlu_model = NLUModel(METHOD_FACTORIES["soft_prompt"](small_model), make_head("linear", "pal", 32, 0), "pal")
    path = save_prompt(nlu_model, tmp_path / "classifier.safetensors")
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    import json

    entries = json.loads(data[8:8 + header_len])
    start = 8 + header_len + entries["head.score.weight"]["data_offsets"][0]
    data[start + 1] ^= 0x40  # one byte of the head's weights
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256|sha256|hash"):
        load_prompt(small_model, path)


def test_the_command_line_trains_a_tagger_and_reports_f1_and_the_baseline(tmp_path, capsys):
    from methods.__main__ import main

    report = main(["--task", "rep", "--head", "verbalizer", "--methods", "soft_prompt,full_finetune", "--quick",
                   "--steps", "2", "--eval-every", "1", "--no-progress", "--out", str(tmp_path)])
    assert report["complete"] and report["settings"]["head"] == "verbalizer"
    for r in report["results"]:
        assert r["metric"] == "span_f1" and r["head"] == "verbalizer" and 0 <= r["test_score"] <= 1
        assert r["val_steps"] == [0, 1, 2] and r["baseline"] == pytest.approx(report["results"][0]["baseline"])
    table = capsys.readouterr().out
    assert "test F1" in table and "trivial baseline" in table
    assert (tmp_path / "curves.png").is_file()


def test_the_command_line_refuses_a_head_for_a_generation_task(capsys):
    from methods.__main__ import main

    with pytest.raises(SystemExit):
        main(["--task", "dsc", "--head", "linear", "--quick"])
    assert "drop --head" in capsys.readouterr().err
