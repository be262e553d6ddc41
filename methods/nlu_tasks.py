"""Two understanding tasks: one label per input (classification), one tag per character (tagging).

P-tuning v2 (Liu et al. 2022, §1 and §4.2) makes its case on natural language understanding:
shallow prompts fall far behind fine-tuning on small models, and furthest on *sequence
labelling* (NER, extractive QA, SRL), where every token needs an answer. These are toy
versions in the corpus's style (minitransformer/data.py), tasks the base model never saw:

- `pal` (classification, two balanced classes): is the input a palindrome? `pal:abcba=` is
  "yes"; `pal:abcda=` is "no". Every "no" is a palindrome with one character changed, so
  the answer hangs on one pair of positions anywhere in the input, never on one character.
- `rep` (tagging, BIO): the runs of characters that repeat an earlier character of the input.
  `rep:abcab=` tags `O O O B I`: `a b c` are new, then `a b` is one span of repeats. The same
  character gets different tags in different contexts (`a` is O, then B), so no per-character
  lookup solves it. The tag at t depends on the left context only (is s[t] in s[:t]? was
  s[t-1] a repeat?), which a causal model can see at position t.

Inputs are split train/validation/test by the corpus's hash (`split_of(x, SPLIT_SEED)`), so
the splits are disjoint by construction. One batch format serves both heads (heads.py):
labels are class indices (B,) or tag indices (B, T); the verbalizer maps them to its words.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from minitransformer import CharTokenizer
from minitransformer.data import IGNORE_INDEX, LETTERS, SPLIT_SEED, TASKS, format_prompt, split_of

from .metrics import accuracy, span_f1

CLASSIFICATION, TAGGING = "classification", "tagging"
PAL_LEN = (3, 8)  # palindrome lengths
REP_ALPHABET, REP_LEN = LETTERS[:8], (4, 10)  # a small alphabet, so that repeats are common


@dataclass(frozen=True)
class NLUTask:
    name: str  # three letters, like the corpus's tasks
    kind: str  # CLASSIFICATION or TAGGING
    description: str
    labels: tuple[str, ...]  # class names, or BIO tags
    label_words: tuple[str, ...]  # one vocabulary character per label: what the verbalizer scores
    solve: Callable[[str], int | list[int]]  # input -> class index, or one tag index per character
    sample_input: Callable[[random.Random, int | None], str]  # (rng, wanted class or None) -> input


def _palindrome(rng: random.Random) -> str:
    n = rng.randint(*PAL_LEN)
    half = "".join(rng.choice(LETTERS) for _ in range((n + 1) // 2))
    return half + half[: n // 2][::-1]


def _pal_input(rng: random.Random, wanted: int | None) -> str:
    """A palindrome (class 1), or a palindrome with one character of a mirrored pair changed (class 0)."""
    x = _palindrome(rng)
    if (wanted if wanted is not None else rng.randint(0, 1)) == 1:
        return x
    i = rng.randrange(len(x) // 2) if rng.random() < 0.5 else len(x) - 1 - rng.randrange(len(x) // 2)
    return x[:i] + rng.choice(LETTERS.replace(x[i], "")) + x[i + 1:]


def _rep_input(rng: random.Random, wanted: int | None) -> str:
    return "".join(rng.choice(REP_ALPHABET) for _ in range(rng.randint(*REP_LEN)))


def repeat_tags(x: str) -> list[int]:
    """0 (O) for a character's first occurrence; 1 (B) or 2 (I) for a repeat, I if the one before repeats too."""
    repeats = [c in x[:t] for t, c in enumerate(x)]
    return [0 if not r else 2 if t and repeats[t - 1] else 1 for t, r in enumerate(repeats)]


NLU_TASKS = {t.name: t for t in [
    NLUTask("pal", CLASSIFICATION, "is the input a palindrome", ("no", "yes"), ("n", "y"),
            lambda x: int(x == x[::-1]), _pal_input),
    NLUTask("rep", TAGGING, "tag the runs of characters that repeat an earlier one", ("O", "B", "I"),
            ("o", "b", "i"), repeat_tags, _rep_input),
]}
assert not set(NLU_TASKS) & set(TASKS), "an understanding task must not reuse a pretraining task's name"


def get_nlu_task(name: str) -> NLUTask:
    if name not in NLU_TASKS:
        raise ValueError(f"unknown understanding task {name!r}; choose one of {sorted(NLU_TASKS)}")
    return NLU_TASKS[name]


