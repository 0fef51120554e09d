"""PNG charts of an evaluation (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from optiml_engine.eval.report import LEVEL_TITLES, ordered_levels  # noqa: E402


def level_bars(summary: dict, path: str | Path, metric: str = "score") -> Path:
    """Grouped bars: one group per level, one bar per number of shots."""
    shots = list(summary)
    levels = ordered_levels({lv for s in shots for lv in summary[s]["level"]})
    width = 0.8 / max(len(shots), 1)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, s in enumerate(shots):
        values = [summary[s]["level"].get(lv, {}).get(metric, math.nan) for lv in levels]
        xs = [j + (i - (len(shots) - 1) / 2) * width for j in range(len(levels))]
        bars = ax.bar(xs, [0.0 if math.isnan(v) else v for v in values], width,
                      label=f"{s}-shot")
        ax.bar_label(bars, labels=["-" if math.isnan(v) else f"{v:.1f}" for v in values],
                     fontsize=8)
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels([LEVEL_TITLES.get(lv, lv).replace(" of ", "\nof ") for lv in levels],
                       fontsize=8)
    ax.set_ylabel(f"{metric} (0-100)")
    ax.set_ylim(0, 105)
    ax.set_title("Generalization levels")
    ax.legend()
    return save_figure(fig, path)


def history_lines(history: list[dict], path: str | Path) -> Path:
    """One line per logged scalar against the training step."""
    names = sorted({k for row in history for k in row if k != "step"})
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name in names:
        points = sorted((row["step"], row[name]) for row in history if name in row)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("score (0-100)")
    ax.set_title("Evaluations during training")
    if names:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` and free it (pyplot keeps every open figure)."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
