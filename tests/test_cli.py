"""`python -m methods`: a tiny end-to-end run, its output files, and its flags.

Refusals of bad flags are tested in test_validation.py.
"""

from __future__ import annotations

import json

from methods.__main__ import main, parse_args, settings_from


def test_a_tiny_run_writes_results_and_plots(tmp_path, capsys):
    report = main(["--methods", "soft_prompt,prefix_tuning,full_finetune", "--quick", "--steps", "3",
                   "--eval-every", "2", "--no-progress", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["settings"]["task"] == "dsc" and saved["settings"]["steps"] == 3
    assert [r["method"] for r in saved["results"]] == ["soft_prompt", "prefix_tuning", "full_finetune"]
    for r in saved["results"]:
        assert {"trainable_params", "base_params", "test_exact_match", "initial_val_exact_match", "seconds",
                "loss", "val_steps", "val_exact_match", "config"} <= set(r)
        assert len(r["loss"]) == 3 and r["val_steps"] == [0, 2, 3] and 0 <= r["test_exact_match"] <= 1
    counts = {r["method"]: r["trainable_params"] for r in saved["results"]}
    assert counts == {"soft_prompt": 16 * 128, "prefix_tuning": 16 * 2 * 128 * 4, "full_finetune": 814_976}
    for png in ("curves.png", "params_vs_accuracy.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "prefix_tuning" in table and "% of base" in table


def test_flags_are_parsed_into_settings():
    args = parse_args(["--task", "rol", "--methods", "lora,deep_prompt", "--prompt-len", "8", "--steps", "50",
                       "--lr", "0.05", "--seed", "3", "--init", "TEXT", "--batch-size", "16"])
    s = settings_from(args)
    assert (s.task, s.prompt_len, s.steps, s.lr, s.seed, s.init, s.batch_size) == ("rol", 8, 50, 0.05, 3, "TEXT", 16)
    assert args.methods == ["lora", "deep_prompt"]
    assert settings_from(parse_args(["--quick"])).steps == 30
