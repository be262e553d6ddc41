"""One toy training loop for every method: AdamW on the method's own parameters only.

The loss is next-token cross-entropy on the answer characters of single examples
(`abc=cba.` with the task name removed, or `dsc:abc=cba.`), the prompt supplying the
task. Every `eval_every` steps the loop measures validation exact-match (greedy decoding
of the whole answer); at the end, test exact-match. It returns everything needed to plot
the run: the loss of every step and the validation curve.

A run can stop and resume exactly. `train(model, cfg, stop_after=N)` stops after step N of
the `cfg.steps`-step run; `result.state` (a `TrainState`) holds everything besides the
model's parameters that step N+1 depends on: the optimizer's moments, the batch sampler's
and torch's random states, the curves so far. `train(model, cfg, resume=state)` continues
from there, and the parameters and losses are bitwise those of a run that never stopped
(the learning rate follows the same cosine schedule over `cfg.steps`). A training
checkpoint (`save_prompt(model, path, kind="training", state=result.state)`) carries both
across processes.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from minitransformer import CharTokenizer, sample_inputs
from minitransformer.data import IGNORE_INDEX, SPLIT_SEED, TASKS, example_batch
from minitransformer.evaluate import exact_match
from minitransformer.pretrain import cosine_lr, lm_loss

from .prompt_model import PromptModel, check_int
from .train_state import TrainState, capture_state, restore_state, trainable_parameters

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
        """Refuse, before any work, a config that would crash mid-run or silently train something else."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; pass one of {', '.join(sorted(TASKS))}")
        check_number(self, "lr", "pass a positive learning rate, e.g. --lr 0.03", positive=True)
        check_number(self, "weight_decay", "pass 0 for none, or a small positive value such as 0.01")
        check_int(self, "steps", 1, "pass --steps 1 or more")
        check_int(self, "warmup_steps", 0, "pass 0 for no warm-up, or the number of warm-up steps")
        check_int(self, "eval_every", 1, "pass --eval-every 1 or more (validation every N steps)")
        check_int(self, "n_train", 1, "pass the number of distinct training inputs, e.g. 4000")
        check_int(self, "n_val", 1, "validation needs at least one input: pass n_val >= 1")
        check_int(self, "n_test", 1, "the test needs at least one input: pass n_test >= 1")
        check_int(self, "batch_size", 1, "pass --batch-size 1 or more")
        if self.batch_size > self.n_train:  # a batch is drawn without replacement from the training inputs
            raise ValueError(f"--batch-size {self.batch_size} is larger than the {self.n_train} training inputs "
                             f"(n_train); pass --batch-size {self.n_train} or less, or raise n_train")


def check_number(config, name: str, fix: str, positive: bool = False) -> None:
    """Refuse a field that is not a finite number that is > 0 (`positive`) or >= 0."""
    value = getattr(config, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) \
        and (value > 0 if positive else value >= 0)
    if not ok:
        need = "a finite number > 0" if positive else "a finite number >= 0"
        raise ValueError(f"{type(config).__name__}.{name} must be {need}, got {value!r}; {fix}")


@dataclass
class TrainResult:
    method: str
    trainable_params: int
    base_params: int
    test_exact_match: float | None  # None for a run stopped before its last step (stop_after)
    initial_val_exact_match: float
    seconds: float
    loss: list[float] = field(default_factory=list)  # one entry per step
    val_steps: list[int] = field(default_factory=list)
    val_exact_match: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    state: TrainState | None = field(default=None, repr=False, compare=False)  # to resume or checkpoint the run

    # The names a table or plot of any task reads (an understanding task's NLUResult has the same):
    metric = "exact_match"

    @property
    def test_score(self) -> float | None:
        return self.test_exact_match

    @property
    def val_score(self) -> list[float]:
        return self.val_exact_match

    def to_dict(self) -> dict:
        """The numbers of the run, as JSON-ready values (the resumable state is left out)."""
        values = asdict(replace(self, state=None))
        del values["state"]
        return values


def answer_loss(model: PromptModel, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean cross-entropy over the answer positions; the head runs at those positions only."""
    input_ids, attention_mask, labels = batch
    graded = labels != IGNORE_INDEX  # (B, T)
    return lm_loss(model(input_ids, attention_mask, logits_to_keep=graded), labels[graded])  # (N, V) vs (N,)


def make_optimizer(model: PromptModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the method's own trainable parameters and nothing else: the base model
    cannot change even if one of its weights were left with `requires_grad` by mistake."""
    params = list(trainable_parameters(model).values())
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(model: PromptModel, cfg: TrainConfig, progress: bool = True, resume: TrainState | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train `model`'s prompt parameters on `cfg.task`; return curves and test exact-match.

    `stop_after=N`: stop after step N of the cfg.steps-step run (no test: test_exact_match
    stays None). `resume=state`: continue a stopped run from `state` (`result.state` of
    the run that stopped, or `load_train_state` of its training checkpoint); `model` must
    hold that run's parameters. Either way `result.state` holds the state at the end.
    """
    tokenizer = CharTokenizer()
    # The split is fixed, whatever the run's seed: the base model was pretrained on the
    # train split of SPLIT_SEED, so another split could put pretraining inputs into "test".
    train_inputs = sample_inputs(cfg.task, "train", cfg.n_train, SPLIT_SEED)
    val_inputs = sample_inputs(cfg.task, "val", cfg.n_val, SPLIT_SEED)
    test_inputs = sample_inputs(cfg.task, "test", cfg.n_test, SPLIT_SEED)
    optimizer = make_optimizer(model, cfg)
    params = optimizer.param_groups[0]["params"]
    device = next(model.parameters()).device
    done = 0 if resume is None else resume.step
    last = cfg.steps if stop_after is None else stop_after
    if not (isinstance(last, int) and done <= last <= cfg.steps):
        raise ValueError(f"stop_after must be a step in {done}..{cfg.steps} (steps done..cfg.steps), got {stop_after}")

    def validate() -> float:
        return exact_match(model, tokenizer, cfg.task, val_inputs, cfg.with_task_name)

    result = TrainResult(method=model.method_name, trainable_params=sum(p.numel() for p in params),
                         base_params=model.base.num_parameters(), test_exact_match=None,
                         initial_val_exact_match=0.0, seconds=0.0, config=asdict(cfg))
    if resume is None:
        rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        result.initial_val_exact_match = validate()
        result.val_steps.append(0)
        result.val_exact_match.append(result.initial_val_exact_match)
    else:
        rng = restore_state(model, cfg, optimizer, resume)
        result.initial_val_exact_match, result.seconds = resume.initial_val_exact_match, resume.seconds
        result.loss, result.val_steps = list(resume.loss), list(resume.val_steps)
        result.val_exact_match = list(resume.val_exact_match)
    start = time.time()
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    pending = []  # losses not yet copied to the host: reading one per step would stall a GPU
    bar = tqdm(range(done + 1, last + 1), desc=f"{model.method_name} on {cfg.task}", disable=not progress,
               initial=done, total=cfg.steps)
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
    if pending:  # stopped between validations (stop_after)
        result.loss.extend(torch.stack(pending).float().tolist())
    model.eval()
    result.seconds = round(result.seconds + time.time() - start, 2)
    result.state = capture_state(model, cfg, last, optimizer, rng, result)
    if last == cfg.steps:
        result.test_exact_match = exact_match(model, tokenizer, cfg.task, test_inputs, cfg.with_task_name)
    return result
