"""The experiments CLI end to end, at a smoke size: it runs, writes a results.json of the shared schema, and a figure."""

from __future__ import annotations

import json

import pytest
import torch

from experiments.__main__ import EXPERIMENTS, main


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
                                "hard_vs_soft"}
    for module in EXPERIMENTS.values():
        assert module.PAPER and module.__doc__ and module.QUICK != module.Config()
