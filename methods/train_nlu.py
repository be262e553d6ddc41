"""Training a method and a head together on an understanding task, and scoring it.

The same toy loop as train.py (AdamW, warm-up then cosine decay), with two differences
that P-tuning v2 (Liu et al. 2022, §3.3) brings: the loss is cross-entropy over the
labels (one per input, or one per character), and the optimizer holds two groups, the
method's parameters at the method's learning rate and the head's at its own (a fresh
linear head wants larger steps than full fine-tuning's weights, smaller than a prompt's).
The score is accuracy for classification and span F1 for tagging (metrics.py).

`run_nlu_method(base, name, settings, task, head)` is what a command line calls: it builds
the method the comparison builds (compare.METHODS), puts the head on it and trains both.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from minitransformer import CharTokenizer, MiniTransformer, engine
from minitransformer.data import IGNORE_INDEX
from minitransformer.pretrain import cosine_lr

from .compare import METHODS, RunSettings
from .heads import HEADS, NLUModel, make_head
from .metrics import accuracy, span_f1
from .nlu_tasks import CLASSIFICATION, baseline, get_nlu_task, nlu_batch, sample_nlu_inputs, tag_names

HEAD_LR = 3e-2  # the linear head's default learning rate, whatever the method's


@dataclass
class NLUTrainConfig:
    task: str = field(default="pal", metadata={"help": "an understanding task of nlu_tasks.NLU_TASKS"})
    head: str = field(default="linear", metadata={"help": f"how the answer is read: one of {HEADS}"})
    with_task_name: bool = field(default=False, metadata={"help": "keep `pal:` in the input, or let the prompt say it"})
    steps: int = field(default=300, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    lr: float = field(default=1e-1, metadata={"help": "peak learning rate of the method's parameters"})
    head_lr: float = field(default=HEAD_LR, metadata={"help": "peak learning rate of the linear head"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    eval_every: int = field(default=50, metadata={"help": "validate every this many steps"})
    n_train: int = field(default=4000, metadata={"help": "distinct training inputs"})
    n_val: int = field(default=200, metadata={"help": "validation inputs"})
    n_test: int = field(default=500, metadata={"help": "test inputs"})
    seed: int = field(default=0, metadata={"help": "batch order and the head's initialisation; never the split"})

    def __post_init__(self) -> None:
        get_nlu_task(self.task)  # refuses an unknown task, naming the known ones
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")


@dataclass
class NLUResult:
    method: str
    head: str
    task: str
    metric: str  # "accuracy" or "span_f1"
    trainable_params: int  # the method's and the head's
    base_params: int
    baseline: float  # majority class, or the best per-character lookup (nlu_tasks.py)
    test_score: float
    initial_val_score: float
    seconds: float
    loss: list[float] = field(default_factory=list)  # one per step
    val_steps: list[int] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def nlu_loss(model: NLUModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Cross-entropy of the labels: one per row (classification), or per graded position (tagging)."""
    input_ids, attention_mask, labels = batch
    logits = model(input_ids, attention_mask).float()  # (B, K) or (B, T, K)
    if model.kind == CLASSIFICATION:
        return F.cross_entropy(logits, labels)
    graded = labels != IGNORE_INDEX  # (B, T): the input's characters
    return F.cross_entropy(logits[graded], labels[graded])  # (N, K) vs (N,)


@torch.no_grad()
def evaluate_nlu(model: NLUModel, inputs: list[str], with_name: bool = False, batch_size: int = 250) -> float:
    """Accuracy (classification) or span F1 (tagging) of `model` on `inputs`, in eval mode."""
    was_training, tokenizer, device = model.training, CharTokenizer(), next(model.parameters()).device
    model.eval()
    predicted, gold = [], []
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i: i + batch_size]
        input_ids, attention_mask, labels = (t.to(device) for t in nlu_batch(tokenizer, model.task, chunk, with_name))
        guess = model(input_ids, attention_mask).argmax(dim=-1)  # (B,) or (B, T)
        if model.kind == CLASSIFICATION:
            predicted += guess.tolist()
            gold += labels.tolist()
        else:
            graded = labels != IGNORE_INDEX
            for x, g, p, m in zip(chunk, labels, guess, graded):
                gold.append(tag_names(model.task, x, g[m].tolist()))
                predicted.append(tag_names(model.task, x, p[m].tolist()))
    model.train(was_training)
    return accuracy(predicted, gold) if model.kind == CLASSIFICATION else span_f1(gold, predicted)


