"""Figure helpers: every comparison shows the mean over seeds, the spread (min to max), and each seed."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from minitransformer.files import save_figure

SPREAD = "mean (line or bar), min to max over seeds (band or whisker), one dot per seed"


def band(ax, xs, groups: list[list[float]], label: str, color=None, marker: str = "o"):
    """Mean line over x, a min-max band, and one dot per seed at each x."""
    means = [np.mean(g) for g in groups]
    line = ax.plot(xs, means, marker=marker, label=label, color=color)[0]
    color = line.get_color()
    ax.fill_between(xs, [min(g) for g in groups], [max(g) for g in groups], color=color, alpha=0.15)
    for x, g in zip(xs, groups):
        ax.scatter([x] * len(g), g, s=12, color=color, alpha=0.6, zorder=3)
    return line


def curve_band(ax, runs: list[dict], label: str, color=None):
    """Validation exact-match against step: mean over the runs (seeds) and their min-max band."""
    steps = runs[0]["val_steps"]
    values = np.array([r["val_exact_match"] for r in runs])  # (seeds, evaluations)
    line = ax.plot(steps, values.mean(0), label=label, color=color)[0]
    ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.15)
    return line


def grouped_bars(ax, groups: list[str], series: dict[str, list[list[float]]], width: float = 0.8,
                 fmt: str = "{:.2f}"):
    """For each group on x, one bar per series: the mean, a min-max whisker and the seeds as dots."""
    n = len(series)
    for k, (label, per_group) in enumerate(series.items()):
        xs = np.arange(len(groups)) + (k - (n - 1) / 2) * width / n
        means = np.array([np.mean(v) for v in per_group])
        err = np.array([[m - min(v) for m, v in zip(means, per_group)], [max(v) - m for m, v in zip(means, per_group)]])
        bars = ax.bar(xs, means, width / n, label=label, alpha=0.8, yerr=err, capsize=2)
        for x, v in zip(xs, per_group):
            ax.scatter([x] * len(v), v, s=10, color="black", zorder=3)
        for x, m in zip(xs, means):
            ax.annotate(fmt.format(m), (x, m), ha="center", va="bottom", fontsize=6, xytext=(0, 2),
                        textcoords="offset points", color=bars.patches[0].get_facecolor())
    ax.set_xticks(np.arange(len(groups)), groups)


def save(fig, path: str | Path, title: str, subtitle: str = SPREAD) -> Path:
    fig.suptitle(f"{title}\n{subtitle}", fontsize=10)
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=120)  # atomically: never half a PNG over the previous one
    finally:
        plt.close(fig)


def subplots(ncols: int, nrows: int = 1, width: float = 5.5, height: float = 4.2):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    return fig, axes.flatten()
