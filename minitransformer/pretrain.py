"""Pretrain the base model on packed rows of the synthetic tasks.

    python -m minitransformer.pretrain                     # the shipped recipe, ~25 min on 2 CPU cores
    python -m minitransformer.pretrain --steps 3 --eval-n 10   # a smoke run, seconds
    python -m minitransformer.pretrain --replace-shipped   # regenerate minitransformer/checkpoints/base

The checkpoint goes to a new folder `runs/pretrain-YYYYMMDD-HHMMSS` unless `--out` names
one (a folder that already holds files needs `--overwrite`). The shipped base model, which
every method and lesson loads, is replaced only with `--replace-shipped`. Bad settings
(`--steps 0`, `--lr inf`, `--eval-n 0`, `--device cuda` without a GPU) are refused before
training, and a loss that turns NaN or infinite stops the run without saving anything.

Next-token prediction with the loss on answer characters only, AdamW, linear warm-up
then cosine decay of the learning rate (the recipe of GPT-2/nanoGPT at toy scale). At the
end it prints the test exact-match of every task and writes a checkpoint (safetensors +
config.json, with the training settings and loss history as metadata).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from .cli import device_arg, positive_float, positive_int
from .config import ModelConfig
from .data import IGNORE_INDEX, PRETRAIN_TASKS, PackedTaskStream
from .evaluate import format_table, task_table
from .files import fresh_run_dir, is_within, prepare_output_dir, to_json
from .model import MiniTransformer
from .tokenizer import CharTokenizer


@dataclass
class PretrainConfig:
    steps: int = 6000
    batch_size: int = 32
    lr: float = 3e-3  # peak learning rate
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.1  # on matrices only, not on biases or LayerNorm gains
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 50


def cosine_lr(step: int, steps: int, peak: float, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `peak * min_ratio` at the last step."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not IGNORE_INDEX."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def pretrain(model_config: ModelConfig, cfg: PretrainConfig, tasks=PRETRAIN_TASKS,
             progress: bool = True, device: str = "cpu", stream=None) -> tuple[MiniTransformer, dict]:
    """Train a fresh model; return it (on the CPU) with its history {"step": [...], "loss": [...]}.

    `stream` gives the training rows (anything with `batch(batch_size)` -> input_ids, labels,
    each (B, T)); None is the shipped recipe, `PackedTaskStream` of `tasks` seeded by
    `cfg.seed`. The `packing` experiment passes a `data.OneExampleStream` instead.

    The loss is checked at every logged step: once it is NaN or infinite, every later step
    is too (the weights become NaN), so the run stops at once with a ValueError instead of
    returning a broken model. The final weights are checked as well.
    """
    torch.manual_seed(cfg.seed)
    tokenizer = CharTokenizer()
    if model_config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"vocab_size {model_config.vocab_size} != tokenizer's {tokenizer.vocab_size}")
    model = MiniTransformer(model_config).to(device).train()
    if stream is None:
        stream = PackedTaskStream(tokenizer, tasks, row_len=model_config.block_size, seed=cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    history = {"step": [], "loss": []}
    bar = tqdm(range(cfg.steps), desc="pretraining", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        input_ids, labels = (t.to(device) for t in stream.batch(cfg.batch_size))  # (B, T) each
        loss = lm_loss(model(input_ids), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            value = loss.item()
            if not math.isfinite(value):
                raise ValueError(f"the pretraining loss became {value} at step {step}: training diverged; "
                                 f"lower the learning rate (--lr, now {cfg.lr:g})")
            history["step"].append(step)
            history["loss"].append(round(value, 5))
            bar.set_postfix(loss=f"{value:.4f}")
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise ValueError(f"the last update left NaN or infinite weights: training diverged; "
                         f"lower the learning rate (--lr, now {cfg.lr:g})")
    return model.cpu().eval(), history


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m minitransformer.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults, model_defaults = PretrainConfig(), ModelConfig()
    parser.add_argument("--steps", type=positive_int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=positive_int, default=defaults.batch_size, help="packed rows per step")
    parser.add_argument("--lr", type=positive_float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for name in ("d_model", "n_layer", "n_head"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=positive_int, default=getattr(model_defaults, name))
    parser.add_argument("--out", default=None, help="checkpoint folder to write (default: a new folder "
                        "runs/pretrain-YYYYMMDD-HHMMSS)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to be a folder that holds files")
    parser.add_argument("--replace-shipped", action="store_true",
                        help=f"write the checkpoint over the shipped base model ({DEFAULT_CHECKPOINT})")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu, or cuda for a GPU")
    parser.add_argument("--eval-n", type=positive_int, default=500, help="test inputs per task in the final table")
    return parser, parser.parse_args(argv)


def output_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The checkpoint folder, checked before training: the shipped base model is replaced only on request."""
    if args.replace_shipped:
        if args.out is not None and not is_within(args.out, DEFAULT_CHECKPOINT):
            parser.error(f"--replace-shipped writes to {DEFAULT_CHECKPOINT}; drop --out {args.out} or the flag")
        out, overwrite = DEFAULT_CHECKPOINT, True
    else:
        out, overwrite = Path(args.out) if args.out else fresh_run_dir("pretrain"), args.overwrite
        if is_within(out, DEFAULT_CHECKPOINT):
            parser.error(f"--out {out} is the shipped base model, which every method and lesson loads; "
                         "write elsewhere, or pass --replace-shipped to replace it on purpose")
    try:
        return prepare_output_dir(out, overwrite)
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> Path:
    parser, args = parse_args(argv)
    try:
        model_config = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head)
    except ValueError as error:  # e.g. d_model not divisible by n_head
        parser.error(str(error))
    out = output_dir(parser, args)
    cfg = PretrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    start = time.time()
    model, history = pretrain(model_config, cfg, device=args.device)
    seconds = time.time() - start
    rows = task_table(model, CharTokenizer(), n=args.eval_n)
    print(f"{model.num_parameters():,} parameters, {cfg.steps} steps in {seconds:.0f} s")
    print(format_table(rows))
    metadata = {"pretrain_config": asdict(cfg), "device": args.device, "torch_version": torch.__version__,
                "command": "python -m minitransformer.pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
                "train_seconds": round(seconds, 1), "history": history,
                "test_exact_match": {r["task"]: r["exact_match"] for r in rows}}
    to_json(metadata)  # strict JSON, checked before anything is written: NaN or inf is refused, named
    print(f"wrote {save_checkpoint(model, out, metadata)}")
    return out


if __name__ == "__main__":
    main()
