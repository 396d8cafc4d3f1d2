"""The iLQR's fast paths give the same numbers as the plain computations they replace."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from ctrl_models import TWO_LINK_MJCF

from controllers import ILQR, MujocoDynamics, ReachCost
from controllers.ilqr import _spd_solve

# Joint limits (constraint solver, so the warm start matters) and control limits (mjd_transitionFD
# differences one-sided at a bound): the cases where per-row state setting could go wrong.
LIMITED_MJCF = TWO_LINK_MJCF.replace(
    'damping="0.0"/>', 'damping="0.0" limited="true" range="-0.5 0.5"/>'
).replace('ctrllimited="false"', 'ctrllimited="true" ctrlrange="-1 1"')


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-0.7, 0.7, (n, 2)), rng.uniform(-3, 3, (n, 2))], 1)
    u = rng.uniform(-1.5, 1.5, (n, 2))
    u[::3, 0] = 1.0  # exactly on the upper bound
    u[1::3, 1] = -1.0  # exactly on the lower bound
    return x, u


def _reference_transition_fd(
    model: mujoco.MjModel, x: np.ndarray, u: np.ndarray, eps: float, centered: bool
) -> tuple[np.ndarray, np.ndarray]:
    """mjd_transitionFD on a fresh MjData per row, state set attribute by attribute."""
    nx, nu = x.shape[1], u.shape[1]
    A = np.empty((len(x), nx, nx))
    B = np.empty((len(x), nx, nu))
    for i in range(len(x)):
        d = mujoco.MjData(model)
        d.qpos[:], d.qvel[:], d.ctrl[:] = x[i, :2], x[i, 2:], u[i]
        mujoco.mjd_transitionFD(model, d, eps, centered, A[i], B[i], None, None)
    return A, B


@pytest.mark.parametrize("centered", [False, True])
def test_jacobians_equal_mjd_transitionfd_on_fresh_data(centered: bool) -> None:
    model = mujoco.MjModel.from_xml_string(LIMITED_MJCF)
    dyn = MujocoDynamics(model, centered=centered)
    x, u = _rows(24, 0)
    A_ref, B_ref = _reference_transition_fd(dyn.model, x, u, dyn.eps, centered)
    # Joint limits are hit and the control columns are one-sided at a bound: not a trivial case.
    assert (np.abs(x[:, :2]) > 0.5).any()
    A, B = dyn.jacobians(torch.from_numpy(x), torch.from_numpy(u))
    # One mj_setState per row must leave MjData exactly as the attribute writes do.
    np.testing.assert_array_equal(A.numpy(), A_ref)
    np.testing.assert_array_equal(B.numpy(), B_ref)
    # No dependence on call history (warm start and time reset per row), rows in any order.
    perm = np.random.default_rng(1).permutation(len(x))
    A2, B2 = dyn.jacobians(torch.from_numpy(x[perm]), torch.from_numpy(u[perm]))
    np.testing.assert_array_equal(A2.numpy(), A_ref[perm])
    np.testing.assert_array_equal(B2.numpy(), B_ref[perm])


def test_small_and_rollout_step_paths_equal_mj_step_with_constraints() -> None:
    model = mujoco.MjModel.from_xml_string(LIMITED_MJCF)
    dyn = MujocoDynamics(model)
    x, u = _rows(40, 2)
    ref = np.empty_like(x)
    for i in range(len(x)):
        d = mujoco.MjData(model)
        d.qpos[:], d.qvel[:], d.ctrl[:] = x[i, :2], x[i, 2:], u[i]
        mujoco.mj_step(model, d)
        ref[i] = np.concatenate([d.qpos, d.qvel])
    small = np.concatenate([dyn.step_numpy(x[i : i + 1], u[i : i + 1]) for i in range(len(x))])
    big = dyn.step_numpy(x, u)  # 40 rows: the mujoco.rollout path
    np.testing.assert_array_equal(small, ref)
    np.testing.assert_allclose(big, ref, rtol=0, atol=1e-12)


def test_step_numpy_fast_check_keeps_invalid_rows_nan() -> None:
    """The one-call overflow check must still flag NaN input, huge controls and divergence."""
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    good = np.array([[0.3, 0.2, 0.0, 0.0]])
    for x, u in [
        (good, np.array([[1e12, 0.0]])),
        (np.array([[np.inf, 0.0, 0.0, 0.0]]), np.zeros((1, 2))),
        (np.array([[0.3, 0.2, 1e11, 0.0]]), np.zeros((1, 2))),
        (np.array([[0.3, 0.2, 1e200, 0.0]]), np.zeros((1, 2))),  # squares overflow to inf
    ]:
        assert np.isnan(dyn.step_numpy(x, u)).all()
    # Large but valid input: the step stays finite and equals mj_step.
    x, u = np.array([[0.3, 0.2, 1e4, -1e4]]), np.array([[1e5, -1e5]])
    out = dyn.step_numpy(x, u)
    d = mujoco.MjData(dyn.model)
    d.qpos[:], d.qvel[:], d.ctrl[:] = x[0, :2], x[0, 2:], u[0]
    mujoco.mj_step(dyn.model, d)
    np.testing.assert_array_equal(out[0], np.concatenate([d.qpos, d.qvel]))


def test_numpy_session_silences_once_and_restores() -> None:
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    cfg = mujoco.MjLogConfig.get()
    before = (cfg.logto_file, cfg.logto_console)
    with dyn.numpy_session():
        inner = mujoco.MjLogConfig.get()
        assert (inner.logto_file, inner.logto_console) == (False, False)
        with dyn.numpy_session():  # nested: still silent, and not restored on the inner exit
            dyn.step_numpy(np.zeros((1, 4)), np.zeros((1, 2)))
        inner = mujoco.MjLogConfig.get()
        assert (inner.logto_file, inner.logto_console) == (False, False)
    after = mujoco.MjLogConfig.get()
    assert (after.logto_file, after.logto_console) == before


class _CountingDynamics:
    """MujocoDynamics with a count of the Jacobian rows evaluated."""

    def __init__(self, dyn: MujocoDynamics) -> None:
        self.inner, self.nx, self.nu, self.rows = dyn, dyn.nx, dyn.nu, 0
        self.step, self.step_numpy = dyn.step, dyn.step_numpy

    def jacobians(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.rows += len(x)
        return self.inner.jacobians(x, u)


def test_derivatives_reuse_only_skips_rows_given_previous() -> None:
    T = 12
    dyn = _CountingDynamics(MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF)))
    rng = np.random.default_rng(3)
    solver = ILQR(dyn, ReachCost(rng.uniform(-1, 1, (3, 2)), T), T)
    X = rng.uniform(-1, 1, (3, T + 1, 4))
    U = rng.uniform(-1, 1, (3, T, 2))
    full = solver._derivatives(X, U)
    assert dyn.rows == 3 * T
    rows = np.array([True, False, True])
    part = solver._derivatives(X, U, rows=rows, prev_Faug=full[0])
    assert dyn.rows == 3 * T + 2 * T
    for a, b in zip(full, part, strict=True):
        np.testing.assert_array_equal(a, b)


def test_spd_solve_single_problem_path_equals_batched_path() -> None:
    rng = np.random.default_rng(4)
    n_bad = 0
    for _ in range(200):
        G = rng.standard_normal((1, 2, 2))
        H = G @ G.transpose(0, 2, 1) - rng.uniform(0, 0.5) * np.eye(2)
        R = rng.standard_normal((1, 2, 5))
        bad1, X1 = _spd_solve(H, R)
        # Same matrix as row 1 of a batch of 2 goes through the vectorised closed form.
        badb, Xb = _spd_solve(np.concatenate([np.eye(2)[None], H]), np.concatenate([R, R]))
        pd = bool(np.linalg.eigvalsh(H[0]).min() > 0)
        assert (bad1 is None) == pd
        assert (badb is None or not badb[1]) == pd
        if pd:
            np.testing.assert_array_equal(X1, Xb[1:])
            np.testing.assert_allclose(X1[0], -np.linalg.solve(H[0], R[0]), rtol=1e-9, atol=1e-12)
        else:
            n_bad += 1
    assert 0 < n_bad < 200  # both branches exercised


def test_batch_with_per_problem_bounds_equals_problems_solved_alone() -> None:
    """Finished problems drop out of the backward pass; the rest (with their own bounds) must
    get exactly what they get when solved one at a time."""
    T = 30
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    rng = np.random.default_rng(5)
    goals = rng.uniform(-1, 1, (4, 2))
    lower = -rng.uniform(0.02, 0.2, (4, 2))
    upper = rng.uniform(0.02, 0.2, (4, 2))
    batch = ILQR(dyn, ReachCost(goals, T), T, lower, upper).solve(torch.zeros(4, 4))
    assert len(set(batch.iterations.tolist())) > 1  # problems finish at different iterations
    U = batch.controls.numpy()
    assert ((U == lower[:, None]) | (U == upper[:, None])).any((1, 2)).all()  # bounds active
    for b in range(4):
        alone = ILQR(dyn, ReachCost(goals[b : b + 1], T), T, lower[b], upper[b]).solve(
            torch.zeros(1, 4)
        )
        assert int(alone.iterations[0]) == int(batch.iterations[b])
        np.testing.assert_allclose(alone.controls[0], batch.controls[b], rtol=0, atol=1e-12)
        np.testing.assert_allclose(alone.K[0], batch.K[b], rtol=1e-10, atol=1e-10)
        assert (batch.controls[b] >= torch.from_numpy(lower[b]) - 1e-15).all()
        assert (batch.controls[b] <= torch.from_numpy(upper[b]) + 1e-15).all()
