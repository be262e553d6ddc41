"""Train every method on one task from the same frozen base model and compare them.

This is what `python -m methods` runs. Each method gets the same task, data, seed and
number of steps, and its own learning rate: prompts need far larger steps than weights.
The defaults below were chosen by a sweep on the default task (dsc, 1000 steps, each
method at two or three of 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 2e-1; prefix tuning over seeds 0-2
too) and are saved with every result.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from minitransformer import MiniTransformer, engine, format_example, load_checkpoint, sample_inputs

from . import registry
from .nlu_tasks import NLU_TASKS
from .train import TrainConfig, TrainResult, train


@dataclass
class RunSettings:
    task: str = "dsc"
    prompt_len: int = 16
    steps: int = 1000
    lr: float | None = None  # None: each method's own default
    seed: int = 0
    init: str = "SAMPLE_VOCAB"  # soft prompt initialisation
    init_text: str | None = None  # TEXT init: this text (repeated/cut to P); None: task_name_text()
    with_task_name: bool = False
    batch_size: int = 64
    n_val: int = 200
    n_test: int = 500
    eval_every: int = 100
    device: str = "cpu"
    precision: str = "fp32"  # or "bf16" autocast
    head: str = "linear"  # an understanding task (nlu_tasks.py): "linear" head or "verbalizer"; else unused


def task_name_text(task: str, length: int, seed: int = 0) -> str:
    """Text for TEXT initialisation: demonstrations of `task` ending with its name, `length` characters.

    The prompt sits right before the input, so its text should end where the model expects
    the input: `...rev:`. The task name alone repeated (`rev:rev:rev:rev:`) is text the model
    never saw in pretraining, and gives a worse start than random vectors (see the README).
    """
    example = format_example(task, sample_inputs(task, "train", 1, seed)[0])
    text = example * (length // len(example) + 1) + f"{task}:"
    return text[-length:]


METHODS = registry.METHODS  # name -> build, lr, label: one table for the CLI, experiments, benchmarks
DEFAULT_METHODS = registry.DEFAULT_METHODS


def run_method(base: MiniTransformer, name: str, s: RunSettings, progress: bool = True) -> TrainResult:
    if s.task in NLU_TASKS:  # classification or tagging: the method trains with a task head (train_nlu.py)
        from .train_nlu import run_nlu_method  # (train_nlu builds its methods from METHODS below)
        return run_nlu_method(base, name, s, s.task, s.head, progress=progress)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    spec = METHODS[name]
    model = spec.build(base, s).to(s.device)
    if s.device.startswith("cuda"):  # where speed is asked for: the engine's shortcuts (minitransformer/engine.py)
        engine.enable(model)
    cfg = TrainConfig(task=s.task, with_task_name=s.with_task_name, steps=s.steps, batch_size=s.batch_size,
                      lr=s.lr if s.lr is not None else spec.lr, eval_every=s.eval_every, n_val=s.n_val,
                      n_test=s.n_test, seed=s.seed, precision=s.precision)
    start = time.time()
    result = train(model, cfg, progress=progress)
    result.method, result.seconds = name, round(time.time() - start, 2)  # wall time, evaluation included
    return result


def compare(methods=DEFAULT_METHODS, settings: RunSettings | None = None, checkpoint=None,
            progress: bool = True,
            on_result: Callable[[list[TrainResult]], None] | None = None) -> list[TrainResult]:
    """Train each method from the same frozen base; return their results in order.

    `on_result(results so far)` is called after each method finishes: `python -m methods`
    saves them there, so a crash in a later method loses nothing already trained.
    """
    settings = settings or RunSettings()
    torch.manual_seed(settings.seed)
    base = (load_checkpoint(checkpoint) if checkpoint else load_checkpoint()).to(settings.device)
    results = []
    for name in methods:
        results.append(run_method(base, name, settings, progress))
        if on_result is not None:
            on_result(list(results))
    return results


METRIC_NAMES = {"exact_match": "test EM", "accuracy": "test acc", "span_f1": "test F1"}


def format_table(results: list[TrainResult]) -> str:
    """One line per method: trainable parameters, their share of the base, the test score, wall seconds."""
    metric = METRIC_NAMES[results[0].metric] if results else "test EM"
    lines = [f"{'method':<20} {'trainable':>10} {'% of base':>9} {metric:>8} {'seconds':>8}", "-" * 59]
    for r in results:
        lines.append(f"{r.method:<20} {r.trainable_params:>10,} {100 * r.trainable_params / r.base_params:>8.2f}% "
                     f"{r.test_score:>8.1%} {r.seconds:>8.1f}")
    baseline = getattr(results[-1], "baseline", None) if results else None
    if baseline is not None:  # an understanding task: what a trivial rule scores (nlu_tasks.baseline)
        lines.append(f"{'trivial baseline':<20} {'':>10} {'':>9} {baseline:>8.1%}")
    return "\n".join(lines)
