"""Rendering rollouts to frames (write them with ``robots.video.write_video``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from robots.arm.sim import ArmSim


def render_rollout(
    sim: ArmSim, X: Any, width: int = 320, height: int = 240, goal: Any = None, stride: int = 1
) -> np.ndarray:
    """Render each state of a trajectory; the sim's own state is restored afterwards.

    Args:
        sim: the simulator (either backend; MuJoCo needs MUJOCO_GL=egl or osmesa headless).
        X: states ``(T, nx)``.
        width, height: frame size in pixels.
        goal: optional ``(x, z)`` marker (defaults to ``sim.goal``).
        stride: render every ``stride``-th state.

    Returns:
        ``(ceil(T / stride), height, width, 3)`` uint8 frames.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != sim.nx:
        raise ValueError(f"X: expected shape (T, {sim.nx}), got {X.shape}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride!r}")
    saved = sim.state
    try:
        frames = []
        for x in X[::stride]:
            sim.reset(x)
            frames.append(sim.render(width, height, goal))
    finally:
        sim.reset(saved)
    return np.stack(frames)
