"""Rollout videos of the simulated systems, for ``ml3r render``.

A quick look at a system (a scripted rollout), not an evaluation: experiments render their own
meta-test rollouts into their output directories.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ml3_robotics.core.validation import check_choice
from robots.arm import ArmConfig, ArmSim, load_arm_config, render_rollout
from robots.mountain_car import MountainCar, render_trajectory
from robots.video import write_video

SYSTEMS = ("mountain-car", "arm")


def pumping_rollout(car: MountainCar, steps: int) -> torch.Tensor:
    """MountainCar under the energy-pumping policy ``a = 0.25 sign(v)`` (left when at rest).

    Returns:
        States ``(steps + 1, 2)``.
    """
    bound = car.params.action_bound
    x = torch.tensor([car.params.start], dtype=torch.float64)
    states = [x]
    for _ in range(steps):
        u = torch.where(x[:, 1:] > 0, bound, -bound).to(x.dtype)
        x = car.step(x, u)
        states.append(x)
    return torch.cat(states)


def smooth_torques(config: ArmConfig, steps: int, seed: int) -> np.ndarray:
    """Seeded smooth torque sequences: random sinusoids at 60% of each joint's limit.

    Returns:
        ``(1, steps, n_links)`` torques in N*m.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[:, None] * config.dt
    freq = rng.uniform(0.5, 2.0, config.n_links)
    phase = rng.uniform(0, 2 * np.pi, config.n_links)
    limits = np.asarray(config.torque_limits, dtype=float)
    return (0.6 * limits * np.sin(2 * np.pi * freq * t + phase))[None]


def render_system(
    system: str,
    out: str | Path,
    *,
    robot: str = "reacher2",
    backend: str = "mujoco",
    steps: int | None = None,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
) -> Path:
    """Render a scripted rollout of ``system`` to ``out`` (``.gif`` or ``.mp4``).

    Args:
        system: ``"mountain-car"`` or ``"arm"``.
        out: the video file to write (its folder must exist); nothing else is written.
        robot: arm configuration name or YAML path (``system="arm"`` only).
        backend: ``"mujoco"`` or ``"pybullet"`` (``system="arm"`` only).
        steps: rollout length (default: the system's horizon, 35 or 200 steps).
        seed: seeds the arm's torque sequence.
        width, height: frame size in pixels (arms).
    """
    check_choice("system", system, SYSTEMS)
    if steps is not None and steps < 1:
        raise ValueError(f"steps: expected an integer >= 1, got {steps}")
    out = Path(out)
    if system == "mountain-car":
        car = MountainCar()
        states = pumping_rollout(car, steps or car.params.horizon)
        return write_video(render_trajectory(states), out, fps=10)
    config = load_arm_config(robot)
    sim = ArmSim(config, backend=backend)
    try:
        n = steps or 200
        X = sim.rollout(np.zeros((1, sim.nx)), smooth_torques(config, n, seed))
        frames = render_rollout(sim, X[0], width=width, height=height, stride=2)
    finally:
        sim.close()
    return write_video(frames, out, fps=round(1 / (2 * config.dt)))
