"""Soft prompt transfer (Vu et al. 2022, "SPoT", §3 and §4).

SPoT trains a prompt on a source task and uses it to initialise the prompt of a target
task; on T5 this beat prompt tuning from scratch across many tasks. SPoT also reads each
task's prompt as a task embedding and proposes that the cosine similarity of source and
target prompts predicts which source helps a target most (§4).

Here (methods/transfer.py), on the same frozen base model:
1. a source prompt (soft prompt, P=16, SAMPLE_VOCAB init, seed 0) is trained on every task
   without its name: the five pretraining tasks (300 steps; the base already knows them, so
   the prompt learns to *name* the task) and the three held-out ones (`rsh`, `rol` 300 steps,
   `dsc` 1000), and saved as a prompt checkpoint;
2. every held-out task is then trained as a target, starting from each other task's saved
   prompt (the checkpoint's base fingerprint is checked) or, as references, from RANDOM
   and SAMPLE_VOCAB initialisations; seeds 0-2 each; `dsc` 1000 steps, `rsh` and `rol` 300;
3. the task similarity: SPoT's per-token average cosine between the source prompt and the
   target task's own prompt trained from RANDOM (seeds 0-2; a RANDOM start shares nothing
   with the sources' SAMPLE_VOCAB start), against the gain over SAMPLE_VOCAB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from methods.prompt_io import load_prompt, save_prompt
from methods.soft_prompt import SoftPromptConfig, SoftPromptModel
from methods.transfer import prompt_similarity, transferred_soft_prompt
from minitransformer import engine
from minitransformer.data import PRETRAIN_TASKS

from .common import LR, Context, base_model, fit, run_jobs, run_key, select, stats, summarise
from .plotting import save, subplots

NAME = "transfer"
PAPER = "Vu et al. 2022, SPoT §3-4 (soft prompt transfer; prompt similarity predicts transfer)"
BASELINES = ("RANDOM", "SAMPLE_VOCAB")


@dataclass(frozen=True)
class Config:
    # (task, steps, evaluate every): every task is a source; the held-out ones are targets too
    sources: tuple[tuple[str, int, int], ...] = tuple((t, 300, 100) for t in PRETRAIN_TASKS) + \
        (("rsh", 300, 100), ("rol", 300, 100), ("dsc", 1000, 100))
    targets: tuple[tuple[str, int, int], ...] = (("dsc", 1000, 100), ("rsh", 300, 25), ("rol", 300, 25))
    prompt_len: int = 16
    lr: float = LR["soft_prompt"]
    source_seed: int = 0


QUICK = Config(sources=(("rev", 2, 1), ("rsh", 2, 1), ("dsc", 2, 1)), targets=(("dsc", 2, 1), ("rsh", 2, 1)),
               prompt_len=4)


def train_soft_saved(checkpoint: str, device: str, settings: dict, init: str, source: str | None, save_to: str,
                     tags: dict) -> dict:
    """Job: a soft prompt from `init` (or from the prompt file `source`), trained, tested and saved to `save_to`."""
    base = base_model(checkpoint, device)
    config = SoftPromptConfig(settings["prompt_len"], init, seed=settings["seed"])
    model = transferred_soft_prompt(base, source, config) if source else SoftPromptModel(base, config)
    if device.startswith("cuda"):  # the engine's shortcuts, as methods.compare.run_method does there
        engine.enable(model)
    result = fit(model, settings, device)
    save_prompt(model, save_to)
    return summarise(result, **tags, prompt_file=save_to)


def with_prompt_files(ctx: Context, fn, jobs: list[dict]) -> list[dict]:
    """Give every job a prompt file in the cache, named by the run; a finished run whose file is gone is retrained."""
    for job in jobs:
        job["save_to"] = str(Path(ctx.cache) / "prompts" / f"{run_key(fn, job)}.safetensors")
        if not Path(job["save_to"]).is_file():
            (Path(ctx.cache) / "runs" / f"{run_key(fn, job)}.json").unlink(missing_ok=True)
    return jobs


def job(ctx: Context, task: str, steps: int, every: int, prompt_len: int, lr: float, seed: int, init: str,
        source: str | None, tags: dict) -> dict:
    return {"checkpoint": ctx.checkpoint, "device": ctx.device, "init": init, "source": source,
            "settings": ctx.settings(task=task, steps=steps, eval_every=every, prompt_len=prompt_len, lr=lr,
                                     seed=seed), "tags": tags}


def prompt_of(ctx: Context, path: str):
    return load_prompt(base_model(ctx.checkpoint, "cpu"), path).prompt.detach()  # (P, C), fingerprint checked


def rank(values: list[float]) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(float)


def correlations(xs: list[float], ys: list[float]) -> dict:
    """Pearson and Spearman (rank) correlation of two lists; None when either is constant or too short."""
    if len(xs) < 3 or np.std(xs) == 0 or np.std(ys) == 0:
        return {"pearson": None, "spearman": None, "n": len(xs)}
    return {"pearson": round(float(np.corrcoef(xs, ys)[0, 1]), 4),
            "spearman": round(float(np.corrcoef(rank(xs), rank(ys))[0, 1]), 4), "n": len(xs)}


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    sources = with_prompt_files(ctx, train_soft_saved, [
        job(ctx, task, steps, every, cfg.prompt_len, cfg.lr, cfg.source_seed, "SAMPLE_VOCAB", None,
            {"stage": "source", "task": task}) for task, steps, every in cfg.sources])
    source_runs = run_jobs(ctx, train_soft_saved, sources)
    source_file = {j["tags"]["task"]: j["save_to"] for j in sources}

    targets = []
    for task, steps, every in cfg.targets:
        inits = [(b, None, b) for b in BASELINES] + \
            [("SAMPLE_VOCAB", source_file[s], f"from {s}") for s, _, _ in cfg.sources if s != task]
        targets += [job(ctx, task, steps, every, cfg.prompt_len, cfg.lr, seed, init, source,
                        {"stage": "target", "task": task, "start": start})
                    for init, source, start in inits for seed in ctx.seeds]
    target_runs = run_jobs(ctx, train_soft_saved, with_prompt_files(ctx, train_soft_saved, targets))

    summary, points = {}, []
    for task, _, _ in cfg.targets:
        reference = stats([r["test_exact_match"] for r in select(target_runs, task=task, start="SAMPLE_VOCAB")])
        own = [prompt_of(ctx, r["prompt_file"]) for r in select(target_runs, task=task, start="RANDOM")]
        for start in dict.fromkeys(r["start"] for r in select(target_runs, task=task)):
            chosen = select(target_runs, task=task, start=start)
            entry = {**stats([r["test_exact_match"] for r in chosen]),
                     "before_training": stats([r["initial_val_exact_match"] for r in chosen]),
                     "gain_over_sample_vocab": round(stats([r["test_exact_match"] for r in chosen])["mean"]
                                                     - reference["mean"], 4)}
            if start.startswith("from "):
                source = prompt_of(ctx, source_file[start[5:]])
                entry["similarity"] = round(float(np.mean([prompt_similarity(source, p) for p in own])), 4)
                entry["similarity_average_tokens"] = round(float(np.mean(
                    [prompt_similarity(source, p, "average_tokens") for p in own])), 4)
                points.append((task, start[5:], entry["similarity"], entry["gain_over_sample_vocab"]))
            summary[f"{task}/{start}"] = entry
    per_target = {t: correlations([p[2] for p in points if p[0] == t], [p[3] for p in points if p[0] == t])
                  for t, _, _ in cfg.targets}
    return {"config": asdict(cfg), "runs": source_runs + target_runs, "summary": summary,
            "source_test_exact_match": {r["task"]: r["test_exact_match"] for r in source_runs},
            "similarity_vs_gain": {"points": [dict(zip(("target", "source", "similarity", "gain"), p))
                                              for p in points],
                                   "per_target": per_target,
                                   "pooled": correlations([p[2] for p in points], [p[3] for p in points])}}


def plot(report: dict, path) -> None:
    cfg, summary = report["config"], report["summary"]
    targets = [t for t, _, _ in cfg["targets"]]
    fig, axes = subplots(len(targets) + 1, width=5)
    for ax, task in zip(axes, targets):
        starts = [k.split("/", 1)[1] for k in summary if k.startswith(task + "/")]
        means = [summary[f"{task}/{s}"]["mean"] for s in starts]
        lows = [summary[f"{task}/{s}"]["mean"] - summary[f"{task}/{s}"]["min"] for s in starts]
        highs = [summary[f"{task}/{s}"]["max"] - summary[f"{task}/{s}"]["mean"] for s in starts]
        colors = ["grey" if s in BASELINES else "C0" for s in starts]
        ax.barh(range(len(starts)), means, xerr=[lows, highs], color=colors, alpha=0.8)
        ax.set_yticks(range(len(starts)), starts, fontsize=8)
        ax.invert_yaxis()
        ax.set(xlim=(0, 1.05), xlabel="test exact-match", title=f"target {task}: start from")
    ax = axes[-1]
    for k, task in enumerate(targets):
        pts = [p for p in report["similarity_vs_gain"]["points"] if p["target"] == task]
        ax.scatter([p["similarity"] for p in pts], [p["gain"] for p in pts], label=task, color=f"C{k + 1}")
        for p in pts:
            ax.annotate(p["source"], (p["similarity"], p["gain"]), fontsize=6)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set(xlabel="per-token cosine: source prompt vs target's own prompt", ylabel="gain over SAMPLE_VOCAB",
           title="does prompt similarity predict the gain?")
    ax.legend(fontsize=8, title="target")
    save(fig, path, "Soft prompt transfer (cf. SPoT, Vu et al. 2022)")
