"""`python -m experiments NAME`: run one experiment (or `all`), write its results.json and figure.

    python -m experiments prompt_length --device cuda --jobs 12
    python -m experiments all --device cuda --seeds 0 1 2 --jobs 12
    python -m experiments depth --quick --seeds 0            # a smoke run of the pipeline (CPU, seconds)

Every default is fixed (tasks, steps, learning rates, seeds), so the same command
reproduces the same numbers up to floating-point nondeterminism on the GPU. `--jobs N`
runs the independent training runs in N processes (the results do not depend on N).
Every finished run is kept in `--cache` and reused when the same run (same function and
parameters) is asked for again: an interrupted experiment resumes, and runs shared by two
experiments are trained once. After changing the code, pass `--fresh` or delete the cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from minitransformer import DEFAULT_CHECKPOINT

from . import depth, hard_vs_soft, initialisation, prompt_length, reparameterisation, scale
from .common import Context

EXPERIMENTS = {m.NAME: m for m in (prompt_length, initialisation, reparameterisation, depth, scale, hard_vs_soft)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="which experiment")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--out", default="experiments/results", help="results go to OUT/NAME/")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1: none)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="the frozen base model")
    parser.add_argument("--cache", default="/tmp/experiments-cache",
                        help="scratch folder: every finished run (reused when the same run is asked for again, "
                        "so an interrupted experiment resumes) and the scale experiment's base models")
    parser.add_argument("--fresh", action="store_true", help="train every run again, ignoring finished ones")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps, tiny evaluation sets")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return device


def run_one(name: str, args: argparse.Namespace) -> dict:
    module = EXPERIMENTS[name]
    ctx = Context(device=args.device, seeds=tuple(args.seeds), jobs=args.jobs, checkpoint=args.checkpoint,
                  quick=args.quick, cache=args.cache, reuse=not args.fresh,
                  log=(lambda m: None) if args.quiet else print)
    ctx.log(f"{name}: {module.PAPER}")
    start = time.time()
    report = module.run(ctx)
    command = f"python -m experiments {name} --device {args.device} --seeds {' '.join(map(str, args.seeds))}"
    report = {"experiment": name, "paper": module.PAPER, "command": command + (" --quick" if args.quick else ""),
              "device": device_name(args.device), "torch_version": torch.__version__, "seeds": list(args.seeds),
              "quick": args.quick, "jobs": args.jobs, "wall_seconds": round(time.time() - start, 1), **report}
    out = Path(args.out) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    module.plot(report, out / f"{name}.png")
    ctx.log(f"{name}: {report['wall_seconds']} s; wrote {out}/results.json and {name}.png")
    for key, value in report["summary"].items():
        if isinstance(value, dict) and "mean" in value:
            ctx.log(f"  {key:<40} {value['mean']:.3f}  [{value['min']:.3f}, {value['max']:.3f}]")
    return report


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    return [run_one(name, args) for name in names]


if __name__ == "__main__":
    main(sys.argv[1:])
