"""The experiments CLI end to end, at a smoke size: it runs, writes a results.json of the shared schema, and a figure."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import ensemble, layers, packing, reparameterisation, transfer
from experiments.__main__ import EXPERIMENTS, main
from experiments.common import Context
from minitransformer import CharTokenizer, load_checkpoint, sample_inputs
from minitransformer.data import IGNORE_INDEX, PRETRAIN_TASKS, TASKS, OneExampleStream
from minitransformer.evaluate import exact_match


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the smoke run is tiny; more threads only contend
    yield
    torch.set_num_threads(threads)


def test_the_cli_writes_results_json_and_a_figure(tmp_path, one_thread):
    main(["depth", "--quick", "--seeds", "0", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"), "--quiet"])
    folder = tmp_path / "depth"
    report = json.loads((folder / "results.json").read_text())
    assert {"experiment", "paper", "command", "device", "seeds", "config", "runs", "summary"} <= set(report)
    assert report["experiment"] == "depth" and report["seeds"] == [0] and report["quick"] is True
    cfg = report["config"]
    assert len(report["runs"]) == len(cfg["methods"]) * len(cfg["tasks"])  # one run per method, task and seed
    for run in report["runs"]:
        assert {"method", "task", "seed", "lr", "test_exact_match", "val_steps", "val_exact_match"} <= set(run)
        assert 0.0 <= run["test_exact_match"] <= 1.0 and run["val_steps"][-1] == run["steps"]
    for key, value in report["summary"].items():
        assert {"mean", "min", "max", "values"} <= set(value), key
        assert value["min"] <= value["mean"] <= value["max"]
    png = folder / "depth.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_experiment_is_registered_with_a_paper_and_a_quick_config():
    assert set(EXPERIMENTS) == {"prompt_length", "initialisation", "reparameterisation", "depth", "scale",
                                "hard_vs_soft", "packing", "nlu", "layers", "transfer", "ensemble"}
    for module in EXPERIMENTS.values():
        assert module.PAPER and module.__doc__ and module.QUICK != module.Config()


def test_one_example_rows_start_at_position_0_and_label_only_the_answer():
    tokenizer = CharTokenizer()
    ids, labels = OneExampleStream(tokenizer, row_len=32, seed=0).batch(8)  # (B, T) each
    assert ids.shape == labels.shape == (8, 32)
    for row, row_labels in zip(ids, labels):
        text = tokenizer.decode(row[row != tokenizer.pad_id])
        name, rest = text.split(":")
        x, answer = rest.split("=")
        assert name in PRETRAIN_TASKS and answer == TASKS[name].solve(x) + ".", "one whole example at position 0"
        assert bool((row[len(text):] == tokenizer.pad_id).all()), "then only padding"
        graded = row_labels[row_labels != IGNORE_INDEX].tolist()
        assert graded == tokenizer.encode(answer), "labels: the answer and its '.', nothing else"


def test_the_teacher_forced_shift_measure_at_shift_0_is_greedy_exact_match():
    model, tokenizer = load_checkpoint(), CharTokenizer()
    for task in ("srt", "dsc", "rol"):  # the shipped base is right on some of these inputs and wrong on others
        inputs = sample_inputs(task, "test", 100)
        greedy = exact_match(model, tokenizer, task, inputs)
        assert packing.shifted_exact_match(model, task, inputs, 0, "none") == pytest.approx(greedy, abs=1e-6)
        assert packing.shifted_exact_match(model, task, inputs, 0, "examples") == pytest.approx(greedy, abs=1e-6)


def test_packing_quick_run_pretrains_both_bases_trains_on_each_and_plots(tmp_path, one_thread):
    ctx = Context(seeds=(0,), quick=True, cache=str(tmp_path / "cache"))
    report = packing.run(ctx)
    cfg = packing.QUICK
    assert [b["stream"] for b in report["bases"]] == list(packing.STREAMS)
    for base in report["bases"]:
        assert base["source"].startswith("pretrained here") and set(base["test_exact_match"]) == set(TASKS)
        assert all(len(v) == len(cfg.shifts) for v in base["rev_shifted_exact_match"].values())
    per_base = len(cfg.inits) + len(cfg.heldout_methods)
    assert len(report["runs"]) == 2 * per_base and len(report["summary"]) == 2 * per_base
    for value in report["summary"].values():
        assert {"mean", "min", "max", "values"} <= set(value) and value["n"] == 1
    packing.plot(report, tmp_path / "packing.png")
    assert (tmp_path / "packing.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = packing.run(ctx)  # the bases are found in the cache, and so are the runs
    assert {b["source"] for b in again["bases"]} == {"cached"} and all(r["from_cache"] for r in again["runs"])


# -- issue 19: the quick runs of the experiments beyond the four methods -----------------------


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_layers_quick_run_trains_a_prefix_on_every_layer_set_and_plots(tmp_path, one_thread):
    report = layers.run(Context(seeds=(0,), quick=True, cache=str(tmp_path / "cache")))
    sets = layers.layer_sets(report["n_layer"])
    tasks = ["dsc", "rep"]
    assert set(report["summary"]) == {f"{t}/{n}" for t in tasks for n in sets}
    assert len(report["runs"]) == len(tasks) * len(sets)
    assert sets["top 2"] == (2, 3) and sets["bottom 1"] == (0,) and sets["all"] == (0, 1, 2, 3)
    C, P = 128, layers.QUICK.prompt_len
    for name in sets:
        assert report["summary"][f"dsc/{name}"]["trainable_params"] == P * 2 * C * len(sets[name])
        head = report["summary"][f"rep/{name}"]["trainable_params"] - P * 2 * C * len(sets[name])
        assert head == report["summary"]["rep/all"]["trainable_params"] - P * 2 * C * 4 > 0  # the linear head
    assert report["summary"]["rep/all"]["metric"] == "span_f1"
    layers.plot(report, tmp_path / "layers.png")
    assert is_png(tmp_path / "layers.png")


def test_transfer_quick_run_starts_targets_from_saved_sources_and_plots(tmp_path, one_thread):
    ctx = Context(seeds=(0,), quick=True, cache=str(tmp_path / "cache"))
    report = transfer.run(ctx)
    cfg = transfer.QUICK
    n_sources = len(cfg.sources)
    per_target = [len(transfer.BASELINES) + sum(s != t for s, _, _ in cfg.sources) for t, _, _ in cfg.targets]
    assert len(report["runs"]) == n_sources + sum(per_target) == len(report["summary"]) + n_sources
    assert {p["source"] for p in report["similarity_vs_gain"]["points"] if p["target"] == "dsc"} == {"rev", "rsh"}
    for point in report["similarity_vs_gain"]["points"]:
        assert -1.0 <= point["similarity"] <= 1.0
    transfer.plot(report, tmp_path / "transfer.png")
    assert is_png(tmp_path / "transfer.png")
    again = transfer.run(ctx)  # the prompts are in the cache, and so are the runs
    assert all(r["from_cache"] for r in again["runs"]) and again["summary"] == report["summary"]


def test_ensemble_quick_run_votes_and_its_batch_matches_each_prompt_alone(tmp_path, one_thread):
    report = ensemble.run(Context(seeds=(0, 1), quick=True, cache=str(tmp_path / "cache")))
    assert len(report["ensembles"]) == 2 and len(report["runs"]) == 2 * ensemble.QUICK.members
    assert report["ensembles"][1]["seeds"] == [3, 4, 5]
    for e in report["ensembles"]:
        assert e["batch_equals_alone"] and len(e["members"]) == ensemble.QUICK.members
    ensemble.plot(report, tmp_path / "ensemble.png")
    assert is_png(tmp_path / "ensemble.png")


def test_reparameterisation_quick_run_adds_the_residual_methods(tmp_path, one_thread):
    report = reparameterisation.run(Context(seeds=(0,), quick=True, cache=str(tmp_path / "cache")))
    cfg = reparameterisation.QUICK
    assert set(report["summary"]) == set(cfg.methods) | set(reparameterisation.RESIDUAL)
    assert len(report["runs"]) == (len(cfg.methods) + len(cfg.residual_methods)) * len(cfg.lrs)
    residual = [r for r in report["runs"] if r["method"] == "prefix_tuning_residual"]
    assert {r["lr"] for r in residual} == set(cfg.lrs)
    reparameterisation.plot(report, tmp_path / "reparameterisation.png")
    assert is_png(tmp_path / "reparameterisation.png")
