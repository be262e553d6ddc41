"""Pretrain the base model on packed rows of the synthetic tasks.

    python -m minitransformer.pretrain            # the shipped base model, ~25 min on 2 CPU cores

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

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from .config import ModelConfig
from .data import IGNORE_INDEX, PRETRAIN_TASKS, PackedTaskStream
from .evaluate import format_table, task_table
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
             progress: bool = True, device: str = "cpu") -> tuple[MiniTransformer, dict]:
    """Train a fresh model; return it (on the CPU) with its history {"step": [...], "loss": [...]}."""
    torch.manual_seed(cfg.seed)
    tokenizer = CharTokenizer()
    if model_config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"vocab_size {model_config.vocab_size} != tokenizer's {tokenizer.vocab_size}")
    model = MiniTransformer(model_config).to(device).train()
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
            history["step"].append(step)
            history["loss"].append(round(loss.item(), 5))
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.cpu().eval(), history


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults, model_defaults = PretrainConfig(), ModelConfig()
    for name in ("steps", "batch_size", "lr", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)),
                            default=getattr(defaults, name))
    for name in ("d_model", "n_layer", "n_head"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(model_defaults, name))
    parser.add_argument("--out", default=str(DEFAULT_CHECKPOINT), help="checkpoint folder to write")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU")
    parser.add_argument("--eval-n", type=int, default=500, help="test inputs per task in the final table")
    args = parser.parse_args(argv)

    model_config = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, n_head=args.n_head)
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
    print(f"wrote {save_checkpoint(model, args.out, metadata)}")


if __name__ == "__main__":
    main()
