"""Figures written with matplotlib's object API (no pyplot global state, no display)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def new_figure(
    ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)
) -> tuple[Figure, np.ndarray]:
    """A figure with an ``(nrows, ncols)`` array of axes, each ``size`` inches."""
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(nrows, ncols)
    return fig, axes


def band(ax: Axes, curves: Mapping[str, np.ndarray], *, logy: bool = False) -> None:
    """Mean and one-standard-deviation band of each ``(N, T)`` array, against step index."""
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        mean, std = values.mean(axis=0), values.std(axis=0)
        steps = np.arange(values.shape[1])
        (line,) = ax.plot(steps, mean, label=label)
        lower = np.maximum(mean - std, mean * 1e-3) if logy else mean - std
        ax.fill_between(steps, lower, mean + std, color=line.get_color(), alpha=0.2)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
