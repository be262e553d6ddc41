"""`python -m experiments NAME`: run one experiment (or `all`), write its results.json and figure.

    python -m experiments prompt_length --device cuda --jobs 12
    python -m experiments all --device cuda --seeds 0 1 2 --jobs 12
    python -m experiments depth --quick --seeds 0            # a smoke run of the pipeline (CPU, seconds)
    python -m experiments depth --device cuda --out experiments/results --overwrite   # regenerate the committed one

Every default is fixed (tasks, steps, learning rates, seeds), so the same command
reproduces the same numbers up to floating-point nondeterminism on the GPU. `--jobs N`
runs the independent training runs in N processes (the results do not depend on N).

Results go to OUT/NAME/ (results.json and NAME.png). The default OUT is a new folder,
runs/experiments-YYYYMMDD-HHMMSS, so no run replaces another. The committed results in
experiments/results are replaced only when you name that folder and pass --overwrite,
and never by a --quick smoke run. Every output folder, the base model and the device are
checked before any training starts.

Every finished run is kept in `--cache` and reused when the same run is asked for again:
an interrupted experiment resumes, and runs shared by two experiments are trained once.
A run is the same when its function, parameters, base model (by content, not path) and
the code (a hash of the source of minitransformer, methods and experiments) are the same,
so after changing the code the runs are trained again by themselves; `--fresh` retrains
everything regardless.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from minitransformer import DEFAULT_CHECKPOINT
from minitransformer.cli import device_arg, positive_int
from minitransformer.files import fresh_run_dir, is_within, prepare_output_dir, write_json

from . import (
    depth,
    ensemble,
    hard_vs_soft,
    initialisation,
    layers,
    nlu,
    packing,
    prompt_length,
    reparameterisation,
    scale,
    transfer,
)
from .common import Context, checkpoint_fingerprint, code_version

EXPERIMENTS = {m.NAME: m for m in (prompt_length, initialisation, reparameterisation, depth, scale, hard_vs_soft,
                                   packing, nlu, layers, transfer, ensemble)}
COMMITTED_RESULTS = Path(__file__).parent / "results"  # what the READMEs show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="which experiment")
    parser.add_argument("--device", type=device_arg, default="cpu", help="cpu or cuda")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--out", default=None, help="results go to OUT/NAME/ (default: a new folder "
                        "runs/experiments-YYYYMMDD-HHMMSS; experiments/results holds the committed ones)")
    parser.add_argument("--overwrite", action="store_true", help="allow OUT/NAME to be a folder that holds results")
    parser.add_argument("--jobs", type=positive_int, default=1, help="worker processes (default 1: none)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="the frozen base model")
    parser.add_argument("--cache", default="/tmp/experiments-cache",
                        help="scratch folder: every finished run (reused when the same run is asked for again, "
                        "so an interrupted experiment resumes) and the scale experiment's base models")
    parser.add_argument("--fresh", action="store_true", help="train every run again, ignoring finished ones")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps, tiny evaluation sets")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def prepare(parser: argparse.ArgumentParser, args: argparse.Namespace, names: list[str]) -> Path:
    """Check everything a run needs before any training; return OUT (each OUT/NAME is created, empty or allowed)."""
    out = Path(args.out) if args.out else fresh_run_dir("experiments")
    if args.quick and is_within(out, COMMITTED_RESULTS):
        parser.error(f"--quick is a smoke run, not a result: it never writes into {COMMITTED_RESULTS}; "
                     "drop --out (a new folder under runs/ is used) or pick a scratch folder")
    try:
        checkpoint_fingerprint(args.checkpoint)  # exists and loads; remembered for the cache keys
        prepare_output_dir(args.cache, overwrite=True)  # a scratch folder: holding files is its purpose
        for name in names:
            prepare_output_dir(out / name, args.overwrite)
    except ValueError as error:
        parser.error(str(error))
    return out


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return device


def run_one(name: str, args: argparse.Namespace, out: Path) -> dict:
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
              "quick": args.quick, "jobs": args.jobs, "wall_seconds": round(time.time() - start, 1),
              "base_fingerprint": checkpoint_fingerprint(args.checkpoint), "code_version": code_version(), **report}
    folder = out / name
    write_json(folder / "results.json", report)  # strict JSON, atomic; before the figure, which could fail
    module.plot(report, folder / f"{name}.png")
    ctx.log(f"{name}: {report['wall_seconds']} s; wrote {folder}/results.json and {name}.png")
    for key, value in report["summary"].items():
        if isinstance(value, dict) and "mean" in value:
            ctx.log(f"  {key:<40} {value['mean']:.3f}  [{value['min']:.3f}, {value['max']:.3f}]")
    return report


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    out = prepare(parser, args, names)
    return [run_one(name, args, out) for name in names]


if __name__ == "__main__":
    main(sys.argv[1:])
