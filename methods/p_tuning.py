"""P-tuning (Liu et al. 2021, "GPT Understands, Too"): a soft prompt made by a small network.

Soft prompt tuning learns the P vectors directly. P-tuning learns them *through* a prompt
encoder: P input embeddings e_1..e_P go through a small network whose outputs are the
prompt (§3.2):

    [h_1, ..., h_P] = Encoder(e_1, ..., e_P)        (P, C), prepended like a soft prompt

Why? Free vectors are optimised independently of one another and, the paper argues, fall
into poor local minima; an encoder ties them together (the LSTM lets each see its
neighbours) and reparameterises the search. The encoder is only a training device: once
trained, its output is a plain (P, C) prompt, computed once and reusable as a soft prompt.

Two encoders, with Hugging Face PEFT's names and layer layouts:
- MLP:  Linear(C, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, C)
- LSTM: a bidirectional LSTM (hidden h per direction), then Linear(2h, 2h) -> ReLU -> Linear(2h, C)

and a third, Residual Prompt Tuning's (Razdaibiedina et al. 2023, §3; `ResMLP` in their code):
- RESIDUAL_MLP: h_i = e_i + LayerNorm(Linear(h, C)(ReLU(Linear(C, h)(e_i))))
  The skip connection lets each prompt vector be its own free embedding (as in a soft
  prompt) or the shared network's output, whichever trains better; the paper reports it
  makes prompt tuning more stable across learning rates and works with shorter prompts.
  It too folds into a plain (P, C) prompt after training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from minitransformer import MiniTransformer

from .prompt_model import PromptConfig, PromptModel, check_choice, check_int
from .soft_prompt import SoftPromptConfig, SoftPromptModel, prepend_prompt
from .token_init import sample_token_ids

ENCODERS = ("MLP", "LSTM", "RESIDUAL_MLP")


@dataclass
class PTuningConfig(PromptConfig):
    encoder_reparameterization_type: str = field(default="MLP", metadata={"help": f"one of {ENCODERS}"})
    encoder_hidden_size: int = field(default=64, metadata={"help": "h: the encoder's hidden width"})
    encoder_num_layers: int = field(default=2, metadata={"help": "LSTM layers (the MLP always has 3 Linear)"})
    encoder_dropout: float = field(default=0.0, metadata={"help": "dropout between LSTM layers"})
    seed: int = field(default=0, metadata={"help": "seed for the encoder's initialisation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self, "encoder_reparameterization_type", ENCODERS)
        check_int(self, "encoder_hidden_size", 1, "pass the encoder's hidden width, e.g. encoder_hidden_size=64")
        check_int(self, "encoder_num_layers", 1, "pass the LSTM's layer count, e.g. encoder_num_layers=2")
        if not 0.0 <= self.encoder_dropout < 1.0:
            raise ValueError(f"PTuningConfig.encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}; "
                             "pass a dropout probability such as 0.0 or 0.1")


class PromptEncoder(nn.Module):
    """P learned input embeddings -> encoder -> the (P, C) prompt."""

    def __init__(self, config: PTuningConfig, d_model: int) -> None:
        super().__init__()
        h = config.encoder_hidden_size
        self.embedding = nn.Embedding(config.num_virtual_tokens, d_model)  # e_1..e_P
        self.kind = config.encoder_reparameterization_type
        if self.kind == "LSTM":
            self.lstm_head = nn.LSTM(d_model, h, num_layers=config.encoder_num_layers,
                                     dropout=config.encoder_dropout, bidirectional=True, batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(2 * h, 2 * h), nn.ReLU(), nn.Linear(2 * h, d_model))
        elif self.kind == "RESIDUAL_MLP":  # down-project, ReLU, up-project, LayerNorm; the skip is in forward
            self.mlp_head = nn.Sequential(nn.Linear(d_model, h), nn.ReLU(), nn.Linear(h, d_model),
                                          nn.LayerNorm(d_model))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(d_model, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                          nn.Linear(h, d_model))

    def forward(self) -> torch.Tensor:
        e = self.embedding.weight[None]  # (1, P, C)
        if self.kind == "LSTM":
            e = self.lstm_head(e)[0]  # (1, P, 2h): each position sees both neighbours' directions
        if self.kind == "RESIDUAL_MLP":
            return e + self.mlp_head(e)  # (1, P, C): the embedding itself, plus the network's say
        return self.mlp_head(e)  # (1, P, C)


class PTuningModel(PromptModel):
    method_name = "p_tuning"
    injects = "input_embeddings"  # the encoder's vectors in front of the input embeddings
    config_class = PTuningConfig

    def __init__(self, base: MiniTransformer, config: PTuningConfig | None = None) -> None:
        super().__init__(base, config or PTuningConfig())
        with torch.random.fork_rng():
            torch.manual_seed(self.config.seed)
            self.prompt_encoder = PromptEncoder(self.config, base.config.d_model)
        if self.config.encoder_reparameterization_type == "RESIDUAL_MLP":
            # the skip passes e through: start it where a SAMPLE_VOCAB soft prompt starts (real tokens' embeddings)
            generator = torch.Generator().manual_seed(self.config.seed)
            ids = sample_token_ids(base, self.config.num_virtual_tokens, generator)
            with torch.no_grad():
                self.prompt_encoder.embedding.weight.copy_(base.wte.weight[ids].cpu())

    def prompt_state(self) -> torch.Tensor:
        return self.prompt_encoder()  # (1, P, C): the encoder runs once per forward, on the first call

    def hooks_for(self, state, input_ids, attention_mask, first_call):
        prompt = state if first_call else None  # (B|1, P, C), injected exactly like a soft prompt
        return prepend_prompt(self.base, prompt, input_ids, attention_mask, self.config.num_virtual_tokens)

    def to_soft_prompt(self) -> SoftPromptModel:
        """Fold the encoder away: a soft prompt holding the encoder's output, same logits (§3.2).

        The encoder is a training device; for inference and storage only its (P, C) output
        matters: 2,048 numbers instead of the encoder's tens or hundreds of thousands.
        (`save_prompt`'s serving checkpoint of a P-tuning model is this soft prompt.)
        """
        # Computed as the forward pass computes it, with autograd on: an LSTM's no-grad kernels
        # round differently (by ~1e-8), and the soft prompt should be the very numbers trained.
        prompt = self.prompt_encoder()[0].detach()  # (P, C)
        with torch.no_grad():
            soft = SoftPromptModel(self.base, SoftPromptConfig(self.config.num_virtual_tokens, seed=self.config.seed))
            soft.prompt.copy_(prompt)
        return soft.eval()
