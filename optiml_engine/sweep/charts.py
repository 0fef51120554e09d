"""Line charts against the swept value (the paper's Figures 2 and 3): one line per level and
shots, error bars one std over seeds. matplotlib as eval/charts.py sets it up (Agg, no display)."""

from __future__ import annotations

from pathlib import Path

from optiml_engine.eval.charts import plt, save_figure


def swept_lines(agg: dict, key: str, path: str | Path) -> Path:
    """x: each variant's value of `key` (log scale when it spans more than 100x)."""
    variants = sorted(agg.values(), key=lambda a: a["value"])
    xs = [a["value"] for a in variants]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    levels = sorted({lv for a in variants for lv in a["level"]})
    for lv in levels:
        for shots in sorted({k for a in variants for k in a["level"].get(lv, {})}, key=int):
            cells = [a["level"].get(lv, {}).get(shots) for a in variants]
            points = [(x, c) for x, c in zip(xs, cells, strict=True) if c]
            ax.errorbar([x for x, _ in points], [c["mean"] for _, c in points],
                        yerr=[c["std"] or 0.0 for _, c in points], marker="o", capsize=3,
                        linestyle="-" if shots == "0" else "--", label=f"{shots}-shot {lv}")
    if xs and min(xs) > 0 and max(xs) / min(xs) > 100:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"Levels against {key} (mean ± std over seeds)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
