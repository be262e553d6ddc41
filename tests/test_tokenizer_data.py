"""Tokenizer round trips and the corpus's promises: disjoint splits, correct answers, packed rows."""

from __future__ import annotations

import pytest
import torch

from minitransformer.data import (
    HELDOUT_TASKS,
    IGNORE_INDEX,
    PRETRAIN_TASKS,
    TASKS,
    PackedTaskStream,
    format_example,
    sample_inputs,
    split_of,
)


def test_round_trip_of_every_character(tokenizer):
    text = "".join(tokenizer.vocab[1:])
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.vocab_size == 41 and tokenizer.pad_id == 0 and tokenizer.vocab[tokenizer.eos_id] == "."


def test_decode_drops_padding_and_batch_encode_pads_both_sides(tokenizer):
    ids, mask = tokenizer.batch_encode(["ab", "abcd"], pad_side="left")
    assert ids[0, :2].tolist() == [tokenizer.pad_id] * 2 and mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert [tokenizer.decode(r) for r in ids] == ["ab", "abcd"]
    _, right = tokenizer.batch_encode(["ab", "abcd"], pad_side="right")
    assert right.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_unknown_characters_and_ids_are_refused(tokenizer):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.encode("ABC")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([1, 41])


def test_examples_are_solved_correctly():
    assert format_example("rev", "abc") == "rev:abc=cba."
    assert format_example("srt", "cab") == "srt:cab=abc."
    assert format_example("shf", "azy") == "shf:azy=baz."
    assert format_example("add", "19+23") == "add:19+23=42."
    assert format_example("dsc", "acb") == "dsc:acb=cba."
    assert format_example("rsh", "abz") == "rsh:abz=acb."
    assert format_example("rol", "abcd") == "rol:abcd=bcda."
    assert set(PRETRAIN_TASKS).isdisjoint(HELDOUT_TASKS) and len(PRETRAIN_TASKS) >= 5 and len(HELDOUT_TASKS) >= 3


@pytest.mark.parametrize("task", sorted(TASKS))
def test_splits_are_disjoint_and_deterministic(task):
    splits = {s: sample_inputs(task, s, 300, seed=0) for s in ("train", "val", "test")}
    assert splits["train"] == sample_inputs(task, "train", 300, seed=0)
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not set(splits[a]) & set(splits[b])
    assert all(split_of(x, 0) == s for s, xs in splits.items() for x in xs)
    assert len(set(splits["test"])) == 300


def test_packed_rows_hold_whole_examples_and_label_only_answers(tokenizer):
    stream = PackedTaskStream(tokenizer, row_len=64, seed=0)
    ids, labels = stream.batch(4)
    assert ids.shape == labels.shape == (4, 64)
    for row, row_labels in zip(ids, labels):
        text = tokenizer.decode(row)
        examples = text.split(".")
        assert len(examples) >= 3, "a row packs several examples back to back"
        for example in examples[:-1]:  # the last piece may be cut off by the row's end
            name, rest = example.split(":")
            x, answer = rest.split("=")
            assert TASKS[name].solve(x) == answer and name in PRETRAIN_TASKS
            assert split_of(x, 0) == "train"
        answer_tokens = [t for t in row_labels.tolist() if t != IGNORE_INDEX]
        assert tokenizer.encode(".")[0] in answer_tokens and tokenizer.encode(":")[0] not in answer_tokens
    assert torch.equal(PackedTaskStream(tokenizer, row_len=64, seed=0).batch(4)[0], ids), "same seed, same rows"
