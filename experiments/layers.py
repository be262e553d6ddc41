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
The same layer sets on the tagging task `rep` (methods/nlu_tasks.py: BIO spans of repeated
characters, span F1), the prefix with a linear head (methods/train_nlu.py), 300 steps: the
paper's depth study was on NLU tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from methods.heads import NLUModel, make_head
from methods.prefix_tuning import PrefixTuningConfig, PrefixTuningModel
from methods.train_nlu import HEAD_LR, NLUTrainConfig, train_nlu
from minitransformer import engine

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
    tagging: tuple[tuple[str, int, int], ...] = (("rep", 300, 50),)  # (task, steps, evaluate every), linear head


QUICK = Config(steps=2, eval_every=1, prompt_len=4, tagging=(("rep", 2, 1),))


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
    if device.startswith("cuda"):  # the engine's shortcuts, as methods.compare.run_method does there
        engine.enable(model)
    return summarise(fit(model, settings, device), **tags, layers=list(layers))


def train_prefix_tagging(checkpoint: str, device: str, settings: dict, layers: list[int], tags: dict) -> dict:
    """Job: a prefix on `layers` only with a linear head, on an understanding task; scored by its metric."""
    base, task, seed = base_model(checkpoint, device), settings["task"], settings["seed"]
    prefix = PrefixTuningModel(base, PrefixTuningConfig(settings["prompt_len"], seed=seed, prefix_layers=tuple(layers)))
    model = NLUModel(prefix.to(device), make_head("linear", task, base.config.d_model, seed).to(device), task)
    if device.startswith("cuda"):  # the engine's shortcuts, as methods.compare.run_method does there
        engine.enable(prefix)
    cfg = NLUTrainConfig(task=task, head="linear", steps=settings["steps"], lr=settings["lr"], head_lr=HEAD_LR,
                         eval_every=settings["eval_every"], seed=seed,
                         **{k: settings[k] for k in ("batch_size", "n_val", "n_test") if k in settings})
    r = train_nlu(model, cfg, progress=False)
    return {**tags, "layers": list(layers), "seed": seed, "lr": cfg.lr, "metric": r.metric,
            "trainable_params": r.trainable_params, "baseline": r.baseline, "test_score": r.test_score,
            "initial_val_score": r.initial_val_score, "val_steps": r.val_steps, "val_score": r.val_score,
            "loss_every_10": [round(x, 4) for x in r.loss[::10]], "seconds": r.seconds}


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    n_layer = base_model(ctx.checkpoint, "cpu").config.n_layer
    sets = layer_sets(n_layer, cfg.singles)

    def jobs(task, steps, every):
        return [{"checkpoint": ctx.checkpoint, "device": ctx.device, "layers": list(layers),
                 "settings": ctx.settings(task=task, steps=steps, eval_every=every, prompt_len=cfg.prompt_len,
                                          lr=cfg.lr, seed=seed),
                 "tags": {"task": task, "layer_set": name}}
                for name, layers in sets.items() for seed in ctx.seeds]

    runs = run_jobs(ctx, train_prefix, jobs(cfg.task, cfg.steps, cfg.eval_every))
    for task, steps, every in cfg.tagging:
        runs += run_jobs(ctx, train_prefix_tagging, jobs(task, steps, every))
    summary = {}
    for task in [cfg.task] + [t for t, _, _ in cfg.tagging]:
        for name, layers in sets.items():
            chosen = select(runs, task=task, layer_set=name)
            scores = [r["test_exact_match"] if "test_exact_match" in r else r["test_score"] for r in chosen]
            summary[f"{task}/{name}"] = {**stats(scores), "layers": list(layers),
                                         "metric": chosen[0].get("metric", "exact_match"),
                                         "trainable_params": chosen[0]["trainable_params"]}
    return {"config": asdict(cfg), "n_layer": n_layer, "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary, L = report["config"], report["summary"], report["n_layer"]
    tasks = [(cfg["task"], cfg["steps"])] + [(t, steps) for t, steps, _ in cfg.get("tagging", [])]
    fig, axes = subplots(2, nrows=len(tasks), width=6)
    ks = list(range(1, L + 1))
    for row, (task, steps) in enumerate(tasks):
        metric = summary[f"{task}/all"]["metric"].replace("_", " ")
        ax = axes[2 * row]
        for side, marker in (("bottom", "o"), ("top", "s")):
            groups = [summary[f"{task}/{side} {k}" if k < L else f"{task}/all"]["values"] for k in ks]
            band(ax, ks, groups, f"{side} k layers", marker=marker)
        ax.set(xlabel="k: prefixed layers", ylabel=f"test {metric}", ylim=(-0.03, 1.03), xticks=ks,
               title=f"{task}, P={cfg['prompt_len']}, {steps} steps: bottom-k vs top-k")
        ax.legend(fontsize=8, loc="best")

        ax = axes[2 * row + 1]  # one layer alone: which one matters most
        single = {l: f"{task}/{n}" for n, layers in
                  {k.split("/", 1)[1]: v["layers"] for k, v in summary.items() if k.startswith(task + "/")}.items()
                  if len(layers) == 1 for l in layers}
        present = sorted(single)
        band(ax, present, [summary[single[l]]["values"] for l in present], "prefix on one layer only")
        ax.axhline(summary[f"{task}/all"]["mean"], color="grey", linestyle=":", label="prefix on every layer (mean)")
        ax.set(xlabel="the one prefixed layer (0 = bottom)", ylabel=f"test {metric}", ylim=(-0.03, 1.03),
               xticks=list(range(L)), title=f"{task}: a prefix on a single layer")
        ax.legend(fontsize=8, loc="best")
    save(fig, path, "Which layers get the prefix (cf. P-tuning v2 §4.4)")
