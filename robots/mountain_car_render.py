"""Matplotlib (Agg, no pyplot) drawing of the MountainCar: hill ``sin(3p)``, car, goal flag."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Polygon

from robots.mountain_car import MountainCarParams

# Car size in pixels: drawn in pixel space so it keeps its shape on the unequal-aspect axes.
_CAR_LEN, _CAR_HEIGHT, _WHEEL_R = 36.0, 14.0, 5.0
_XPAD, _YLIM = 0.08, (-1.3, 1.45)


class MountainCarRenderer:
    """Draws states into RGB frames. Builds the figure once and moves the car per frame.

    Args:
        params: limits (x range) and success position (goal flag).
        width, height: frame size in pixels.
    """

    def __init__(self, params: MountainCarParams, width: int = 400, height: int = 300) -> None:
        self.params = params
        self.width, self.height = width, height
        dpi = 100
        # Own Figure + Agg canvas: no pyplot global state, safe in threads and tests.
        self._fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        self._canvas = FigureCanvasAgg(self._fig)
        ax = self._fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        lo, hi = params.p_min, params.p_max
        xs = np.linspace(lo, hi, 300)
        ax.fill_between(xs, np.sin(3 * xs), -1.3, color="#c8b48a")
        ax.plot(xs, np.sin(3 * xs), color="#5a4a2a", lw=2)
        gx = params.success_position
        gy = math.sin(3 * gx)
        ax.plot([gx, gx], [gy, gy + 0.35], color="black", lw=1.5)
        ax.add_patch(
            Polygon(
                [(gx, gy + 0.35), (gx, gy + 0.25), (gx - 0.12, gy + 0.30)],
                closed=True,
                color="#e0b000",
            )
        )
        ax.axvline(lo, color="#404040", lw=3)
        # Pixels per data unit along x and y (the axes fill the figure).
        self._px = np.array([width / (hi - lo + 2 * _XPAD), height / (_YLIM[1] - _YLIM[0])])
        self._body = Polygon(np.zeros((4, 2)), closed=True, color="#2060c0")
        self._wheels = [
            Ellipse((0, 0), 2 * _WHEEL_R / self._px[0], 2 * _WHEEL_R / self._px[1], color="#202020")
            for _ in range(2)
        ]
        ax.add_patch(self._body)
        for w in self._wheels:
            ax.add_patch(w)
        self._text = ax.text(0.02, 0.97, "", transform=ax.transAxes, va="top", fontsize=9)
        ax.set_xlim(lo - _XPAD, hi + _XPAD)
        ax.set_ylim(*_YLIM)
        ax.set_facecolor("white")
        self._fig.set_facecolor("#eef4ff")

    def render(self, state: Any) -> np.ndarray:
        """One ``(height, width, 3)`` uint8 frame of the state ``(p, v)``."""
        p, v = (float(c) for c in np.asarray(state, dtype=np.float64).reshape(2))
        y = math.sin(3 * p)
        # Work in pixels (centre at the contact point), then convert back to data units.
        angle = math.atan(3 * math.cos(3 * p) * self._px[1] / self._px[0])
        c, s = math.cos(angle), math.sin(angle)
        tangent, normal = np.array([c, s]) / self._px, np.array([-s, c]) / self._px
        base = np.array([p, y]) + normal * _WHEEL_R * 1.6
        half = tangent * _CAR_LEN / 2
        up = normal * _CAR_HEIGHT
        self._body.set_xy(np.stack([base - half, base + half, base + half + up, base - half + up]))
        for w, sign in zip(self._wheels, (-0.6, 0.6), strict=True):
            w.center = tuple(np.array([p, y]) + tangent * sign * _CAR_LEN / 2 + normal * _WHEEL_R)
        self._text.set_text(f"p = {p:+.3f}   v = {v:+.3f}")
        self._canvas.draw()
        rgba = np.asarray(self._canvas.buffer_rgba())
        return rgba[..., :3].copy()

    def render_trajectory(self, states: Any) -> np.ndarray:
        """``(T, 2)`` states -> ``(T, height, width, 3)`` uint8 frames."""
        if hasattr(states, "detach"):
            states = states.detach().cpu().numpy()
        arr = np.asarray(states, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
            raise ValueError(f"states: expected shape (T>=1, 2), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("states: expected finite values, got NaN or inf")
        return np.stack([self.render(x) for x in arr])
