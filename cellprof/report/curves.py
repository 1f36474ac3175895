"""A training run's curves for the report page: every loss term and the held-out
reconstruction error against the step, from the run folder's losses.csv.

One small panel per column, because the terms differ by orders of magnitude (pixel ~10^2-10^3,
KL ~10^1-10^2, feature matching ~10^3, the discriminator ~0.1-1) and one shared axis would
flatten all but the largest. Drawn on a :class:`~matplotlib.figure.Figure` with its own Agg
canvas, as :mod:`cellprof.report.plots` draws, never through pyplot.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NOT_LOSSES = ("step", "epoch", "lr", "disc_lr", "cells_per_s", "elapsed_s")
"""losses.csv columns that are bookkeeping, not losses (and the schedule weights ``w_*``)."""
HELD_OUT = ("val_pixel", "val_mse")
LABELS = {"pixel": "pixel (reconstruction)", "kl": "KL", "fm": "feature matching",
          "disc": "discriminator", "total": "total", "sigma2": "sigma² (calibrated)",
          "fm_scale": "feature-matching scale", "val_pixel": "held-out pixel loss",
          "val_mse": "held-out MSE per pixel"}


def loss_columns(table: pd.DataFrame) -> list[str]:
    """The columns drawn: each loss term, then the held-out errors; those with a number.

    >>> loss_columns(pd.DataFrame({"step": [1], "pixel": [2.0], "w_0": [0.0],
    ...                            "val_mse": [float("nan")]}))
    ['pixel']
    """
    terms = [c for c in table.columns if c not in NOT_LOSSES and not c.startswith("w_")
             and c not in HELD_OUT]
    return [c for c in [*terms, *[c for c in HELD_OUT if c in table.columns]]
            if pd.to_numeric(table[c], errors="coerce").notna().any()]


def training_curves(table: pd.DataFrame, per_row: int = 4) -> tuple[bytes, int]:
    """losses.csv drawn as one panel per :func:`loss_columns` column; PNG bytes and width
    in pixels. Held-out errors, logged every few steps, are drawn with their points."""
    columns = loss_columns(table)
    rows = max(1, -(-len(columns) // per_row))
    fig = Figure(figsize=(3.0 * per_row, 2.2 * rows))
    step = pd.to_numeric(table["step"], errors="coerce").to_numpy(np.float64)
    for k, column in enumerate(columns):
        ax = fig.add_subplot(rows, per_row, k + 1)
        y = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(y) & np.isfinite(step)
        held_out = column in HELD_OUT
        ax.plot(step[ok], y[ok], "o-" if held_out else "-", lw=1.2, ms=3,
                color="#d62728" if held_out else "#1f77b4")
        if ok.any() and (y[ok] > 0).all() and y[ok].max() > 20 * y[ok].min():
            ax.set_yscale("log")
        ax.set_title(LABELS.get(column, column), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k >= len(columns) - per_row:
            ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    dpi = fig.get_dpi()
    return buf.getvalue(), int(round(fig.get_figwidth() * dpi))
