"""iLQR on linear-quadratic problems equals the exact dense KKT / box-QP solutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctrl_lq_problems import LinearDynamics, dense_box_solution, dense_solution, random_lq

from controllers import ILQR, ILQRConfig, QuadraticCost
from controllers.boxqp import box_qp

T = 12


def _setup(seed: int):
    A, B, c, Q, R, Qf, x0, goal = random_lq(seed)
    dyn = LinearDynamics(A, B, c)
    cost = QuadraticCost(Q, R, Qf, goal)
    exact = np.stack([dense_solution(A, B, c, Q, R, Qf, x0[i], goal[i], T) for i in range(len(x0))])
    return (A, B, c, Q, R, Qf, x0, goal), dyn, cost, exact


class HiddenCost:
    """The same cost without analytic derivatives, so iLQR uses torch.func."""

    def __init__(self, cost: QuadraticCost) -> None:
        self._c = cost

    def running(self, x, u, t):
        return self._c.running(x, u, t)

    def terminal(self, x):
        return self._c.terminal(x)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("analytic_cost", [True, False])
def test_first_iteration_equals_dense_kkt(seed: int, analytic_cost: bool) -> None:
    prob, dyn, cost, exact = _setup(seed)
    x0 = torch.tensor(prob[6])
    solver = ILQR(
        dyn, cost if analytic_cost else HiddenCost(cost), T, config=ILQRConfig(max_iters=1)
    )
    res = solver.solve(x0)
    np.testing.assert_allclose(res.controls.numpy(), exact, rtol=0, atol=1e-9)
    # states are the rollout of those controls
    x = x0
    for t in range(T):
        x = dyn.step(x, res.controls[:, t])
    np.testing.assert_allclose(res.states[:, -1].numpy(), x.numpy(), atol=1e-12)


def test_converges_after_exact_step_and_warm_start_is_fixed_point() -> None:
    prob, dyn, cost, exact = _setup(2)
    x0 = torch.tensor(prob[6])
    res = ILQR(dyn, cost, T).solve(x0)
    assert res.converged.all()
    assert (res.iterations <= 2).all()
    np.testing.assert_allclose(res.controls.numpy(), exact, atol=1e-9)
    # cost history is non-increasing and ends at the optimum
    h = res.cost_history.numpy()
    assert (np.diff(h, axis=1) <= 1e-12).all()
    # warm start from the optimum: converged at once, nothing changes
    res2 = ILQR(dyn, cost, T).solve(x0, torch.tensor(exact))
    assert res2.converged.all() and (res2.iterations == 1).all()
    np.testing.assert_allclose(res2.controls.numpy(), exact, atol=1e-12)


def test_feedback_gains_equal_riccati_gains() -> None:
    """K from iLQR equals the textbook discrete Riccati recursion (time-varying LQR)."""
    (A, B, _c, Q, R, Qf, x0, _goal), dyn, cost, _ = _setup(3)
    res = ILQR(dyn, cost, T, config=ILQRConfig(max_iters=1)).solve(torch.tensor(x0))
    P = Qf
    Ks = []
    for _t in range(T - 1, -1, -1):
        Kt = -np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        Ks.append(Kt)
        # the running state cost at t=0 is constant (x0 fixed) but still enters Q at t
        P = Q + A.T @ P @ A + A.T @ P @ B @ Kt
    Ks = np.stack(Ks[::-1])
    for b in range(len(x0)):
        np.testing.assert_allclose(res.K[b].numpy(), Ks, atol=1e-9)


def test_inactive_box_equals_unconstrained() -> None:
    prob, dyn, cost, exact = _setup(4)
    x0 = torch.tensor(prob[6])
    free = ILQR(dyn, cost, T, config=ILQRConfig(max_iters=1)).solve(x0)
    # The box QP constrains u_t + k_t (the step at dx = 0), so the first iteration is unchanged
    # when the bounds contain both the optimum and the unconstrained feedforward steps.
    bound = max(np.abs(exact).max(), np.abs(free.k.numpy()).max()) + 1e-3
    res = ILQR(dyn, cost, T, lower=-bound, upper=bound, config=ILQRConfig(max_iters=1)).solve(x0)
    np.testing.assert_allclose(res.controls.numpy(), exact, atol=1e-9)
    # Bounds that only just contain the optimum: still the unconstrained optimum at convergence.
    bound = 1.001 * np.abs(exact).max()
    res = ILQR(dyn, cost, T, lower=-bound, upper=bound).solve(x0)
    assert res.converged.all()
    np.testing.assert_allclose(res.controls.numpy(), exact, atol=1e-8)


@pytest.mark.parametrize("seed", [5, 6])
def test_active_box_equals_dense_box_qp(seed: int) -> None:
    prob, dyn, cost, exact = _setup(seed)
    A, B, c, Q, R, Qf, x0, goal = prob
    # bounds that cut the unconstrained optimum in several places, asymmetric
    lo = np.array([-0.4, -0.3]) * np.abs(exact).max()
    hi = np.array([0.3, 0.5]) * np.abs(exact).max()
    res = ILQR(
        dyn, cost, T, lower=lo, upper=hi, config=ILQRConfig(tol_grad=1e-12, tol_cost=1e-15)
    ).solve(torch.tensor(x0))
    U = res.controls.numpy()
    assert res.converged.all()
    assert (U >= lo).all() and (U <= hi).all()
    n_active = 0
    for i in range(len(x0)):
        ref, H, g = dense_box_solution(A, B, c, Q, R, Qf, x0[i], goal[i], T, lo, hi)
        # reference must itself satisfy the KKT conditions of the dense box QP
        grad = H @ ref.ravel() + g
        free = (ref.ravel() > np.tile(lo, T) + 1e-9) & (ref.ravel() < np.tile(hi, T) - 1e-9)
        assert np.abs(grad[free]).max() < 1e-8
        np.testing.assert_allclose(U[i], ref, atol=1e-7)
        # active constraints hold exactly (bit-equal to the bound), not approximately
        at_lo = np.isclose(ref, lo, atol=1e-9)
        at_hi = np.isclose(ref, hi, atol=1e-9)
        assert (U[i][at_lo] == np.broadcast_to(lo, U[i].shape)[at_lo]).all()
        assert (U[i][at_hi] == np.broadcast_to(hi, U[i].shape)[at_hi]).all()
        n_active += int(at_lo.sum() + at_hi.sum())
    assert n_active >= 3, "test problem must have active constraints"


def test_box_qp_matches_active_set_solver() -> None:
    import scipy.optimize

    rng = np.random.default_rng(0)
    nb, n = 20, 4
    M = rng.standard_normal((nb, n, n))
    H = M @ np.swapaxes(M, 1, 2) + 0.1 * np.eye(n)
    g = 3 * rng.standard_normal((nb, n))
    lo = -rng.uniform(0.1, 1.0, (nb, n))
    hi = rng.uniform(0.1, 1.0, (nb, n))
    res = box_qp(H, g, lo, hi)
    assert res.converged.all()
    for i in range(nb):
        L = np.linalg.cholesky(H[i])
        b = -np.linalg.solve(L, g[i])
        ref = scipy.optimize.lsq_linear(L.T, b, bounds=(lo[i], hi[i]), method="bvls", tol=1e-14).x
        np.testing.assert_allclose(res.x[i], ref, atol=1e-9)
        clamped = np.isclose(ref, lo[i]) | np.isclose(ref, hi[i])
        assert (~res.free[i] == clamped).all()


def test_per_problem_bounds_and_batch_independence() -> None:
    """Solving a batch equals solving each problem alone."""
    prob, dyn, cost, exact = _setup(7)
    _A, _B, _c, Q, R, Qf, x0, goal = prob
    lo = -0.3 * np.abs(exact).max() * np.ones((3, 2))
    lo[1] = -10.0  # problem 1 effectively unconstrained
    hi = -lo
    batch = ILQR(dyn, cost, T, lower=lo, upper=hi).solve(torch.tensor(x0))
    for i in range(3):
        single = ILQR(dyn, QuadraticCost(Q, R, Qf, goal[i]), T, lower=lo[i], upper=hi[i]).solve(
            torch.tensor(x0[i : i + 1])
        )
        np.testing.assert_allclose(batch.controls[i].numpy(), single.controls[0].numpy(), atol=1e-8)
    np.testing.assert_allclose(batch.controls[1].numpy(), exact[1], atol=1e-9)
