"""MountainCar (ML3 variant): box-constrained iLQR vs clip-after-solve, from zero controls.

Measured facts (benchmarks/bench_ilqr.py prints them too): with the task cost
||x_T - (0.5, 1.0375)||^2 and |a| <= 0.25, the box-QP iLQR reaches p >= 0.5 at horizons 35 and 100;
solving without bounds (on the same physics with the action limit lifted) and clipping the plan to
+-0.25 does not reach it at either horizon.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from controllers import ILQR, ILQRConfig, MountainCarCost

mc = pytest.importorskip("robots.mountain_car")

X0 = torch.tensor([[-0.55, 0.0]], dtype=torch.float64)
BOUND = 0.25


def _box(horizon: int):
    real = mc.MountainCar(mc.MountainCarParams(horizon=horizon))
    res = ILQR(
        real,
        MountainCarCost(),
        horizon,
        lower=-BOUND,
        upper=BOUND,
        config=ILQRConfig(max_iters=100),
    ).solve(X0)
    return real, res


def test_box_ilqr_reaches_goal_at_horizon_35() -> None:
    real, res = _box(35)
    assert res.converged.all()
    assert (res.controls.abs() <= BOUND).all()
    X = real.rollout(X0, res.controls)
    assert bool(real.solved(X).any())
    # the planned states are the real rollout of the planned controls
    torch.testing.assert_close(X, res.states)


def test_cost_matches_goal_and_derivatives() -> None:
    cost = MountainCarCost(control_weight=0.1, intermediate_weight=2.0)
    X = torch.randn(3, 21, 2, dtype=torch.float64)
    U = torch.randn(3, 20, 1, dtype=torch.float64)
    total = sum(cost.running(X[:, t], U[:, t], t) for t in range(20)) + cost.terminal(X[:, 20])
    torch.testing.assert_close(cost.trajectory(X, U), total)
    assert cost.terminal(torch.tensor([[0.5, 1.0375]])).item() == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("horizon", [35, 100])
def test_box_reaches_clip_after_solve_does_not(horizon: int) -> None:
    real, box = _box(horizon)
    assert bool(real.solved(real.rollout(X0, box.controls)).any())
    free = mc.MountainCar(mc.MountainCarParams(horizon=horizon, action_bound=1e6))
    unc = ILQR(free, MountainCarCost(), horizon, config=ILQRConfig(max_iters=300)).solve(X0)
    # the unconstrained plan reaches the goal only with forces far beyond the limit
    assert unc.states[0, -1, 0].item() >= 0.5 - 1e-3
    assert unc.controls.abs().max().item() > 10 * BOUND
    Xc = real.rollout(X0, unc.controls.clamp(-BOUND, BOUND))
    assert not bool(real.solved(Xc).any())
    assert np.isfinite(Xc.numpy()).all()
