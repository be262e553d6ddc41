"""Input validation wherever a user passes data in: each refusal names what is wrong and the fix.

Every case asserts the error type and a piece of the message a user needs to act on.
"""

from __future__ import annotations

import pytest
import torch
from conftest import METHOD_FACTORIES, P

from methods.__main__ import parse_args
from minitransformer import generate

METHODS = {name: METHOD_FACTORIES[name] for name in ("soft_prompt", "p_tuning_mlp", "deep_prompt", "prefix")}
IDS = torch.tensor([[5, 9, 2], [7, 3, 1]])
ONES = torch.ones(2, 3, dtype=torch.long)
BAD_INPUTS = {
    "float ids": ((IDS.float(), None), "integer token ids"),
    "id past the vocabulary": ((torch.tensor([[5, 41, 2]]), None), r"\[0, vocab_size=41\)"),
    "negative id": ((torch.tensor([[5, -1, 2]]), None), "vocab_size"),
    "1-D ids": ((IDS[0], None), "2-D .* add a batch dim"),
    "a list, not a tensor": (([[5, 9, 2]], None), "torch.tensor"),
    "empty batch": ((IDS[:0], ONES[:0]), "empty input"),
    "no tokens": ((IDS[:, :0], ONES[:, :0]), "empty input"),
    "mask of the wrong shape": ((IDS, ONES[:, :2]), r"attention_mask must be \(B, cached \+ T\) = \(2, 3\)"),
    "float mask": ((IDS, ONES.float()), "integers or booleans .* .long()"),
    "mask value 2": ((IDS, ONES * 2), "only 0 .* and 1"),
    "a row all padding": ((IDS, torch.tensor([[1, 1, 1], [0, 0, 0]])), r"row\(s\) \[1\] are all zeros"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
@pytest.mark.parametrize("method", METHODS)
def test_prompt_models_refuse_bad_input(method, case, small_model):
    (ids, mask), message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        METHODS[method](small_model)(ids, mask)


@pytest.mark.parametrize("method", METHODS)
def test_prompt_plus_input_longer_than_the_context_names_the_prompt_length(method, small_model):
    model, block = METHODS[method](small_model), small_model.config.block_size
    fits = torch.ones(1, block - P, dtype=torch.long)
    assert model(fits).shape == (1, block - P, small_model.config.vocab_size)  # exactly full: fine
    with pytest.raises(ValueError, match=f"prompt's {P} virtual tokens \\+ {block - P + 1} real tokens .* "
                                         f"at most {block - P} tokens"):
        model(torch.ones(1, block - P + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=f"prompt's {P} virtual tokens"):  # generation that runs past the end
        generate(model, torch.ones(1, block - P - 1, dtype=torch.long), 3)


@pytest.mark.parametrize("method", METHODS)
def test_padding_does_not_count_against_the_context(method, small_model):
    model, block = METHODS[method](small_model), small_model.config.block_size
    ids = torch.ones(2, block - 1, dtype=torch.long)  # wider than block - P, but only padding is extra
    mask = torch.zeros_like(ids)
    mask[0, :block - P], mask[1, -3:] = 1, 1  # right- and left-padded rows
    assert model(ids, mask).shape == ids.shape + (small_model.config.vocab_size,)


def test_base_model_refuses_a_mask_row_of_zeros_and_a_float_mask(small_model):
    with pytest.raises(ValueError, match=r"row\(s\) \[0, 2\] are all zeros.* drop the row"):
        small_model(torch.ones(3, 2, dtype=torch.long), attention_mask=torch.tensor([[0, 0], [1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="integers or booleans"):
        small_model(IDS, attention_mask=ONES.float())
    bool_mask = torch.tensor([[False, True, True], [True, True, True]])  # booleans are a fine mask
    torch.testing.assert_close(small_model(IDS, attention_mask=bool_mask), small_model(IDS, attention_mask=bool_mask.long()),
                               rtol=0, atol=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "xyz"], "argument --task: invalid choice: 'xyz'"),
        (["--methods", "foo"], "unknown method(s) ['foo']; choose from soft_prompt"),
        (["--methods", "soft_prompt,bar"], "unknown method(s) ['bar']"),
        (["--methods", ","], "unknown method(s) []"),
        (["--prompt-len", "0"], "must be a positive integer, got 0"),
        (["--lr", "-1"], "must be a positive number"),
        (["--init", "ZEROS"], "argument --init: invalid choice: 'ZEROS'"),
    ],
)
def test_command_line_refuses_unknown_names_and_bad_numbers(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2  # argparse's "usage error"
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.int16, torch.int8, torch.uint8, torch.bool])
def test_token_ids_of_a_dtype_the_embedding_refuses_name_the_fix(dtype, small_model):
    ids = IDS.to(dtype)
    with pytest.raises(ValueError, match=r"torch.long or torch.int32 .* convert them with .long\(\)"):
        small_model(ids)
    for method in METHODS.values():
        with pytest.raises(ValueError, match=r"torch.long or torch.int32 .* convert them with .long\(\)"):
            method(small_model)(ids)


def test_int32_token_ids_are_accepted_and_give_the_same_logits(small_model):
    torch.testing.assert_close(small_model(IDS.int()), small_model(IDS), rtol=0, atol=0)
    for method in METHODS.values():
        model = method(small_model)
        torch.testing.assert_close(model(IDS.int()), model(IDS), rtol=0, atol=0)


def counting_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_generation_past_the_context_is_refused_before_anything_runs_and_names_the_new_tokens_that_fit(small_model):
    block = small_model.config.block_size
    calls = counting_calls(small_model)
    ids = torch.ones(1, 10, dtype=torch.long)
    fits = block - 10 + 1  # the last new token is never fed back, so it needs no position
    assert generate(small_model, ids, fits).shape == (1, 10 + fits)  # exactly full: fine
    calls.clear()
    with pytest.raises(ValueError, match=f"10 input tokens \\+ {fits + 1} new tokens .* at most {fits} new tokens "
                                         r"\(max_new_tokens\)"):
        generate(small_model, ids, fits + 1)
    assert not calls  # refused up front, not partway with tokens already generated
    with pytest.raises(ValueError, match=f"no new token fits: shorten the input to at most {block} tokens"):
        generate(small_model, torch.ones(1, block + 1, dtype=torch.long), 1)
    assert not calls


@pytest.mark.parametrize("method", METHODS)
def test_generation_past_the_context_counts_the_prompt_and_the_longest_real_row(method, small_model):
    model, block = METHODS[method](small_model), small_model.config.block_size
    calls = counting_calls(model)
    ids = torch.ones(2, 12, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: row 0 is the longest, with 12 real tokens
    fits = block - P - 12 + 1
    assert generate(model, ids, fits, attention_mask=mask).shape == (2, 12 + fits)
    calls.clear()
    with pytest.raises(ValueError, match=f"the prompt's {P} virtual tokens \\+ 12 input tokens \\+ {fits + 1} new "
                                         f"tokens .* at most {fits} new tokens"):
        generate(model, ids, fits + 1, attention_mask=mask)
    assert not calls
