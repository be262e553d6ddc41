"""Which layers get prompts (Liu et al. 2022, "P-Tuning v2", §4.4 "Prompt depth", Fig. 5).

P-tuning v2 added its prompts to k layers, counting from the bottom (1..k) or from the top
(k..24), and found the top layers matter more: prompts in the top half of the network did
nearly as well as prompts everywhere, prompts in the bottom half much worse.

Here a prefix (prefix_tuning.py's `prefix_layers`) on the held-out `dsc`, same steps, learning
rate and seeds for every set of layers of the 4-layer base model:
- bottom k: layers 0..k-1, for k = 1..L-1;
- top k: layers L-k..L-1, for k = 1..L-1;
- every layer (k = L, the usual prefix);
- each middle layer alone (1 and 2), which with bottom-1 and top-1 completes the single layers.
The prefix costs P * 2 * C per prefixed layer, so k layers cost the same wherever they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from methods.prefix_tuning import PrefixTuningConfig, PrefixTuningModel

from .common import LR, Context, base_model, fit, run_jobs, select, stats, summarise
from .plotting import band, save, subplots

NAME = "layers"
PAPER = "Liu et al. 2022, P-tuning v2 §4.4 (prompt depth: bottom-k vs top-k layers)"


@dataclass(frozen=True)
class Config:
    task: str = "dsc"
    steps: int = 1000
    eval_every: int = 100
    prompt_len: int = 16
    lr: float = LR["prefix_tuning"]
    singles: bool = True  # also each middle layer alone


QUICK = Config(steps=2, eval_every=1, prompt_len=4)


def layer_sets(n_layer: int, singles: bool = True) -> dict[str, tuple[int, ...]]:
    """name -> layers: bottom-k and top-k for k < L, all L, and (singles) each middle layer alone."""
    sets = {f"bottom {k}": tuple(range(k)) for k in range(1, n_layer)}
    sets.update({f"top {k}": tuple(range(n_layer - k, n_layer)) for k in range(1, n_layer)})
    sets["all"] = tuple(range(n_layer))
    if singles:
        sets.update({f"only {l}": (l,) for l in range(1, n_layer - 1)})
    return sets


def train_prefix(checkpoint: str, device: str, settings: dict, layers: list[int], tags: dict) -> dict:
    """Job: a prefix on `layers` only, trained and tested."""
    config = PrefixTuningConfig(settings["prompt_len"], seed=settings["seed"], prefix_layers=tuple(layers))
    model = PrefixTuningModel(base_model(checkpoint, device), config)
    return summarise(fit(model, settings, device), **tags, layers=list(layers))


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    n_layer = base_model(ctx.checkpoint, "cpu").config.n_layer
    sets = layer_sets(n_layer, cfg.singles)
    jobs = [{"checkpoint": ctx.checkpoint, "device": ctx.device, "layers": list(layers),
             "settings": ctx.settings(task=cfg.task, steps=cfg.steps, eval_every=cfg.eval_every,
                                      prompt_len=cfg.prompt_len, lr=cfg.lr, seed=seed),
             "tags": {"task": cfg.task, "layer_set": name}}
            for name, layers in sets.items() for seed in ctx.seeds]
    runs = run_jobs(ctx, train_prefix, jobs)
    summary = {}
    for name, layers in sets.items():
        chosen = select(runs, layer_set=name)
        summary[name] = {**stats([r["test_exact_match"] for r in chosen]), "layers": list(layers),
                         "trainable_params": chosen[0]["trainable_params"]}
    return {"config": asdict(cfg), "n_layer": n_layer, "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary, L = report["config"], report["summary"], report["n_layer"]
    fig, axes = subplots(2, width=6)
    ax = axes[0]
    ks = list(range(1, L + 1))
    for side, marker in (("bottom", "o"), ("top", "s")):
        groups = [summary[f"{side} {k}" if k < L else "all"]["values"] for k in ks]
        band(ax, ks, groups, f"{side} k layers", marker=marker)
    ax.set(xlabel="k: prefixed layers", ylabel="test exact-match", ylim=(-0.03, 1.03), xticks=ks,
           title=f"{cfg['task']}, P={cfg['prompt_len']}, {cfg['steps']} steps: bottom-k vs top-k")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[1]  # one layer alone: which one matters most
    singles = {l: next((n for n, s in summary.items() if s["layers"] == [l]), None) for l in range(L)}
    present = [l for l, n in singles.items() if n is not None]
    band(ax, present, [summary[singles[l]]["values"] for l in present], "prefix on one layer only")
    ax.axhline(summary["all"]["mean"], color="grey", linestyle=":", label="prefix on every layer (mean)")
    ax.set(xlabel="the one prefixed layer (0 = bottom)", ylabel="test exact-match", ylim=(-0.03, 1.03),
           xticks=list(range(L)), title="a prefix on a single layer")
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path, "Which layers get the prefix (cf. P-tuning v2 §4.4)")
