"""Our methods against Hugging Face `peft` on the same GPT-2 weights and the same prompt parameters.

Both sides get a randomly initialised `transformers` GPT-2 (ours via `from_gpt2`), the
same prompt parameters are copied into both, and the logits of the real tokens must
agree within 1e-5 (float32 accumulation-order noise; see conftest.ATOL).
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

P = 5


def gpt2(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=60, n_positions=64, n_embd=32, n_layer=3, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def inputs():
    ids = torch.randint(0, 60, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # one right-padded row
    return ids, mask


def randomise(module, seed=2):
    """Give every prompt parameter random values, so nothing matches by accident (e.g. zeros)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def compare(peft_model, ours, num_virtual_positions):
    ids, mask = inputs()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits[:, num_virtual_positions:]
        mine = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(mine[real], theirs[real], rtol=0, atol=ATOL)


def test_soft_prompt_matches_peft_prompt_tuning():
    hf = gpt2()
    ours = SoftPromptModel(from_gpt2(hf), SoftPromptConfig(num_virtual_tokens=P))
    theirs = get_peft_model(hf, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).eval()
    encoder = theirs.prompt_encoder["default"]
    randomise(encoder)
    with torch.no_grad():
        ours.prompt.copy_(encoder.embedding.weight)
    compare(theirs, ours, P)


@pytest.mark.parametrize("kind", ["MLP", "LSTM"])
def test_p_tuning_matches_peft_prompt_encoder(kind):
    hf = gpt2()
    ours = PTuningModel(from_gpt2(hf), PTuningConfig(num_virtual_tokens=P, encoder_reparameterization_type=kind,
                                                     encoder_hidden_size=16))
    theirs = get_peft_model(hf, PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=P,
                                                    encoder_reparameterization_type=kind,
                                                    encoder_hidden_size=16)).eval()
    encoder = theirs.prompt_encoder["default"]
    randomise(encoder)
    ours.prompt_encoder.load_state_dict(encoder.state_dict())  # same layer names and layouts
    compare(theirs, ours, P)


@pytest.mark.parametrize("projection", [False, True])
def test_prefix_tuning_matches_peft(projection):
    hf = gpt2()
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
    compare(theirs, ours, 0)  # a prefix adds no positions to the output
