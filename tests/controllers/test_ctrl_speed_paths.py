"""The iLQR's fast paths give the same numbers as the plain computations they replace."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from ctrl_models import TWO_LINK_MJCF

from controllers import ILQR, ILQRConfig, MujocoDynamics, ReachCost
from controllers.ilqr import _run_sources, _spd_solve

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


class _RowCounter:
    """Counts the rows MujocoDynamics sends to mjd_transitionFD."""

    def __init__(self, dyn: MujocoDynamics) -> None:
        self.rows = 0
        self._inner = dyn._transition_fd
        dyn._transition_fd = self  # type: ignore[method-assign]

    def __call__(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.rows += len(x)
        return self._inner(x, u)


def test_jacobians_of_repeated_rows_are_evaluated_once() -> None:
    model = mujoco.MjModel.from_xml_string(LIMITED_MJCF)
    dyn = MujocoDynamics(model)
    x, u = _rows(6, 7)
    # Runs of identical rows (a trajectory at rest), a row repeated but not adjacent, and a
    # row differing from its neighbour in one control bit only.
    idx = np.array([0, 0, 0, 1, 2, 2, 0, 3, 4, 5, 5])
    xr, ur = x[idx].copy(), u[idx].copy()
    ur[-1, 0] = np.nextafter(ur[-1, 0], np.inf)
    counter = _RowCounter(dyn)
    A, B = dyn.jacobians(torch.from_numpy(xr), torch.from_numpy(ur))
    assert counter.rows == 8  # one per run of identical adjacent rows
    A_ref, B_ref = _reference_transition_fd(dyn.model, xr, ur, dyn.eps, False)
    np.testing.assert_array_equal(A.numpy(), A_ref)
    np.testing.assert_array_equal(B.numpy(), B_ref)


def test_derivatives_reuse_jacobians_of_steps_within_the_radius() -> None:
    T = 10
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    rng = np.random.default_rng(8)
    solver = ILQR(dyn, ReachCost(rng.uniform(-1, 1, (2, 2)), T), T)
    r = solver._reuse_radius
    assert r == 0.01 * dyn.eps  # MujocoDynamics' one-sided FD: eps / 100
    X = rng.uniform(-1, 1, (2, T + 1, 4))
    U = rng.uniform(-1, 1, (2, T, 2))
    anchor = np.full((2, T, 6), np.inf)
    counter = _RowCounter(dyn)
    first = solver._derivatives(X, U, prev_Faug=None, anchor=anchor)
    assert counter.rows == 2 * T
    np.testing.assert_array_equal(anchor, np.concatenate([X[:, :T], U], -1))
    # Move every step: some by less than the radius (kept), some by more (re-evaluated).
    X2, U2 = X.copy(), U.copy()
    far = np.zeros((2, T), dtype=bool)
    far[0, [1, 4]] = True
    far[1, [0, 9]] = True
    X2[:, :T] += np.where(far[..., None], 3 * r, 0.5 * r)
    U2 += np.where(far[..., None], 0.0, -0.5 * r)
    counter.rows = 0
    second = solver._derivatives(X2, U2, prev_Faug=first[0], anchor=anchor)
    assert counter.rows == far.sum()
    fresh = solver._derivatives(X2, U2)
    np.testing.assert_array_equal(second[0][far], fresh[0][far])
    np.testing.assert_array_equal(second[0][~far], first[0][~far])
    # Anchors move only where Jacobians were re-evaluated, so drift cannot accumulate.
    Z2 = np.concatenate([X2[:, :T], U2], -1)
    np.testing.assert_array_equal(anchor[far], Z2[far])
    np.testing.assert_array_equal(anchor[~far], np.concatenate([X[:, :T], U], -1)[~far])


def test_jacobian_reuse_keeps_the_solution_and_saves_evaluations() -> None:
    T = 40
    goals = np.random.default_rng(9).uniform(-1.2, 1.2, (4, 2))
    x0 = torch.zeros(4, 4, dtype=torch.float64)
    out = {}
    for radius in (None, 0.0):
        dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
        counter = _RowCounter(dyn)
        cfg = ILQRConfig(jacobian_reuse_radius=radius)
        res = ILQR(dyn, ReachCost(goals, T, control_weight=1e-3), T, config=cfg).solve(x0)
        assert bool(res.converged.all())
        out[radius] = (res, counter.rows)
    (reuse, n_reuse), (exact, n_exact) = out[None], out[0.0]
    assert n_reuse < 0.8 * n_exact
    # Jacobians within eps/100 of their evaluation point are as accurate as the FD itself;
    # the converged costs agree to the solver's own tolerance.
    np.testing.assert_allclose(reuse.cost.numpy(), exact.cost.numpy(), rtol=1e-8)


def test_open_loop_rollout_of_identical_problems_equals_separate_rollouts() -> None:
    T = 15
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(LIMITED_MJCF))
    solver = ILQR(dyn, ReachCost(np.zeros((5, 2)), T), T, -1.0, 1.0)
    rng = np.random.default_rng(10)
    x0 = np.repeat(rng.uniform(-0.3, 0.3, (1, 4)), 5, axis=0)
    U = np.repeat(rng.uniform(-1, 1, (1, T, 2)), 5, axis=0)
    x0[3] += 0.1  # one problem differs
    with dyn.numpy_session():
        X, Uo = solver._rollout(x0, U)
        for b in range(5):
            Xb, Ub = solver._simulate(
                x0[b : b + 1], U[b : b + 1], None, None, None, 1.0, solver.lower, solver.upper
            )
            np.testing.assert_array_equal(X[b], Xb[0])
            np.testing.assert_array_equal(Uo[b], Ub[0])


def test_single_problem_backward_pass_equals_batched() -> None:
    T = 25
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    rng = np.random.default_rng(11)
    solver = ILQR(dyn, ReachCost(rng.uniform(-1, 1, (3, 2)), T), T)
    with dyn.numpy_session():
        X, U = solver._rollout(np.zeros((3, 4)), rng.uniform(-0.05, 0.05, (3, T, 2)))
    d = solver._derivatives(X, U)
    for mu in (np.zeros(3), np.array([1e-3, 0.0, 2.0])):
        batch = solver._backward(U, *d, mu, np.zeros_like(U))
        assert batch[0].all()
        for b in range(3):
            one = solver._backward(
                U[b : b + 1], *(a[b : b + 1] for a in d), mu[b : b + 1], np.zeros_like(U[:1])
            )
            for a1, ab in zip(one[:3], batch[:3], strict=True):  # ok, k, K bit for bit
                np.testing.assert_array_equal(a1[0], ab[b])
            for a1, ab in zip(one[3:], batch[3:], strict=True):  # sums in another order
                np.testing.assert_allclose(a1[0], ab[b], rtol=1e-13)


def test_crocoddyl_stopping_rule_stops_no_later_at_the_same_cost() -> None:
    T = 50
    goals = np.random.default_rng(12).uniform(-1.5, 1.5, (6, 2))
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    x0 = torch.zeros(6, 4, dtype=torch.float64)
    cost = ReachCost(goals, T, control_weight=1e-3)
    default = ILQR(dyn, cost, T).solve(x0)
    rule = ILQR(dyn, cost, T, config=ILQRConfig(tol_expected=1e-9)).solve(x0)
    assert bool(rule.converged.all()) and bool(default.converged.all())
    assert (rule.iterations <= default.iterations).all()
    assert (rule.iterations < default.iterations).any()  # the rule did trigger
    # Stopped when the model predicted < 1e-9 left to gain: the cost is that close.
    np.testing.assert_allclose(rule.cost.numpy(), default.cost.numpy(), rtol=0, atol=1e-8)


def test_run_sources_share_jacobians_only_within_the_radius() -> None:
    r = 1e-8
    rng = np.random.default_rng(13)
    T = 30
    Z = np.zeros((3, T, 6))
    Z[0] = rng.uniform(-1, 1, (T, 6))  # moving: every step its own source
    Z[1, 10:] = 0.5  # at rest from t = 10: one source for the rest
    Z[1, :10] = rng.uniform(-1, 1, (10, 6))
    Z[2] = 0.25 + 0.4 * r * np.arange(T)[:, None]  # slow drift: runs must split
    bi, ti = np.repeat(np.arange(3), T), np.tile(np.arange(T), 3)
    src = _run_sources(bi, ti, Z.reshape(-1, 6), r)
    flat = Z.reshape(-1, 6)
    assert (np.abs(flat - flat[src]) <= r).all()  # every step within r of its source
    assert (bi[src] == bi).all() and (ti[src] <= ti).all()
    n_src = [len(np.unique(src[bi == b])) for b in range(3)]
    assert n_src[0] == T
    assert n_src[1] == 11
    assert 1 < n_src[2] < T  # 0.4 r per step: a new source at least every 3 steps
    assert n_src[2] >= np.ceil(0.4 * (T - 1))  # total drift 11.6 r, no run spans more than r
    # Radius 0: only identical consecutive steps share.
    src0 = _run_sources(bi, ti, flat, 0.0)
    assert len(np.unique(src0)) == T + 11 + T
    # NaN is near nothing, not even itself: such steps are evaluated on their own.
    nan = flat.copy()
    nan[T + 15] = np.nan
    src_nan = _run_sources(bi, ti, nan, r)
    assert src_nan[T + 15] == T + 15 and src_nan[T + 16] == T + 16
    assert (src_nan[T + 11 : T + 15] == T + 10).all()


def test_derivatives_of_trajectories_at_rest_evaluate_one_step_per_problem() -> None:
    T = 20
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    solver = ILQR(dyn, ReachCost(np.zeros((2, 2)), T), T)
    X = np.zeros((2, T + 1, 4))
    X[1] = np.array([0.3, -0.2, 0.0, 0.0])
    U = np.zeros((2, T, 2))
    counter = _RowCounter(dyn)
    anchor = np.full((2, T, 6), np.inf)
    d = solver._derivatives(X, U, prev_Faug=None, anchor=anchor)
    assert counter.rows == 2
    np.testing.assert_array_equal(d[0], solver._derivatives(X, U)[0])
