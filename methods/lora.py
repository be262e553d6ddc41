"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a reference point.

Not a prompt method, but the one users most often weigh prompts against. Instead of
adding inputs, LoRA adds a trainable low-rank update to chosen weight matrices (§4.1):

    W' = W + (alpha / r) * B A,     A: (r, in),  B: (out, r),  B starts at zero

so training starts exactly at the base model, and each adapted matrix costs r * (in + out)
numbers. Here: rank 4 on the attention projections (`c_attn`, the fused q/k/v, and
`c_proj`), as in the paper's experiments on attention weights.

It never edits the base model: `torch.func.functional_call` runs the frozen base with
W' substituted for W in this one call, so the same base can serve other methods at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from minitransformer import KVCache, MiniTransformer

from .prompt_model import PromptModel


@dataclass
class LoRAConfig:
    r: int = field(default=4, metadata={"help": "rank of the update B A"})
    lora_alpha: float = field(default=8.0, metadata={"help": "the update is scaled by lora_alpha / r"})
    target_modules: tuple[str, ...] = field(default=("attn.c_attn", "attn.c_proj"),
                                            metadata={"help": "Linear layers (name suffixes) to adapt"})
    seed: int = 0
    num_virtual_tokens: int = 0  # LoRA adds no positions

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}")
        self.target_modules = tuple(self.target_modules)

    def to_dict(self) -> dict:
        return {"r": self.r, "lora_alpha": self.lora_alpha, "target_modules": list(self.target_modules),
                "seed": self.seed}


class LoRAModel(PromptModel):
    method_name = "lora"
    config_class = LoRAConfig

    def __init__(self, base: MiniTransformer, config: LoRAConfig | None = None) -> None:
        super().__init__(base, config or LoRAConfig())
        self.targets = [n for n, m in base.named_modules()
                        if isinstance(m, nn.Linear) and n.endswith(self.config.target_modules)]
        if not self.targets:
            raise ValueError(f"no Linear layer ends with any of {self.config.target_modules}")
        generator = torch.Generator().manual_seed(self.config.seed)
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        for name in self.targets:
            out_features, in_features = base.get_submodule(name).weight.shape
            key = name.replace(".", "_")
            bound = 1 / math.sqrt(in_features)  # A random, B zero: W' = W at the start
            self.lora_A[key] = nn.Parameter((torch.rand(self.config.r, in_features, generator=generator) * 2 - 1)
                                            * bound)
            self.lora_B[key] = nn.Parameter(torch.zeros(out_features, self.config.r))
        self.scaling = self.config.lora_alpha / self.config.r

    def adapted_weights(self) -> dict[str, torch.Tensor]:
        """{"blocks.0.attn.c_attn.weight": W + scaling * B A, ...} for every target layer."""
        weights = {}
        for name in self.targets:
            key = name.replace(".", "_")
            W = self.base.get_submodule(name).weight  # (out, in), frozen
            weights[f"{name}.weight"] = W + self.scaling * self.lora_B[key] @ self.lora_A[key]
        return weights

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        attention_mask = self.check_inputs(input_ids, attention_mask, kv_cache)  # the same checks as every method
        return functional_call(self.base, self.adapted_weights(), (input_ids,),
                               {"attention_mask": attention_mask, "kv_cache": kv_cache})
