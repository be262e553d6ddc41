"""Prompt ensembles (Lester, Al-Rfou & Constant 2021, §6 "Prompt Ensembling", Table 3).

Lester et al. trained five prompts for each SuperGLUE task from different seeds on one
frozen T5-XXL, ran the five as one batch, and combined their answers by majority vote.
The ensemble beat the mean of its prompts on every task and matched or beat the best one.

Here (methods/ensemble.py): five soft prompts (P=16, SAMPLE_VOCAB init, lr 0.1) trained on
the held-out `dsc` for 1000 steps from seeds 5s..5s+4, for each experiment seed s (so three
ensembles of five, fifteen prompts in all). Each ensemble answers the 500 test inputs in
mixed batches (every input once per prompt) and votes; ties go to the lowest-numbered
prompt. Against it: the mean and the best of its five prompts, each measured in that same
batch (and equal to the prompt's own test exact-match when run alone, which is recorded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from methods.ensemble import PromptEnsemble
from methods.prompt_io import load_prompt
from minitransformer.data import SPLIT_SEED, sample_inputs

from .common import LR, QUICK_SETTINGS, Context, base_model, run_jobs, stats
from .plotting import save, subplots
from .transfer import job, train_soft_saved, with_prompt_files

NAME = "ensemble"
PAPER = "Lester et al. 2021 §6 (prompt ensembling: majority vote of 5 prompts)"


@dataclass(frozen=True)
class Config:
    task: str = "dsc"
    steps: int = 1000
    eval_every: int = 100
    prompt_len: int = 16
    lr: float = LR["soft_prompt"]
    members: int = 5
    n_test: int = 500


QUICK = Config(steps=2, eval_every=1, prompt_len=4, members=3, n_test=QUICK_SETTINGS["n_test"])


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    groups = {s: [cfg.members * s + i for i in range(cfg.members)] for s in ctx.seeds}
    jobs = with_prompt_files(ctx, train_soft_saved, [
        job(ctx, cfg.task, cfg.steps, cfg.eval_every, cfg.prompt_len, cfg.lr, seed, "SAMPLE_VOCAB", None,
            {"task": cfg.task, "ensemble": s, "member": i})
        for s, seeds in groups.items() for i, seed in enumerate(seeds)])
    runs = run_jobs(ctx, train_soft_saved, jobs)

    base = base_model(ctx.checkpoint, ctx.device)
    inputs = sample_inputs(cfg.task, "test", cfg.n_test, SPLIT_SEED)  # the test inputs train() scores
    ensembles = []
    for s in groups:
        members = [r for r in runs if r["ensemble"] == s]
        models = [load_prompt(base, r["prompt_file"]) for r in members]  # fingerprint-checked
        scores = PromptEnsemble(base, models).exact_match(cfg.task, inputs)
        alone = [r["test_exact_match"] for r in members]
        ensembles.append({"ensemble": s, "seeds": groups[s], **scores, "members_alone": alone,
                          "batch_equals_alone": bool(np.allclose(scores["members"], alone, atol=0)),
                          "best": max(scores["members"]), "mean": float(np.mean(scores["members"]))})
    summary = {"vote": stats([e["vote"] for e in ensembles]),
               "best_single": stats([e["best"] for e in ensembles]),
               "mean_single": stats([e["mean"] for e in ensembles]),
               "vote_minus_best": stats([e["vote"] - e["best"] for e in ensembles]),
               "vote_minus_mean": stats([e["vote"] - e["mean"] for e in ensembles]),
               "all_agree": stats([e["all_agree"] for e in ensembles])}
    return {"config": asdict(cfg), "runs": runs, "ensembles": ensembles, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, ensembles = report["config"], report["ensembles"]
    fig, axes = subplots(1, width=6.5)
    ax = axes[0]
    for k, e in enumerate(ensembles):
        ax.scatter([k] * len(e["members"]), e["members"], color="C0", s=18,
                   label="one prompt (in the batch)" if k == 0 else None)
        ax.hlines(e["mean"], k - 0.3, k + 0.3, color="C0", linestyle=":", label="mean prompt" if k == 0 else None)
        ax.scatter([k + 0.15], [e["vote"]], color="C3", marker="*", s=120, zorder=3,
                   label=f"majority vote of {cfg['members']}" if k == 0 else None)
    ax.set_xticks(range(len(ensembles)), [f"seeds {e['seeds'][0]}-{e['seeds'][-1]}" for e in ensembles])
    ax.set(ylabel="test exact-match", ylim=(-0.03, 1.03),
           title=f"{cfg['task']}, soft prompt P={cfg['prompt_len']}, {cfg['steps']} steps")
    ax.legend(fontsize=8, loc="upper left")
    save(fig, path, "Prompt ensembles (cf. Lester et al. 2021 §6)")
