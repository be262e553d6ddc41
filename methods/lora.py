"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a reference point.

Not a prompt method, but the one users most often weigh prompts against. Instead of
adding inputs, LoRA adds a trainable low-rank update to chosen weight matrices (§4.1):

    W' = W + (alpha / r) * B A,     A: (r, in),  B: (out, r),  B starts at zero

so training starts exactly at the base model, and each adapted matrix costs r * (in + out)
numbers. Here: rank 4 on the attention projections (`c_attn`, the fused q/k/v, and
`c_proj`), as in the paper's experiments on attention weights.

It never edits the base model's weights. During its own forward call it attaches a
hook to each target layer that adds the low-rank path to the layer's output,

    x W'^T = x W^T + (alpha / r) (x A^T) B^T          (B, T, r) in the middle: cheap

and removes the hooks when the call returns, so the same base can serve other methods.
Computing the update this way, rather than forming W' = W + (alpha / r) B A, keeps the
backward pass cheap: the gradients of A and B go through the rank-r product, never
through a full (out, in) gradient of W'. `merged_weights()` gives W' itself, and a test
checks that running the base with it gives the same logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from minitransformer import KVCache, MiniTransformer

from .prompt_model import PromptModel, check_int, kept_with_cache


@dataclass
class LoRAConfig:
    r: int = field(default=4, metadata={"help": "rank of the update B A"})
    lora_alpha: float = field(default=8.0, metadata={"help": "the update is scaled by lora_alpha / r"})
    target_modules: tuple[str, ...] = field(default=("attn.c_attn", "attn.c_proj"), metadata={
        "help": "Linear layers to adapt, by name or dotted name suffix ('attn.c_attn'); one string is one name"})
    seed: int = 0
    num_virtual_tokens: int = 0  # LoRA adds no positions

    def __post_init__(self) -> None:
        check_int(self, "r", 1, "pass the rank of the update, e.g. r=4")
        alpha = self.lora_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"LoRAConfig.lora_alpha must be a positive number, got {alpha!r}; the update is "
                             "scaled by lora_alpha / r: pass e.g. lora_alpha=8.0 (2 r)")
        if isinstance(self.target_modules, str):  # one name, never its characters ("a", "t", "t", ...)
            self.target_modules = (self.target_modules,)
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"LoRAConfig.target_modules must be one or more layer names, got "
                             f"{self.target_modules!r}; pass e.g. ('attn.c_attn', 'attn.c_proj')")

    def to_dict(self) -> dict:
        return {"r": self.r, "lora_alpha": self.lora_alpha, "target_modules": list(self.target_modules),
                "seed": self.seed}


def matches(name: str, target: str) -> bool:
    """A layer name matches a target that is the whole name or a dotted suffix of it
    ("attn.c_attn" matches "blocks.0.attn.c_attn"; "c_fc" never matches "blocks.0.mlp.xc_fc")."""
    return name == target or name.endswith("." + target)


def target_layers(base: MiniTransformer, targets: tuple[str, ...]) -> list[str]:
    """The names of the Linear layers `targets` pick; a target that picks none is refused."""
    linears = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
    unknown = [t for t in targets if not any(matches(n, t) for n in linears)]
    if unknown:
        kinds = sorted({n.split(".", 2)[-1] if n.startswith("blocks.") else n for n in linears})
        raise ValueError(f"LoRA target_modules {unknown} match no Linear layer of the base model; "
                         f"pass names from: {', '.join(kinds)}")
    return [n for n in linears if any(matches(n, t) for t in targets)]


class LoRAModel(PromptModel):
    method_name = "lora"
    injects = "weights"  # a low-rank update of chosen weight matrices
    config_class = LoRAConfig

    def __init__(self, base: MiniTransformer, config: LoRAConfig | None = None) -> None:
        super().__init__(base, config or LoRAConfig())
        self.targets = target_layers(base, self.config.target_modules)
        generator = torch.Generator().manual_seed(self.config.seed)
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        for name in self.targets:
            out_features, in_features = base.get_submodule(name).weight.shape
            key = name.replace(".", "_")
            bound = 1 / math.sqrt(in_features)  # A random, B zero: W' = W at the start
            self.lora_A[key] = nn.Parameter((torch.rand(self.config.r, in_features, generator=generator) * 2 - 1)
                                            * bound)
            # B is kept transposed, (r, out): then every product of the backward pass reads
            # memory in order; with (out, r), g B and B's gradient ran ~4x slower on a CPU.
            self.lora_B[key] = nn.Parameter(torch.zeros(self.config.r, out_features))  # B^T
        self.scaling = self.config.lora_alpha / self.config.r

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """{"blocks.0.attn.c_attn.weight": W + scaling * B A, ...} for every target layer."""
        weights = {}
        for name in self.targets:
            key = name.replace(".", "_")
            W = self.base.get_submodule(name).weight  # (out, in), frozen
            weights[f"{name}.weight"] = W + self.scaling * self.lora_B[key].T @ self.lora_A[key]
        return weights

    def low_rank_factors(self, dtype: torch.dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{key: (A^T, scaling * B^T)} per target layer, (in, r) and (r, out), in the base's dtype.

        Computed once per call (in generation once per generation: they are kept with the KV
        cache, since they do not change between tokens), so each layer's hook is two products.
        """
        return {key: (self.lora_A[key].to(dtype).T, (self.scaling * self.lora_B[key]).to(dtype))
                for key in self.lora_A}

    def factors_for_call(self, kv_cache: KVCache | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        dtype = self.base.wte.weight.dtype  # a bf16 base: bf16 math
        return kept_with_cache(kv_cache, "lora_factors", lambda: self.low_rank_factors(dtype))

    @contextmanager
    def low_rank_updates(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
        """While open, every target layer's output gains scaling * (x A^T) B^T."""
        def add_update(A_t: torch.Tensor, scaled_B_t: torch.Tensor):
            def hook(module, args, output):
                return output + (args[0] @ A_t) @ scaled_B_t  # (B, T, in) -> (B, T, r) -> (B, T, out)
            return hook
        handles = [self.base.get_submodule(name).register_forward_hook(add_update(*factors[name.replace(".", "_")]))
                   for name in self.targets]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        attention_mask = self.check_inputs(input_ids, attention_mask, kv_cache)  # the same checks as every method
        with self.low_rank_updates(self.factors_for_call(kv_cache)):
            return self.base(input_ids, attention_mask=attention_mask, kv_cache=kv_cache,
                             logits_to_keep=logits_to_keep)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      logits_to_keep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The adapted base's final hidden states (what a task head reads, heads.py), as in `forward`."""
        attention_mask = self.check_inputs(input_ids, attention_mask, None)
        with self.low_rank_updates(self.factors_for_call(None)):
            return self.base.hidden_states(input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
