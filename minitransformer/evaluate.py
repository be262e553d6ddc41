"""Exact-match accuracy: does greedy decoding produce the whole answer, character for character?

`python -m minitransformer.evaluate` prints a table of every task's test exact-match
for a checkpoint: pretraining tasks should be near 100%, held-out tasks near 0%
(the model has never seen their names).
"""

from __future__ import annotations

import argparse

import torch

from .checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from .data import HELDOUT_TASKS, PRETRAIN_TASKS, format_prompt, get_task, sample_inputs
from .generate import generate
from .tokenizer import CharTokenizer


@torch.no_grad()
def predict(model, tokenizer: CharTokenizer, prompts: list[str], max_answer_len: int,
            batch_size: int = 500) -> list[str]:
    """Greedy answers to `prompts` (text up to and including `=`), cut at the first `.`."""
    answers, device = [], next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        ids, mask = (t.to(device) for t in tokenizer.batch_encode(prompts[start:start + batch_size], "left"))
        out = generate(model, ids, max_answer_len + 1, attention_mask=mask, eos_id=tokenizer.eos_id,
                       pad_id=tokenizer.pad_id)
        for row in out[:, ids.shape[1]:]:
            answers.append(tokenizer.decode(row).split(".")[0])
    return answers


def exact_match(model, tokenizer: CharTokenizer, task: str, inputs: list[str], with_name: bool = True,
                batch_size: int = 500) -> float:
    """Fraction of inputs whose greedy answer equals the task's answer exactly."""
    targets = [get_task(task).solve(x) for x in inputs]
    prompts = [format_prompt(task, x, with_name) for x in inputs]
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    answers = predict(model, tokenizer, prompts, max(map(len, targets)), batch_size)
    if was_training:
        model.train()
    return sum(a == t for a, t in zip(answers, targets)) / len(inputs)


def task_table(model, tokenizer: CharTokenizer, n: int = 500, split: str = "test", seed: int = 0) -> list[dict]:
    rows = []
    for task in PRETRAIN_TASKS + HELDOUT_TASKS:
        inputs = sample_inputs(task, split, n, seed)
        kind = "pretraining" if task in PRETRAIN_TASKS else "held out"
        rows.append({"task": task, "kind": kind, "description": get_task(task).description,
                     "n": len(inputs), "exact_match": exact_match(model, tokenizer, task, inputs)})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'task':<5} {'kind':<12} {'exact-match':>11}  description", "-" * 64]
    lines += [f"{r['task']:<5} {r['kind']:<12} {r['exact_match']:>10.1%}  {r['description']}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="checkpoint folder")
    parser.add_argument("--n", type=int, default=500, help="test inputs per task")
    args = parser.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    print(f"checkpoint {args.checkpoint}: {model.num_parameters():,} parameters")
    print(format_table(task_table(model, CharTokenizer(), n=args.n)))


if __name__ == "__main__":
    main()
