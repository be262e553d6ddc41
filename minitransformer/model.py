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
- `attention_mask` (B, S): 1 for real tokens, 0 for padding, over the cached and the
  current positions (never the prefix, which is always visible).

Position ids default to counting real tokens only (`cumsum(mask) - 1`), so left- and
right-padded rows get the same positions; pass `position_ids` to override. Without a
mask nothing is padded: positions simply count on, and the forward pass never has to
read a value back from a GPU (such a read stalls it) except to check the token ids.
`kv_cache` keeps keys/values between calls for fast generation (see generate.py).
`hidden_states(...)` takes the same arguments and returns what the head reads,
LayerNorm(h_L): a task head (methods/heads.py) reads it instead of the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, attention_allowed
from .block import Block
from .config import ModelConfig
from .validation import check_forward_inputs, check_logits_to_keep

PrefixKV = Sequence[tuple[torch.Tensor, torch.Tensor] | None]
PAD_VOCAB_ON = {"cuda"}  # where the head pads the vocabulary to a multiple of 64 (a CPU gains nothing)
PREFIX_ROWS_ON = {"cuda"}  # where a prefix gets placeholder rows (a CPU runs the lower-right mask faster)


class MiniTransformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # token embeddings E, also the output head
        self.wpe = nn.Embedding(config.block_size, config.d_model)  # learned position embeddings
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)
        self.keep_vocab_padding = False  # True: on a GPU, logits of the padded width, the extra ones -inf (head())
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

        The head is the largest single matrix of a GPT-2-sized model (V x C: 38.6M of its
        124M parameters), so it is worth running only where logits are read:
        `logits_to_keep=n` gives (B, n, C) for the last n positions (generation needs n=1),
        a (B, T) bool mask gives (N, C) for its N True positions, row by row (training
        needs only the positions that carry a loss). The same goes for the last block's
        output projection and MLP (9 C^2 of its 12 C^2 weights), so those run only at the
        positions from the first one read to the end (`positions_read`).
        """
        past = len(kv_cache) if kv_cache is not None else 0
        prefix_len = check_forward_inputs(
            self.config, input_ids, inputs_embeds, attention_mask, position_ids,
            hidden_prompts, prefix_kv, past,
        )
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        check_logits_to_keep(logits_to_keep, B, T)
        if position_ids is None and attention_mask is None:  # no padding: positions count on
            position_ids = torch.arange(prefix_len + past, prefix_len + past + T, device=x.device)  # (T,)
            last_position = prefix_len + past + T - 1  # known here, no need to read it off the device
        else:
            if position_ids is None:  # padding: count real tokens only
                position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)[:, past:] + prefix_len  # (B, T)
            last_position = int(position_ids.max())
        if last_position >= self.config.block_size:
            raise ValueError(
                f"position {last_position} is past the context length block_size="
                f"{self.config.block_size} (prompt/prefix + input = {prefix_len + past + T} positions); "
                "shorten the input or the prompt"
            )
        x = self.drop(x + self.wpe(position_ids))  # (B, T, C)
        # (B, 1, T, P + S); without padding None: plain causal masking, which attention applies itself
        padded = attention_mask is not None and not bool(attention_mask.all())
        allowed = attention_allowed(attention_mask, T, prefix_len) if padded else None

        # A GPU attends fastest in the plain causal square. With a prefix and nothing else in
        # front, P placeholder rows ride in front of the stream, and each layer overwrites their
        # keys/values with its prefix (attention.prefix_in_rows): the same attention.
        prefix_rows = prefix_len > 0 and allowed is None and kv_cache is None and hidden_prompts is None \
            and self.blocks[0].attn.use_sdpa and x.device.type in PREFIX_ROWS_ON
        if prefix_rows:
            x = torch.cat([x.new_zeros(B, prefix_len, x.shape[2]), x], dim=1)  # (B, P + T, C)
        # The last block's output is read only where logits are: its output projection and MLP
        # run at the last n positions, from the first one read (all T still give keys and values;
        # on a CPU only those n are queries too: attention.QUERIES_CUT_ON).
        n = positions_read(logits_to_keep, T)
        for layer, block in enumerate(self.blocks):
            if hidden_prompts is not None and hidden_prompts[layer] is not None:
                prompt = hidden_prompts[layer]  # (B|1, P, C)
                x = torch.cat([prompt.to(x.dtype).expand(B, -1, -1), x[:, prompt.shape[1]:]], dim=1)  # replace first P
            prefix = prefix_kv[layer] if prefix_kv is not None else None
            last = layer == len(self.blocks) - 1
            x = block(x, allowed, prefix, kv_cache, n if last and n < x.shape[1] else None, prefix_rows)
        x = x[:, -n:]  # (B, n, C)
        if isinstance(logits_to_keep, torch.Tensor):
            x = x[logits_to_keep[:, -n:]]  # (N, C)
        return self.ln_f(x)  # (B, n, C) or (N, C)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits, (..., C) -> (..., V): the tied head x E^T.

        GPU matrix units want sizes in multiples of 64; with an odd V (GPT-2's 50257) cuBLAS
        falls back to a kernel ~3x slower. So on a GPU E gets zero rows up to a multiple of 64
        and their logits are dropped. Dropping them costs a copy in the backward (the gradient
        widened back to the padded width). A training loss that can take the padded width sets
        `keep_vocab_padding`: the extra logits then stay, at -inf. They are no token: softmax
        gives them probability 0 and gradient 0, so the loss and every gradient are the same
        (and a GPT-2-small prompt-training step on an H100 ~7% shorter).
        """
        E = self.wte.weight  # (V, C)
        pad = -E.shape[0] % 64
        if not pad or x.device.type not in PAD_VOCAB_ON:
            return F.linear(x, E)
        padded = F.pad(E, (0, 0, 0, pad))  # (V + pad, C)
        if self.keep_vocab_padding:
            minus_inf = F.pad(E.new_zeros(E.shape[0]), (0, pad), value=float("-inf"))  # (V + pad,): 0s, then -inf
            return F.linear(x, padded, minus_inf)  # (..., V + pad)
        return F.linear(x, padded)[..., :E.shape[0]]  # (..., V)


def positions_read(logits_to_keep: int | torch.Tensor | None, T: int) -> int:
    """How many of the last positions have their logits read: T (None), n (an int), or from the
    first position any row of a (B, T) bool mask keeps to the end (a read of the mask)."""
    if logits_to_keep is None:
        return T
    if isinstance(logits_to_keep, int):
        return logits_to_keep
    read = logits_to_keep.any(dim=0).nonzero()  # (k, 1) columns with some logit read
    return T - int(read[0, 0]) if len(read) else 1
