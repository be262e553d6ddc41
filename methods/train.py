"""One toy training loop for every method: AdamW on the method's own parameters only.

The loss is next-token cross-entropy on the answer characters of single examples
(`abc=cba.` with the task name removed, or `dsc:abc=cba.`), the prompt supplying the
task. Every `eval_every` steps the loop measures validation exact-match (greedy decoding
of the whole answer); at the end, test exact-match. It returns everything needed to plot
the run: the loss of every step and the validation curve.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from minitransformer import CharTokenizer, sample_inputs
from minitransformer.data import IGNORE_INDEX, SPLIT_SEED, example_batch
from minitransformer.evaluate import exact_match
from minitransformer.pretrain import cosine_lr, lm_loss

from .prompt_model import PromptModel

PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    task: str = "dsc"
    with_task_name: bool = False  # keep the hard prompt `dsc:` in the input, or let the prompt carry the task
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-2  # prompts tolerate, and need, far larger steps than full fine-tuning (~1e-3)
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_every: int = 50
    n_train: int = 4000  # distinct training inputs drawn from the task's train split
    n_val: int = 200
    n_test: int = 500
    seed: int = 0  # batch order and dropout; the train/val/test split is always the corpus's (SPLIT_SEED)
    precision: str = "fp32"  # "bf16": forward and loss under bfloat16 autocast (GPUs with bf16 units)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class TrainResult:
    method: str
    trainable_params: int
    base_params: int
    test_exact_match: float
    initial_val_exact_match: float
    seconds: float
    loss: list[float] = field(default_factory=list)  # one entry per step
    val_steps: list[int] = field(default_factory=list)
    val_exact_match: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def answer_loss(model: PromptModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy over the answer positions; the head runs at those positions only."""
    input_ids, attention_mask, labels = batch
    graded = labels != IGNORE_INDEX  # (B, T)
    return lm_loss(model(input_ids, attention_mask, logits_to_keep=graded), labels[graded])  # (N, V) vs (N,)


def make_optimizer(model: PromptModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the method's own trainable parameters and nothing else: the base model
    cannot change even if one of its weights were left with `requires_grad` by mistake."""
    params = [p for p in model.prompt_parameters().values() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(model: PromptModel, cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train `model`'s prompt parameters on `cfg.task`; return curves and test exact-match."""
    tokenizer = CharTokenizer()
    # The split is fixed, whatever the run's seed: the base model was pretrained on the
    # train split of SPLIT_SEED, so another split could put pretraining inputs into "test".
    train_inputs = sample_inputs(cfg.task, "train", cfg.n_train, SPLIT_SEED)
    val_inputs = sample_inputs(cfg.task, "val", cfg.n_val, SPLIT_SEED)
    test_inputs = sample_inputs(cfg.task, "test", cfg.n_test, SPLIT_SEED)
    optimizer = make_optimizer(model, cfg)
    params = optimizer.param_groups[0]["params"]
    rng, device = random.Random(cfg.seed), next(model.parameters()).device
    torch.manual_seed(cfg.seed)

    def validate() -> float:
        return exact_match(model, tokenizer, cfg.task, val_inputs, cfg.with_task_name)

    result = TrainResult(method=model.method_name, trainable_params=sum(p.numel() for p in params),
                         base_params=model.base.num_parameters(), test_exact_match=0.0,
                         initial_val_exact_match=validate(), seconds=0.0, config=asdict(cfg))
    result.val_steps.append(0)
    result.val_exact_match.append(result.initial_val_exact_match)
    start = time.time()
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    pending = []  # losses not yet copied to the host: reading one per step would stall a GPU
    bar = tqdm(range(1, cfg.steps + 1), desc=f"{model.method_name} on {cfg.task}", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step - 1, cfg.steps, cfg.lr, cfg.warmup_steps)
        batch = example_batch(tokenizer, cfg.task, rng.sample(train_inputs, cfg.batch_size), cfg.with_task_name)
        batch = tuple(t.to(device) for t in batch)
        with autocast:
            loss = answer_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pending.append(loss.detach())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result.loss.extend(torch.stack(pending).float().tolist())
            pending.clear()
            result.val_steps.append(step)
            result.val_exact_match.append(validate())  # exact_match evaluates in eval mode, then restores train
            bar.set_postfix(loss=f"{result.loss[-1]:.3f}", val_em=f"{result.val_exact_match[-1]:.2f}")
    model.eval()
    result.seconds = round(time.time() - start, 2)
    result.test_exact_match = exact_match(model, tokenizer, cfg.task, test_inputs, cfg.with_task_name)
    return result
