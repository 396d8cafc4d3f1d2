"""Real data of one arm for fitting its dynamics model from few trajectories (issue 14).

:class:`ArmData` holds an arm's babbling pools (fitting data and held-out checks) and the
broad-start rollouts of the physics prior, all from its simulator and one seed, so a resumed
meta-training run rebuilds them identically instead of checkpointing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ml3_robotics.mbrl.loop import babble
from robots.arm import ArmConfig, ArmSim


def broad_starts(arm: ArmConfig, n: int, speed: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, nx)`` start states away from the data's start: angles uniform within the joint
    limits (``[-pi, pi]`` for unlimited joints), velocities uniform in ``[-speed, speed]``."""
    lo = np.array([-np.pi if lim is None else lim[0] for lim in arm.joint_limits])
    hi = np.array([np.pi if lim is None else lim[1] for lim in arm.joint_limits])
    q = rng.uniform(lo, hi, size=(n, arm.n_links))
    qd = rng.uniform(-speed, speed, size=(n, arm.n_links))
    return np.concatenate([q, qd], axis=1)


@dataclass
class ArmData:
    """One arm's real data, all from its simulator and one seed.

    Attributes:
        arm: the robot.
        fit_X, fit_U: ``(P, T+1, nx)``, ``(P, T, nu)`` babbling trajectories from rest (the pool
            that fitting data is drawn from).
        check_X, check_U: held-out babbling of the same kind (multi-step error).
        prior_X, prior_U: babbling from broad starts (random angles and speeds): the physics
            prior's true-simulator rollouts, used at meta-train time only.
        state_scale: ``(nx,)`` per-dimension std of the states in ``check_X`` (errors are
            divided by it so angles and velocities, and arms, weigh alike).
    """

    arm: ArmConfig
    fit_X: np.ndarray
    fit_U: np.ndarray
    check_X: np.ndarray
    check_U: np.ndarray
    prior_X: np.ndarray | None
    prior_U: np.ndarray | None
    state_scale: Tensor

    @classmethod
    def collect(
        cls,
        arm: ArmConfig,
        seed: int,
        *,
        n_fit: int,
        n_check: int,
        n_prior: int,
        horizon: int,
        hold: int,
    ) -> ArmData:
        sim = ArmSim(arm, "mujoco")
        rng = np.random.default_rng(seed)
        fit_X, fit_U = babble(sim, n_fit, horizon, hold, rng)
        check_X, check_U = babble(sim, n_check, horizon, hold, rng)
        prior_X = prior_U = None
        if n_prior > 0:
            speed = float(np.abs(fit_X[..., arm.n_links :]).std())
            _, prior_U = babble(sim, n_prior, horizon, hold, rng)  # torques only
            prior_X = sim.rollout(broad_starts(arm, n_prior, speed, rng), prior_U)
        scale = torch.as_tensor(check_X.reshape(-1, arm.nx).std(0), dtype=torch.float32)
        return cls(arm, fit_X, fit_U, check_X, check_U, prior_X, prior_U, scale.clamp_min(1e-3))
