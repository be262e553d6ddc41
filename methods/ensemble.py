"""Prompt ensembles (Lester, Al-Rfou & Constant 2021, §6 "Prompt Ensembling").

Several prompts for one task, trained from different seeds, make an ensemble for the price
of one model: the frozen base is shared, so N prompts cost N times a few kilobytes, and
because every row of a batch may carry its own prompt (serving.py), one batch runs them
all. Lester et al. put each input in the batch N times, once per prompt, and combine the
N generated answers by majority vote; the ensemble beat the mean and even the best of
its prompts.

    rows = [x_1 with prompt 1, ..., x_1 with prompt N, x_2 with prompt 1, ...]     (B * N rows)
    answer(x) = the most frequent of the N answers to x

Ties go to the answer of the lowest-numbered prompt among the tied ones: a fixed rule, so
the vote never depends on the order of a dictionary or a sort.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from minitransformer import CharTokenizer, MiniTransformer
from minitransformer.data import format_prompt, get_task

from .prompt_model import PromptModel
from .serving import PromptRegistry


def majority_vote(answers: Sequence[str]) -> str:
    """The most frequent answer; among tied ones, the one the lowest-numbered prompt gave."""
    if not answers:
        raise ValueError("no answers to vote on")
    counts = Counter(answers)
    top = max(counts.values())
    return next(a for a in answers if counts[a] == top)  # answers are in prompt order


class PromptEnsemble:
    """N prompts for one task on one base model, answered in one batch and combined by vote.

        ensemble = PromptEnsemble(base, [load_prompt(base, p) for p in paths])
        ensemble.complete(["abc=", "hello="], max_new_tokens=8)   # -> two voted answers
    """

    def __init__(self, base: MiniTransformer, models: Sequence[PromptModel]) -> None:
        if len(models) == 0:
            raise ValueError("an ensemble needs at least one prompt")
        self.registry = PromptRegistry(base)
        self.members = [f"prompt{i}" for i in range(len(models))]
        for name, model in zip(self.members, models):
            self.registry.add(name, model)  # refuses a model built on another base object

    def __len__(self) -> int:
        return len(self.members)

    def member_answers(self, texts: Sequence[str], max_new_tokens: int, batch_size: int = 100,
                       tokenizer: CharTokenizer | None = None) -> list[list[str]]:
        """answers[i][k]: prompt i's greedy answer to texts[k]; `batch_size` texts (times N rows) per batch."""
        N, out = len(self.members), [[] for _ in self.members]
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            rows = [t for t in chunk for _ in range(N)]  # each text N times, once per prompt
            answers = self.registry.complete(self.members * len(chunk), rows, max_new_tokens, tokenizer)
            for i in range(N):
                out[i].extend(answers[i::N])
        return out

    def complete(self, texts: Sequence[str], max_new_tokens: int, batch_size: int = 100) -> list[str]:
        """The voted answer to every text."""
        per_member = self.member_answers(texts, max_new_tokens, batch_size)
        return [majority_vote([answers[k] for answers in per_member]) for k in range(len(texts))]

    def exact_match(self, task: str, inputs: Sequence[str], with_name: bool = False,
                    batch_size: int = 100) -> dict:
        """Exact-match of every prompt alone and of their vote, from one pass of batches."""
        targets = [get_task(task).solve(x) for x in inputs]
        texts = [format_prompt(task, x, with_name) for x in inputs]
        per_member = self.member_answers(texts, max(map(len, targets)) + 1, batch_size)
        votes = [majority_vote([answers[k] for answers in per_member]) for k in range(len(texts))]

        def score(answers):
            return sum(a == t for a, t in zip(answers, targets)) / len(targets)

        return {"members": [score(a) for a in per_member], "vote": score(votes),
                "all_agree": sum(len({a[k] for a in per_member}) == 1 for k in range(len(texts))) / len(texts)}
