"""Jacobians (torch.func and MuJoCo mjd_transitionFD) match central finite differences."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from ctrl_models import TWO_LINK_MJCF, Pendulum

from controllers import MujocoDynamics, QuadraticCost, ReachCost
from controllers.derivatives import cost_derivatives, dynamics_jacobians

# Central differences with h = eps^(1/3) have error O(h^2) + O(eps/h) = O(eps^(2/3)); the
# acceptance tolerance is about eps^(1/3) relative.
EPS = np.finfo(np.float64).eps
TOL = EPS ** (1 / 3)


def central_fd(step, x: np.ndarray, u: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    nx, nu = x.shape[1], u.shape[1]
    A = np.empty((len(x), nx, nx))
    B = np.empty((len(x), nx, nu))
    for j in range(nx):
        e = np.zeros(nx)
        e[j] = h
        A[:, :, j] = (step(x + e, u) - step(x - e, u)) / (2 * h)
    for j in range(nu):
        e = np.zeros(nu)
        e[j] = h
        B[:, :, j] = (step(x, u + e) - step(x, u - e)) / (2 * h)
    return A, B


def _np_step(dyn):
    def f(x, u):
        return dyn.step(torch.from_numpy(x), torch.from_numpy(u)).numpy()

    return f


def test_torch_func_jacobians_match_fd() -> None:
    dyn = Pendulum()
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (7, 2))
    u = rng.uniform(-2, 2, (7, 1))
    A, B = dynamics_jacobians(dyn, torch.from_numpy(x), torch.from_numpy(u))
    Af, Bf = central_fd(_np_step(dyn), x, u, TOL)
    np.testing.assert_allclose(A.numpy(), Af, atol=TOL * 1e-2)
    np.testing.assert_allclose(B.numpy(), Bf, atol=TOL * 1e-2)
    # and the batch trick equals per-row autograd jacobians
    for i in range(3):
        ja = torch.autograd.functional.jacobian(
            lambda xx, uu: dyn.step(xx[None], uu[None])[0],
            (torch.from_numpy(x[i]), torch.from_numpy(u[i])),
        )
        np.testing.assert_allclose(A[i].numpy(), ja[0].numpy(), atol=1e-14)
        np.testing.assert_allclose(B[i].numpy(), ja[1].numpy(), atol=1e-14)


@pytest.mark.parametrize("centered", [False, True])
def test_mujoco_jacobians_match_fd(centered: bool) -> None:
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF), centered=centered)
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(-np.pi, np.pi, (5, 2)), rng.uniform(-3, 3, (5, 2))], 1)
    u = rng.uniform(-1, 1, (5, 2))
    A, B = dyn.jacobians(torch.from_numpy(x), torch.from_numpy(u))
    Af, Bf = central_fd(_np_step(dyn), x, u, TOL)
    scale_a = 1 + np.abs(Af).max()
    scale_b = 1 + np.abs(Bf).max()
    np.testing.assert_allclose(A.numpy(), Af, atol=TOL * scale_a)
    np.testing.assert_allclose(B.numpy(), Bf, atol=TOL * scale_b)
    # B is not trivially zero: torques accelerate the links
    assert np.abs(B.numpy()[:, 2:]).min() > 1.0


def test_mujoco_step_matches_mj_step_and_threads_agree() -> None:
    model = mujoco.MjModel.from_xml_string(TWO_LINK_MJCF)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (9, 4))
    u = rng.uniform(-1, 1, (9, 2))
    y1 = MujocoDynamics(model).step(torch.from_numpy(x), torch.from_numpy(u)).numpy()
    d = mujoco.MjData(model)
    for i in range(9):
        d.qpos[:], d.qvel[:], d.ctrl[:] = x[i, :2], x[i, 2:], u[i]
        mujoco.mj_step(model, d)
        np.testing.assert_array_equal(y1[i], np.concatenate([d.qpos, d.qvel]))
    dyn2 = MujocoDynamics(model, n_threads=2)
    y2 = dyn2.step(torch.from_numpy(x), torch.from_numpy(u)).numpy()
    np.testing.assert_array_equal(y1, y2)
    A1, _ = MujocoDynamics(model).jacobians(torch.from_numpy(x), torch.from_numpy(u))
    A2, _ = dyn2.jacobians(torch.from_numpy(x), torch.from_numpy(u))
    np.testing.assert_array_equal(A1.numpy(), A2.numpy())


def test_mujoco_rejects_rk4_and_bad_input() -> None:
    with pytest.raises(ValueError, match="RK4"):
        MujocoDynamics(
            mujoco.MjModel.from_xml_string(
                TWO_LINK_MJCF.replace('integrator="Euler"', 'integrator="RK4"')
            )
        )
    with pytest.raises(TypeError, match="model"):
        MujocoDynamics("not a model")  # type: ignore[arg-type]
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    with pytest.raises(ValueError, match=r"x: expected shape \(B, 4\)"):
        dyn.step(torch.zeros(3, 3), torch.zeros(3, 2))
    lo, hi = dyn.control_bounds
    assert lo.tolist() == [-np.inf, -np.inf] and hi.tolist() == [np.inf, np.inf]
    limited = TWO_LINK_MJCF.replace('ctrllimited="false"', 'ctrllimited="true" ctrlrange="-1 2"')
    lo, hi = MujocoDynamics(mujoco.MjModel.from_xml_string(limited)).control_bounds
    assert lo.tolist() == [-1.0, -1.0] and hi.tolist() == [2.0, 2.0]


@pytest.mark.parametrize("norm", ["squared", "smooth"])
def test_reach_cost_analytic_derivatives_equal_torch_func(norm: str) -> None:
    """Analytic cost derivatives equal the generic torch.func path (and so do trajectory() and
    its numpy twin)."""
    rng = np.random.default_rng(3)
    T = 6
    cost = ReachCost(rng.uniform(-1, 1, (4, 2)), T, norm=norm, control_weight=1e-2)
    X = torch.from_numpy(rng.uniform(-1, 1, (4, T + 1, 4)))
    U = torch.from_numpy(rng.uniform(-1, 1, (4, T, 2)))

    class Hidden:
        running = staticmethod(cost.running)
        terminal = staticmethod(cost.terminal)

    a = cost.quadratize(X, U)
    g = cost_derivatives(Hidden(), X, U)
    for name in ("lx", "lu", "lxx", "luu", "lux"):
        np.testing.assert_allclose(getattr(a, name), getattr(g, name), atol=1e-12, err_msg=name)
    total = sum(cost.running(X[:, t], U[:, t], t) for t in range(T)) + cost.terminal(X[:, T])
    np.testing.assert_allclose(cost.trajectory(X, U).numpy(), total.numpy(), rtol=1e-13)
    np.testing.assert_allclose(
        cost.trajectory_numpy(X.numpy(), U.numpy()), total.numpy(), rtol=1e-13
    )


def test_quadratic_cost_trajectory_matches_protocol_sum() -> None:
    rng = np.random.default_rng(4)
    cost = QuadraticCost([1.0, 2.0], [[0.5]], [3.0, 1.0], rng.standard_normal((3, 2)))
    X = torch.from_numpy(rng.standard_normal((3, 5, 2)))
    U = torch.from_numpy(rng.standard_normal((3, 4, 1)))
    total = sum(cost.running(X[:, t], U[:, t], t) for t in range(4)) + cost.terminal(X[:, 4])
    np.testing.assert_allclose(cost.trajectory(X, U).numpy(), total.numpy(), rtol=1e-13)


def test_mujoco_divergence_is_reported_not_silently_reset() -> None:
    """MuJoCo resets diverged data to qpos0; the adapter must flag those rows instead."""
    from controllers import SimulationDiverged

    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    x = np.array(
        [[0.3, 0.2, 0.0, 0.0], [0.3, 0.2, 0.0, 0.0], [np.nan, 0, 0, 0], [0.3, 0.2, 1e11, 0.0]]
    )
    u = np.array([[0.01, 0.0], [1e12, 0.0], [0.0, 0.0], [0.0, 0.0]])
    out = dyn.step_numpy(x, u)
    assert np.isfinite(out[0]).all()
    assert np.isnan(out[1:]).all()
    with pytest.raises(SimulationDiverged, match=r"rows \[1, 2, 3\]") as info:
        dyn.step(torch.from_numpy(x), torch.from_numpy(u))
    assert np.isnan(info.value.states[1]).all()
    from robots.arm import SimulationError

    assert isinstance(info.value, SimulationError)  # one except for every simulator blow-up


def test_mujoco_batched_path_equals_loop_path_and_flags_divergence() -> None:
    """Large batches go through mujoco.rollout, small ones through a loop: same numbers."""
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (40, 4))
    u = rng.uniform(-1, 1, (40, 2))
    x[7, 2] = 1e11  # diverges
    big = dyn.step_numpy(x, u)
    small = np.concatenate([dyn.step_numpy(x[i : i + 4], u[i : i + 4]) for i in range(0, 40, 4)])
    np.testing.assert_array_equal(np.isnan(big), np.isnan(small))
    assert np.isnan(big[7]).all() and np.isfinite(np.delete(big, 7, axis=0)).all()
    np.testing.assert_allclose(np.delete(big, 7, 0), np.delete(small, 7, 0), rtol=0, atol=1e-15)


class _Sin(torch.autograd.Function):
    """A custom autograd op without a vmap rule: torch.func.jacrev cannot batch its backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class _PendulumCustomOp(Pendulum):
    def step(self, x, u):
        th, om = x[:, 0], x[:, 1]
        om2 = om + self.dt * (-9.81 * _Sin.apply(th) - 0.1 * om + u[:, 0])
        return torch.stack([th + self.dt * om2, om2], dim=-1)


