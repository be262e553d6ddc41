"""Our methods with a linear head against `peft` on GPT2ForSequenceClassification / GPT2ForTokenClassification.

The oracle for P-tuning v2's setting (a prompt and a fresh linear head): a random GPT-2
goes into ours (`from_gpt2`) and into `transformers`' classification models, the prompt
parameters and the head's weights are copied across, and the label logits must agree
within 1e-5. `transformers` pools a classifier at the last token that is not `pad_token_id`
(set in the config); its classifier `score` has no bias, its tagger `classifier` has one.

Padding: for prompt tuning and P-tuning peft feeds `inputs_embeds`, and GPT-2 then cannot
see the pad tokens: it pools at the last position, padding or not. So their classification
case uses rows without padding; tagging and prefix tuning (which keeps `input_ids`) use a
right-padded row.

Prefix tuning: peft 0.21.2's classification path asks the model's forward signature for
`past_key_values`, which transformers 5 renamed `cache` (the old name is still accepted),
and refuses. So there the test takes the branch peft would take by hand: peft's own prefix
(`get_prompt`) and its prefixed attention mask, into transformers' own classifier.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ATOL
from peft import PrefixTuningConfig as PeftPrefixConfig
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2ForTokenClassification, GPT2LMHeadModel

from methods import (
    PrefixTuningConfig,
    PrefixTuningModel,
    PTuningConfig,
    PTuningModel,
    SoftPromptConfig,
    SoftPromptModel,
)
from methods.heads import LinearHead, NLUModel
from minitransformer.hf_gpt2 import from_gpt2

PAD, P = 0, 4  # pad token id, virtual tokens
LABELS = {"SEQ_CLS": 2, "TOKEN_CLS": 3}  # as the tasks pal and rep have


def hf_models(kind: str, seed=0):
    """(GPT2LMHeadModel, the classification model with its transformer's weights) for `kind`."""
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=41, n_positions=64, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, num_labels=LABELS[kind], pad_token_id=PAD,
                        bos_token_id=PAD, eos_token_id=PAD)
    lm = GPT2LMHeadModel(config).eval()
    cls = (GPT2ForSequenceClassification if kind == "SEQ_CLS" else GPT2ForTokenClassification)(config)
    cls.transformer.load_state_dict(lm.transformer.state_dict())
    torch.manual_seed(seed + 1)
    with torch.no_grad():  # the head random, not at its init (a zero bias would hide a missing one)
        head = cls.score if kind == "SEQ_CLS" else cls.classifier
        head.weight.normal_(0, 0.3)
        if head.bias is not None:
            head.bias.normal_(0, 0.3)
    return lm, cls.eval()


def inputs(padded: bool):
    ids = torch.randint(1, 41, (3, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        ids[2, 4:], mask[2, 4:] = PAD, 0  # one right-padded row
    return ids, mask


def ours_for(method: str, lm, cls, kind: str) -> NLUModel:
    """Our method with the classification model's head weights (copied before peft wraps the head)."""
    base = from_gpt2(lm)
    model = {"prompt_tuning": lambda: SoftPromptModel(base, SoftPromptConfig(P)),
             "p_tuning": lambda: PTuningModel(base, PTuningConfig(P, "MLP", 16)),
             "prefix_tuning": lambda: PrefixTuningModel(base, PrefixTuningConfig(P))}[method]()
    head = LinearHead(32, LABELS[kind], bias=kind == "TOKEN_CLS")
    head.score.load_state_dict((cls.score if kind == "SEQ_CLS" else cls.classifier).state_dict())
    return NLUModel(model, head, "pal" if kind == "SEQ_CLS" else "rep")


def peft_for(method: str, cls, kind: str):
    config = {"prompt_tuning": lambda: PromptTuningConfig(task_type=kind, num_virtual_tokens=P),
              "p_tuning": lambda: PromptEncoderConfig(task_type=kind, num_virtual_tokens=P,
                                                      encoder_reparameterization_type="MLP", encoder_hidden_size=16),
              "prefix_tuning": lambda: PeftPrefixConfig(task_type=kind, num_virtual_tokens=P)}[method]()
    return get_peft_model(cls, config).eval()


def copy_prompt(ours: NLUModel, theirs) -> None:
    encoder = theirs.prompt_encoder["default"]
    torch.manual_seed(2)
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.randn_like(p) * 0.3)  # random, so that nothing matches by accident
        state = encoder.state_dict()
        for name, p in ours.model.prompt_parameters().items():
            key = {"prompt": "embedding.weight"}.get(name, name.removeprefix("prompt_encoder."))
            p.copy_(state[key])


def peft_logits(theirs, method: str, ids, mask):
    if method != "prefix_tuning":
        return theirs(input_ids=ids, attention_mask=mask).logits
    prefix_mask = torch.cat([torch.ones_like(mask[:, :P]), mask], dim=1)  # what peft's forward builds
    return theirs.base_model(input_ids=ids, attention_mask=prefix_mask, cache=theirs.get_prompt(ids.shape[0])).logits


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning"])
@pytest.mark.parametrize("kind", ["SEQ_CLS", "TOKEN_CLS"])
def test_a_linear_head_matches_peft(method, kind):
    lm, cls = hf_models(kind)
    ours = ours_for(method, lm, cls, kind)
    theirs = peft_for(method, cls, kind)
    copy_prompt(ours, theirs)
    padded = kind == "TOKEN_CLS" or method == "prefix_tuning"  # see the module docstring
    ids, mask = inputs(padded)
    with torch.no_grad():
        mine, their = ours(ids, mask), peft_logits(theirs, method, ids, mask)
    if kind == "SEQ_CLS":
        torch.testing.assert_close(mine, their, rtol=0, atol=ATOL)  # (B, K)
    else:
        real = mask.bool()
        torch.testing.assert_close(mine[real], their[:, -ids.shape[1]:][real], rtol=0, atol=ATOL)  # (N, K)
    assert mine.abs().max() > 0.1  # not a trivially zero match
