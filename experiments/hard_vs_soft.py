"""Hard vs soft prompts: the best k real tokens, found by search, against k trained vectors.

Lester et al. (2021, Fig. 1) and P-tuning (Liu et al. 2021, §1) open with the same contrast:
discrete prompts, even when searched for automatically (AutoPrompt, Shin et al. 2020), stay
far behind continuous prompts of the same length, which are free to leave the vocabulary.

Here a greedy coordinate search over the vocabulary (`hard_prompt.py`) looks for a k-token
prefix that steers the frozen model, for k = 4 and 16, on `rev` with its name removed (the
task's own name `rev:` is a 4-token hard prompt that exists, so the search can be checked)
and on held-out `dsc` (no name in the vocabulary means "sort descending"); a soft prompt of
the same length is trained on the same task. Both are read by test exact-match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minitransformer import sample_inputs

from .common import LABEL, Context, base_model, run_jobs, select, stats, train_run
from .hard_prompt import greedy_search, hard_prompt_exact_match
from .plotting import grouped_bars, save, subplots

NAME = "hard_vs_soft"
PAPER = "Lester et al. 2021 Fig. 1 / Liu et al. 2021 §1 (discrete vs continuous prompts)"


@dataclass(frozen=True)
class Config:
    lengths: tuple[int, ...] = (4, 16)
    tasks: tuple[tuple[str, int], ...] = (("rev", 300), ("dsc", 1000))  # (task, soft prompt training steps)
    rounds: int = 4  # search rounds, each visiting every position once
    search_batch: int = 128  # training examples the search loss is measured on
    n_test: int = 500
    references: tuple[tuple[str, str], ...] = (("rev", ""), ("rev", "rev:"), ("dsc", ""), ("dsc", "srt:"))


QUICK = Config(lengths=(2,), tasks=(("rev", 2), ("dsc", 2)), rounds=1, search_batch=8, n_test=16,
               references=(("rev", "rev:"),))


def hard_job(checkpoint: str, device: str, task: str, k: int, seed: int, rounds: int, search_batch: int,
             n_test: int) -> dict:
    """Job: search a k-token hard prompt, then test it."""
    base = base_model(checkpoint, device)
    found = greedy_search(base, task, k, seed, rounds, search_batch)
    em = hard_prompt_exact_match(base, found["prompt"], task, sample_inputs(task, "test", n_test, seed))
    return {"method": "hard_prompt", "task": task, "prompt_len": k, "seed": seed, "test_exact_match": em, **found}


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    hard = run_jobs(ctx, hard_job, [
        {"checkpoint": ctx.checkpoint, "device": ctx.device, "task": task, "k": k, "seed": seed, "rounds": cfg.rounds,
         "search_batch": cfg.search_batch, "n_test": cfg.n_test}
        for task, _ in cfg.tasks for k in cfg.lengths for seed in ctx.seeds])
    soft = run_jobs(ctx, train_run, [
        {"checkpoint": ctx.checkpoint, "device": ctx.device, "method": "soft_prompt",
         "settings": ctx.settings(task=task, steps=steps, prompt_len=k, seed=seed, n_test=cfg.n_test),
         "tags": {"task": task, "prompt_len": k}}
        for task, steps in cfg.tasks for k in cfg.lengths for seed in ctx.seeds])
    base = base_model(ctx.checkpoint, ctx.device)
    references = [{"task": task, "prompt": text, "test_exact_match": hard_prompt_exact_match(
        base, text, task, sample_inputs(task, "test", cfg.n_test, ctx.seeds[0]))} for task, text in cfg.references]
    summary = {}
    for task, _ in cfg.tasks:
        for k in cfg.lengths:
            found = select(hard, task=task, prompt_len=k)
            summary[f"hard_prompt/{task}/k={k}"] = {**stats([r["test_exact_match"] for r in found]),
                                                    "prompts": [r["prompt"] for r in found]}
            summary[f"soft_prompt/{task}/k={k}"] = stats([r["test_exact_match"]
                                                          for r in select(soft, task=task, prompt_len=k)])
    return {"config": asdict(cfg), "references": references, "runs": hard + soft, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary = report["config"], report["summary"]
    groups = [(task, k) for task, _ in cfg["tasks"] for k in cfg["lengths"]]
    series = {"hard prompt (greedy search)": [summary[f"hard_prompt/{t}/k={k}"]["values"] for t, k in groups],
              LABEL["soft_prompt"]: [summary[f"soft_prompt/{t}/k={k}"]["values"] for t, k in groups]}
    fig, axes = subplots(1, width=9, height=5.2)
    ax = axes[0]
    grouped_bars(ax, [f"{t}{' (no name)' if t == 'rev' else ''}, k={k}" for t, k in groups], series)
    for ref in report["references"]:  # fixed hard prompts, as text in front of the name-free input
        xs = [i for i, (t, _) in enumerate(groups) if t == ref["task"]]
        label = f"'{ref['prompt']}'" if ref["prompt"] else "no prompt"
        ax.hlines(ref["test_exact_match"], min(xs) - 0.45, max(xs) + 0.45, linestyles=":", colors="grey")
        ax.annotate(f"{label}: {ref['test_exact_match']:.2f}", (max(xs) + 0.45, ref["test_exact_match"]),
                    fontsize=7, color="grey", ha="right", va="bottom" if ref["prompt"] else "top",
                    xytext=(0, 2 if ref["prompt"] else -12), textcoords="offset points")
    for i, (t, k) in enumerate(groups):  # the prompts the search found, one line per seed
        found = "\n".join(repr(p) for p in summary[f"hard_prompt/{t}/k={k}"]["prompts"])
        ax.annotate(found, (i - 0.2, 0.55), ha="center", va="center", fontsize=6.5, family="monospace",
                    rotation=90 if k > 8 else 0)
    ax.set(ylabel="test exact-match", ylim=(-0.08, 1.15),
           title="dotted: fixed hard prompts; text: the prompts found (one per seed)")
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1, 0.9))
    save(fig, path, "Hard prompts (greedy token search) vs soft prompts of k tokens")