def test_jacobians_fall_back_for_non_vmappable_dynamics() -> None:
    """Dynamics jacrev cannot handle still get exact Jacobians (loop of autograd.grad)."""
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.uniform(-1, 1, (5, 2)))
    u = torch.from_numpy(rng.uniform(-1, 1, (5, 1)))
    with pytest.raises(RuntimeError):
        torch.func.jacrev(lambda a: _PendulumCustomOp().step(a, u).sum(0))(x)
    A, B = dynamics_jacobians(_PendulumCustomOp(), x, u)
    A0, B0 = dynamics_jacobians(Pendulum(), x, u)
    torch.testing.assert_close(A, A0, rtol=0, atol=1e-14)
    torch.testing.assert_close(B, B0, rtol=0, atol=1e-14)


def _fk_two_link(q: torch.Tensor) -> torch.Tensor:
    """Tip of the test MJCF arm (0.1 m links, hinges about z)."""
    a, b = q[:, 0], q[:, 0] + q[:, 1]
    return 0.1 * torch.stack([torch.cos(a) + torch.cos(b), torch.sin(a) + torch.sin(b)], -1)


def test_task_space_cost_gauss_newton_derivatives() -> None:
    from controllers import TaskSpaceReachCost

    rng = np.random.default_rng(7)
    T = 5
    cost = TaskSpaceReachCost(
        _fk_two_link, rng.uniform(-0.1, 0.1, (3, 2)), 2, T, control_weight=1e-2
    )
    X = torch.from_numpy(rng.uniform(-1, 1, (3, T + 1, 4)))
    U = torch.from_numpy(rng.uniform(-1, 1, (3, T, 2)))

    class Hidden:
        running = staticmethod(cost.running)
        terminal = staticmethod(cost.terminal)

    a = cost.quadratize(X, U)
    g = cost_derivatives(Hidden(), X, U)
    # gradients are exact; the Hessian drops only the fk curvature term (Gauss-Newton)
    for name in ("lx", "lu", "luu", "lux"):
        np.testing.assert_allclose(getattr(a, name), getattr(g, name), atol=1e-12, err_msg=name)
    assert np.all(np.linalg.eigvalsh(a.lxx) >= -1e-12)
    total = sum(cost.running(X[:, t], U[:, t], t) for t in range(T)) + cost.terminal(X[:, T])
    np.testing.assert_allclose(cost.trajectory(X, U).numpy(), total.numpy(), rtol=1e-13)


