"""What every experiment shares: a run context, one training run as a job, a parallel job runner, statistics.

An experiment is a list of independent training runs (method x task x setting x seed). Each
run is a *job*: a module-level function plus keyword arguments, so it can run in this
process or in a worker process. The tiny model is launch-bound, so on one GPU a dozen
processes in parallel finish a sweep many times faster than one; `--jobs N` turns that on.
Every run seeds itself, so its result does not depend on which worker runs it, or when.

Finished runs are cached (`run_jobs`), keyed by what can change their result (`run_key`):
the job's function and parameters, the base model's *content* (its fingerprint, not its
path: two base models at look-alike paths never share results, one base model copied
elsewhere does), and the version of the code (a hash of the source of `minitransformer`,
`methods` and `experiments`: after a code change every run is trained again instead of
silently reusing results the old code made). Cache entries are strict JSON written
atomically; a damaged one is trained again and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
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
from methods.registry import METHODS
from methods.train import TrainConfig, TrainResult, train
from minitransformer import DEFAULT_CHECKPOINT, MiniTransformer, fingerprint, load_checkpoint
from minitransformer.files import write_json

# Learning rates, pinned here so that re-tuning `methods/compare.py` later does not silently change
# these experiments. They are the comparison's defaults when the results were made (a sweep on dsc,
# 1000 steps, seeds 0-2): prompts need steps two orders of magnitude larger than weights.
LR = {name: m.lr for name, m in METHODS.items()}  # methods/registry.py: one table of names, labels and lrs
LABEL = {name: m.short_label for name, m in METHODS.items()}
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


CODE_PACKAGES = ("minitransformer", "methods", "experiments")


def checkpoint_stamp(checkpoint: str | Path) -> tuple[str, tuple]:
    """The checkpoint's resolved path and (name, size, mtime) of its files: changes whenever it is rewritten.

    A ValueError naming the path if there is no checkpoint there.
    """
    path = Path(checkpoint).resolve()
    if not (path / "config.json").is_file():
        raise ValueError(f"no base model checkpoint at {checkpoint} (no config.json there); pass --checkpoint "
                         f"a folder written by save_checkpoint, such as the shipped {DEFAULT_CHECKPOINT}")
    files = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())
    return str(path), files


@functools.lru_cache(maxsize=8)
def _load(path: str, stamp: tuple, device: str) -> MiniTransformer:
    return load_checkpoint(path).to(device)


def base_model(checkpoint: str, device: str) -> MiniTransformer:
    """The frozen base model, loaded once per process, device and version of the checkpoint's files
    (every method leaves it unchanged)."""
    return _load(*checkpoint_stamp(checkpoint), device)


@functools.lru_cache(maxsize=32)
def _fingerprint(path: str, stamp: tuple) -> str:
    return fingerprint(load_checkpoint(path))


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """The base model's content hash (`minitransformer.fingerprint`), computed once per version of its files."""
    return _fingerprint(*checkpoint_stamp(checkpoint))


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of every .py file of the packages a run executes: any change to the code changes it."""
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        root = Path(importlib.import_module(package).__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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
    """A run's identity: the job function, every parameter that can change its result (not its tags),
    the base model's content and the code version (module docstring)."""
    job = {k: v for k, v in job.items() if k != "tags"}
    if "settings" in job:  # fill in every default, so equal runs asked for differently share a key
        settings = asdict(RunSettings(**job["settings"]))
        settings.pop("device")
        if settings["lr"] is None and job.get("method") in LR:
            settings["lr"] = LR[job["method"]]
        job["settings"] = settings
    if "checkpoint" in job:  # the model itself, wherever it lives: not its path
        job["checkpoint"] = checkpoint_fingerprint(job["checkpoint"])
    text = json.dumps({"fn": f"{fn.__module__}.{fn.__qualname__}", "code": code_version(), **job}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_cached(path: Path) -> dict | None:
    """A finished run from the cache; None if there is none, or if the file is damaged (then it is retrained)."""
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):  # missing; or truncated by a crash, or not JSON: train the run again
        return None
    return result if isinstance(result, dict) else None


def run_jobs(ctx: Context, fn: Callable[..., dict], jobs: list[dict], cache: bool = True) -> list[dict]:
    """fn(**job) for every job, in ctx.jobs worker processes; results in the order of `jobs`.

    Each finished run is written to `ctx.cache/runs/` at once (atomically, strict JSON), so
    an interrupted experiment resumes where it stopped, and a run that two experiments
    share is trained once. The longest jobs (most steps) start first, so no worker is left
    with a long tail. `cache=False`: run every job, keep nothing.
    """
    folder = Path(ctx.cache) / "runs"
    keys = [run_key(fn, job) for job in jobs] if cache else [None] * len(jobs)  # checks every checkpoint first
    results: list[dict | None] = [None] * len(jobs)
    damaged = 0
    for i, (job, key) in enumerate(zip(jobs, keys)):
        if cache and ctx.reuse:
            path = folder / f"{key}.json"
            cached = read_cached(path)
            damaged += cached is None and path.exists()
            if cached is not None:
                results[i] = {**cached, **job.get("tags", {}), "from_cache": True}
    todo = sorted((i for i in range(len(jobs)) if results[i] is None),
                  key=lambda i: -jobs[i].get("settings", {}).get("steps", 0))
    if cache:
        ctx.log(f"  {len(jobs)} runs, {len(jobs) - len(todo)} of them from the cache {folder}"
                + (f" ({damaged} damaged entries, trained again)" if damaged else ""))

    def finish(i: int, result: dict, n: int) -> None:
        results[i] = result
        if cache:
            untagged = {k: v for k, v in result.items() if k not in jobs[i].get("tags", {}) and k != "from_cache"}
            write_json(folder / f"{keys[i]}.json", untagged, indent=None)
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
