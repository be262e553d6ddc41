"""Packing (this project's own finding; soft prompts after Lester, Al-Rfou & Constant 2021).

A soft prompt of P vectors sits in front of the input, so every real token moves P
positions to the right. A base model pretrained on one example per row, always starting
at position 0 (`rev:abc=cba.<pad>…`), has read inputs only at positions 0 to ~20: it can
know its tasks perfectly and still never have seen one at position 16. Pretrained on
packed rows instead (`rev:abc=cba.srt:dcb=bcd.…`), it has met every task at every
position. This experiment pretrains one base model of the shipped size and recipe on each
stream (`minitransformer.data.OneExampleStream`, `PackedTaskStream`; the packed one is the
shipped checkpoint when its recipe matches) and measures, on each:

1. its pretraining tasks (the test exact-match table: both bases should know them);
2. the mechanism: exact-match on `rev` with its hard prompt `rev:`, the input moved k
   positions to the right, either by position ids alone (nothing in front) or by k
   characters of other solved examples in front;
3. what a 16-token soft prompt recovers of `rev` with its name removed (300 steps; random,
   repeated-name and demonstration init) and what soft prompt and prefix tuning reach on
   held-out `dsc` (1000 steps).

The base models go to `--cache` (default /tmp), never into the repository.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from minitransformer import CharTokenizer, ModelConfig, format_example, load_checkpoint, sample_inputs, save_checkpoint
from minitransformer.checkpoint import read_config
from minitransformer.data import IGNORE_INDEX, PRETRAIN_TASKS, OneExampleStream, example_batch
from minitransformer.evaluate import task_table
from minitransformer.pretrain import PretrainConfig, pretrain

from .common import LABEL, Context, run_jobs, select, stats, steps_to, train_run
from .plotting import band, curve_band, grouped_bars, save, subplots

NAME = "packing"
PAPER = "this project's own finding: packed pretraining rows make soft prompts work (soft prompts: Lester et al. 2021)"
STREAMS = ("one_example", "packed")
INITS = {"RANDOM": ("RANDOM", None), "TEXT_name": ("TEXT", "rev:"), "TEXT_demo": ("TEXT", None)}  # (init, init_text)
INIT_LABEL = {"RANDOM": "random", "TEXT_name": "TEXT rev:rev:…", "TEXT_demo": "TEXT demonstration…rev:"}


@dataclass(frozen=True)
class Config:
    size: tuple[int, int, int] = (ModelConfig.d_model, ModelConfig.n_layer, ModelConfig.n_head)  # (C, L, H)
    pretrain_steps: int = PretrainConfig.steps
    pretrain_batch_size: int = PretrainConfig.batch_size
    eval_n: int = 500  # test inputs per task: each base's pretraining table and the shift measurement
    shifts: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64)
    prompt_len: int = 16
    rev: tuple[int, int] = (300, 25)  # soft prompt on rev without its name: steps, eval_every
    inits: tuple[str, ...] = tuple(INITS)
    heldout: tuple[str, int, int] = ("dsc", 1000, 100)  # task, steps, eval_every
    heldout_methods: tuple[str, ...] = ("soft_prompt", "prefix_tuning")


QUICK = Config(size=(16, 1, 2), pretrain_steps=3, pretrain_batch_size=4, eval_n=8, shifts=(0, 4), prompt_len=4,
               rev=(2, 1), heldout=("dsc", 2, 1))


def solved_text(length: int, rng: random.Random) -> str:
    """The last `length` characters of solved examples of random pretraining tasks: ends with `.`."""
    text = ""
    while len(text) < length:
        task = rng.choice(PRETRAIN_TASKS)
        text += format_example(task, rng.choice(sample_inputs(task, "val", 50)))
    return text[len(text) - length:]


@torch.no_grad()
def shifted_exact_match(model, task: str, inputs: list[str], shift: int, filler: str) -> float:
    """Exact-match on `task` (hard prompt included) with each input moved `shift` positions right.

    filler "none": only the position ids move (what a prompt of `shift` vectors does to them);
    "examples": `shift` characters of other solved examples stand in front. Teacher-forced:
    greedy decoding writes the whole answer and its `.` exactly when the argmax at every
    answer position is right given the right tokens before it, so one forward pass suffices.
    """
    tok, device = CharTokenizer(), next(model.parameters()).device
    ids, mask, labels = example_batch(tok, task, inputs)  # (B, T) each, right-padded
    B, T = ids.shape
    position_ids = None  # counted from the mask: the example starts after the filler
    if filler == "examples":
        rng = random.Random(f"shift-{shift}")
        front = torch.tensor([tok.encode(solved_text(shift, rng)) for _ in range(B)], dtype=torch.long)
        ids = torch.cat([front.reshape(B, shift), ids], dim=1)  # (B, shift + T)
        mask = torch.cat([torch.ones(B, shift, dtype=torch.long), mask], dim=1)
        labels = torch.cat([torch.full((B, shift), IGNORE_INDEX), labels], dim=1)
    else:
        position_ids = (torch.arange(T) + shift).expand(B, T).to(device)  # (B, T)
    logits = model(ids.to(device), attention_mask=mask.to(device), position_ids=position_ids)  # (B, T', V)
    right = (logits.argmax(-1).cpu() == labels) | (labels == IGNORE_INDEX)  # (B, T')
    return round(right.all(dim=1).float().mean().item(), 4)


def _find_base(stream: str, model_config: ModelConfig, recipe: dict, shipped: str, path: Path, reuse: bool):
    """(path, source) of a checkpoint with this stream, size and recipe, if one exists already."""
    candidates = ([(Path(shipped), "shipped checkpoint")] if stream == "packed" else []) + \
        ([(path, "cached")] if reuse else [])
    for candidate, source in candidates:
        if (candidate / "config.json").is_file():
            config, meta = read_config(candidate)
            if config == model_config and meta.get("pretrain_config") == recipe \
                    and meta.get("stream", "packed") == stream:
                return candidate, source
    return None, ""


def pretrain_base(stream: str, size: tuple[int, int, int], steps: int, batch_size: int, eval_n: int,
                  shifts: tuple[int, ...], shipped: str, cache: str, reuse: bool, device: str) -> dict:
    """Job: the base model pretrained on `stream` (found, or pretrained now), its task table and shift curves."""
    d, n_layer, n_head = size
    model_config = ModelConfig(d_model=d, n_layer=n_layer, n_head=n_head)
    recipe, start = asdict(PretrainConfig(steps=steps, batch_size=batch_size)), time.time()
    path = Path(cache) / f"packing_{stream}_d{d}_l{n_layer}_h{n_head}_s{steps}_b{batch_size}"
    found, source = _find_base(stream, model_config, recipe, shipped, path, reuse)
    if found:
        path, model = found, load_checkpoint(found)
    else:
        rows = OneExampleStream(CharTokenizer(), row_len=model_config.block_size, seed=recipe["seed"]) \
            if stream == "one_example" else None  # None: pretrain's own packed stream
        model, history = pretrain(model_config, PretrainConfig(**recipe), progress=False, device=device, stream=rows)
        save_checkpoint(model, path, {"pretrain_config": recipe, "stream": stream, "history": history,
                                      "device": device})
        source = f"pretrained here in {time.time() - start:.0f} s"
    model = model.to(device)
    inputs = sample_inputs("rev", "test", eval_n)
    shifted = {filler: [shifted_exact_match(model, "rev", inputs, k, filler) for k in shifts]
               for filler in ("none", "examples")}
    table = task_table(model, CharTokenizer(), n=eval_n)
    return {"stream": stream, "size": f"d{d}-L{n_layer}-H{n_head}", "params": model.num_parameters(),
            "checkpoint": str(path), "source": source, "seconds": round(time.time() - start, 1),
            "test_exact_match": {r["task"]: r["exact_match"] for r in table}, "rev_shifted_exact_match": shifted}


def _log_base(ctx: Context, base: dict, shifts) -> None:
    table = " ".join(f"{task} {em:.3f}" for task, em in base["test_exact_match"].items())
    ctx.log(f"  base {base['stream']} ({base['size']}, {base['source']}): test EM {table}")
    for filler, values in base["rev_shifted_exact_match"].items():
        curve = " ".join(f"k={k}: {em:.3f}" for k, em in zip(shifts, values))
        ctx.log(f"    rev: shifted by k, filler {filler}: {curve}")


def _jobs(ctx: Context, cfg: Config, bases: list[dict]) -> list[dict]:
    (steps, every), (task, h_steps, h_every) = cfg.rev, cfg.heldout
    jobs = []
    for base in bases:
        common = {"checkpoint": base["checkpoint"], "device": ctx.device}
        for seed in ctx.seeds:
            for label in cfg.inits:
                init, text = INITS[label]
                jobs.append({**common, "method": "soft_prompt", "tags": {"base": base["stream"], "task": "rev",
                                                                          "init_label": label},
                             "settings": ctx.settings(task="rev", steps=steps, eval_every=every, init=init,
                                                      init_text=text, prompt_len=cfg.prompt_len, seed=seed)})
            for method in cfg.heldout_methods:
                jobs.append({**common, "method": method, "tags": {"base": base["stream"], "task": task},
                             "settings": ctx.settings(task=task, steps=h_steps, eval_every=h_every,
                                                      prompt_len=cfg.prompt_len, seed=seed)})
    return jobs


def run(ctx: Context) -> dict:
    cfg = QUICK if ctx.quick else Config()
    bases = run_jobs(ctx, pretrain_base, [
        {"stream": stream, "size": cfg.size, "steps": cfg.pretrain_steps, "batch_size": cfg.pretrain_batch_size,
         "eval_n": cfg.eval_n, "shifts": cfg.shifts, "shipped": ctx.checkpoint, "cache": ctx.cache,
         "reuse": ctx.reuse, "device": ctx.device} for stream in STREAMS],
        cache=False)  # a base model is kept as a checkpoint in ctx.cache, not as a run
    for base in bases:
        _log_base(ctx, base, cfg.shifts)
    runs = run_jobs(ctx, train_run, _jobs(ctx, cfg, bases))
    summary = {}
    for stream in STREAMS:
        for label in cfg.inits:
            chosen = select(runs, base=stream, task="rev", init_label=label)
            summary[f"soft_prompt/rev/{label}/{stream}"] = {
                **stats([r["test_exact_match"] for r in chosen]),
                "initial_val_exact_match": [r["initial_val_exact_match"] for r in chosen],
                "steps_to_90pct_val": [steps_to(r) for r in chosen]}
        for method in cfg.heldout_methods:
            chosen = select(runs, base=stream, task=cfg.heldout[0], method=method)
            summary[f"{method}/{cfg.heldout[0]}/{stream}"] = stats([r["test_exact_match"] for r in chosen])
    return {"config": asdict(cfg), "bases": bases, "runs": runs, "summary": summary}


def plot(report: dict, path) -> None:
    cfg, summary, runs = report["config"], report["summary"], report["runs"]
    colors = {"one_example": "C0", "packed": "C1"}  # as grouped_bars colours its series
    names = {"one_example": "one example per row", "packed": "packed rows"}
    fig, axes = subplots(3)
    for base in report["bases"]:
        for filler, style in (("none", "-"), ("examples", "--")):
            line = band(axes[0], cfg["shifts"], [[v] for v in base["rev_shifted_exact_match"][filler]],
                        f"{names[base['stream']]}, " + ("positions only" if filler == "none" else "examples in front"),
                        color=colors[base["stream"]])
            line.set_linestyle(style)
    axes[0].axvline(cfg["prompt_len"], color="grey", linestyle=":", label=f"P={cfg['prompt_len']} (the soft prompt)")
    axes[0].set(xscale="symlog", xlabel="input shifted right by k positions (symlog)", ylim=(-0.03, 1.03),
                ylabel="rev test exact-match (hard prompt rev:)", title="position robustness of each base (1 run)")
    axes[0].set_xticks(cfg["shifts"], [str(k) for k in cfg["shifts"]])
    axes[0].legend(fontsize=7, loc="lower left")
    for stream in STREAMS:
        for label, style in zip(cfg["inits"], ("-", "--", ":")):
            chosen = select(runs, base=stream, task="rev", init_label=label)
            line = curve_band(axes[1], chosen, f"{names[stream]}, {INIT_LABEL[label]}", color=colors[stream])
            line.set_linestyle(style)
    axes[1].set(xlabel="training step", ylabel="validation exact-match", ylim=(-0.03, 1.03),
                title=f"soft prompt P={cfg['prompt_len']} recovering rev without its name")
    axes[1].legend(fontsize=7, loc="lower right")
    task = cfg["heldout"][0]
    grouped_bars(axes[2], [LABEL[m] for m in cfg["heldout_methods"]],
                 {names[s]: [summary[f"{m}/{task}/{s}"]["values"] for m in cfg["heldout_methods"]] for s in STREAMS})
    axes[2].set(xlabel="method", ylabel="test exact-match", ylim=(0, 1.1),
                title=f"held-out {task}, {cfg['heldout'][1]} steps, P={cfg['prompt_len']}")
    axes[2].legend(fontsize=7, title="base pretrained on", title_fontsize=7)
    save(fig, path, "Packing: a base pretrained on one example per row vs on packed rows")
