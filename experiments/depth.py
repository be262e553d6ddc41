"""Prompt depth (Liu et al. 2022, "P-Tuning v2", §3.2 and Table/Fig. on model scale).

P-tuning v2's argument: a prompt at the input only must push its influence up through
every frozen layer, and in small models (below ~10B parameters) that is not enough; giving
every layer its own prompt closes the gap to fine-tuning across scales and tasks.

Here, on all three held-out tasks from the same frozen base model: soft prompt (input
only) vs deep prompt (hidden-state prompts at every layer) vs prefix tuning (keys/values
at every layer), with LoRA and full fine-tuning as reference points. `dsc` gets 1000 steps;
`rsh` and `rol` are easy (every method nears 100% within 1000 steps), so they get 300
steps, validated every 25, and the steps to reach 90% validation exact-match show speed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .common import LABEL, Context, run_jobs, select, stats, steps_to, train_run
from .plotting import grouped_bars, save, subplots

NAME = "depth"
PAPER = "Liu et al. 2022, P-tuning v2 §3.2 (deep prompts vs input prompts)"


@dataclass(frozen=True)
class Config:
    methods: tuple[str, ...] = ("soft_prompt", "deep_prompt", "prefix_tuning", "lora", "full_finetune")
    tasks: tuple[tuple[str, int, int], ...] = (("dsc", 1000, 100), ("rsh", 300, 25), ("rol", 300, 25))  # steps, eval
    prompt_len: int = 16


QUICK = Config(methods=("soft_prompt", "prefix_tuning"), tasks=(("dsc", 2, 1), ("rol", 2, 1)), prompt_len=4)


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    jobs = [{"checkpoint": ctx.checkpoint, "device": ctx.device, "method": method,
             "settings": ctx.settings(task=task, steps=steps, eval_every=every, prompt_len=cfg.prompt_len, seed=seed),
             "tags": {"task": task}}
            for task, steps, every in cfg.tasks for method in cfg.methods for seed in ctx.seeds]
    runs = run_jobs(ctx, train_run, jobs)
    summary = {}
    for task, _, _ in cfg.tasks:
        for method in cfg.methods:
            chosen = select(runs, method=method, task=task)
            summary[f"{method}/{task}"] = {**stats([r["test_exact_match"] for r in chosen]),
                                           "trainable_params": chosen[0]["trainable_params"],
                                           "steps_to_90pct_val": [steps_to(r) for r in chosen]}
    return {"config": asdict(cfg), "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary = report["config"], report["summary"]
    tasks = [t for t, _, _ in cfg["tasks"]]
    names = [f"{t}, {steps} steps" for t, steps, _ in cfg["tasks"]]
    fig, axes = subplots(2, width=7)
    series = {f"{LABEL[m]} ({summary[m + '/' + tasks[0]]['trainable_params']:,})":
              [summary[f"{m}/{t}"]["values"] for t in tasks] for m in cfg["methods"]}
    grouped_bars(axes[0], names, series)
    axes[0].set(xlabel="held-out task", ylabel="test exact-match", ylim=(0, 1.4), yticks=np.linspace(0, 1, 6),
                title=f"test exact-match, P={cfg['prompt_len']}")
    axes[0].legend(fontsize=7, loc="upper center", ncol=3, title="method (trainable params)", title_fontsize=7)

    # a run that never reached 90% is drawn one evaluation past the task's last step
    never = {t: steps + every for t, steps, every in cfg["tasks"]}
    speed = {LABEL[m]: [[s if s is not None else never[t] for s in summary[f"{m}/{t}"]["steps_to_90pct_val"]]
                        for t in tasks] for m in cfg["methods"]}
    grouped_bars(axes[1], names, speed, fmt="{:.0f}")
    for k, t in enumerate(tasks):
        axes[1].hlines(never[t], k - 0.45, k + 0.45, colors="grey", linestyles=":", linewidth=1)
    axes[1].set(xlabel="held-out task", ylabel="steps to 90% validation exact-match (log scale)", yscale="log",
                title="speed (dotted: never reached 90%)")
    save(fig, path, "Prompt depth on the three held-out tasks (cf. P-tuning v2)")
