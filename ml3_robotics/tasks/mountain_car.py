"""The ML3 MountainCar as a policy-search task: the paper's policy, problems, task losses and
meta-train objectives (intermediate goal, energy prior), success, and iLQR's view of the car.

Used by ``experiments/mountain_car.py`` and the studies in ``scripts/``; the car itself is
:mod:`robots.mountain_car`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ml3_robotics.core.inner import Params
from ml3_robotics.core.policy_search import BatchedMLP, PolicyTrace
from ml3_robotics.core.task_losses import (
    ControlTask,
    ExtraTerm,
    FinalDistance,
    IntermediateGoal,
    MetaTrainObjective,
    PhysicsPrior,
    Rollout,
    TaskTerm,
    TrajectoryDistance,
)
from robots.mountain_car import MountainCar, MountainCarParams

FEATURE_GROUPS = ("next_state", "action", "goal_error", "final_goal_distance", "time")
# Rough ranges of each feature, so M_phi sees O(1) inputs.
FEATURE_SCALE = (0.5, 0.5, 0.25, 0.5, 0.5, 1.0, 1.0)
# power_feature=true: M_phi also reads p u and v u (next state times action; v u is the power
# the engine puts in, the quantity pumping needs).
POWER_GROUP, POWER_SCALE = "next_state_action", (0.125, 0.125)


def make_policy(
    hidden: int, bound: float, mode: str = "clamp", input_scale: tuple[float, float] | None = None
) -> BatchedMLP:
    """The paper's policy: linear 2 -> hidden -> 1 without biases or activation.

    ``mode="clamp"``: the raw output, clamped by the car's step (straight-through gradient, so
    saturated policies still get a gradient); ``"tanh"``: ``bound * tanh`` of the output.
    """
    return BatchedMLP(
        (2, hidden, 1),
        bias=False,
        activation="none",
        bound=bound if mode == "tanh" else None,
        input_scale=input_scale,
    )


def make_task(starts: Tensor) -> ControlTask:
    prm = MountainCarParams()
    return ControlTask(starts, torch.tensor(prm.goal, dtype=starts.dtype), prm.horizon)


def task_term(name: str) -> TaskTerm:
    """Task loss: ``"trajectory"``: ``||X_{1..T} - goal||_F`` (paper code); ``||x_T - goal||``."""
    return TrajectoryDistance() if name == "trajectory" else FinalDistance()


def mechanical_energy(states: Tensor, prm: MountainCarParams) -> Tensor:
    """``(...)`` energy per unit mass ``v^2 / 2 + U(p)`` of states ``(..., 2)``: the car's
    acceleration ``g m cos(3p)`` is ``-U'(p)`` with ``U(p) = -(g m / 3) sin(3p)``."""
    p, v = states[..., 0], states[..., 1]
    return 0.5 * v**2 - prm.gravity * prm.mass / 3.0 * torch.sin(3.0 * p)


def energy_shortfall(rollout: Rollout) -> Tensor:
    """``(B,)`` how far the trajectory's peak energy stays below the flag's potential, relative
    to the climb from the nominal start: 0 once the car has the energy to reach the flag. The
    physics prior of extra=energy (friction aside, pumping energy in is what solves the task)."""
    prm = MountainCarParams()
    flag = mechanical_energy(torch.tensor([prm.p_max, 0.0], dtype=rollout.states.dtype), prm)
    start = mechanical_energy(torch.tensor(prm.start, dtype=rollout.states.dtype), prm)
    peak = mechanical_energy(rollout.states, prm).max(dim=-1).values
    return torch.relu(flag - peak) / (flag - start)


def objective_for(
    extra: str,
    goal_weight: float,
    task_loss: str,
    objective: str = "added",
    energy_weight: float = 1.0,
) -> MetaTrainObjective:
    """The meta-train objective (see ``MountainCarConfig.objective``). The intermediate goal
    (-0.947, -0.0055) is extra information: it enters only here, never M_phi's inputs."""
    prm = MountainCarParams()
    n = prm.intermediate_goal_steps
    if objective == "paper":
        if extra != "goal":
            return MetaTrainObjective(TrajectoryDistance(first=0))
        waypoint = IntermediateGoal(
            state=prm.intermediate_goal, steps=n, first=0, weight=goal_weight, reduction="norm"
        )
        return MetaTrainObjective(TrajectoryDistance(first=n), extras=(waypoint,))
    extras: tuple[ExtraTerm, ...] = ()
    if extra == "goal":
        extras = (
            IntermediateGoal(
                state=prm.intermediate_goal, steps=n, weight=goal_weight, reduction="norm"
            ),
        )
    elif extra == "energy":
        extras = (PhysicsPrior(fn=energy_shortfall, weight=energy_weight, label="energy"),)
    return MetaTrainObjective(task_term(task_loss), extras=extras)


def success(states: Tensor, car: MountainCar) -> Tensor:
    """``(...)`` bool: reached ``p >= 0.5`` at any step, for states ``(..., T+1, 2)``."""
    return car.solved(states).any(-1)


def success_rates(trace: PolicyTrace, car: MountainCar) -> np.ndarray:
    """``(K+1,)`` success rate after k steps."""
    return success(trace.states, car).double().mean(-1).numpy()


def first_success(trace: PolicyTrace, car: MountainCar) -> list[int | None]:
    """Per start: the first step k after which the policy reaches the flag (None: never)."""
    reached = success(trace.states, car).numpy()  # (K+1, N)
    return [int(np.argmax(col)) if col.any() else None for col in reached.T]


def final_distance(trace: PolicyTrace) -> np.ndarray:
    goal = torch.tensor(MountainCarParams().goal, dtype=trace.states.dtype)
    return (trace.states[:, :, -1] - goal).norm(dim=-1).mean(-1).numpy()


class CarForILQR:
    """The car as iLQR's ``Dynamics``: per-step validation off (iLQR differentiates ``step``
    under torch.func transforms, where data-dependent checks are not allowed)."""

    def __init__(self, car: MountainCar) -> None:
        self.car, self.nx, self.nu, self.dt = car, car.nx, car.nu, car.dt

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        return self.car.step(x, u, validate=False)


def ilqr_inits(n: int, horizon: int, bound: float, seed: int) -> dict[str, Tensor]:
    """iLQR warm starts ``(n, T, 1)``: zeros, full throttle either way, and a seeded random one."""
    g = torch.Generator().manual_seed(30_000 + seed)
    return {
        "zeros": torch.zeros(n, horizon, 1, dtype=torch.float64),
        "plus": torch.full((n, horizon, 1), bound, dtype=torch.float64),
        "minus": torch.full((n, horizon, 1), -bound, dtype=torch.float64),
        "random": (torch.rand(n, horizon, 1, generator=g, dtype=torch.float64) * 2 - 1) * bound,
    }


def gain_params(policy: BatchedMLP, gains: Tensor) -> Params:
    """Policy parameters realising the gains ``u = bound(a p + b v)`` for ``gains (N, 2)``."""
    n, hidden = gains.shape[0], policy.widths[1]
    w0 = torch.zeros(n, hidden, 2)
    w0[:, 0] = gains
    w1 = torch.zeros(n, 1, hidden)
    w1[:, 0, 0] = 1.0
    return {"w0": w0, "w1": w1}
