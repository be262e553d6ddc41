"""The two scores of the understanding tasks: accuracy, and span-level F1 over BIO tags.

P-tuning v2 (Liu et al. 2022, §4) scores sentence classification by accuracy and sequence
labelling (NER, SRL) by span-level F1, as seqeval computes it: a predicted span counts only
if its type, first and last token all equal a gold span's. Tags read `B`/`I`/`O`, typed
(`B-PER`) or untyped (`B`).

seqeval itself needs scikit-learn, which the pinned stack does not carry, so the rule is
written out here, the same as seqeval's default (non-strict, conlleval) mode:

- a span starts at `B`, and also at an `I` that does not continue a span of its type
  (after `O`, at the start, or after another type): `O I I` holds one span, `I` at 1..2;
- a span ends before `O`, before a `B`, and before an `I` of another type.

Strict mode (IOB2) would drop the span that starts at an `I`; we do not.
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[str, int, int]  # (type, first, last) token index, last included


def accuracy(predicted: Sequence, gold: Sequence) -> float:
    """The fraction of positions where `predicted` equals `gold`."""
    if len(predicted) != len(gold):
        raise ValueError(f"got {len(predicted)} predictions for {len(gold)} gold labels; give one per example")
    if not gold:
        raise ValueError("accuracy of nothing: give at least one example")
    return sum(p == g for p, g in zip(predicted, gold)) / len(gold)


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> ("B", "PER"); `B` -> ("B", ""); refuses anything that is not B, I or O."""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I", "O") or (prefix == "O" and kind):
        raise ValueError(f"{tag!r} is not a BIO tag; use 'O', 'B', 'I', or typed ones like 'B-PER'")
    return prefix, kind


def spans(tags: Sequence[str]) -> set[Span]:
    """The spans of one tag sequence, by seqeval's default rule (see the module docstring)."""
    found, start, kind = set(), None, ""
    for t, tag in enumerate(tags):
        prefix, this_kind = split_tag(tag)
        continues = prefix == "I" and start is not None and this_kind == kind
        if start is not None and not continues:  # the open span ends before t
            found.add((kind, start, t - 1))
            start = None
        if prefix in ("B", "I") and not continues:  # a span starts at t (an I after O starts one too)
            start, kind = t, this_kind
    if start is not None:
        found.add((kind, start, len(tags) - 1))
    return found


def span_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    """Micro span F1 over sequences: 2PR / (P + R), exact spans only; 0.0 when there is nothing
    to score (no predicted or no gold span), as seqeval does."""
    if len(gold) != len(predicted):
        raise ValueError(f"got {len(predicted)} predicted sequences for {len(gold)} gold ones")
    correct = n_gold = n_predicted = 0
    for row, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sequence {row}: {len(p)} predicted tags for {len(g)} gold tags; give one per token")
        gold_spans, predicted_spans = spans(g), spans(p)
        correct += len(gold_spans & predicted_spans)
        n_gold += len(gold_spans)
        n_predicted += len(predicted_spans)
    if correct == 0:
        return 0.0
    precision, recall = correct / n_predicted, correct / n_gold
    return 2 * precision * recall / (precision + recall)
