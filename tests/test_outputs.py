"""Nothing lost, nothing silently wrong: what the commands write, where, and what they refuse to write.

One test per claim, each named as the claim it protects. Every test runs from a temporary
working folder (`in_tmp`), so the commands' relative defaults (`runs/...`) land there, and
trains at most a few steps of a tiny model, or nothing at all: refusals must come before
any training, so the tests make training fail loudly if it is ever reached.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import methods.compare
from experiments import __main__ as experiments_cli
from experiments import common
from methods import __main__ as methods_cli
from methods.train import TrainResult
from minitransformer import DEFAULT_CHECKPOINT, MiniTransformer, ModelConfig, save_checkpoint
from minitransformer import pretrain as pretrain_module
from minitransformer.files import write_json

TINY_MODEL = ["--d-model", "16", "--n-layer", "1", "--n-head", "2"]
TINY_PRETRAIN = ["--steps", "3", "--batch-size", "2", "--eval-n", "1", *TINY_MODEL]
TINY_SETTINGS = {"task": "dsc", "steps": 1, "batch_size": 2, "n_val": 2, "n_test": 2, "eval_every": 1,
                 "prompt_len": 2, "seed": 0}


def digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny runs; more threads only contend
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_pretraining(monkeypatch):
    """Pretraining fails the test if it starts: a refusal must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("pretraining started; the refusal should have come first")
    monkeypatch.setattr(pretrain_module, "pretrain", fail)


def fake_result(name: str, loss: float = 0.5) -> TrainResult:
    return TrainResult(method=name, trainable_params=10, base_params=1000, test_exact_match=0.5,
                       initial_val_exact_match=0.0, seconds=0.1, loss=[1.0, loss], val_steps=[0, 2],
                       val_exact_match=[0.0, 0.5], config={"steps": 2})


@pytest.fixture
def fake_training(monkeypatch):
    """`python -m methods` without training: each method "finishes" at once; `fake_training.fail_on` raises,
    `fake_training.nan_loss` returns a diverged run. The names of the methods started are in `.calls`."""
    class Fake:
        calls: list[str] = []
        fail_on: str | None = None
        nan_loss = False

        def __call__(self, base, name, settings, progress=True):
            self.calls.append(name)
            if name == self.fail_on:
                raise RuntimeError(f"{name} crashed")
            return fake_result(name, math.nan if self.nan_loss else 0.5)

    fake = Fake()
    fake.calls = []
    monkeypatch.setattr(methods.compare, "run_method", fake)
    return fake


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started; the refusal should have come first")
    monkeypatch.setattr(methods.compare, "run_method", fail)


def methods_main(*argv: str) -> dict:
    return methods_cli.main(["--methods", "soft_prompt,lora", "--quick", "--no-progress", *argv])


# -- pretraining ---------------------------------------------------------------------------------
def test_a_smoke_run_of_pretraining_leaves_the_shipped_base_models_bytes_unchanged(in_tmp, one_thread):
    before = digest(DEFAULT_CHECKPOINT)
    out = pretrain_module.main(TINY_PRETRAIN)
    assert digest(DEFAULT_CHECKPOINT) == before
    assert (in_tmp / out / "model.safetensors").is_file() and Path(out).parts[0] == "runs"


