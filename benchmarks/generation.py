"""Tokens per second of batched greedy generation with a prompt, KV cache on: ours against peft's.

    python -m benchmarks.generation                        # CPU, both shapes
    python -m benchmarks.generation --device cuda --dtype bf16

Each method's twins (common.py: the same weights, the same prompt values) continue the
same B rows of random tokens for `new` tokens with greedy decoding: ours through
`minitransformer.generate`, theirs through peft's `generate` (which calls transformers').
Neither stops early (no end-of-sequence token). Both runs are timed alternately
`--reps` times; the medians give tokens per second (B * new / seconds). Where the twins
compute the same function, the share of generated tokens on which they agree is reported
too: greedy decoding of the same logits gives the same tokens, up to float ties.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from minitransformer import generate

from .common import base_parser, parse, run_and_save, same_function, synchronize, twins, with_engine

METHODS = ("soft_prompt", "p_tuning_mlp", "deep_prompt", "prefix_tuning", "prefix_tuning_mlp", "lora")
DEFAULT_SIZES = {  # (B rows, input length, new tokens)
    ("cpu", "toy"): (32, 16, 32), ("cpu", "gpt2-small"): (4, 32, 32),
    ("cuda", "toy"): (64, 16, 64), ("cuda", "gpt2-small"): (32, 128, 128),
}


def ours_generate(model, ids, new):
    return generate(model, ids, new)


def theirs_generate(model, ids, new):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                          min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)


def bench_method(method, shape, args) -> dict:
    B, T, new = args.sizes or DEFAULT_SIZES[(args.device.split(":")[0], shape.name)]
    ours, theirs = twins(method, shape, args.prompt_len, args.device)
    with_engine(ours, args)  # --engine, --disable
    ours.eval(), theirs.eval()
    ids = torch.randint(1, shape.vocab_size, (B, T), generator=torch.Generator().manual_seed(0)).to(args.device)
    autocast = (torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16) if args.dtype == "bf16"
                else contextlib.nullcontext())
    runs = {"ours": lambda: ours_generate(ours, ids, new), "theirs": lambda: theirs_generate(theirs, ids, new)}
    outputs, times = {}, {name: [] for name in runs}
    row = {"shape": shape.name, "method": method, "B": B, "T": T, "new": new, "P": args.prompt_len, "error": None}
    with torch.no_grad(), autocast:
        for name, run in runs.items():
            try:
                outputs[name] = run()[:, -new:]  # warm-up, and the tokens to compare
            except Exception as error:  # a broken side is reported, not hidden
                if name == "ours":
                    raise
                row["error"] = f"peft: {type(error).__name__}: {error}"
                runs = {"ours": runs["ours"]}
                times.pop("theirs")
        for rep in range(args.reps):
            for name in (runs if rep % 2 == 0 else reversed(list(runs))):
                synchronize(args.device)
                start = time.perf_counter()
                runs[name]()
                synchronize(args.device)
                times[name].append(time.perf_counter() - start)
    row["theirs_tokens_per_s"] = row["speedup"] = row["agreement"] = None
    for name in runs:
        row[f"{name}_tokens_per_s"] = B * new / statistics.median(times[name])
    if "theirs" in runs:
        row["speedup"] = row["ours_tokens_per_s"] / row["theirs_tokens_per_s"]
        if same_function(method):
            row["agreement"] = (outputs["ours"] == outputs["theirs"]).float().mean().item()
    return row


def format_row(r) -> str:
    if r["error"]:
        return f"{r['shape']:<11} {r['method']:<14} ours {r['ours_tokens_per_s']:9.0f} tok/s | {r['error'][:90]}"
    agreement = f"{100 * r['agreement']:5.1f}%" if r["agreement"] is not None else "  n/a "
    return (f"{r['shape']:<11} {r['method']:<14} ours {r['ours_tokens_per_s']:9.0f} tok/s | "
            f"peft {r['theirs_tokens_per_s']:9.0f} tok/s | ours/peft {r['speedup']:5.2f}x | same tokens {agreement}")


def main(argv=None) -> None:
    parser = base_parser(__doc__.splitlines()[0], METHODS)
    parser.add_argument("--sizes", type=int, nargs=3, metavar=("B", "T", "NEW"), help="override the defaults")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast, both sides")
    args = parse(parser, argv)
    run_and_save(args, bench_method, format_row)


if __name__ == "__main__":
    main()
