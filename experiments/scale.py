"""Model scale (Lester, Al-Rfou & Constant 2021, Fig. 1): does prompt tuning catch up as models grow?

Lester et al.'s headline: on T5 from 60M to 11B parameters, prompt tuning starts far behind
full fine-tuning and closes the gap with scale, matching it at ~10B. Here four base models
of increasing size are pretrained by the same recipe (`PretrainConfig()`, packed rows of
the five pretraining tasks), then soft prompt, prefix tuning and full fine-tuning adapt each
one to held-out `dsc` and to `rev` with its name removed. The question is how the gap
between prompt tuning and fine-tuning moves with size, over a ~100x range of parameters
(four orders of magnitude smaller than the paper's smallest model).

The pretrained base models go to `--cache` (default /tmp), never into the repository; the
one that has the shipped base model's size and recipe is the shipped checkpoint itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from minitransformer import CharTokenizer, ModelConfig, load_checkpoint, save_checkpoint
from minitransformer.checkpoint import read_config
from minitransformer.evaluate import task_table
from minitransformer.pretrain import PretrainConfig, pretrain

from .common import LABEL, Context, run_jobs, select, stats, train_run
from .plotting import band, save, subplots

NAME = "scale"
PAPER = "Lester et al. 2021, Fig. 1 (prompt tuning vs model scale)"


@dataclass(frozen=True)
class Config:
    sizes: tuple[tuple[int, int, int], ...] = ((32, 2, 2), (64, 3, 2), (128, 4, 4), (192, 6, 6))  # (C, L, H)
    pretrain_steps: int = PretrainConfig.steps
    pretrain_batch_size: int = PretrainConfig.batch_size
    eval_n: int = 500  # test inputs per task in each base model's pretraining table
    methods: tuple[str, ...] = ("soft_prompt", "prefix_tuning", "full_finetune")
    tasks: tuple[tuple[str, int], ...] = (("dsc", 1000), ("rev", 300))  # (task, training steps)
    prompt_len: int = 16


QUICK = Config(sizes=((16, 1, 2), (32, 2, 2)), pretrain_steps=3, pretrain_batch_size=4, eval_n=8,
               methods=("soft_prompt", "full_finetune"), tasks=(("dsc", 2),), prompt_len=4)


def pretrain_base(size: tuple[int, int, int], steps: int, batch_size: int, eval_n: int, shipped: str, cache: str,
                  device: str) -> dict:
    """Job: the base model of one size: the shipped checkpoint, a cached one, or pretrained now."""
    d, n_layer, n_head = size
    model_config = ModelConfig(d_model=d, n_layer=n_layer, n_head=n_head)
    recipe = asdict(PretrainConfig(steps=steps, batch_size=batch_size))
    path, start, source = Path(cache) / f"scale_d{d}_l{n_layer}_h{n_head}_s{steps}_b{batch_size}", time.time(), ""
    for candidate, name in ((Path(shipped), "shipped checkpoint"), (path, "cached")):
        if (candidate / "config.json").is_file() and read_config(candidate)[0] == model_config \
                and read_config(candidate)[1].get("pretrain_config") == recipe:
            path, source, model = candidate, name, load_checkpoint(candidate)
            break
    if not source:
        model, history = pretrain(model_config, PretrainConfig(**recipe), progress=False, device=device)
        save_checkpoint(model, path, {"pretrain_config": recipe, "history": history, "device": device})
        source = f"pretrained here in {time.time() - start:.0f} s"
    rows = task_table(model.to(device), CharTokenizer(), n=eval_n)
    return {"size": f"d{d}-L{n_layer}-H{n_head}", "d_model": d, "n_layer": n_layer, "n_head": n_head,
            "params": model.num_parameters(), "checkpoint": str(path), "source": source,
            "seconds": round(time.time() - start, 1), "test_exact_match": {r["task"]: r["exact_match"] for r in rows}}


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    bases = run_jobs(ctx, pretrain_base, [
        {"size": size, "steps": cfg.pretrain_steps, "batch_size": cfg.pretrain_batch_size, "eval_n": cfg.eval_n,
         "shipped": ctx.checkpoint, "cache": ctx.cache, "device": ctx.device} for size in reversed(cfg.sizes)],
        cache=False)[::-1]  # a base model is kept as a checkpoint in ctx.cache, not as a run
    jobs = [{"checkpoint": base["checkpoint"], "device": ctx.device, "method": method,
             "settings": ctx.settings(task=task, steps=steps, prompt_len=cfg.prompt_len, seed=seed),
             "tags": {"task": task, "size": base["size"]}}
            for base in bases for task, steps in cfg.tasks for method in cfg.methods for seed in ctx.seeds]
    runs = run_jobs(ctx, train_run, jobs)
    summary = {}
    for base in bases:
        for task, _ in cfg.tasks:
            full = stats([r["test_exact_match"] for r in select(runs, method="full_finetune", task=task,
                                                                 size=base["size"])])
            for method in cfg.methods:
                s = stats([r["test_exact_match"] for r in select(runs, method=method, task=task, size=base["size"])])
                gap = round(full["mean"] - s["mean"], 4)
                summary[f"{method}/{task}/{base['size']}"] = {**s, "base_params": base["params"],
                                                              "gap_to_full_finetune": gap}
    return {"config": asdict(cfg), "bases": bases, "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary, bases = report["config"], report["summary"], report["bases"]
    params = [b["params"] for b in bases]
    fig, axes = subplots(len(cfg["tasks"]) + 1)
    for ax, (task, steps) in zip(axes, cfg["tasks"]):
        for method in cfg["methods"]:
            band(ax, params, [summary[f"{method}/{task}/{b['size']}"]["values"] for b in bases], LABEL[method])
        name = f"{task} without its name" if task == "rev" else f"{task} (held out)"
        ax.set(xscale="log", xlabel="base model parameters (log scale)", ylabel="test exact-match",
               ylim=(-0.03, 1.03), title=f"{name}, {steps} steps")
        ax.legend(fontsize=8, loc="lower right")
    for task, _ in cfg["tasks"]:
        for method in cfg["methods"]:
            if method != "full_finetune":
                axes[-1].plot(params, [summary[f"{method}/{task}/{b['size']}"]["gap_to_full_finetune"]
                                       for b in bases], marker="o", label=f"{LABEL[method]}, {task}")
    for b in bases:
        axes[-1].annotate(b["size"], (b["params"], 0.98), xycoords=axes[-1].get_xaxis_transform(), fontsize=7,
                          ha="center", va="top")
    axes[-1].axhline(0, color="grey", linewidth=1)
    axes[-1].set_ylim(top=axes[-1].get_ylim()[1] + 0.12)  # room for the size labels
    axes[-1].set(xscale="log", xlabel="base model parameters (log scale)",
                 ylabel="full fine-tuning minus method (mean EM)", title="gap to full fine-tuning")
    axes[-1].legend(fontsize=8)
    save(fig, path, "Scale (cf. Lester et al. 2021, Fig. 1): base models of four sizes, one pretraining recipe")
