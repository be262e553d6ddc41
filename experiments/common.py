"""What every experiment shares: a run context, one training run as a job, a parallel job runner, statistics.

An experiment is a list of independent training runs (method x task x setting x seed). Each
run is a *job*: a module-level function plus keyword arguments, so it can run in this
process or in a worker process. The tiny model is launch-bound, so on one GPU a dozen
processes in parallel finish a sweep many times faster than one; `--jobs N` turns that on.
Every run seeds itself, so its result does not depend on which worker runs it, or when.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from methods.compare import RunSettings, run_method
from methods.prompt_model import PromptModel
from methods.train import TrainConfig, TrainResult, train
from minitransformer import DEFAULT_CHECKPOINT, MiniTransformer, load_checkpoint

# Learning rates, pinned here so that re-tuning `methods/compare.py` later does not silently change
# these experiments. They are the comparison's defaults when the results were made (a sweep on dsc,
# 1000 steps, seeds 0-2): prompts need steps two orders of magnitude larger than weights.
LR = {"soft_prompt": 1e-1, "p_tuning_mlp": 1e-2, "p_tuning_lstm": 1e-2, "deep_prompt": 1e-1,
      "prefix_tuning": 2e-1, "prefix_tuning_mlp": 1e-2, "lora": 1e-2, "full_finetune": 1e-3}
LABEL = {"soft_prompt": "soft prompt", "p_tuning_mlp": "P-tuning (MLP)", "p_tuning_lstm": "P-tuning (LSTM)",
         "deep_prompt": "deep prompt", "prefix_tuning": "prefix", "prefix_tuning_mlp": "prefix + MLP",
         "lora": "LoRA r=4", "full_finetune": "full fine-tuning"}
# --quick: a smoke run of the whole pipeline (tests, CPU), not a result.
QUICK_SETTINGS = {"batch_size": 8, "n_val": 16, "n_test": 16, "eval_every": 2}


@dataclass
class Context:
    """Where and how an experiment runs: the command-line flags, in one object."""

    device: str = "cpu"
    seeds: tuple[int, ...] = (0, 1, 2)
    jobs: int = 1  # worker processes; 1 runs everything in this process
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    quick: bool = False
    cache: str = "/tmp/experiments-cache"  # scratch: finished runs, and the scale experiment's base models
    reuse: bool = True  # reuse a finished run from the cache when the same run is asked for again
    log: Callable[[str], None] = field(default=lambda message: None)

    def settings(self, **values) -> dict:
        """Keyword arguments for `RunSettings` (the device is added by the job)."""
        return {**(QUICK_SETTINGS if self.quick else {}), **values}


@functools.lru_cache(maxsize=8)
def base_model(checkpoint: str, device: str) -> MiniTransformer:
    """The frozen base model, loaded once per process and device (every method leaves it unchanged)."""
    return load_checkpoint(checkpoint).to(device)


def summarise(result: TrainResult, **tags) -> dict:
    """The numbers a figure or table needs from one run (the loss every 10 steps, not every step)."""
    return {**tags, "method": result.method, "seed": result.config["seed"], "lr": result.config["lr"],
            "steps": result.config["steps"], "trainable_params": result.trainable_params,
            "base_params": result.base_params, "initial_val_exact_match": result.initial_val_exact_match,
            "test_exact_match": result.test_exact_match, "val_steps": result.val_steps,
            "val_exact_match": result.val_exact_match, "loss_every_10": [round(x, 4) for x in result.loss[::10]],
            "seconds": result.seconds}


def train_run(checkpoint: str, device: str, method: str, settings: dict, tags: dict) -> dict:
    """Job: one method of `methods.compare.METHODS`, trained and tested with `settings`."""
    s = RunSettings(**settings, device=device)
    s.lr = LR[method] if s.lr is None else s.lr
    return summarise(run_method(base_model(checkpoint, device), method, s, progress=False), **tags)


def fit(model: PromptModel, settings: dict, device: str) -> TrainResult:
    """Train a model built by the experiment itself (e.g. a soft prompt with a custom init text)."""
    s = RunSettings(**settings, device=device)
    cfg = TrainConfig(task=s.task, with_task_name=s.with_task_name, steps=s.steps, batch_size=s.batch_size,
                      lr=s.lr, eval_every=s.eval_every, n_val=s.n_val, n_test=s.n_test, seed=s.seed)
    return train(model.to(device), cfg, progress=False)


def _one_thread() -> None:
    torch.set_num_threads(1)  # many workers share the CPU cores; each keeps to one


def run_key(fn: Callable, job: dict) -> str:
    """A run's identity: the job function and every parameter that can change its result (not its tags)."""
    job = {k: v for k, v in job.items() if k != "tags"}
    if "settings" in job:  # fill in every default, so equal runs asked for differently share a key
        settings = asdict(RunSettings(**job["settings"]))
        settings.pop("device")
        if settings["lr"] is None and job.get("method") in LR:
            settings["lr"] = LR[job["method"]]
        job["settings"] = settings
    if "checkpoint" in job:  # the same checkpoint may live at another absolute path on another machine
        job["checkpoint"] = "/".join(Path(job["checkpoint"]).parts[-2:])
    text = json.dumps({"fn": f"{fn.__module__}.{fn.__qualname__}", **job}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def run_jobs(ctx: Context, fn: Callable[..., dict], jobs: list[dict], cache: bool = True) -> list[dict]:
    """fn(**job) for every job, in ctx.jobs worker processes; results in the order of `jobs`.

    Each finished run is written to `ctx.cache/runs/` at once, so an interrupted experiment
    resumes where it stopped, and a run that two experiments share is trained once. The
    longest jobs (most steps) start first, so no worker is left with a long tail.
    """
    folder = Path(ctx.cache) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    keys = [run_key(fn, job) for job in jobs]
    results: list[dict | None] = [None] * len(jobs)
    for i, (job, key) in enumerate(zip(jobs, keys)):
        if cache and ctx.reuse and (folder / f"{key}.json").is_file():
            results[i] = {**json.loads((folder / f"{key}.json").read_text()), **job.get("tags", {}), "from_cache": True}
    todo = sorted((i for i in range(len(jobs)) if results[i] is None),
                  key=lambda i: -jobs[i].get("settings", {}).get("steps", 0))
    ctx.log(f"  {len(jobs)} runs, {len(jobs) - len(todo)} of them from the cache {folder}")

    def finish(i: int, result: dict, n: int) -> None:
        results[i] = result
        if cache:
            untagged = {k: v for k, v in result.items() if k not in jobs[i].get("tags", {}) and k != "from_cache"}
            (folder / f"{keys[i]}.json").write_text(json.dumps(untagged) + "\n")
        ctx.log(f"  [{n}/{len(todo)}] {_describe(result)}")

    if ctx.jobs <= 1:
        for n, i in enumerate(todo, 1):
            finish(i, fn(**jobs[i]), n)
        return results
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(ctx.jobs, mp_context=context, initializer=_one_thread) as pool:
        futures = {pool.submit(fn, **jobs[i]): i for i in todo}
        for n, future in enumerate(as_completed(futures), 1):
            finish(futures[future], future.result(), n)
    return results


def _describe(run: dict) -> str:
    tags = " ".join(f"{k}={v}" for k, v in run.items() if isinstance(v, (str, int, float)) and k not in
                    ("initial_val_exact_match", "test_exact_match", "seconds", "trainable_params", "base_params"))
    em = run.get("test_exact_match")
    em = f" test EM {em:.3f}" if isinstance(em, float) else ""
    return f"{tags}{em} ({run.get('seconds', 0):.0f} s)"


def stats(values: list[float]) -> dict:
    """Mean, spread and the values themselves, over seeds."""
    v = np.asarray(values, dtype=float)
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4), "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4), "n": len(v), "values": [round(float(x), 4) for x in v]}


def select(runs: list[dict], **tags) -> list[dict]:
    """The runs whose tags equal `tags`."""
    return [r for r in runs if all(r.get(k) == v for k, v in tags.items())]


def steps_to(run: dict, level: float = 0.9) -> int | None:
    """The first validation step at which exact-match reached `level` (None: never)."""
    return next((s for s, em in zip(run["val_steps"], run["val_exact_match"]) if em >= level), None)
