"""Print the benchmark results in benchmarks/results/ as the Markdown tables of benchmarks/README.md.

    python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path

from methods.registry import canonical

RESULTS = Path(__file__).parent / "results"
MIB = 2 ** 20


def load(name: str) -> list[dict] | None:
    path = RESULTS / name
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["rows"]
    return [{**r, "method": canonical(r["method"])} for r in rows]  # older files: prefix_mlp


def train_table(rows: list[dict]) -> str:
    lines = ["| shape | method | B x T | ours ms | peft ms | ours/peft | ours MiB | peft MiB | memory ours/peft "
             "| optimizer state MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['method']} | {r['B']} x {r['T']} | {r['ours_ms']:.1f} | "
                     f"{r['theirs_ms']:.1f} | **{r['ratio']:.2f}** | {r['ours_peak_bytes'] / MIB:.0f} | "
                     f"{r['theirs_peak_bytes'] / MIB:.0f} | {r['memory_ratio']:.2f} | "
                     f"{r['ours_optimizer_state_bytes'] / MIB:.2f} |")
    return "\n".join(lines)


def mfu_table(rows: list[dict]) -> str:
    lines = ["| method | B x T | ms / step | tokens / s | TFLOP / step | MFU (causal count) | MFU (full attention) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['B']} x {r['T']} | {r['ours_ms']:.1f} | {r['ours_tokens_per_s']:,.0f} | "
                     f"{r['flops'] / 1e12:.2f} | **{100 * r['ours_mfu']:.1f}%** | "
                     f"{100 * r['ours_mfu_full_attention']:.1f}% |")
    return "\n".join(lines)


def generation_table(rows: list[dict]) -> str:
    lines = ["| shape | method | B, input, new | ours tokens/s | peft tokens/s | ours/peft | same tokens |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['shape']} | {r['method']} | {r['B']}, {r['T']}, {r['new']} | "
                         f"{r['ours_tokens_per_s']:,.0f} | failed | | {r['error'][:60]} |")
            continue
        same = f"{100 * r['agreement']:.1f}%" if r["agreement"] is not None else "n/a"
        lines.append(f"| {r['shape']} | {r['method']} | {r['B']}, {r['T']}, {r['new']} | "
                     f"{r['ours_tokens_per_s']:,.0f} | {r['theirs_tokens_per_s']:,.0f} | **{r['speedup']:.2f}x** | "
                     f"{same} |")
    return "\n".join(lines)


SHORTCUTS = ("causal_kernel", "last_block_cut", "query_cut", "vocab_padding", "prefix_rows", "deep_prompt_as_prefix")


def shortcut_table(device: str) -> str | None:
    """Shortcut -> what the step takes without it (`--disable NAME`) over the step with the engine on, per method;
    and the reference path alone (`--engine off`). From {device}_shortcuts_{shape}_*.json (ours only)."""
    lines = []
    for shape in ("toy", "gpt2", "gpt2_b"):  # gpt2_b: GPT-2 small again, on another start of the machine
        on, off = load(f"{device}_shortcuts_{shape}_on.json"), load(f"{device}_shortcuts_{shape}_off.json")
        if not on and shape != "gpt2_b":  # the engine on, timed beside peft (CPU) or for the MFU (GPU, same start)
            on = load(f"{device}_train_{shape}.json") or (load("gpu_mfu.json") if device == "gpu" else None)
        candidates = [*((f"`{name}` off", load(f"{device}_shortcuts_{shape}_without_{name}.json"))
                        for name in SHORTCUTS), ("the reference alone (`--engine off`)", off)]
        others = [(label, rows) for label, rows in candidates if rows]  # the rows measured for this shape
        if not (on and others):
            continue
        measured = {r["method"] for _, rows in others for r in rows}
        methods = [r["method"] for r in on if r["method"] in measured]
        ms_on = {r["method"]: r["ours_ms"] for r in on}
        header = f"| {shape}: without ... | " + " | ".join(methods) + " |"
        lines += [header, "|---|" + "---:|" * len(methods)] if not lines else [header]
        rows = [("engine on: ms per step", on), *others]
        for label, table_rows in rows:
            ms = {r["method"]: r["ours_ms"] for r in table_rows}
            if table_rows is on:
                cells = [f"{ms_on[m]:.1f}" for m in methods]
            else:
                cells = [f"{ms[m]:.1f} ({100 * (ms[m] / ms_on[m] - 1):+.0f}%)" if m in ms else "" for m in methods]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if lines else None


def main() -> None:
    sections = [("CPU: training step, toy, both eager", "cpu_train_toy.json", train_table),
                ("CPU: training step, toy, ours compiled (`--compile`)", "cpu_train_toy_compiled.json", train_table),
                ("CPU: training step, toy, both eager, repeated", "cpu_train_toy_repeat.json", train_table),
                ("CPU: training step, toy, ours compiled, repeated", "cpu_train_toy_compiled_repeat.json",
                 train_table),
                ("CPU: training step, GPT-2 small, both eager", "cpu_train_gpt2.json", train_table),
                ("CPU: training step, GPT-2 small, both eager, repeated", "cpu_train_gpt2_repeat.json", train_table),
                ("CPU: training step, GPT-2 small, ours compiled (`--compile`)", "cpu_train_gpt2_compiled.json",
                 train_table),
                ("CPU: cached greedy generation", "cpu_generation.json", generation_table),
                ("GPU: prompt-training MFU (ours, bf16, compiled), the engine on, one H200", "gpu_mfu.json",
                 mfu_table),
                ("GPU: the same on a third start of the H200, after the deep prompt's keys/values stopped being made "
                 "B times", "gpu_mfu_c.json", mfu_table),
                ("GPU: the same before the engine split, one H100", "gpu_mfu_h100.json", mfu_table),
                ("GPU: the six prompt methods before the engine split, another start of the H100",
                 "gpu_mfu_repeat.json", mfu_table),
                ("GPU: training step, both eager, bf16", "gpu_train_vs_peft.json", train_table),
                ("GPU: cached greedy generation, bf16", "gpu_generation.json", generation_table)]
    for title, name, table in sections:
        rows = load(name)
        if rows:
            print(f"### {title}\n\n{table(rows)}\n")
    for device in ("cpu", "gpu"):
        table = shortcut_table(device)
        if table:
            print(f"### {device.upper()}: what each shortcut saves (ours alone, ms per step; in brackets the "
                  f"step's time without it over the engine's)\n\n{table}\n")


if __name__ == "__main__":
    main()
