"""Bad input to the iLQR gives ValueError/TypeError naming the argument."""

from __future__ import annotations

import pytest
import torch
from ctrl_lq_problems import LinearDynamics, random_lq

from controllers import ILQR, ILQRConfig, QuadraticCost


@pytest.fixture
def problem():
    A, B, c, Q, R, Qf, x0, goal = random_lq(0)
    return LinearDynamics(A, B, c), QuadraticCost(Q, R, Qf, goal), torch.tensor(x0)


def test_horizon_below_one(problem) -> None:
    dyn, cost, _ = problem
    for h in (0, -3):
        with pytest.raises(ValueError, match="horizon"):
            ILQR(dyn, cost, h)
    with pytest.raises(ValueError, match="horizon"):
        ILQR(dyn, cost, 2.5)


def test_lower_above_upper(problem) -> None:
    dyn, cost, _ = problem
    with pytest.raises(ValueError, match="lower"):
        ILQR(dyn, cost, 5, lower=[0.0, 1.0], upper=[1.0, 0.5])


def test_bound_shape(problem) -> None:
    dyn, cost, _ = problem
    with pytest.raises(ValueError, match=r"upper.*\(2,\)"):
        ILQR(dyn, cost, 5, upper=[1.0, 1.0, 1.0])


def test_nan_in_x0(problem) -> None:
    dyn, cost, x0 = problem
    x0 = x0.clone()
    x0[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x0.*rows \[1\]"):
        ILQR(dyn, cost, 5).solve(x0)


def test_x0_shape(problem) -> None:
    dyn, cost, x0 = problem
    with pytest.raises(ValueError, match=r"x0: expected shape \(B, 4\), got \(3, 3\)"):
        ILQR(dyn, cost, 5).solve(x0[:, :3])
    with pytest.raises(ValueError, match="x0"):
        ILQR(dyn, cost, 5).solve(x0[0])
    with pytest.raises(TypeError, match="x0"):
        ILQR(dyn, cost, 5).solve(x0.numpy())


def test_warm_start_shape(problem) -> None:
    dyn, cost, x0 = problem
    with pytest.raises(ValueError, match=r"U0: expected shape \(3, 5, 2\)"):
        ILQR(dyn, cost, 5).solve(x0, torch.zeros(3, 4, 2))


def test_per_problem_bounds_batch_mismatch(problem) -> None:
    dyn, cost, x0 = problem
    with pytest.raises(ValueError, match="lower: expected batch size 1 or 3"):
        ILQR(dyn, cost, 5, lower=-torch.ones(2, 2), upper=torch.ones(2, 2)).solve(x0)


def test_protocol_checks() -> None:
    with pytest.raises(TypeError, match="dynamics"):
        ILQR(object(), object(), 5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_iters": 0}, "max_iters"),
        ({"alphas": (0.5, 1.0)}, "alphas"),
        ({"mu_factor": 1.0}, "mu_factor"),
        ({"tol_cost": -1.0}, "tol_cost"),
        ({"tol_expected": float("nan")}, "tol_expected"),
        ({"jacobian_reuse_radius": -1e-9}, "jacobian_reuse_radius"),
        ({"jacobian_reuse_radius": float("inf")}, "jacobian_reuse_radius"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_config_validation(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        ILQRConfig(**kwargs)
