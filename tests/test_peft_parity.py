"""Our methods against Hugging Face `peft` on the same GPT-2 weights and the same prompt parameters.

Both sides get a randomly initialised `transformers` GPT-2 (ours via `from_gpt2`), the
same prompt parameters are copied into both, and the logits of the real tokens must
agree within 1e-5 (float32 accumulation-order noise; see conftest.ATOL).

Every test runs on several shapes (an odd head count, 1 and 5 layers, P = 1) and with
right and left padding. Under left padding peft cannot be compared as it stands for the
methods that prepend positions (prompt tuning, P-tuning): it drops `position_ids` for
them ("Position ids are not supported ... Ignoring position ids"), so GPT-2 counts the
padding as positions, while ours (like GPT-2 given the right `position_ids`) counts real
tokens only. There the test takes peft's own prompt (`get_prompt`) and feeds it to the
same GPT-2 with the correct positions. For prefix tuning peft passes `position_ids` on
(shifted by P), so it is compared directly.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ATOL
from peft import PrefixTuningConfig as PeftPrefixConfig
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from methods import (
    PrefixTuningConfig,
    PrefixTuningModel,
    PTuningConfig,
    PTuningModel,
    SoftPromptConfig,
    SoftPromptModel,
)
from minitransformer.hf_gpt2 import from_gpt2

# name -> (n_embd, n_layer, n_head, P)
SHAPES = {
    "C32-L3-H4-P5": (32, 3, 4, 5),
    "odd-heads-C30-L3-H3-P5": (30, 3, 3, 5),
    "one-layer-C30-L1-H5-P1": (30, 1, 5, 1),
    "five-layers-C32-L5-H4-P1": (32, 5, 4, 1),
}
PADDING = ("right", "left")


@pytest.fixture(params=[(s, p) for s in SHAPES for p in PADDING], ids=lambda c: f"{c[0]}-{c[1]}-padded")
def case(request):
    """(GPT-2 model, P, padding side) for one shape and one padding side."""
    shape, padding = request.param
    n_embd, n_layer, n_head, P = SHAPES[shape]
    return gpt2(n_embd, n_layer, n_head), P, padding


def gpt2(n_embd=32, n_layer=3, n_head=4, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=60, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def inputs(padding):
    ids = torch.randint(0, 60, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padding == "right":
        mask[2, 6:] = 0  # one right-padded row
    else:
        mask[1, :1], mask[2, :4] = 0, 0  # two left-padded rows
    return ids, mask


def real_positions(mask):
    """GPT-2's position ids that count real tokens only, as ours do ((B, T); padding gets 0)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def randomise(module, seed=2):
    """Give every prompt parameter random values, so nothing matches by accident (e.g. zeros)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def peft_logits_with_prepended_prompt(peft_model, hf, ids, mask, P, padding):
    """peft's logits of the real tokens for prompt tuning / P-tuning.

    Right padding: peft itself (positions 0.. are then the real tokens' own). Left padding:
    peft would drop `position_ids`, so its prompt goes into the same GPT-2 by hand with
    the positions that count real tokens only (see the module docstring).
    """
    if padding == "right":
        return peft_model(input_ids=ids, attention_mask=mask).logits[:, P:]
    prompt = peft_model.get_prompt(batch_size=ids.shape[0])  # (B, P, C): peft's own prompt encoder output
    embeds = torch.cat([prompt, hf.transformer.wte(ids)], dim=1)  # (B, P + T, C)
    full_mask = torch.cat([torch.ones_like(mask[:, :P]), mask], dim=1)
    return hf(inputs_embeds=embeds, attention_mask=full_mask, position_ids=real_positions(full_mask)).logits[:, P:]


def assert_real_tokens_match(mine, theirs, mask):
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=ATOL)


def test_soft_prompt_matches_peft_prompt_tuning(case):
    hf, P, padding = case
    ours = SoftPromptModel(from_gpt2(hf), SoftPromptConfig(num_virtual_tokens=P))
    theirs = get_peft_model(hf, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).eval()
    encoder = theirs.prompt_encoder["default"]
    randomise(encoder)
    with torch.no_grad():
        ours.prompt.copy_(encoder.embedding.weight)
        ids, mask = inputs(padding)
        assert_real_tokens_match(ours(ids, mask), peft_logits_with_prepended_prompt(theirs, hf, ids, mask, P, padding),
                                 mask)


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_p_tuning_matches_peft_prompt_encoder(kind, case):
    hf, P, padding = case
    ours = PTuningModel(from_gpt2(hf), PTuningConfig(num_virtual_tokens=P, encoder_reparameterization_type=kind,
                                                     encoder_hidden_size=16))
    theirs = get_peft_model(hf, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                    encoder_reparameterization_type=kind,
                                                    encoder_hidden_size=16)).eval()
    encoder = theirs.prompt_encoder["default"]
    randomise(encoder)
    ours.prompt_encoder.load_state_dict(encoder.state_dict())  # same layer names and layouts
    with torch.no_grad():
        ids, mask = inputs(padding)
        assert_real_tokens_match(ours(ids, mask), peft_logits_with_prepended_prompt(theirs, hf, ids, mask, P, padding),
                                 mask)


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_matches_peft(projection, case):
    hf, P, padding = case
    ours = PrefixTuningModel(from_gpt2(hf), PrefixTuningConfig(num_virtual_tokens=P, prefix_projection=projection,
                                                               encoder_hidden_size=24))
    theirs = get_peft_model(hf, PeftPrefixConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                 prefix_projection=projection, encoder_hidden_size=24)).eval()
    encoder = theirs.prompt_encoder["default"]
    randomise(encoder)
    ours_state = {n.removeprefix("prompt_encoder."): p for n, p in ours.prompt_parameters().items()}
    assert set(ours_state) == set(encoder.state_dict())
    with torch.no_grad():
        for name, p in ours.prompt_parameters().items():
            p.copy_(encoder.state_dict()[name])
        ids, mask = inputs(padding)
        # peft shifts position_ids by P for a prefix and passes them on: left padding is compared
        # directly (right padding too: there these are GPT-2's default positions)
        theirs_logits = theirs(input_ids=ids, attention_mask=mask, position_ids=real_positions(mask)).logits
        assert_real_tokens_match(ours(ids, mask), theirs_logits, mask)  # a prefix adds no positions to the output
