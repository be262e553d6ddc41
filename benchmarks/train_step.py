"""Time one training step (forward, backward, optimizer) of every method: ours against peft's.

    python -m benchmarks.train_step                       # CPU, both shapes, every method
    python -m benchmarks.train_step --device cuda --shapes gpt2-small --dtype bf16 --compile --ours-only
    python -m benchmarks.train_step --engine off ...      # the reference path alone (--disable NAME: one off)

For each method and shape it builds both twins with the same weights (common.py), checks
that they give the same loss, then alternates their steps `--reps` times (ours, theirs,
theirs, ours, ...) so that a machine getting slower or faster mid-run hurts both alike,
and reports the median step time, the ratio ours/theirs, tokens per second, the extra
memory a step needs at its peak (activations, gradients, temporaries), the optimizer's
state kept between steps, and on a GPU the model FLOPs utilisation (MFU: the
FLOPs the step needs, `common.training_flops`, over its time and the chip's peak).

The step, as prompt tuning trains (Lester et al. 2021, §2; our methods/train.py): each of
B rows is T random tokens (no padding), an input followed by its target, and the loss is
next-token cross-entropy on the target half; the P virtual tokens go in front; AdamW on
whatever requires a gradient. Both sides get the same labels, so the same loss.
"""

from __future__ import annotations

import functools
import statistics
import time

import torch
import torch.nn.functional as F

from .common import (
    METHODS,
    base_parser,
    parse,
    peak_flops,
    peak_memory_of,
    run_and_save,
    same_function,
    store_frozen_in_bf16,
    synchronize,
    training_flops,
    twins,
    with_engine,
)

DEFAULT_BATCH = {  # (B, T) per device and shape: a CPU run of everything takes minutes, a GPU one fills the chip
    ("cpu", "toy"): (32, 96), ("cpu", "gpt2-small"): (4, 128),
    ("cuda", "toy"): (256, 96), ("cuda", "gpt2-small"): (32, 1008),
}


def num_targets(T, target_fraction) -> int:
    """How many tokens at the end of each row are graded targets (the first token never is)."""
    return min(T - 1, round(target_fraction * T))


def cross_entropy(logits, targets):
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def our_loss(model, ids, target_fraction, loss_fn=cross_entropy):
    # The n targets are the last n tokens, graded by the logits of the n positions before them:
    # the head runs at the last n + 1 positions only (the very last has no next token: ignored).
    # An int `logits_to_keep` is a slice; a bool mask would make a GPU wait for its nonzero().
    n = num_targets(ids.shape[1], target_fraction)
    logits = model(ids, logits_to_keep=n + 1)  # (B, n + 1, V)
    targets = F.pad(ids[:, -n:], (0, 1), value=-100)  # (B, n + 1)
    return loss_fn(logits.flatten(0, 1), targets.flatten())


