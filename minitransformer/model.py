"""The language model: embeddings, a stack of blocks, and a tied output head.

    h_0 = E[tokens] + W_pos[positions]           token + learned position embeddings
    h_l = Block_l(h_{l-1})                       l = 1..L
    logits = LayerNorm(h_L) E^T                  the output head reuses E ("tied")

The model knows nothing about prompt methods. It exposes four hooks on `forward`, and
every method in `methods/` is built from them alone:

- `inputs_embeds` (B, T, C): start from vectors instead of token ids. Soft prompts and
  P-tuning prepend their learned vectors here (position embeddings are still added).
- `hidden_prompts[l]` (B or 1, P, C): replace the hidden states at the first P positions
  of the current input as they enter block l. Deep prompts use this at every layer > 0.
- `prefix_kv[l] = (k, v)`, each (B or 1, H, P, D): P extra keys/values in front of
  block l's own; every query may attend to them. Prefix tuning uses this. A prefix
  stands for P tokens in front of the input, so by default positions start at P.
  `prefix_kv[l] = None` leaves layer l without one (a prefix on some layers only).
- `attention_mask` (B, S): 1 for real tokens, 0 for padding, over the cached and the
  current positions (never the prefix, which is always visible).

Position ids default to counting real tokens only (`cumsum(mask) - 1`), so left- and
right-padded rows get the same positions; pass `position_ids` to override. Without a
mask nothing is padded. `kv_cache` keeps keys/values between calls for fast generation
(see generate.py).
`hidden_states(...)` takes the same arguments and returns what the head reads,
LayerNorm(h_L): a task head (methods/heads.py) reads it instead of the logits.

This file is the reference: the math in order, nothing else. What exists for speed alone
(no mask without padding, the last block cut to the positions read, a padded vocabulary,
placeholder rows for a prefix, ...) lives in `engine.py`, switched on by `engine.enable(model)`
where speed is asked for, and proven equal to this path by tests/test_engine.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, attention_allowed
from .block import Block
from .config import ModelConfig
from .validation import check_context, check_forward_inputs, check_logits_to_keep, per_layer

PrefixKV = Sequence[tuple[torch.Tensor, torch.Tensor] | None]


class MiniTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # token embeddings E, also the output head
        self.wpe = nn.Embedding(config.block_size, config.d_model)  # learned position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch's output projection gets std 0.02/sqrt(2L),
        # so the residual stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / (2 * config.n_layer) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # N(0, 0.02) as in GPT-2. PyTorch's N(0, 1) default for embeddings gives huge tied
        # logits and a first loss near 75 instead of ln(vocab).
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_attention_implementation(self, use_sdpa: bool) -> None:
        """Choose the fused SDPA kernel (True) or the explicit softmax(q k^T / sqrt(D)) v (False)."""
        for block in self.blocks:
            block.attn.use_sdpa = use_sdpa

    def forward(self, input_ids: torch.Tensor | None = None, **hooks) -> torch.Tensor:
        """Next-token logits (B, T, vocab_size): the tied head on the final hidden states.

        Takes the same arguments as `hidden_states` (the hooks); `logits_to_keep` chooses
        where the head runs, (B, n, V) or (N, V).
        """
        return self.head(self.hidden_states(input_ids, **hooks))

    def hidden_states(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T) token ids
        *,
        inputs_embeds: torch.Tensor | None = None,  # (B, T, C) instead of input_ids
        attention_mask: torch.Tensor | None = None,  # (B, S), S = cached + T
        position_ids: torch.Tensor | None = None,  # (B, T) or (T,)
        hidden_prompts: Sequence[torch.Tensor | None] | None = None,  # per layer (B|1, P, C)
        prefix_kv: PrefixKV | None = None,  # per layer (k, v), each (B|1, H, P, D)
        kv_cache: KVCache | None = None,
        logits_to_keep: int | torch.Tensor | None = None,  # last n positions, or a (B, T) bool mask
    ) -> torch.Tensor:
        """The final hidden states LayerNorm(h_L), (B, T, C): what the head (or a task head) reads.

        `logits_to_keep=n` keeps the last n positions, (B, n, C) (generation reads n=1); a
        (B, T) bool mask keeps its N True positions, (N, C) (training reads the positions
        that carry a loss).
        """
        past = len(kv_cache) if kv_cache is not None else 0
        prefix_len = check_forward_inputs(
            self.config, input_ids, inputs_embeds, attention_mask, position_ids,
            hidden_prompts, prefix_kv, past,
        )
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        check_logits_to_keep(logits_to_keep, B, T)
        if attention_mask is None:  # nothing is padded
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=x.device)  # (B, S)
        if position_ids is None:  # count real tokens only, after the prefix: left or right padding, same positions
            position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, past:] + prefix_len  # (B, T)
        check_context(self.config, position_ids, prefix_len + past + T)
        x = self.drop(x + self.wpe(position_ids))  # (B, T, C)
        allowed = attention_allowed(attention_mask, T, prefix_len)  # (B, 1, T, P + S)

        layers = zip(self.blocks, per_layer(hidden_prompts, self.config), per_layer(prefix_kv, self.config))
        for block, prompt, prefix in layers:  # prompt (B|1, P, C) or None; prefix (k, v), each (B|1, H, P, D), or None
            if prompt is not None:  # replaces the first P hidden states
                x = torch.cat([prompt.to(x.dtype).expand(B, -1, -1), x[:, prompt.shape[1]:]], dim=1)
            x = block(x, allowed, prefix, kv_cache)  # (B, T, C)
        return self.ln_f(rows_read(x, logits_to_keep))  # (B, T or n, C) or (N, C)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits, (..., C) -> (..., V): the tied head x E^T."""
        return F.linear(x, self.wte.weight)


def rows_read(x: torch.Tensor, logits_to_keep: int | torch.Tensor | None) -> torch.Tensor:
    """The positions of x (B, T, C) whose logits are read: all, the last n, or a (B, T) bool mask's (N, C)."""
    if logits_to_keep is None:
        return x
    if isinstance(logits_to_keep, int):
        return x[:, -logits_to_keep:]  # (B, n, C)
    return x[logits_to_keep]  # (N, C)
