"""Understanding tasks (Liu et al. 2022, P-tuning v2, §4.2-4.3, Tables 2-3): prompts at every layer close the gap.

P-tuning v2's central claim is about classification and, above all, sequence labelling:
on small models, prompts at the input only (Lester et al.; P-tuning v1) fall far behind
fine-tuning, and prompts at every layer (deep prompts, prefix tuning) close the gap. It
also drops the verbalizer for a linear head. Here, on the toy tasks of methods/nlu_tasks.py
(`pal`, is it a palindrome, accuracy; `rep`, BIO spans of repeated characters, span F1):
soft prompt, P-tuning, deep prompt, prefix tuning, LoRA and full fine-tuning, each with
a verbalizer and with a linear head, on base models of three sizes (the `scale`
experiment's, pretrained by its job and cached), three seeds. The trivial baselines
(majority class; the best per-character lookup) are reported beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from methods.compare import RunSettings
from methods.train_nlu import HEAD_LR, run_nlu_method

from .common import LABEL, LR, QUICK_SETTINGS, Context, base_model, run_jobs, select, stats
from .plotting import band, save, subplots
from .scale import Config as ScaleConfig
from .scale import pretrain_base

NAME = "nlu"
PAPER = "Liu et al. 2022, P-tuning v2 §4.2-4.3 (classification and sequence labelling, linear head vs verbalizer)"


@dataclass(frozen=True)
class Config:
    sizes: tuple[tuple[int, int, int], ...] = ScaleConfig.sizes[:3]  # (C, L, H): the 3 smallest, the shipped one last
    pretrain_steps: int = ScaleConfig.pretrain_steps
    pretrain_batch_size: int = ScaleConfig.pretrain_batch_size
    methods: tuple[str, ...] = ("soft_prompt", "p_tuning_mlp", "deep_prompt", "prefix_tuning", "lora",
                                "full_finetune")
    heads: tuple[str, ...] = ("verbalizer", "linear")
    tasks: tuple[tuple[str, int], ...] = (("pal", 800), ("rep", 800))  # (task, training steps)
    prompt_len: int = 16
    head_lr: float = HEAD_LR


QUICK = Config(sizes=((16, 1, 2), (32, 2, 2), (48, 2, 2)), pretrain_steps=3, pretrain_batch_size=4,
               methods=("soft_prompt", "prefix_tuning", "full_finetune"), tasks=(("pal", 2), ("rep", 2)), prompt_len=4)


def nlu_run(checkpoint: str, device: str, method: str, task: str, head: str, head_lr: float, settings: dict,
            tags: dict) -> dict:
    """Job: one method with one head on one understanding task."""
    s = RunSettings(**settings, device=device)
    s.lr = LR[method] if s.lr is None else s.lr
    r = run_nlu_method(base_model(checkpoint, device), method, s, task, head, head_lr, progress=False)
    return {**tags, "method": method, "head": head, "task": task, "seed": s.seed, "lr": s.lr, "head_lr": head_lr,
            "metric": r.metric, "trainable_params": r.trainable_params, "base_params": r.base_params,
            "baseline": r.baseline, "initial_val_score": r.initial_val_score, "test_score": r.test_score,
            "val_steps": r.val_steps, "val_score": r.val_score, "loss_every_10": [round(x, 4) for x in r.loss[::10]],
            "seconds": r.seconds}


def jobs_for(cfg: Config, ctx: Context, bases: list[dict]) -> list[dict]:
    return [{"checkpoint": base["checkpoint"], "device": ctx.device, "method": method, "task": task, "head": head,
             "head_lr": cfg.head_lr, "settings": ctx.settings(steps=steps, prompt_len=cfg.prompt_len, seed=seed),
             "tags": {"size": base["size"]}}
            for base in bases for task, steps in cfg.tasks for head in cfg.heads for method in cfg.methods
            for seed in ctx.seeds]


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    bases = run_jobs(ctx, pretrain_base, [
        {"size": size, "steps": cfg.pretrain_steps, "batch_size": cfg.pretrain_batch_size,
         "eval_n": QUICK_SETTINGS["n_test"] if ctx.quick else 200, "shipped": ctx.checkpoint, "cache": ctx.cache,
         "device": ctx.device} for size in reversed(cfg.sizes)], cache=False)[::-1]
    runs = run_jobs(ctx, nlu_run, jobs_for(cfg, ctx, bases))
    summary = {}
    for base in bases:
        for task, _ in cfg.tasks:
            for head in cfg.heads:
                for method in cfg.methods:
                    chosen = select(runs, method=method, task=task, head=head, size=base["size"])
                    summary[f"{method}/{head}/{task}/{base['size']}"] = {
                        **stats([r["test_score"] for r in chosen]), "metric": chosen[0]["metric"],
                        "baseline": chosen[0]["baseline"], "trainable_params": chosen[0]["trainable_params"],
                        "base_params": base["params"]}
    return {"config": asdict(cfg), "bases": bases, "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary, bases = report["config"], report["summary"], report["bases"]
    params = [b["params"] for b in bases]
    panels = [(task, steps, head) for task, steps in cfg["tasks"] for head in cfg["heads"]]
    fig, axes = subplots(len(panels))
    for ax, (task, steps, head) in zip(axes, panels):
        cells = [summary[f"{m}/{head}/{task}/{b['size']}"] for b in bases for m in cfg["methods"]]
        for method in cfg["methods"]:
            band(ax, params, [summary[f"{method}/{head}/{task}/{b['size']}"]["values"] for b in bases], LABEL[method])
        ax.plot(params, [summary[f"{cfg['methods'][0]}/{head}/{task}/{b['size']}"]["baseline"] for b in bases],
                color="grey", linestyle=":", label="trivial baseline")
        metric = "accuracy" if cells[0]["metric"] == "accuracy" else "span F1"
        ax.set(xscale="log", xlabel="base model parameters (log scale)", ylabel=f"test {metric}", ylim=(-0.03, 1.03),
               title=f"{task}, {head} head, {steps} steps")
        ax.legend(fontsize=7, loc="lower right")
    save(fig, path, "Understanding tasks (cf. P-tuning v2): every method with a verbalizer and a linear head")
