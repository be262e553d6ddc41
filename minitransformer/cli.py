"""What the command lines share: flags checked as they are parsed, each refusal naming the fix.

A bad value stops the command before any work (argparse's usage error, exit status 2),
not as a traceback mid-run or, worse, as a run that "succeeds" with garbage: `--steps 0`
would save an untrained model, `--lr inf` an all-NaN one.
"""

from __future__ import annotations

import argparse
import math

import torch


def check_device(device: str) -> str:
    """Return `device` if PyTorch can run on it here; otherwise a ValueError that says what to pass instead."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from error
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("no CUDA GPU is visible to PyTorch; run with --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible; "
                             f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}, or --device cpu")
    elif parsed.type != "cpu":
        raise ValueError(f"device {device!r} is not supported here; use cpu, cuda or cuda:N")
    return device


def device_arg(text: str) -> str:
    """`check_device` as an argparse `type=`: the refusal becomes a usage error with its message."""
    try:
        return check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (a learning rate of inf or nan trains nothing but NaN)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text} (not finite); pass e.g. 0.01")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
