"""The reach task: task-space goals within reach, sampled reproducibly, and the paper's start."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robots.arm.config import ArmConfig, load_arm_config
from robots.arm.kinematics import forward_kinematics


def start_state(config: ArmConfig) -> np.ndarray:
    """The paper's start: all joints at zero, at rest. ``(2n,)`` float64."""
    return np.zeros(config.nx)


def check_goals(config: ArmConfig | str, goals: Any, argument: str = "goals") -> np.ndarray:
    """Given task-space goals as an ``(n, 2)`` float64 array, refused unless the arm can reach
    them: finite, within the reach and outside the ring no pose reaches (the longest link
    folded back past the others). Joint limits are not checked: a goal that needs a pose beyond
    them is scored as the closest the arm gets.

    Raises:
        ValueError: naming ``argument``, the goal and the reachable ring.
    """
    config = load_arm_config(config)
    arr = np.asarray(goals, dtype=np.float64) if len(goals) else np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{argument}: expected a list of (x, z) goals in m, got {goals!r}")
    lengths = np.asarray(config.link_lengths, dtype=np.float64)
    inner = max(0.0, 2 * lengths.max() - lengths.sum())
    for i, g in enumerate(arr):
        r = float(np.linalg.norm(g)) if np.isfinite(g).all() else float("nan")
        if not inner - 1e-12 <= r <= config.reach + 1e-12:
            raise ValueError(
                f"{argument}[{i}]: goal {tuple(g.tolist())} is {r:.4g} m from the base; "
                f"{config.name} reaches from {inner:.4g} to {config.reach:.4g} m"
            )
    return arr


def sample_goals(
    config: ArmConfig | str,
    n: int,
    seed: int | np.random.Generator,
    *,
    exclude: Any = None,
    min_distance: float = 0.0,
    min_spacing: float | None = None,
    min_radius: float = 0.0,
    max_radius: float = 1.0,
    max_tries: int = 100,
) -> np.ndarray:
    """Sample ``n`` task-space goals that the arm can reach, reproducibly.

    Joint angles are drawn uniformly within the joint limits (``[-pi, pi]`` for unlimited
    joints) and mapped through forward kinematics, so every goal is reachable with the limits;
    goals are then filtered by rejection.

    Args:
        config: the arm (or a shipped config name).
        n: number of goals.
        seed: an int seed or a numpy ``Generator`` (consumed).
        exclude: ``(m, 2)`` goals to stay away from (e.g. the meta-training goals when sampling a
            held-out set).
        min_distance: minimum distance in m from every goal in ``exclude``.
        min_spacing: minimum distance in m between the sampled goals themselves (default:
            ``min_distance``); e.g. 0 for a dense training pool kept away from held-out goals.
        min_radius, max_radius: keep goals whose distance from the base lies in
            ``[min_radius, max_radius] * reach``.
        max_tries: rounds of ``n`` candidates before giving up.

    Returns:
        ``(n, 2)`` float64 goals ``(x, z)`` in m.

    Raises:
        ValueError: bad arguments, or the constraints leave too little room for ``n`` goals.
    """
    config = load_arm_config(config)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n: expected a non-negative integer, got {n!r}")
    if not 0.0 <= min_radius <= max_radius:
        raise ValueError(
            f"min_radius, max_radius: expected 0 <= min_radius <= max_radius, got "
            f"{min_radius}, {max_radius}"
        )
    if min_distance < 0:
        raise ValueError(f"min_distance: expected >= 0 m, got {min_distance}")
    spacing = min_distance if min_spacing is None else min_spacing
    if spacing < 0:
        raise ValueError(f"min_spacing: expected >= 0 m, got {min_spacing}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    taken = np.zeros((0, 2)) if exclude is None else np.asarray(exclude, dtype=np.float64)
    if taken.ndim != 2 or taken.shape[1] != 2:
        raise ValueError(f"exclude: expected shape (m, 2), got {taken.shape}")
    lo = np.array([-np.pi if lim is None else lim[0] for lim in config.joint_limits])
    hi = np.array([np.pi if lim is None else lim[1] for lim in config.joint_limits])
    goals: list[np.ndarray] = []
    for _ in range(max_tries):
        if len(goals) == n:
            break
        q = rng.uniform(lo, hi, size=(max(n, 16), config.n_links))
        cand = forward_kinematics(config, torch.as_tensor(q)).numpy()
        r = np.linalg.norm(cand, axis=1) / config.reach
        for g in cand[(r >= min_radius) & (r <= max_radius)]:
            if len(goals) == n:
                break
            if min_distance > 0 and len(taken):
                if np.linalg.norm(taken - g, axis=1).min() < min_distance:
                    continue
            if spacing > 0 and goals:
                if np.linalg.norm(np.asarray(goals) - g, axis=1).min() < spacing:
                    continue
            goals.append(g)
    if len(goals) < n:
        raise ValueError(
            f"n: found only {len(goals)} of {n} goals with min_distance={min_distance}, "
            f"min_spacing={spacing}, radius "
            f"in [{min_radius}, {max_radius}] * reach ({config.reach} m) after {max_tries} rounds"
        )
    return np.asarray(goals, dtype=np.float64).reshape(n, 2)
