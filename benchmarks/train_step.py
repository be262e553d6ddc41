"""Time one training step (forward, backward, optimizer) of every method: ours against peft's.

    python -m benchmarks.train_step                       # CPU, both shapes, every method
    python -m benchmarks.train_step --device cuda --shapes gpt2-small --dtype bf16 --compile --ours-only

For each method and shape it builds both twins with the same weights (common.py), checks
that they give the same loss, then alternates their steps `--reps` times (ours, theirs,
theirs, ours, ...) so that a machine getting slower or faster mid-run hurts both alike,
and reports the median step time, the ratio ours/theirs, tokens per second, the extra
memory a step needs at its peak, and on a GPU the model FLOPs utilisation (MFU: the
FLOPs the step needs, `common.training_flops`, over its time and the chip's peak).

The step: next-token cross-entropy on every text position of a batch of B rows of T
random tokens (no padding), the prompt of P virtual tokens in front, AdamW on whatever
requires a gradient.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import METHODS, SHAPES, peak_flops, peak_memory_of, same_function, synchronize, training_flops, twins

DEFAULT_BATCH = {  # (B, T) per device and shape: a CPU run of everything takes minutes, a GPU one fills the chip
    ("cpu", "toy"): (32, 96), ("cpu", "gpt2-small"): (4, 128),
    ("cuda", "toy"): (256, 96), ("cuda", "gpt2-small"): (16, 1008),
}


def our_loss(model, ids):
    logits = model(ids)  # (B, T, V): the real tokens only, the virtual ones are dropped
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def their_loss(model, ids):
    # peft puts the labels of the virtual tokens at -100, so its last virtual position would
    # predict the first text token; -100 there too makes both sides grade the same T - 1 tokens.
    labels = torch.cat([torch.full_like(ids[:, :1], -100), ids[:, 1:]], dim=1)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss


def make_step(model, loss_fn, ids, dtype, compile_model):
    """One optimizer step as a function of nothing; returns the loss (a tensor, no sync)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    forward = torch.compile(loss_fn) if compile_model else loss_fn
    device_type = ids.device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    model.train()

    def step():
        with autocast:
            loss = forward(model, ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss
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
    ids = torch.randint(1, shape.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():  # the same function, or the timing means nothing
        loss_ours, loss_theirs = our_loss(ours.eval(), ids).item(), their_loss(theirs.eval(), ids).item()
    if same_function(method) and abs(loss_ours - loss_theirs) > 1e-4 * max(1.0, abs(loss_theirs)):
        raise AssertionError(f"{method} on {shape.name}: our loss {loss_ours} != peft's {loss_theirs}")
    sides = {"ours": make_step(ours, our_loss, ids, args.dtype, args.compile)}
    if not args.ours_only:
        sides["theirs"] = make_step(theirs, their_loss, ids, args.dtype, False)
    for step in sides.values():
        for _ in range(args.warmup):
            step()
    times = {name: [] for name in sides}
    for rep in range(args.reps):
        order = list(sides) if rep % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(timed(sides[name], device))
    row = {"shape": shape.name, "method": method, "B": B, "T": T, "P": P,
           "loss_ours": loss_ours, "loss_theirs": loss_theirs, "flops": training_flops(method, shape, B, T, P)}
    for name, step in sides.items():
        median = statistics.median(times[name])
        row[f"{name}_ms"] = 1e3 * median
        row[f"{name}_tokens_per_s"] = B * T / median
        row[f"{name}_peak_bytes"] = peak_memory_of(step, device)
        peak = peak_flops(device)
        row[f"{name}_mfu"] = row["flops"] / median / peak if peak and args.dtype == "bf16" else None
    if "theirs" in sides:
        row["ratio"] = row["ours_ms"] / row["theirs_ms"]
        row["memory_ratio"] = row["ours_peak_bytes"] / max(row["theirs_peak_bytes"], 1)
    return row


def format_row(r) -> str:
    mb = 2 ** 20
    text = f"{r['shape']:<11} {r['method']:<14} {r['ours_ms']:9.1f} ms {r['ours_tokens_per_s']:10.0f} tok/s "
    text += f"{r['ours_peak_bytes'] / mb:8.1f} MiB"
    if r.get("ours_mfu") is not None:
        text += f"  MFU {100 * r['ours_mfu']:5.1f}%"
    if "theirs_ms" in r:
        text += f" | peft {r['theirs_ms']:9.1f} ms {r['theirs_peak_bytes'] / mb:8.1f} MiB"
        text += f" | ratio {r['ratio']:.2f}  memory {r['memory_ratio']:.2f}"
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--batch", type=int, nargs=2, metavar=("B", "T"), help="override the default (B, T)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, both sides")
    parser.add_argument("--compile", action="store_true", help="torch.compile our forward + loss")
    parser.add_argument("--ours-only", action="store_true", help="skip peft (e.g. for the MFU run)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for shape_name in args.shapes:
        for method in args.methods:
            rows.append(bench_method(method, SHAPES[shape_name], args))
            print(format_row(rows[-1]), flush=True)
    if args.out:
        machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()
        meta = {"args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
                "machine": machine, "threads": torch.get_num_threads()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