def make_nlu_optimizer(model: NLUModel, cfg: NLUTrainConfig) -> torch.optim.AdamW:
    """AdamW over the method's trainable parameters (lr) and the head's (head_lr), and nothing else."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    method = [p for p in model.model.prompt_parameters().values() if p.requires_grad]
    groups = [{"params": method, "peak_lr": cfg.lr}] + ([{"params": head, "peak_lr": cfg.head_lr}] if head else [])
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_nlu(model: NLUModel, cfg: NLUTrainConfig, progress: bool = True) -> NLUResult:
    """Train the method and the head on `cfg.task`; return the loss, the validation curve and the test score."""
    spec, tokenizer = get_nlu_task(cfg.task), CharTokenizer()
    train_inputs = sample_nlu_inputs(cfg.task, "train", cfg.n_train)
    val_inputs = sample_nlu_inputs(cfg.task, "val", cfg.n_val)
    test_inputs = sample_nlu_inputs(cfg.task, "test", cfg.n_test)
    optimizer = make_nlu_optimizer(model, cfg)
    rng, device = random.Random(cfg.seed), next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    result = NLUResult(
        method=model.method_name, head=cfg.head, task=cfg.task,
        metric="accuracy" if spec.kind == CLASSIFICATION else "span_f1",
        trainable_params=sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        base_params=model.base.num_parameters(),
        baseline=round(baseline(cfg.task, train_inputs[:500], test_inputs), 4),  # the lookup search: 500 suffice
        test_score=0.0, initial_val_score=evaluate_nlu(model, val_inputs, cfg.with_task_name), seconds=0.0,
        config=asdict(cfg))
    result.val_steps.append(0)
    result.val_score.append(result.initial_val_score)
    start, pending = time.time(), []  # losses not yet read back from the device
    model.train()
    bar = tqdm(range(1, cfg.steps + 1), desc=f"{model.method_name}+{cfg.head} on {cfg.task}", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step - 1, cfg.steps, group["peak_lr"], cfg.warmup_steps)
        chunk = rng.sample(train_inputs, cfg.batch_size)
        batch = tuple(t.to(device) for t in nlu_batch(tokenizer, cfg.task, chunk, cfg.with_task_name))
        loss = nlu_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        pending.append(loss.detach())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result.loss.extend(torch.stack(pending).tolist())
            pending.clear()
            result.val_steps.append(step)
            result.val_score.append(evaluate_nlu(model, val_inputs, cfg.with_task_name))
            bar.set_postfix(loss=f"{result.loss[-1]:.3f}", val=f"{result.val_score[-1]:.2f}")
    model.eval()
    result.seconds = round(time.time() - start, 2)
    result.test_score = evaluate_nlu(model, test_inputs, cfg.with_task_name)
    return result


def build_nlu_model(base: MiniTransformer, name: str, settings: RunSettings, task: str, head: str) -> NLUModel:
    """Method `name` (compare.METHODS, built as the comparison builds it) with a `head` for `task`."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    model = METHODS[name].build(base, settings).to(settings.device)
    if settings.device.startswith("cuda"):  # where speed is asked for: the engine's shortcuts, as compare.py does
        engine.enable(model)
    return NLUModel(model, make_head(head, task, base.config.d_model, settings.seed), task)


def run_nlu_method(base: MiniTransformer, name: str, settings: RunSettings, task: str, head: str = "linear",
                   head_lr: float = HEAD_LR, progress: bool = True) -> NLUResult:
    """Train method `name` with `head` on understanding task `task`, with `settings` (steps, lr, seed, ...)."""
    model = build_nlu_model(base, name, settings, task, head)
    lr = settings.lr if settings.lr is not None else METHODS[name].lr
    cfg = NLUTrainConfig(task=task, head=head, with_task_name=settings.with_task_name, steps=settings.steps,
                         batch_size=settings.batch_size, lr=lr,
                         head_lr=head_lr, eval_every=settings.eval_every, n_val=settings.n_val,
                         n_test=settings.n_test, seed=settings.seed)
    start = time.time()
    result = train_nlu(model, cfg, progress)
    result.method, result.seconds = name, round(time.time() - start, 2)  # wall time, evaluation included
    return result
