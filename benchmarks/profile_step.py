"""Where a GPU training step's time goes: kernel time by kind, and how long the GPU sits idle.

    python -m benchmarks.profile_step --methods soft_prompt prefix_tuning --out benchmarks/results/gpu_profile.json \
        --overwrite    # --overwrite: replace the committed file; without it an existing --out is refused

The same step as the MFU run of train_step.py (GPT-2 small, bf16 frozen base, the whole loss
compiled, LM loss on every position), profiled for a few steps with torch.profiler. From the
GPU's timeline it reports the median step time (unprofiled), the time some kernel was running
("busy"), the gaps between kernels (the GPU waiting for the host), and the kernel time by kind:
matrix products, attention, fused (Triton) elementwise/reduction kernels, and the rest.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .common import (
    METHODS,
    SHAPES,
    base_parser,
    parse,
    save_rows,
    store_frozen_in_bf16,
    synchronize,
    twins,
    with_engine,
)
from .train_step import make_step, our_loss

KINDS = {"attention": ("sdpa", "flash", "fmha", "attention"), "matmul": ("gemm", "nvjet", "cutlass", "xmma", "gemv"),
         "fused (triton)": ("triton",)}


def kind_of(kernel_name: str) -> str:
    name = kernel_name.lower()
    return next((kind for kind, marks in KINDS.items() if any(m in name for m in marks)), "other")


def timeline(trace: dict, steps: int) -> dict:
    """Busy time, idle gaps and time per kernel kind, per step, from a Chrome trace's GPU events (µs)."""
    kernels = sorted((e for e in trace["traceEvents"] if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                     key=lambda e: e["ts"])
    busy, gaps, end = 0.0, 0.0, kernels[0]["ts"]
    by_kind: dict[str, float] = {}
    for e in kernels:
        gaps += max(0.0, e["ts"] - end)
        busy += max(0.0, e["ts"] + e["dur"] - max(e["ts"], end))
        end = max(end, e["ts"] + e["dur"])
        by_kind[kind_of(e["name"])] = by_kind.get(kind_of(e["name"]), 0.0) + e["dur"]
    per_step_ms = 1e-3 / steps
    return {"busy_ms": busy * per_step_ms, "gaps_ms": gaps * per_step_ms, "kernels_per_step": len(kernels) / steps,
            "kernel_ms_by_kind": {k: v * per_step_ms for k, v in sorted(by_kind.items())}}


def profile_method(method: str, args) -> dict:
    B, T = args.batch
    ours, _ = twins(method, SHAPES["gpt2-small"], args.prompt_len, args.device)
    with_engine(ours, args, padded_logits=True)  # as in train_step.py
    ids = torch.randint(1, SHAPES["gpt2-small"].vocab_size, (B, T), generator=torch.Generator().manual_seed(0))
    ids = ids.to(args.device)
    full_finetune = method == "full_finetune"
    if not full_finetune:
        store_frozen_in_bf16(ours)
    step = make_step(ours, functools.partial(our_loss, target_fraction=1.0), ids, full_finetune, True)
    for _ in range(4):  # compile and warm up
        step()
    times = []
    for _ in range(10):
        synchronize(args.device)
        start = time.perf_counter()
        step()
        synchronize(args.device)
        times.append(time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        synchronize(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        trace = json.loads(Path(f"{tmp}/trace.json").read_text())
    return {"method": method, "B": B, "T": T, "step_ms": 1e3 * statistics.median(times), **timeline(trace, args.steps)}


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0], METHODS)
    parser.set_defaults(device="cuda", methods=["soft_prompt", "prefix_tuning"])
    parser.add_argument("--batch", type=int, nargs=2, default=(32, 1008), metavar=("B", "T"))
    parser.add_argument("--steps", type=int, default=3, help="steps under the profiler")
    args = parse(parser, argv)
    rows = []
    for method in args.methods:
        rows.append(profile_method(method, args))
        r = rows[-1]
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in r["kernel_ms_by_kind"].items())
        print(f"{method:<14} step {r['step_ms']:.1f} ms | GPU busy {r['busy_ms']:.1f} ms, idle {r['gaps_ms']:.1f} ms "
              f"| kernel ms: {kinds}", flush=True)
    if args.out:
        save_rows(args, rows, torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")


if __name__ == "__main__":
    main()
