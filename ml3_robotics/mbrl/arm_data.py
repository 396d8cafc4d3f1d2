"""Real data of one arm for fitting its dynamics model from few trajectories (issue 14).

:class:`ArmData` holds an arm's babbling pools (fitting data and held-out checks) and the
meta-train-time priors' true-simulator data (rollouts from broad starts, iLQR reaching motions),
all from its simulator and one seed, so a resumed meta-training run rebuilds them identically
instead of checkpointing them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from controllers.ilqr import ILQRConfig
from controllers.mujoco_dynamics import MujocoDynamics
from ml3_robotics.mbrl.loop import babble
from ml3_robotics.tasks.reach import ReachTask, plan_and_execute
from robots.arm import ArmConfig, ArmSim, sample_goals


def broad_starts(arm: ArmConfig, n: int, speed: float, rng: np.random.Generator) -> np.ndarray:
    """``(n, nx)`` start states away from the data's start: angles uniform within the joint
    limits (``[-pi, pi]`` for unlimited joints), velocities uniform in ``[-speed, speed]``."""
    lo = np.array([-np.pi if lim is None else lim[0] for lim in arm.joint_limits])
    hi = np.array([np.pi if lim is None else lim[1] for lim in arm.joint_limits])
    q = rng.uniform(lo, hi, size=(n, arm.n_links))
    qd = rng.uniform(-speed, speed, size=(n, arm.n_links))
    return np.concatenate([q, qd], axis=1)


def true_reaches(
    sim: ArmSim, n: int, horizon: int, rng: np.random.Generator, *, iters: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` reaching motions of the real arm: iLQR on the true model (MuJoCo's derivatives)
    from rest to goals drawn from ``rng`` (at least 0.3 of the reach from the base), executed
    in the simulator with the plan's feedback gains. Returns ``X (n, horizon+1, nx)``,
    ``U (n, horizon, nu)``: slow goal-directed motions, the states a planner needs a model of
    and babbling from rest rarely visits."""
    goals = sample_goals(sim.config, n, rng, min_radius=0.3)
    task = ReachTask(sim.config, goals, horizon)
    _, X, U = plan_and_execute(sim, MujocoDynamics(sim.mj_model), task, ILQRConfig(max_iters=iters))
    return X, U


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
        reach_X, reach_U: the real arm's reaching motions (:func:`true_reaches`), used at
            meta-train time only (``None`` unless collected).
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
    reach_X: np.ndarray | None = None
    reach_U: np.ndarray | None = None

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
        n_reach: int = 0,
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
        # Drawn last, so the babbling and broad-start data do not depend on n_reach.
        reach_X, reach_U = true_reaches(sim, n_reach, horizon, rng) if n_reach > 0 else (None, None)
        scale = torch.as_tensor(check_X.reshape(-1, arm.nx).std(0), dtype=torch.float32)
        return cls(arm, fit_X, fit_U, check_X, check_U, prior_X, prior_U, scale.clamp_min(1e-3),
                   reach_X, reach_U)  # fmt: skip
