"""`python -m methods`: train every method on a held-out task and compare them.

    python -m methods                                   # the default comparison (a few minutes on a CPU)
    python -m methods --quick                           # a smoke run, under a minute
    python -m methods --task rev --methods soft_prompt --init TEXT --prompt-len 16

Prints one table (method, trainable parameters, % of the base model, test exact-match,
wall seconds) and writes to --out: results.json, curves.png (loss and validation
exact-match of every method on shared axes), params_vs_accuracy.png (log x axis).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from minitransformer import DEFAULT_CHECKPOINT, TASKS

from .compare import DEFAULT_METHODS, METHODS, RunSettings, compare, format_table
from .plots import plot_curves, plot_params_vs_accuracy
from .soft_prompt import INITS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def method_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="dsc", choices=sorted(TASKS), help="task to adapt to (default: dsc)")
    parser.add_argument("--methods", type=method_list, default=list(DEFAULT_METHODS),
                        help=f"comma-separated, from: {', '.join(METHODS)}")
    parser.add_argument("--prompt-len", type=positive_int, default=16, help="virtual tokens P (default 16)")
    parser.add_argument("--steps", type=positive_int, default=None, help="training steps per method (default 1000)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="examples per step (default 64)")
    parser.add_argument("--eval-every", type=positive_int, default=None, help="validate every N steps (default 100)")
    parser.add_argument("--lr", type=positive_float, default=None, help="one learning rate for every method "
                        "(default: each method's own, see methods/compare.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="SAMPLE_VOCAB", choices=INITS, help="soft prompt initialisation")
    parser.add_argument("--init-text", default=None, help="text for --init TEXT, repeated or cut to the prompt "
                        "length (default: a demonstration of the task ending with its name, e.g. '...=cba.rev:')")
    parser.add_argument("--with-task-name", action="store_true", help="keep the hard prompt `dsc:` in the input")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="the frozen base model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: train under bfloat16 autocast (for GPUs; default fp32)")
    parser.add_argument("--out", default="runs/compare", help="folder for results.json and the plots")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small evaluation sets")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> RunSettings:
    quick = {"steps": 30, "batch_size": 32, "n_val": 50, "n_test": 100, "eval_every": 10} if args.quick else {}
    settings = RunSettings(task=args.task, prompt_len=args.prompt_len, lr=args.lr, seed=args.seed, init=args.init,
                           init_text=args.init_text, with_task_name=args.with_task_name, device=args.device,
                           precision=args.precision, **quick)
    if args.steps is not None:
        settings.steps = args.steps
    if args.batch_size is not None:
        settings.batch_size = args.batch_size
    if args.eval_every is not None:
        settings.eval_every = args.eval_every
    return settings


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    settings = settings_from(args)
    results = compare(args.methods, settings, args.checkpoint, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"task {settings.task}, P={settings.prompt_len}, {settings.steps} steps, seed {settings.seed}"
    report = {"settings": asdict(settings), "results": [r.to_dict() for r in results]}
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_curves(results, out / "curves.png", title)
    plot_params_vs_accuracy(results, out / "params_vs_accuracy.png", title)
    print(f"\n{title}\n{format_table(results)}\n\nwrote {out}/results.json, curves.png, params_vs_accuracy.png")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