def test_ilqr_reaches_task_space_goal() -> None:
    from controllers import ILQR, TaskSpaceReachCost

    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    goal = np.array([[0.12, 0.1], [-0.05, 0.15]])
    res = ILQR(dyn, TaskSpaceReachCost(_fk_two_link, goal, 2, 50, control_weight=1e-3), 50).solve(
        torch.zeros(2, 4, dtype=torch.float64)
    )
    tip = _fk_two_link(res.states[:, -1, :2]).numpy()
    assert res.converged.all()
    assert np.abs(tip - goal).max() < 1e-3  # 1 mm
    # and the MuJoCo site agrees with the torch fk (the fk is the right one for this model)
    m = dyn.model
    d = mujoco.MjData(m)
    d.qpos[:] = res.states[0, -1, :2].numpy()
    mujoco.mj_forward(m, d)
    np.testing.assert_allclose(d.site_xpos[0][:2], tip[0], atol=1e-12)


def test_mujoco_adapter_writes_no_log_file(tmp_path, monkeypatch) -> None:
    """MuJoCo would write MUJOCO_LOG.TXT into the cwd on a divergence; library code must not."""
    monkeypatch.chdir(tmp_path)
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    out = dyn.step_numpy(np.array([[0.0, 0.0, 1e11, 0.0]]), np.zeros((1, 2)))
    assert np.isnan(out).all()
    dyn.jacobians(torch.tensor([[0.0, 0.0, 1e11, 0.0]]), torch.zeros(1, 2, dtype=torch.float64))
    assert list(tmp_path.iterdir()) == []
    assert mujoco.MjLogConfig.get().logto_file  # restored afterwards
