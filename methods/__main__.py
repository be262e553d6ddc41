"""`python -m methods`: train every method on a held-out task and compare them.

    python -m methods                                   # the default comparison (a few minutes on a CPU)
    python -m methods --quick                           # a smoke run, under a minute
    python -m methods --task rev --methods soft_prompt --init TEXT --prompt-len 16
    python -m methods --out experiments/results/compare_default --overwrite   # regenerate the committed run
    python -m methods --task rep --head linear          # tagging: every method with a linear head (span F1)
    python -m methods --task pal --head verbalizer      # classification, read off the frozen LM head (accuracy)

Prints one table (method, trainable parameters, % of the base model, test exact-match, or
for the understanding tasks of methods/nlu_tasks.py accuracy or span F1 beside the trivial
baseline, wall seconds) and writes to --out: results.json, curves.png (loss and validation
exact-match of every method on shared axes), params_vs_accuracy.png (log x axis).

Nothing is lost and nothing is replaced by accident:
- the default --out is a new folder, runs/compare-YYYYMMDD-HHMMSS, so re-running never
  collides with an earlier run; an --out that already holds files is refused (before any
  training) unless you pass --overwrite;
- every flag and the output folder are checked before training starts;
- results.json is saved after each method finishes, marked "complete": false until the
  last one is done, so a crash or Ctrl-C keeps the methods already trained;
- the table is printed before the final files are written, so a failed write loses no
  numbers; results.json is strict JSON (a NaN from a diverged run is refused, named).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from minitransformer import DEFAULT_CHECKPOINT, TASKS
from minitransformer.checkpoint import read_config
from minitransformer.cli import device_arg, positive_float, positive_int
from minitransformer.files import fresh_run_dir, prepare_output_dir, write_json

from .compare import DEFAULT_METHODS, METHODS, RunSettings, compare, format_table
from .heads import HEADS
from .nlu_tasks import NLU_TASKS
from .plots import plot_curves, plot_params_vs_accuracy
from .soft_prompt import INITS
from .train import TrainConfig, TrainResult

__all__ = ["main", "method_list", "parse_args", "positive_float", "positive_int", "settings_from"]


def method_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="dsc", choices=sorted(TASKS) + sorted(NLU_TASKS),
                        help="task to adapt to (default: dsc); pal (classification) and rep (tagging) train with "
                        "a task head, see --head")
    parser.add_argument("--head", default=None, choices=HEADS, help="for pal/rep: read the answer with a linear "
                        "head on the final hidden states (default, P-tuning v2) or the verbalizer (label words "
                        "scored by the frozen LM head, P-tuning v1 / Lester et al.)")
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
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="cpu (the reference model) or cuda (with minitransformer/engine.py's speed shortcuts)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: train under bfloat16 autocast (for GPUs; default fp32)")
    parser.add_argument("--out", default=None, help="folder for results.json and the plots "
                        "(default: a new folder runs/compare-YYYYMMDD-HHMMSS)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to be a folder that holds files")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, small evaluation sets")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, before any work, what argparse's types cannot see alone (a usage error naming the fix)."""
    n_train = TrainConfig.n_train  # the distinct training inputs each step's batch is drawn from
    if args.batch_size is not None and args.batch_size > n_train:
        parser.error(f"--batch-size {args.batch_size} is larger than the {n_train} training inputs a batch is "
                     f"drawn from; pass --batch-size {n_train} or less")
    if args.head is not None and args.task not in NLU_TASKS:
        parser.error(f"--head reads the answer of an understanding task ({', '.join(sorted(NLU_TASKS))}); "
                     f"task {args.task} is generation: drop --head")
    if args.task in NLU_TASKS and args.init == "TEXT" and not args.init_text:
        parser.error(f"--init TEXT for {args.task} needs --init-text (the default text is a demonstration of a "
                     "generation task)")
    try:
        read_config(args.checkpoint)
    except ValueError as error:
        parser.error(f"--checkpoint: {error}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return args


def settings_from(args: argparse.Namespace) -> RunSettings:
    quick = {"steps": 30, "batch_size": 32, "n_val": 50, "n_test": 100, "eval_every": 10} if args.quick else {}
    settings = RunSettings(task=args.task, prompt_len=args.prompt_len, lr=args.lr, seed=args.seed, init=args.init,
                           init_text=args.init_text, with_task_name=args.with_task_name, device=args.device,
                           precision=args.precision, head=args.head or "linear", **quick)
    if args.steps is not None:
        settings.steps = args.steps
    if args.batch_size is not None:
        settings.batch_size = args.batch_size
    if args.eval_every is not None:
        settings.eval_every = args.eval_every
    return settings


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        out = prepare_output_dir(args.out or fresh_run_dir("compare"), args.overwrite)
    except ValueError as error:
        parser.error(str(error))
    print(f"results go to {out}", flush=True)
    settings = settings_from(args)
    report = {"complete": False, "settings": asdict(settings), "results": []}

    def save_so_far(results: list[TrainResult]) -> None:
        """After each method: results.json with every method finished so far, still marked incomplete."""
        report["results"] = [r.to_dict() for r in results]
        try:
            write_json(out / "results.json", report)
        except (OSError, ValueError) as error:  # keep training; the final write below raises it again
            print(f"warning: could not save results.json after {results[-1].method}: {error}", file=sys.stderr)

    try:
        results = compare(args.methods, settings, args.checkpoint, progress=not args.no_progress,
                          on_result=save_so_far)
    except BaseException:
        if report["results"]:
            print(f"stopped after {len(report['results'])} of {len(args.methods)} methods; their results are in "
                  f"{out / 'results.json'} (marked \"complete\": false)", file=sys.stderr)
        raise
    report["complete"] = True
    head = f", {settings.head} head" if settings.task in NLU_TASKS else ""
    title = f"task {settings.task}{head}, P={settings.prompt_len}, {settings.steps} steps, seed {settings.seed}"
    print(f"\n{title}\n{format_table(results)}\n", flush=True)  # first: a failed write below loses no numbers
    write_json(out / "results.json", report)
    plot_curves(results, out / "curves.png", title)
    plot_params_vs_accuracy(results, out / "params_vs_accuracy.png", title)
    print(f"wrote {out}/results.json, curves.png, params_vs_accuracy.png")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