def sample_nlu_inputs(task: str, split: str, n: int) -> list[str]:
    """n distinct inputs of `task` from `split` (the corpus's hash split); a classification task's
    classes are balanced: class k gets n // K inputs (the first n % K classes one more)."""
    spec, rng = get_nlu_task(task), random.Random(f"{task}-{split}")
    n_classes = len(spec.labels) if spec.kind == CLASSIFICATION else 1
    chosen: dict[str, None] = {}
    for k in range(n_classes):
        want, got, tries = n // n_classes + (k < n % n_classes), 0, 0
        while got < want:
            x = spec.sample_input(rng, k if spec.kind == CLASSIFICATION else None)
            if split_of(x, SPLIT_SEED) == split and x not in chosen:
                chosen[x], got = None, got + 1
            tries += 1
            if tries > 200 * n + 10_000:
                raise ValueError(f"could not find {n} distinct {split} inputs for task {task!r}; ask for fewer")
    inputs = list(chosen)
    rng.shuffle(inputs)
    return inputs


def nlu_batch(tokenizer: CharTokenizer, task: str, inputs: list[str], with_name: bool = False):
    """Right-padded `input_ids`, `attention_mask` (B, T) and `labels`: (B,) class indices, or (B, T)
    tag indices at the input's characters and IGNORE_INDEX elsewhere (name, `=`, padding)."""
    spec = get_nlu_task(task)
    rows = [tokenizer.encode(format_prompt(task, x, with_name)) for x in inputs]  # `pal:abcba=` or `abcba=`
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    tags = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, x) in enumerate(zip(rows, inputs)):
        input_ids[i, : len(row)], attention_mask[i, : len(row)] = torch.tensor(row), 1
        if spec.kind == TAGGING:
            start = len(row) - 1 - len(x)  # the input's characters end just before `=`
            tags[i, start: start + len(x)] = torch.tensor(spec.solve(x))
    labels = torch.tensor([spec.solve(x) for x in inputs]) if spec.kind == CLASSIFICATION else tags
    return input_ids, attention_mask, labels


def tag_names(task: str, x: str, tags: list[int]) -> list[str]:
    return [get_nlu_task(task).labels[t] for t in tags[: len(x)]]


# -- trivial baselines: what "learned" must beat ------------------------------------------------
def majority_baseline(task: str, train: list[str], test: list[str]) -> float:
    """Test accuracy of always answering the train split's most common class."""
    solve = get_nlu_task(task).solve
    majority = Counter(solve(x) for x in train).most_common(1)[0][0]
    return accuracy([majority] * len(test), [solve(x) for x in test])


def lookup_f1(task: str, inputs: list[str], table: dict[str, int], default: int) -> float:
    """Span F1 on `inputs` of tagging every character c with `table.get(c, default)`."""
    solve = get_nlu_task(task).solve
    gold = [tag_names(task, x, solve(x)) for x in inputs]
    return span_f1(gold, [tag_names(task, x, [table.get(c, default) for c in x]) for x in inputs])


def best_lookup(task: str, train: list[str]) -> tuple[dict[str, int], int]:
    """The per-character tag table with the best train span F1, and the tag of unseen characters.

    It starts from each character's most common tag (all O here: most characters are new), then
    tries every other tag for one character at a time, keeping any change that raises the train
    F1, until none does (coordinate ascent; exact for a table this small in practice).
    """
    spec = get_nlu_task(task)
    counts: dict[str, Counter] = {}
    for x in train:
        for c, t in zip(x, spec.solve(x)):
            counts.setdefault(c, Counter())[t] += 1
    default = sum(counts.values(), Counter()).most_common(1)[0][0]
    table = {c: n.most_common(1)[0][0] for c, n in sorted(counts.items())}
    best, improved = lookup_f1(task, train, table, default), True
    while improved:
        improved = False
        for c in table:
            for tag in range(len(spec.labels)):
                trial = {**table, c: tag}
                score = lookup_f1(task, train, trial, default)
                if score > best:
                    table, best, improved = trial, score, True
    return table, default


def lookup_baseline(task: str, train: list[str], test: list[str]) -> float:
    """Test span F1 of the best per-character lookup (`best_lookup`, chosen on the train split)."""
    return lookup_f1(task, test, *best_lookup(task, train))


def baseline(task: str, train: list[str], test: list[str]) -> float:
    """The trivial baseline of `task`: majority-class accuracy, or per-character lookup span F1."""
    kind = get_nlu_task(task).kind
    return majority_baseline(task, train, test) if kind == CLASSIFICATION else lookup_baseline(task, train, test)
