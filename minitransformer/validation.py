"""Input checks for `MiniTransformer.forward`, kept apart so the model reads cleanly.

Every check raises a `ValueError` whose message names what is wrong and how to fix it:
a shape mismatch deep inside attention would otherwise surface as an opaque error from
`torch.cat` or `matmul`, or worse, silently broadcast into wrong numbers.
"""

from __future__ import annotations

import torch

from .config import ModelConfig

TOKEN_ID_DTYPES = (torch.long, torch.int32)  # the index dtypes nn.Embedding accepts (int16/int8/uint8 it refuses)


def check_forward_inputs(config, input_ids, inputs_embeds, attention_mask, position_ids,
                         hidden_prompts, prefix_kv, past: int) -> int:
    """Validate the forward pass's inputs; return the prefix length P (0 without a prefix)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids (B, T) or inputs_embeds (B, T, C)")
    if input_ids is not None:
        B, T = check_token_ids(config, input_ids)
    else:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.d_model:
            raise ValueError(f"inputs_embeds must be (B, T, {config.d_model}), got {tuple(inputs_embeds.shape)}")
        B, T = inputs_embeds.shape[:2]
    if B == 0 or T == 0:
        raise ValueError(f"empty input of shape {(B, T)}: need at least one row and one token")
    if attention_mask is not None:
        check_attention_mask(attention_mask, B, past + T)
    if position_ids is not None and position_ids.shape[-1] != T:
        raise ValueError(f"position_ids must have T={T} entries per row, got shape {tuple(position_ids.shape)}")
    if position_ids is not None and int(position_ids.min()) < 0:
        raise ValueError("position_ids must be non-negative")
    _check_hidden_prompts(config, hidden_prompts, B, T, past)
    return _check_prefix(config, prefix_kv, B)


def check_token_ids(config: ModelConfig, input_ids: torch.Tensor, values: bool = True) -> tuple[int, int]:
    """Token ids must be a 2-D integer tensor of ids the embedding table has; return (B, T).

    `values=False` checks the shape and dtype only: reading the ids' range costs a wait for a
    GPU, so a caller that hands the ids on to whatever embeds them leaves the range to it.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor (B, T), got {type(input_ids).__name__}; "
                         "wrap it with torch.tensor([...])")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be 2-D (B, T), got shape {tuple(input_ids.shape)}; add a batch dim")
    if input_ids.dtype not in TOKEN_ID_DTYPES:
        raise ValueError(f"input_ids must be integer token ids of dtype torch.long or torch.int32 (the dtypes "
                         f"nn.Embedding takes), got dtype {input_ids.dtype}; convert them with .long()")
    if values and input_ids.numel():
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one read from a GPU, not two
        if low < 0 or high >= config.vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={config.vocab_size}), got min {low} and max "
                             f"{high}; was this text encoded by another tokenizer?")
    return tuple(input_ids.shape)


def check_attention_mask(attention_mask: torch.Tensor, B: int, S: int) -> None:
    """A (B, S) mask of 0/1 integers or booleans, with at least one real token in every row.

    A row that is all padding has nothing to attend to: its outputs would be made of
    nothing but the diagonal fallback in `attention_allowed`, numbers nobody should read.
    """
    if tuple(attention_mask.shape) != (B, S):
        raise ValueError(f"attention_mask must be (B, cached + T) = {(B, S)}, got {tuple(attention_mask.shape)}")
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise ValueError(f"attention_mask must hold integers or booleans (1 real token, 0 padding), got dtype "
                         f"{attention_mask.dtype}; convert it with .long()")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    empty = (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask row(s) {empty} are all zeros: such a row has no real token; "
                         "drop the row from the batch or set its real tokens' mask to 1")


def per_layer(hook, config: ModelConfig) -> list:
    """A per-layer hook (`hidden_prompts`, `prefix_kv`) as one entry per layer: None (the hook
    not used) is None at every layer."""
    return [None] * config.n_layer if hook is None else list(hook)


def _check_per_layer(config: ModelConfig, values, name: str) -> None:
    if len(values) != config.n_layer:
        raise ValueError(f"{name} must have one entry per layer (n_layer={config.n_layer}), got {len(values)}")


def _check_hidden_prompts(config, hidden_prompts, B: int, T: int, past: int) -> None:
    if hidden_prompts is None:
        return
    _check_per_layer(config, hidden_prompts, "hidden_prompts")
    for layer, prompt in enumerate(hidden_prompts):
        if prompt is None:
            continue
        if past:
            raise ValueError("hidden_prompts replace the first positions of a sequence; pass them only "
                             "on the first call, before anything is in the KV cache")
        if prompt.dim() != 3 or prompt.shape[0] not in (1, B) or prompt.shape[2] != config.d_model:
            raise ValueError(f"hidden_prompts[{layer}] must be (B or 1, P, {config.d_model}), "
                             f"got {tuple(prompt.shape)}")
        if prompt.shape[1] > T:
            raise ValueError(f"hidden_prompts[{layer}] has P={prompt.shape[1]} positions but the input has only "
                             f"T={T}; prepend P placeholder positions to the input first")


def _check_prefix(config: ModelConfig, prefix_kv, B: int) -> int:
    if prefix_kv is None:
        return 0
    _check_per_layer(config, prefix_kv, "prefix_kv")
    lengths = set()
    for layer, kv in enumerate(prefix_kv):
        if kv is None:
            continue
        if len(kv) != 2:
            raise ValueError(f"prefix_kv[{layer}] must be a (keys, values) pair")
        for name, t in zip(("keys", "values"), kv):
            if t.dim() != 4 or t.shape[0] not in (1, B) or t.shape[1] != config.n_head \
                    or t.shape[3] != config.head_dim:
                raise ValueError(
                    f"prefix_kv[{layer}] {name} must be (B or 1, n_head={config.n_head}, P, "
                    f"head_dim={config.head_dim}), got {tuple(t.shape)}"
                )
            lengths.add(t.shape[2])
    if len(lengths) > 1:
        raise ValueError(f"every layer's prefix must have the same length P, got lengths {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def check_logits_to_keep(logits_to_keep, B: int, T: int) -> None:
    """`logits_to_keep` is None, an int n in 1..T (the last n positions), or a (B, T) bool mask."""
    if logits_to_keep is None:
        return
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, (int, torch.Tensor)):
        raise ValueError(f"logits_to_keep must be an int or a (B, T) bool tensor, got {type(logits_to_keep).__name__}")
    if isinstance(logits_to_keep, int):
        if not 1 <= logits_to_keep <= T:
            raise ValueError(f"logits_to_keep={logits_to_keep} must be in 1..T={T} (the positions of this call)")
    elif logits_to_keep.dtype != torch.bool or tuple(logits_to_keep.shape) != (B, T):
        raise ValueError(f"a logits_to_keep mask must be bool of shape (B, T) = {(B, T)}, got "
                         f"{logits_to_keep.dtype} {tuple(logits_to_keep.shape)}")


def check_context(config: ModelConfig, position_ids: torch.Tensor, positions: int) -> None:
    """Refuse a position the position table does not have."""
    last_position = int(position_ids.max())
    if last_position >= config.block_size:
        raise ValueError(
            f"position {last_position} is past the context length block_size={config.block_size} "
            f"(prompt/prefix + input = {positions} positions); shorten the input or the prompt"
        )
