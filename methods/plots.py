"""Plots of a comparison: training curves on shared axes, and accuracy against trainable parameters.

Each figure is saved atomically (`minitransformer.files.save_figure`): a crash mid-save never
leaves half a PNG over the previous one.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from minitransformer.files import save_figure

from .train import TrainResult

METRIC_LABELS = {"exact_match": "exact-match", "accuracy": "accuracy", "span_f1": "span F1"}


def metric_label(results: list[TrainResult]) -> str:
    """What the scores are: exact-match (generation), accuracy or span F1 (understanding tasks)."""
    return METRIC_LABELS[results[0].metric] if results else "exact-match"


def smooth(values: list[float], window: int = 20) -> np.ndarray:
    """Moving average, so per-batch noise does not hide the trend."""
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_curves(results: list[TrainResult], path: str | Path, title: str = "") -> Path:
    fig, (ax_loss, ax_em) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in results:
        loss = smooth(r.loss)
        ax_loss.plot(np.arange(len(loss)) + (len(r.loss) - len(loss)) + 1, loss, label=r.method)
        ax_em.plot(r.val_steps, r.val_score, marker="o", markersize=3, label=r.method)
    metric = metric_label(results)
    ax_loss.set(xlabel="step", ylabel="training loss (smoothed)", yscale="log", title="loss")
    ax_em.set(xlabel="step", ylabel=f"validation {metric}", ylim=(-0.02, 1.02), title=f"validation {metric}")
    for ax in (ax_loss, ax_em):
        ax.grid(alpha=0.3)
    ax_em.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def plot_params_vs_accuracy(results: list[TrainResult], path: str | Path, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.scatter(r.trainable_params, r.test_score, s=50)
        ax.annotate(r.method, (r.trainable_params, r.test_score), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.set(xscale="log", xlabel="trainable parameters (log scale)", ylabel=f"test {metric_label(results)}",
           ylim=(-0.02, 1.08), title=title or "accuracy vs trainable parameters")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)
