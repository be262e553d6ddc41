"""Soft-prompt initialisation (Lester, Al-Rfou & Constant 2021, §3.2, Fig. 3b).

Lester et al. compared three starting points for the prompt vectors: random noise
(RANDOM), the embeddings of random vocabulary tokens (SAMPLE_VOCAB), and the embeddings of
words that describe the task, class labels in their case (TEXT). For small models the
informed TEXT start clearly beat the others and RANDOM was worst; the gap closed with scale.

Here, short runs (so that the speed of learning shows), each init from the same seeds:
- `rev` with its name removed, TEXT = its own name `rev:` (repeated to P tokens). The TEXT
  start *is* the hard prompt, so it should be right before any training;
- held-out `dsc`, TEXT = `dsc:` (a name the base model never saw: just three letters) and
  TEXT = `srt:` (the name of the closest pretraining task, sort ascending).
Both tasks also get the repository's default TEXT init (`methods.compare.task_name_text`):
a demonstration of the task ending in its name, `...abc=cba.rev:`, cut to P characters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from methods.compare import task_name_text
from methods.soft_prompt import SoftPromptConfig, SoftPromptModel

from .common import LR, Context, base_model, fit, run_jobs, select, stats, steps_to, summarise
from .plotting import curve_band, save, subplots

NAME = "initialisation"
PAPER = "Lester et al. 2021, Fig. 3b (prompt initialisation)"
DEMO = "<demonstration>"  # stands for task_name_text(task, P, seed): a demonstration ending in the task name


@dataclass(frozen=True)
class Config:
    # (task, steps, evaluate every, TEXT strings to try); RANDOM and SAMPLE_VOCAB are always run
    tasks: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (("rev", 150, 10, ("rev:", DEMO)),
                                                               ("dsc", 500, 25, ("dsc:", "srt:", DEMO)))
    prompt_len: int = 16
    lr: float = LR["soft_prompt"]


QUICK = Config(tasks=(("rev", 2, 1, ("rev:", DEMO)), ("dsc", 2, 1, ("dsc:",))), prompt_len=4)


def train_soft(checkpoint: str, device: str, settings: dict, init: str, text: str | None, tags: dict) -> dict:
    """Job: a soft prompt with the given initialisation, trained and tested."""
    base = base_model(checkpoint, device)
    if text == DEMO:
        text = task_name_text(settings["task"], settings["prompt_len"], settings["seed"])
    config = SoftPromptConfig(settings["prompt_len"], init, text, seed=settings["seed"])
    return summarise(fit(SoftPromptModel(base, config), settings, device), **tags, init_text=text)


def inits_of(texts: tuple[str, ...]) -> list[tuple[str, str | None, str]]:
    """(init, text, label) of every initialisation tried on a task."""
    return [("RANDOM", None, "RANDOM"), ("SAMPLE_VOCAB", None, "SAMPLE_VOCAB")] + \
        [("TEXT", t, "TEXT demo + name" if t == DEMO else f"TEXT '{t}'") for t in texts]


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    jobs = [{"checkpoint": ctx.checkpoint, "device": ctx.device, "init": init, "text": text,
             "settings": ctx.settings(task=task, steps=steps, eval_every=every, prompt_len=cfg.prompt_len,
                                      lr=cfg.lr, seed=seed),
             "tags": {"task": task, "init": label}}
            for task, steps, every, texts in cfg.tasks for init, text, label in inits_of(texts) for seed in ctx.seeds]
    runs = run_jobs(ctx, train_soft, jobs)
    summary = {}
    for task, _, _, texts in cfg.tasks:
        for _, _, label in inits_of(texts):
            chosen = select(runs, task=task, init=label)
            summary[f"{task}/{label}"] = {**stats([r["test_exact_match"] for r in chosen]),
                                          "before_training": stats([r["initial_val_exact_match"] for r in chosen]),
                                          "steps_to_90pct_val": [steps_to(r) for r in chosen]}
    return {"config": asdict(cfg), "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg = report["config"]
    fig, axes = subplots(len(cfg["tasks"]))
    for ax, (task, steps, _, texts) in zip(axes, cfg["tasks"]):
        for _, _, label in inits_of(tuple(texts)):
            s = report["summary"][f"{task}/{label}"]
            curve_band(ax, select(report["runs"], task=task, init=label),
                       f"{label}: {s['before_training']['mean']:.2f} -> {s['mean']:.2f}")
        name = f"{task} without its name" if task == "rev" else f"{task} (held out)"
        ax.set(xlabel="training step", ylabel="validation exact-match", ylim=(-0.03, 1.03),
               title=f"{name}, P={cfg['prompt_len']}, {steps} steps")
        ax.legend(loc="lower right", fontsize=8, title="init: EM before -> test EM after", title_fontsize=8)
    save(fig, path, "Soft prompt initialisation (cf. Lester et al. 2021, Fig. 3b)",
         "validation curves: mean over seeds, band min to max")
