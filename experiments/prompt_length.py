"""Prompt length (Lester, Al-Rfou & Constant 2021, §3.2, Fig. 3a): how many virtual tokens are needed?

Lester et al. found that one token is far from enough, that accuracy rises up to about 20
tokens, and that longer prompts help little or even hurt (for the largest models, length
hardly matters at all). Here a soft prompt of 1, 4, 16 and 64 tokens (and a prefix of the
same lengths, for contrast) is trained from the same frozen base model on two tasks:

- `rev` with its name removed: the model knows the task; the prompt has only to name it;
- the held-out `dsc` (sort descending): the prompt must steer the model into a new task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .common import LABEL, Context, run_jobs, select, stats, train_run
from .plotting import band, save, subplots

NAME = "prompt_length"
PAPER = "Lester et al. 2021, Fig. 3a (prompt length)"


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (1, 4, 16, 64)
    methods: tuple[str, ...] = ("soft_prompt", "prefix_tuning")
    tasks: tuple[tuple[str, int], ...] = (("rev", 300), ("dsc", 1000))  # (task, training steps)
    init: str = "SAMPLE_VOCAB"  # the soft prompt's initialisation


QUICK = Config(lengths=(1, 4), tasks=(("rev", 2), ("dsc", 2)))


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    jobs = [{"checkpoint": ctx.checkpoint, "device": ctx.device, "method": method,
             "settings": ctx.settings(task=task, steps=steps, prompt_len=P, seed=seed, init=cfg.init),
             "tags": {"task": task, "prompt_len": P}}
            for task, steps in cfg.tasks for method in cfg.methods for P in cfg.lengths for seed in ctx.seeds]
    runs = run_jobs(ctx, train_run, jobs)
    summary = {f"{method}/{task}/P={P}": {**stats([r["test_exact_match"] for r in select(
                   runs, method=method, task=task, prompt_len=P)]),
                   "trainable_params": select(runs, method=method, task=task, prompt_len=P)[0]["trainable_params"]}
               for task, _ in cfg.tasks for method in cfg.methods for P in cfg.lengths}
    return {"config": asdict(cfg), "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg = report["config"]
    fig, axes = subplots(len(cfg["tasks"]))
    for ax, (task, steps) in zip(axes, cfg["tasks"]):
        for method in cfg["methods"]:
            groups = [report["summary"][f"{method}/{task}/P={P}"]["values"] for P in cfg["lengths"]]
            band(ax, cfg["lengths"], groups, LABEL[method])
        name = f"{task} without its name" if task == "rev" else f"{task} (held out)"
        ax.set(xscale="log", xlabel="prompt length P (virtual tokens, log scale)", ylabel="test exact-match",
               ylim=(-0.03, 1.03), title=f"{name}, {steps} steps")
        ax.set_xticks(cfg["lengths"], [str(P) for P in cfg["lengths"]])
        ax.legend(loc="lower right", fontsize=8)
    save(fig, path, "Soft prompt and prefix length (cf. Lester et al. 2021, Fig. 3a)")
