"""A synthetic multi-task corpus: tiny string and arithmetic tasks, each named by a hard prompt.

Every example reads `name:input=answer.`, e.g. `rev:abc=cba.`. The three-letter task name
is a *hard prompt*: discrete tokens that tell the model which function to apply. Prompt
methods later replace it with learned vectors, or teach the frozen model tasks it has
never seen.

- Pretraining tasks (the base model learns these): copy, reverse, sort, shift each
  letter by one, add two numbers.
- Held-out tasks (never seen in pretraining; prompt methods adapt the frozen model to
  them): sort descending, reverse-then-shift, rotate left by one.

Pretraining uses **packed rows** (`PackedTaskStream`): examples back to back,
`rev:abc=cba.srt:dcb=bcd.…`, filling the whole context, as real language models are
trained on packed text. The model then meets every task at every position. The
alternative, one example per row always starting at position 0 (`OneExampleStream`),
shows the model inputs only at the first ~20 positions, and a prompt of P vectors in
front moves every real token P positions to the right. The `packing` experiment
(`python -m experiments packing`) pretrains a base model on each stream and measures
both: each base's accuracy with its input shifted, and what a soft prompt recovers on
each; see experiments/results/packing.

Splits are deterministic: an input's split (train / validation / test) is a hash of
SPLIT_SEED and the input string, so the three never share an input, for any task, and
every run (pretraining, prompt training, any seed) sees the same split.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .tokenizer import CharTokenizer

LETTERS = string.ascii_lowercase
MIN_LEN, MAX_LEN = 3, 7  # length range of letter inputs
IGNORE_INDEX = -100  # label value that the cross-entropy loss skips
SPLIT_SEED = 0  # the corpus's one train/val/test split; run seeds change sampling, never the split


def _shift(s: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in s)


def _letters(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))


def _two_numbers(rng: random.Random) -> str:
    return f"{rng.randint(0, 99)}+{rng.randint(0, 99)}"


@dataclass(frozen=True)
class Task:
    name: str  # the hard prompt, three letters
    description: str
    solve: Callable[[str], str]  # input -> answer
    sample_input: Callable[[random.Random], str]


TASKS = {
    t.name: t
    for t in [
        Task("cpy", "copy the letters", lambda s: s, _letters),
        Task("rev", "reverse the letters", lambda s: s[::-1], _letters),
        Task("srt", "sort the letters", lambda s: "".join(sorted(s)), _letters),
        Task("shf", "shift each letter by one (z wraps to a)", _shift, _letters),
        Task("add", "add two numbers below 100", lambda s: str(sum(map(int, s.split("+")))), _two_numbers),
        # held out from pretraining:
        Task("dsc", "sort the letters descending", lambda s: "".join(sorted(s, reverse=True)), _letters),
        Task("rsh", "reverse, then shift each letter by one", lambda s: _shift(s[::-1]), _letters),
        Task("rol", "rotate left by one", lambda s: s[1:] + s[:1], _letters),
    ]
}
PRETRAIN_TASKS = ("cpy", "rev", "srt", "shf", "add")
HELDOUT_TASKS = ("dsc", "rsh", "rol")
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


def format_prompt(task: str, x: str, with_name: bool = True) -> str:
    """The part the model reads before answering: `rev:abc=` (or `abc=` without the name)."""
    return f"{task}:{x}=" if with_name else f"{x}="


def format_example(task: str, x: str, with_name: bool = True) -> str:
    """A whole example, answer and end-of-sequence `.` included: `rev:abc=cba.`."""
    return format_prompt(task, x, with_name) + get_task(task).solve(x) + "."


def split_of(x: str, seed: int) -> str:
    """Which split an input belongs to: a deterministic hash of (seed, input)."""
    bucket = int(hashlib.sha256(f"{seed}:{x}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if bucket < SPLIT_FRACTIONS["train"] else "val" if bucket < 0.9 else "test"


def sample_inputs(task: str, split: str, n: int, seed: int = 0) -> list[str]:
    """n distinct inputs of `task` from `split`, the same list for the same arguments."""
    if split not in SPLIT_FRACTIONS:
        raise ValueError(f"split must be one of {list(SPLIT_FRACTIONS)}, got {split!r}")
    rng = random.Random(f"{task}-{split}-{seed}")
    sampler, chosen, tries = get_task(task).sample_input, {}, 0
    while len(chosen) < n:
        x = sampler(rng)
        if split_of(x, seed) == split:
            chosen[x] = None
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"could not find {n} distinct {split} inputs for task {task!r}; ask for fewer")
    return list(chosen)


def example_batch(tokenizer: CharTokenizer, task: str, inputs: list[str], with_name: bool = True):
    """One example per row, right-padded: `input_ids`, `attention_mask`, `labels`, each (B, T).

    This is the fine-tuning format: prompt methods prepend their prompt to each row.
    `labels[t]` is the token at t + 1 where that token is part of the answer (or the
    closing `.`), and IGNORE_INDEX elsewhere, so the loss grades answers only.
    """
    rows, answer_masks = [], []
    for x in inputs:
        prompt = tokenizer.encode(format_prompt(task, x, with_name))
        answer = tokenizer.encode(get_task(task).solve(x) + ".")
        rows.append(prompt + answer)
        answer_masks.append([False] * len(prompt) + [True] * len(answer))
    width = max(map(len, rows)) - 1
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, is_answer) in enumerate(zip(rows, answer_masks)):
        n = len(row) - 1
        input_ids[i, :n] = torch.tensor(row[:-1])
        attention_mask[i, :n] = 1
        labels[i, :n] = torch.tensor([t if a else IGNORE_INDEX for t, a in zip(row[1:], is_answer[1:])])
    return input_ids, attention_mask, labels


class PackedTaskStream:
    """An endless stream of packed training rows for pretraining.

    Each row holds whole examples back to back, from random tasks, padded at the end.
    Labels are the next token on answer characters (and the closing `.`) and
    IGNORE_INDEX elsewhere: the model is graded on answers, not on guessing random inputs.
    """

    def __init__(self, tokenizer: CharTokenizer, tasks=PRETRAIN_TASKS, row_len: int = 128,
                 split: str = "train", seed: int = 0) -> None:
        self.tokenizer, self.tasks, self.row_len, self.split, self.seed = tokenizer, tasks, row_len, split, seed
        self.rng = random.Random(f"packed-{seed}")

    def _example(self) -> tuple[list[int], list[int]]:
        task = self.rng.choice(self.tasks)
        x = get_task(task).sample_input(self.rng)
        while split_of(x, SPLIT_SEED) != self.split:
            x = get_task(task).sample_input(self.rng)
        prompt = self.tokenizer.encode(format_prompt(task, x))
        answer = self.tokenizer.encode(get_task(task).solve(x) + ".")
        return prompt + answer, [False] * len(prompt) + [True] * len(answer)

    def _padded(self, ids: list[int], is_answer: list[bool]) -> tuple[list[int], list[int]]:
        """Pad to row_len + 1 tokens, then split into inputs (row_len) and next-token labels (row_len)."""
        pad = self.row_len + 1 - len(ids)
        ids = ids + [self.tokenizer.pad_id] * pad
        is_answer = is_answer + [False] * pad
        labels = [t if a else IGNORE_INDEX for t, a in zip(ids[1:], is_answer[1:])]
        return ids[:-1], labels

    def row(self) -> tuple[list[int], list[int]]:
        """One packed row: token ids (row_len) and labels (row_len)."""
        ids, is_answer = [], []
        while True:
            example, answer_mask = self._example()
            if len(ids) + len(example) > self.row_len + 1:  # +1: the last token is only a label
                break
            ids += example
            is_answer += answer_mask
        return self._padded(ids, is_answer)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, row_len) and labels (B, row_len)."""
        rows = [self.row() for _ in range(batch_size)]
        return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


class OneExampleStream(PackedTaskStream):
    """Like `PackedTaskStream`, but one example per row, at position 0, padded: `rev:abc=cba.<pad>…`.

    The naive way to pretrain on examples, kept as the contrast to packing: the model reads an
    input only at positions 0 to ~20 and never after another example. Same interface, the same
    labels (answers and the closing `.`, IGNORE_INDEX elsewhere) and shapes (B, row_len) as the
    packed stream, so `pretrain(..., stream=OneExampleStream(...))` changes only the layout.
    The `packing` experiment compares the two.
    """

    def row(self) -> tuple[list[int], list[int]]:
        """One example, padded: token ids (row_len) and labels (row_len)."""
        return self._padded(*self._example())
