"""Reparameterisation (Li & Liang 2021, §4.3 and §7; Liu et al. 2021, P-tuning, §3.2).

Li & Liang found that optimising the prefix's keys and values directly "leads to unstable
optimization and a slight drop in performance", and trained them through an MLP instead.
P-tuning argues the same for input prompts: free prompt vectors fall into poor local
minima, and an encoder (an MLP, or a bidirectional LSTM) in front of them helps.

Here each pair is trained over several learning rates and seeds on the held-out `dsc`,
with the same steps and batches:
- prefix, direct (P*2*C*L free numbers) vs prefix + MLP (§4.3);
- soft prompt (P*C free numbers) vs P-tuning with an MLP vs with an LSTM encoder.
Stability is read off two ways: the spread over seeds at a fixed learning rate, and how
wide the range of learning rates is that works.

Residual reparameterisation (Razdaibiedina et al. 2023, "Residual Prompt Tuning"): the
encoder's output plus a skip connection, x + LayerNorm(MLP(x)), which the paper reports
stabilises prompt tuning across learning rates. Two more methods, on the same grid:
- prefix + residual MLP: the direct prefix (from real tokens) plus LayerNorm(MLP(prefix)),
  hidden width 128 (prefix_tuning.py, `encoder_reparameterization_type="RESIDUAL_MLP"`);
- P-tuning with the residual MLP, hidden width 64 (p_tuning.py, the same name).
Does the skip remove the collapse the prefix MLP shows at lr >= 0.1? (The runs of the
five methods above are unchanged: same jobs, so the same cache entries.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from methods.p_tuning import PTuningConfig, PTuningModel
from methods.prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from minitransformer import engine

from .common import LABEL, Context, base_model, fit, run_jobs, select, stats, summarise, train_run
from .plotting import band, save, subplots

NAME = "reparameterisation"
PAPER = "Li & Liang 2021 §4.3 (prefix MLP); Liu et al. 2021 §3.2 (P-tuning encoders); " \
    "Razdaibiedina et al. 2023 (residual reparameterisation)"
RESIDUAL = {  # method -> (label, builder(base, P, seed)): the residual reparameterisations, built here
    "prefix_tuning_residual": ("prefix + residual MLP", lambda base, P, seed: PrefixTuningModel(
        base, PrefixTuningConfig(P, prefix_projection=True, encoder_hidden_size=128,
                                 encoder_reparameterization_type="RESIDUAL_MLP", seed=seed))),
    "p_tuning_residual": ("P-tuning (residual MLP)", lambda base, P, seed: PTuningModel(
        base, PTuningConfig(P, "RESIDUAL_MLP", encoder_hidden_size=64, seed=seed))),
}
LABELS = {**LABEL, **{m: label for m, (label, _) in RESIDUAL.items()}}


@dataclass(frozen=True)
class Config:
    methods: tuple[str, ...] = ("prefix_tuning", "prefix_tuning_mlp", "soft_prompt", "p_tuning_mlp",
                                "p_tuning_lstm")
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
    task: str = "dsc"
    steps: int = 1000
    prompt_len: int = 16
    residual_methods: tuple[str, ...] = tuple(RESIDUAL)  # trained by train_residual


QUICK = Config(methods=("prefix_tuning", "prefix_tuning_mlp"), lrs=(1e-2, 1e-1), steps=2, prompt_len=4)


def train_residual(checkpoint: str, device: str, method: str, settings: dict, tags: dict) -> dict:
    """Job: one of the RESIDUAL methods, trained and tested."""
    model = RESIDUAL[method][1](base_model(checkpoint, device), settings["prompt_len"], settings["seed"])
    if device.startswith("cuda"):  # the engine's shortcuts, as methods.compare.run_method does there
        engine.enable(model)
    result = fit(model, settings, device)
    result.method = method
    return summarise(result, **tags)


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()

    def grid(methods):
        return [{"checkpoint": ctx.checkpoint, "device": ctx.device, "method": method,
                 "settings": ctx.settings(task=cfg.task, steps=cfg.steps, prompt_len=cfg.prompt_len, lr=lr,
                                          seed=seed),
                 "tags": {"task": cfg.task}}
                for method in methods for lr in cfg.lrs for seed in ctx.seeds]

    runs = run_jobs(ctx, train_run, grid(cfg.methods)) + run_jobs(ctx, train_residual, grid(cfg.residual_methods))
    summary = {}
    for method in cfg.methods + cfg.residual_methods:
        per_lr = {lr: stats([r["test_exact_match"] for r in select(runs, method=method, lr=lr)]) for lr in cfg.lrs}
        best = max(cfg.lrs, key=lambda lr: per_lr[lr]["mean"])
        summary[method] = {**per_lr[best], "best_lr": best,
                           "seed_range_at_best_lr": round(per_lr[best]["max"] - per_lr[best]["min"], 4),
                           "lrs_within_0.1_of_best": [lr for lr in cfg.lrs
                                                      if per_lr[lr]["mean"] >= per_lr[best]["mean"] - 0.1],
                           "trainable_params": select(runs, method=method)[0]["trainable_params"],
                           "per_lr": {str(lr): s for lr, s in per_lr.items()}}
    return {"config": asdict(cfg), "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary = report["config"], report["summary"]
    fig, axes = subplots(2, width=6.5)
    methods = cfg["methods"] + cfg.get("residual_methods", [])  # (results made before the residual runs lack them)
    for method in methods:
        groups = [summary[method]["per_lr"][str(lr)]["values"] for lr in cfg["lrs"]]
        band(axes[0], cfg["lrs"], groups, f"{LABELS[method]} ({summary[method]['trainable_params']:,})",
             marker="s" if method in RESIDUAL else "o")
    axes[0].set(xscale="log", xlabel="learning rate (log scale)", ylabel="test exact-match", ylim=(-0.03, 1.03),
                title=f"{cfg['task']}, P={cfg['prompt_len']}, {cfg['steps']} steps: accuracy vs learning rate")
    axes[0].legend(fontsize=8, loc="upper left", title="method (trainable)", title_fontsize=8)

    ax, rng = axes[1], np.random.default_rng(0)
    values = [summary[m]["values"] for m in methods]
    ax.boxplot(values, whis=(0, 100), widths=0.5)
    for i, v in enumerate(values, 1):
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(v)), v, s=18, color="black", zorder=3)
    ax.set_xticks(range(1, len(values) + 1),
                  [f"{LABELS[m]}\nlr {summary[m]['best_lr']:g}" for m in methods], fontsize=7)
    ax.set(ylabel="test exact-match", ylim=(-0.03, 1.03),
           title="spread over seeds at each method's best learning rate")
    save(fig, path, "Reparameterisation (cf. Li & Liang 2021 §4.3; P-tuning; Residual Prompt Tuning)")