@pytest.mark.parametrize("out", [DEFAULT_CHECKPOINT, DEFAULT_CHECKPOINT / ".." / "base"])
def test_pretraining_refuses_to_write_over_the_shipped_base_model_without_replace_shipped(
        out, in_tmp, no_pretraining, capsys):
    before = digest(DEFAULT_CHECKPOINT)
    with pytest.raises(SystemExit) as exit_info:
        pretrain_module.main([*TINY_PRETRAIN, "--out", str(out)])
    assert exit_info.value.code == 2 and "--replace-shipped" in capsys.readouterr().err
    assert digest(DEFAULT_CHECKPOINT) == before


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: must be a positive integer, got 0"),
    (["--lr", "inf"], "--lr: must be a positive number, got inf (not finite)"),
    (["--lr", "nan"], "--lr: must be a positive number, got nan (not finite)"),
    (["--lr", "0"], "--lr: must be a positive number, got 0"),
    (["--eval-n", "0"], "--eval-n: must be a positive integer, got 0"),
    (["--d-model", "15"], "not divisible by n_head"),
])
def test_pretraining_refuses_settings_that_cannot_make_a_model_before_training(
        argv, message, in_tmp, no_pretraining, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain_module.main([*TINY_PRETRAIN, *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert files_under(in_tmp) == []  # nothing written


def test_a_loss_that_turns_nan_stops_pretraining_and_saves_no_checkpoint(in_tmp, monkeypatch):
    loss = pretrain_module.lm_loss
    monkeypatch.setattr(pretrain_module, "lm_loss", lambda logits, labels: loss(logits, labels) * math.nan)
    with pytest.raises(ValueError, match="training diverged; lower the learning rate"):
        pretrain_module.main([*TINY_PRETRAIN, "--out", "ckpt"])
    assert files_under(in_tmp) == []


def test_pretraining_refuses_an_out_folder_that_holds_files_without_overwrite(in_tmp, no_pretraining, capsys):
    (in_tmp / "ckpt").mkdir()
    (in_tmp / "ckpt" / "model.safetensors").write_text("an earlier run")
    with pytest.raises(SystemExit):
        pretrain_module.main([*TINY_PRETRAIN, "--out", "ckpt"])
    assert "--overwrite" in capsys.readouterr().err
    assert (in_tmp / "ckpt" / "model.safetensors").read_text() == "an earlier run"


# -- python -m methods ---------------------------------------------------------------------------
def test_methods_refuses_an_out_that_is_a_file_before_training(in_tmp, no_training, capsys):
    (in_tmp / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        methods_main("--out", "notes.txt")
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (in_tmp / "notes.txt").read_text() == "mine"


def test_a_second_run_into_the_same_out_is_refused_without_overwrite_and_allowed_with_it(
        in_tmp, fake_training, capsys):
    methods_main("--out", "run")
    first = (in_tmp / "run" / "results.json").read_bytes()
    fake_training.calls.clear()
    with pytest.raises(SystemExit):
        methods_main("--out", "run")
    err = capsys.readouterr().err
    assert "already holds results" in err and "--overwrite" in err
    assert fake_training.calls == [] and (in_tmp / "run" / "results.json").read_bytes() == first
    report = methods_main("--out", "run", "--overwrite")
    assert fake_training.calls == ["soft_prompt", "lora"] and report["complete"] is True


def test_the_default_out_is_a_new_folder_each_run(in_tmp, fake_training):
    methods_main()
    methods_main()  # the same command again: no collision, nothing replaced
    folders = sorted(p.parent for p in in_tmp.glob("runs/compare-*/results.json"))
    assert len(folders) == 2


def test_a_crash_in_a_later_method_keeps_the_earlier_methods_results(in_tmp, fake_training, capsys):
    fake_training.fail_on = "lora"
    with pytest.raises(RuntimeError, match="lora crashed"):
        methods_main("--out", "run")
    saved = json.loads((in_tmp / "run" / "results.json").read_text())
    assert saved["complete"] is False and [r["method"] for r in saved["results"]] == ["soft_prompt"]
    assert "stopped after 1 of 2 methods" in capsys.readouterr().err


def test_a_finished_run_is_marked_complete_with_every_method(in_tmp, fake_training):
    methods_main("--out", "run")
    saved = json.loads((in_tmp / "run" / "results.json").read_text())
    assert saved["complete"] is True and [r["method"] for r in saved["results"]] == ["soft_prompt", "lora"]
    assert {p.name for p in (in_tmp / "run").iterdir()} == {"results.json", "curves.png", "params_vs_accuracy.png"}


def test_write_json_refuses_nan_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite number at \['results'\]\[0\]\['loss'\]\[1\]"):
        write_json(tmp_path / "r.json", {"results": [{"loss": [1.0, math.nan]}]})
    assert not (tmp_path / "r.json").exists()


def test_a_diverged_run_never_writes_nan_into_results_json_and_the_table_is_still_printed(
        in_tmp, fake_training, capsys):
    fake_training.nan_loss = True
    with pytest.raises(ValueError, match=r"\['loss'\]\[1\]"):
        methods_main("--out", "run")
    assert "soft_prompt" in capsys.readouterr().out  # the numbers were printed before the write failed
    for path in (in_tmp / "run").glob("*.json"):
        assert "NaN" not in path.read_text() and "Infinity" not in path.read_text(), path


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_methods_refuses_a_non_finite_learning_rate(value, capsys):
    with pytest.raises(SystemExit):
        methods_cli.parse_args([f"--lr={value}"])
    assert "must be a positive number" in capsys.readouterr().err


def test_methods_refuses_a_batch_larger_than_the_training_inputs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        methods_cli.parse_args(["--batch-size", "4001"])
    assert exit_info.value.code == 2
    assert "larger than the 4000 training inputs a batch is drawn from; pass --batch-size 4000 or less" \
        in capsys.readouterr().err


def test_methods_refuses_a_missing_checkpoint_before_training(in_tmp, no_training, capsys):
    with pytest.raises(SystemExit):
        methods_main("--checkpoint", "/nonexistent/checkpoints/base")
    assert "/nonexistent/checkpoints/base" in capsys.readouterr().err
    assert files_under(in_tmp) == []


# -- --device cuda without a GPU -------------------------------------------------------------------
def _benchmark_main(argv):
    from benchmarks import train_step
    return train_step.main(argv)


CLIS = {
    "methods": lambda argv: methods_cli.parse_args(argv),
    "experiments": lambda argv: experiments_cli.parse_args(["depth", *argv]),
    "pretrain": lambda argv: pretrain_module.parse_args(argv),
    "benchmarks": _benchmark_main,
}


@pytest.mark.parametrize("cli", CLIS)
def test_device_cuda_without_a_gpu_is_refused_up_front_naming_the_fix(cli, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        CLIS[cli](["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "no CUDA GPU is visible to PyTorch; run with --device cpu" in capsys.readouterr().err


# -- python -m experiments -----------------------------------------------------------------------
def test_an_experiments_smoke_run_does_not_touch_the_committed_results(in_tmp, one_thread):
    before = digest(experiments_cli.COMMITTED_RESULTS)
    experiments_cli.main(["depth", "--quick", "--seeds", "0", "--cache", str(in_tmp / "cache"), "--quiet"])
    assert digest(experiments_cli.COMMITTED_RESULTS) == before
    assert len(list(in_tmp.glob("runs/experiments-*/depth/results.json"))) == 1


def test_a_smoke_run_is_refused_into_the_committed_results_folder(in_tmp, capsys):
    with pytest.raises(SystemExit):
        experiments_cli.main(["depth", "--quick", "--out", str(experiments_cli.COMMITTED_RESULTS), "--overwrite",
                              "--cache", str(in_tmp / "cache")])
    assert "never writes into" in capsys.readouterr().err


def test_an_experiment_refuses_an_out_that_holds_results_before_training(in_tmp, monkeypatch, capsys):
    monkeypatch.setattr(common, "run_method", lambda *a, **k: pytest.fail("training started"))
    (in_tmp / "out" / "depth").mkdir(parents=True)
    (in_tmp / "out" / "depth" / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        experiments_cli.main(["depth", "--quick", "--out", "out", "--cache", str(in_tmp / "cache")])
    assert "already holds results" in capsys.readouterr().err


def test_an_experiment_refuses_a_missing_checkpoint_before_anything(in_tmp, capsys):
    with pytest.raises(SystemExit):
        experiments_cli.main(["depth", "--quick", "--checkpoint", "/nonexistent/checkpoints/base",
                              "--cache", str(in_tmp / "cache")])
    assert "no base model checkpoint at /nonexistent/checkpoints/base" in capsys.readouterr().err
    assert files_under(in_tmp) == []
    with pytest.raises(ValueError, match="/nonexistent/checkpoints/base"):
        common.run_jobs(common.Context(cache=str(in_tmp / "cache")), common.train_run, [job("/nonexistent/checkpoints/base")])


def tiny_base(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    save_checkpoint(MiniTransformer(ModelConfig(d_model=16, n_layer=1, n_head=2)), path)
    return str(path)


def job(checkpoint: str) -> dict:
    return {"checkpoint": checkpoint, "device": "cpu", "method": "soft_prompt", "settings": TINY_SETTINGS,
            "tags": {}}


def test_two_base_models_at_look_alike_paths_do_not_share_cached_results(tmp_path, one_thread):
    ctx = common.Context(cache=str(tmp_path / "cache"))
    a = tiny_base(tmp_path / "a" / "checkpoints" / "base", seed=0)
    b = tiny_base(tmp_path / "b" / "checkpoints" / "base", seed=1)
    assert "from_cache" not in common.run_jobs(ctx, common.train_run, [job(a)])[0]
    assert "from_cache" not in common.run_jobs(ctx, common.train_run, [job(b)])[0]  # another model: trained
    copy = shutil.copytree(a, tmp_path / "elsewhere" / "base")
    assert common.run_jobs(ctx, common.train_run, [job(str(copy))])[0]["from_cache"] is True  # same model


def test_a_code_change_retrains_instead_of_reusing_results(tmp_path, monkeypatch):
    a = tiny_base(tmp_path / "a", seed=0)
    key = common.run_key(common.train_run, job(a))
    monkeypatch.setattr(common, "code_version", lambda: "another version of the code")
    assert common.run_key(common.train_run, job(a)) != key


def test_a_truncated_cache_entry_is_trained_again_and_replaced(tmp_path, one_thread):
    ctx = common.Context(cache=str(tmp_path / "cache"))
    a = tiny_base(tmp_path / "a", seed=0)
    common.run_jobs(ctx, common.train_run, [job(a)])
    (entry,) = (tmp_path / "cache" / "runs").glob("*.json")
    entry.write_text(entry.read_text()[:40])  # as if the machine died mid-write
    assert "from_cache" not in common.run_jobs(ctx, common.train_run, [job(a)])[0]
    assert json.loads(entry.read_text())["method"] == "soft_prompt"
    assert common.run_jobs(ctx, common.train_run, [job(a)])[0]["from_cache"] is True


# -- benchmarks ----------------------------------------------------------------------------------
def test_a_benchmark_refuses_to_replace_an_existing_out_file_before_timing(tmp_path, monkeypatch, capsys):
    from benchmarks import train_step
    monkeypatch.setattr(train_step, "bench_method", lambda *a: pytest.fail("benchmark started"))
    out = tmp_path / "rows.json"
    out.write_text("committed rows")
    with pytest.raises(SystemExit):
        train_step.main(["--shapes", "toy", "--methods", "soft_prompt", "--out", str(out)])
    assert "already exists" in capsys.readouterr().err and out.read_text() == "committed rows"
