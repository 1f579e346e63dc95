"""Reliability diagram + confidence histogram, written as one PNG (Agg, no pyplot state).

Top panel: accuracy per equal-width bin as bars against the diagonal (perfect calibration);
the shaded part of each bar is the gap between the bin's accuracy and its mean confidence
(red: overconfident, accuracy below confidence; blue: underconfident). Bottom panel: how
many examples fall in each confidence bin, with overall accuracy and mean confidence
as vertical lines (their distance is the overall over- or underconfidence).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from align_jax.evals.calibration_metrics import (
    DEFAULT_N_BINS,
    ece_from_table,
    reliability_table,
    validate_inputs,
)


def save_reliability_diagram(
    confidences: Any,
    correct: Any,
    path: str | os.PathLike[str],
    *,
    n_bins: int = DEFAULT_N_BINS,
    title: str = "Reliability diagram",
) -> str:
    """Writes the two-panel PNG to ``path`` and returns the path as a string."""
    conf, corr = validate_inputs(confidences, correct)
    table = reliability_table(conf, corr, n_bins=n_bins, scheme="equal_width")
    ece = ece_from_table(table)

    fig = Figure(figsize=(5.5, 7.0), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1.3]}, sharex=True)

    width = table.upper - table.lower
    centers = table.lower + width / 2
    filled = table.count > 0
    acc = np.where(filled, table.accuracy, 0.0)
    mean_conf = np.where(filled, table.mean_confidence, 0.0)

    top.bar(centers, acc, width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    gap_bottom = np.minimum(acc, mean_conf)
    gap_height = np.abs(mean_conf - acc)
    over = filled & (mean_conf > acc)
    under = filled & (mean_conf < acc)
    for mask, color, label in ((over, "#d62728", "gap (overconfident)"),
                               (under, "#ff7f0e", "gap (underconfident)")):
        if np.any(mask):
            top.bar(centers[mask], gap_height[mask], bottom=gap_bottom[mask], width=width[mask],
                    color=color, alpha=0.35, edgecolor=color, hatch="//", label=label)
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title}\nECE = {ece:.4f} ({n_bins} equal-width bins, n = {conf.shape[0]})")
    top.legend(loc="upper left", fontsize=8)

    bottom.bar(centers, table.count, width=width, edgecolor="black", color="#8c8c8c")
    bottom.axvline(float(corr.mean()), color="#2ca02c", linestyle="-", label="overall accuracy")
    bottom.axvline(float(conf.mean()), color="#d62728", linestyle="--", label="mean confidence")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    bottom.legend(loc="upper left", fontsize=8)

    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return os.fspath(path)