def their_loss(model, ids, target_fraction):
    # HF shifts the labels itself: label t is graded by the logits of position t - 1.
    labels = ids.clone()
    labels[:, :-num_targets(ids.shape[1], target_fraction)] = -100
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def make_step(model, loss_fn, ids, autocast_bf16, compile_model):
    """One optimizer step as a function of nothing; returns the loss (a tensor, no sync)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)  # transformers' Trainer default (torch >= 2.8)
    if compile_model:
        # torch 2.13 (seen on a CPU) fails to rebuild the views a graph hands back by replaying them (a
        # deep prompt's per-layer keys/values, split from one tensor before the input check's graph
        # break) and gives garbage shapes; rebuilding them with as_strided is correct.
        torch._functorch.config.view_replay_for_aliased_outputs = False
        # The whole loss, model and cross-entropy: one graph from the embeddings to the loss (the
        # input checks' one read of the token ids runs eagerly before it), so LayerNorms, GELUs and
        # residual adds fuse across blocks, and the loss's backward fuses with the head's.
        loss_fn = torch.compile(loss_fn)
    autocast = torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast_bf16)
    model.train()

    def step():
        with autocast:
            loss = loss_fn(model, ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
    step.optimizer = optimizer
    return step


def timed(step, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def bench_method(method, shape, args) -> dict:
    B, T = args.batch or DEFAULT_BATCH[(args.device.split(":")[0], shape.name)]
    P, device = args.prompt_len, args.device
    ours, theirs = twins(method, shape, P, device)
    # the engine (--engine, --disable); our loss takes logits of the head's padded width where it is padded
    with_engine(ours, args, padded_logits=True)
    ids = torch.randint(1, shape.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    graded = num_targets(T, args.target_fraction)  # per row
    ours_loss = functools.partial(our_loss, target_fraction=args.target_fraction)
    theirs_loss = functools.partial(their_loss, target_fraction=args.target_fraction)
    with torch.no_grad():  # the same function, or the timing means nothing
        loss_ours, loss_theirs = ours_loss(ours.eval(), ids).item(), theirs_loss(theirs.eval(), ids).item()
    if same_function(method) and abs(loss_ours - loss_theirs) > 1e-4 * max(1.0, abs(loss_theirs)):
        raise AssertionError(f"{method} on {shape.name}: our loss {loss_ours} != peft's {loss_theirs}")
    # bf16: a frozen base is simply stored in bf16 (the trainable parameters stay fp32 and are cast
    # where they enter); full fine-tuning trains every weight, so it keeps fp32 weights and autocasts.
    frozen_bf16 = args.dtype == "bf16" and method != "full_finetune"
    if frozen_bf16:
        store_frozen_in_bf16(ours), store_frozen_in_bf16(theirs)
    autocast = args.dtype == "bf16" and not frozen_bf16
    sides = {"ours": make_step(ours, ours_loss, ids, autocast, args.compile)}
    if not args.ours_only:
        sides["theirs"] = make_step(theirs, theirs_loss, ids, autocast, False)
    for step in sides.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in sides}
    for rep in range(args.reps):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(timed(sides[name], device))
    row = {"shape": shape.name, "method": method, "B": B, "T": T, "P": P,
           "loss_ours": loss_ours, "loss_theirs": loss_theirs, "target_fraction": args.target_fraction,
           "flops": training_flops(method, shape, B, T, P, graded), "flops_full_attention":
           training_flops(method, shape, B, T, P, graded, causal=False)}
    for name, step in sides.items():
        median = statistics.median(times[name])
        row[f"{name}_ms"] = 1e3 * median
        row[f"{name}_tokens_per_s"] = B * T / median
        row[f"{name}_peak_bytes"] = peak_memory_of(step, device)
        row[f"{name}_optimizer_state_bytes"] = sum(  # AdamW's two moments, kept between steps
            t.numel() * t.element_size() for state in step.optimizer.state.values() for t in state.values()
            if torch.is_tensor(t))
        peak = peak_flops(device)
        row[f"{name}_mfu"] = row["flops"] / median / peak if peak and args.dtype == "bf16" else None
        row[f"{name}_mfu_full_attention"] = row["flops_full_attention"] / median / peak if row[f"{name}_mfu"] else None
    if "theirs" in sides:
        row["ratio"] = row["ours_ms"] / row["theirs_ms"]
        row["memory_ratio"] = row["ours_peak_bytes"] / max(row["theirs_peak_bytes"], 1)
    return row


def format_row(r) -> str:
    mb = 2 ** 20
    text = f"{r['shape']:<11} {r['method']:<14} {r['ours_ms']:9.1f} ms {r['ours_tokens_per_s']:10.0f} tok/s "
    text += f"{r['ours_peak_bytes'] / mb:8.1f} MiB"
    if r.get("ours_mfu") is not None:
        text += f"  MFU {100 * r['ours_mfu']:5.1f}% ({100 * r['ours_mfu_full_attention']:.1f}% full attn)"
    if "theirs_ms" in r:
        text += f" | peft {r['theirs_ms']:9.1f} ms {r['theirs_peak_bytes'] / mb:8.1f} MiB"
        text += f" | ratio {r['ratio']:.2f}  memory {r['memory_ratio']:.2f}"
    return text


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0], METHODS)
    parser.add_argument("--batch", type=int, nargs=2, metavar=("B", "T"), help="override the default (B, T)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: a frozen base stored in bf16 (full fine-tuning: autocast), both sides")
    parser.add_argument("--target-fraction", type=float, default=0.5,
                        help="the share of each row that is graded target (1: a language-modelling loss on all)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our loss function (model and loss)")
    parser.add_argument("--ours-only", action="store_true", help="skip peft (e.g. for the MFU run)")
    args = parse(parser, argv)
    torch.manual_seed(0)
    run_and_save(args, bench_method, format_row)


if __name__ == "__main__":
    main()
