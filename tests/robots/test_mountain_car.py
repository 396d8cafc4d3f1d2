"""MountainCar: physics, gradients at the clamps, the Gymnasium env, rendering, bad input."""

from __future__ import annotations

import dataclasses
import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import robots  # noqa: F401  (registers the env ids)
from robots.mountain_car import (
    MountainCar,
    MountainCarEnv,
    MountainCarParams,
    render_trajectory,
)

F64 = torch.float64
P = MountainCarParams()


def hard_reference(x: np.ndarray, a: float, prm: MountainCarParams = P) -> np.ndarray:
    """Plain-Python transcription of the paper's hard-clamped step (the forward reference)."""
    p, v = float(x[0]), float(x[1])
    a = min(max(a, -prm.action_bound), prm.action_bound)
    v = v + (prm.gravity * prm.mass * math.cos(3.0 * p) + a / prm.mass - prm.friction * v) * prm.dt
    v = min(max(v, prm.v_min), prm.v_max)
    p = min(max(p + v * prm.dt, prm.p_min), prm.p_max)
    if p == prm.p_min and v < 0:
        v = 0.0
    return np.array([p, v])


def hard_reference_torch(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The same step with plain torch.clamp / torch.where (the paper's gradient-cutting ops)."""
    p, v = x[:, 0], x[:, 1]
    a = u[:, 0].clamp(-P.action_bound, P.action_bound)
    v = v + (P.gravity * P.mass * torch.cos(3.0 * p) + a / P.mass - P.friction * v) * P.dt
    v = v.clamp(P.v_min, P.v_max)
    p = (p + v * P.dt).clamp(P.p_min, P.p_max)
    v = torch.where((p == P.p_min) & (v < 0), torch.zeros_like(v), v)
    return torch.stack((p, v), -1)


def random_states(n: int, gen: torch.Generator) -> torch.Tensor:
    lo = torch.tensor([P.p_min, P.v_min], dtype=F64)
    hi = torch.tensor([P.p_max, P.v_max], dtype=F64)
    return lo + (hi - lo) * torch.rand(n, 2, generator=gen, dtype=F64)


# ---------------------------------------------------------------------------------------------
# physics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("clamp_grad", ["straight_through", "hard"])
def test_forward_equals_hard_clamp_reference_including_limits(clamp_grad: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x = random_states(2000, gen)
    # Actions up to 4x the bound, so the action clamp is active on about 3/4 of the rows.
    u = (torch.rand(2000, 1, generator=gen, dtype=F64) * 2 - 1) * 4 * P.action_bound
    # Hand-picked rows at the walls and speed limits.
    edge_x = torch.tensor(
        [
            [P.p_min, -1.5],
            [P.p_min, 0.0],
            [-1.15, -1.5],
            [P.p_max, 1.5],
            [0.45, 1.5],
            [-0.5, 1.5],
            [-0.5, -1.5],
        ],
        dtype=F64,
    )
    edge_u = torch.tensor([[-1.0], [-0.25], [-0.25], [1.0], [0.25], [10.0], [-10.0]], dtype=F64)
    x, u = torch.cat([x, edge_x]), torch.cat([u, edge_u])
    out = MountainCar(clamp_grad=clamp_grad).step(x, u).numpy()
    # Bit-exact against plain torch.clamp ops: the straight-through clamps must not perturb the
    # forward value (a naive ``x + (c - x).detach()`` would be off by rounding).
    np.testing.assert_array_equal(out, hard_reference_torch(x, u).numpy())
    # And against the scalar transcription; not bit-exact only because math.cos and the
    # vectorised torch.cos may differ in the last bit.
    ref = np.stack(
        [hard_reference(xi, float(ui[0])) for xi, ui in zip(x.numpy(), u.numpy(), strict=True)]
    )
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-14)
    # The limits are reached in this sample (otherwise the test would say nothing about them).
    assert (out[:, 0] == P.p_min).sum() > 10 and (out[:, 0] == P.p_max).sum() > 10
    assert (np.abs(out[:, 1]) == P.v_max).sum() > 10
    assert ((out[:, 0] == P.p_min) & (out[:, 1] == 0.0)).sum() > 10


def test_float32_matches_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    x = random_states(256, gen)
    u = (torch.rand(256, 1, generator=gen, dtype=F64) - 0.5) * 0.5
    mc = MountainCar()
    y64 = mc.step(x, u)
    y32 = mc.step(x.float(), u.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y64, atol=1e-5, rtol=0)


def test_rollout_matches_repeated_step() -> None:
    gen = torch.Generator().manual_seed(2)
    mc = MountainCar()
    x0 = random_states(8, gen)
    U = torch.rand(8, 20, 1, generator=gen, dtype=F64) - 0.5
    X = mc.rollout(x0, U)
    assert X.shape == (8, 21, 2)
    x = x0
    for t in range(20):
        x = mc.step(x, U[:, t])
        assert torch.equal(X[:, t + 1], x)


def test_satisfies_dynamics_protocol() -> None:
    mc = MountainCar()
    assert (mc.nx, mc.nu, mc.dt) == (2, 1, 0.1)
    try:
        from controllers.protocols import Dynamics
    except ImportError:  # pragma: no cover - controllers not installed
        pytest.skip("controllers package not importable")
    assert isinstance(mc, Dynamics)


def _policy_rollout(policy, steps: int = P.horizon) -> np.ndarray:
    mc = MountainCar()
    x = torch.tensor([P.start], dtype=F64)
    xs = [x]
    for _ in range(steps):
        x = mc.step(x, torch.tensor([[policy(float(x[0, 0]), float(x[0, 1]))]], dtype=F64))
        xs.append(x)
    return torch.cat(xs).numpy()


def test_full_throttle_fails_but_energy_pumping_succeeds() -> None:
    # Measured facts (see docs/mountain_car.md): gravity (|g m| = 1.96) beats full throttle
    # (a/m = 1.25) on the steep slope, so driving right only gets the car to p ~ -0.037.
    full = _policy_rollout(lambda p, v: P.action_bound)
    assert full[:, 0].max() < 0.0
    # Pumping energy (push along the velocity) solves it in 35 steps only when it first
    # swings LEFT (ties at v=0 go left): it reaches p=0.5 at step 30. Ties going right (the
    # car first rolls right, wasting the first swing) need 42 steps, past the horizon. This
    # is why the paper adds an intermediate goal on the left for the first 15 steps.
    left_first = _policy_rollout(lambda p, v: P.action_bound if v > 0 else -P.action_bound)
    hit = np.flatnonzero(left_first[:, 0] >= P.success_position)
    assert hit.size > 0 and hit[0] <= P.horizon
    assert left_first[:16, 0].min() < -0.9  # it passes near the intermediate goal (-0.947)
    right_first = _policy_rollout(lambda p, v: P.action_bound if v >= 0 else -P.action_bound)
    assert right_first[:, 0].max() < P.success_position
    longer = _policy_rollout(lambda p, v: P.action_bound if v >= 0 else -P.action_bound, 60)
    assert longer[:, 0].max() >= P.success_position  # it does get there, just too late


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def _interior_points() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[-0.55, 0.0], [-0.9, -0.4], [-0.2, 0.7], [0.1, -0.3]], dtype=F64)
    u = torch.tensor([[0.1], [-0.2], [0.05], [0.24]], dtype=F64)
    return x, u


@pytest.mark.parametrize("clamp_grad", ["straight_through", "hard"])
def test_gradcheck_step_away_from_clamps(clamp_grad: str) -> None:
    mc = MountainCar(clamp_grad=clamp_grad)
    x, u = _interior_points()
    assert torch.autograd.gradcheck(mc.step, (x.requires_grad_(), u.requires_grad_()))
    assert torch.autograd.gradgradcheck(mc.step, (x, u))


def test_gradcheck_rollout_away_from_clamps() -> None:
    mc = MountainCar()
    x0 = torch.tensor([[-0.55, 0.0], [-0.3, 0.2]], dtype=F64, requires_grad=True)
    U = (0.1 * torch.sin(torch.arange(12, dtype=F64))).reshape(1, 12, 1).repeat(2, 1, 1)
    U.requires_grad_()
    X = mc.rollout(x0.detach(), U.detach())
    assert (X[..., 0] > P.p_min + 0.05).all() and (X[..., 0] < P.p_max - 0.05).all()
    assert (X[..., 1].abs() < P.v_max - 0.05).all()
    assert torch.autograd.gradcheck(mc.rollout, (x0, U))


def test_straight_through_gradient_at_clamps() -> None:
    """Documented choice: at an active limit the backward pass is the identity of the clamp,
    i.e. the gradient equals the unconstrained dynamics' gradient; 'hard' cuts it to zero."""
    x = torch.tensor([[-0.5, 1.49], [-1.19, -1.0], [0.49, 1.0], [-0.5, 0.0]], dtype=F64)
    u = torch.tensor([[0.2], [-0.2], [0.2], [0.4]], dtype=F64)  # last row: action clamped
    st, hard = MountainCar(), MountainCar(clamp_grad="hard")
    y = st.step(x, u)
    # Limits active: v_max on row 0, left wall (p_min and v=0) on row 1, p_max on row 2.
    assert y[0, 1] == P.v_max and y[1, 0] == P.p_min and y[1, 1] == 0 and y[2, 0] == P.p_max

    def unclamped(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # no limits at all
        p, v = x[:, 0], x[:, 1]
        v = v + (P.gravity * P.mass * torch.cos(3 * p) + u[:, 0] / P.mass - P.friction * v) * P.dt
        return torch.stack((p + v * P.dt, v), -1)

    from torch.func import jacrev, vmap

    def per_row(model):
        return vmap(jacrev(lambda xi, ui: model(xi[None], ui[None])[0], argnums=(0, 1)))(x, u)

    jx_st, ju_st = per_row(lambda a, b: st.step(a, b, validate=False))
    jx_free, ju_free = per_row(unclamped)
    torch.testing.assert_close(jx_st, jx_free, rtol=0, atol=1e-15)
    torch.testing.assert_close(ju_st, ju_free, rtol=0, atol=1e-15)
    assert (ju_st.abs() > 1e-3).all()  # d(p', v')/da nonzero on every row, limits or not
    jx_h, ju_h = per_row(lambda a, b: hard.step(a, b, validate=False))
    assert ju_h[0, 1].abs().max() == 0  # hard: v' saturated -> no gradient to the action
    assert jx_h[1].abs().max() == 0  # hard: car stopped at the wall -> no gradient at all
    assert ju_h[3].abs().max() == 0  # hard: saturated action -> no gradient
    # Forward-mode (jacfwd) works through the custom function too.
    from torch.func import jacfwd

    jf = vmap(
        jacfwd(lambda xi, ui: st.step(xi[None], ui[None], validate=False)[0], argnums=(0, 1))
    )(x, u)
    torch.testing.assert_close(jf[0], jx_st, rtol=0, atol=1e-15)


def test_gradient_flows_through_wall_in_rollout() -> None:
    # A trajectory that hits the left wall: under 'hard' the first actions lose all influence
    # on the final state; straight-through keeps it.
    x0 = torch.tensor([[-1.0, -1.0]], dtype=F64)
    U = torch.full((1, 10, 1), -0.25, dtype=F64, requires_grad=True)
    X = MountainCar().rollout(x0, U)
    assert (X[0, :, 0] == P.p_min).any()
    (g_st,) = torch.autograd.grad(X[0, -1, 0], U)
    X_h = MountainCar(clamp_grad="hard").rollout(x0, U)
    torch.testing.assert_close(X_h, X, rtol=0, atol=0)
    (g_h,) = torch.autograd.grad(X_h[0, -1, 0], U)
    assert g_h[0, 0, 0] == 0 and g_st[0, 0, 0] != 0


# ---------------------------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------------------------
def test_check_env_passes() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(
            gymnasium.make("ml3r/MountainCar-v0", render_mode="rgb_array").unwrapped,
            skip_render_check=False,
        )
        check_env(MountainCarEnv(start_noise=(0.1, 0.1)).unwrapped, skip_render_check=True)


def test_env_step_equals_torch_step_over_random_trajectories() -> None:
    env = MountainCarEnv(start_noise=(0.6, 1.0))
    mc = MountainCar()
    rng = np.random.default_rng(3)
    walls = 0
    for episode in range(20):
        # Every other episode starts near the left wall moving left, so walls get hit.
        near_wall = {"start": (rng.uniform(-1.2, -0.9), rng.uniform(-1.5, -0.5))}
        obs, _ = env.reset(seed=episode, options=near_wall if episode % 2 else None)
        x = torch.tensor(obs[None], dtype=F64)
        for _ in range(P.horizon):
            a = rng.uniform(-0.4, 0.4, size=1)  # beyond the bound on purpose
            obs, reward, terminated, truncated, info = env.step(a)
            x = mc.step(x, torch.tensor(a[None], dtype=F64))
            np.testing.assert_allclose(obs, x[0].numpy(), rtol=0, atol=1e-9)
            assert reward == pytest.approx(-np.hypot(obs[0] - 0.5, obs[1] - 1.0375), abs=1e-12)
            walls += obs[0] == P.p_min
            if terminated or truncated:
                assert terminated == (obs[0] >= 0.5) and info["success"] == terminated
                break
        assert terminated or info["t"] == P.horizon
    assert walls > 0  # the sample includes wall hits


def test_env_truncates_at_horizon_and_terminates_at_goal() -> None:
    env = MountainCarEnv()
    env.reset(seed=0)
    for t in range(1, P.horizon + 1):
        _, _, terminated, truncated, _ = env.step(np.zeros(1))
        assert not terminated and truncated == (t == P.horizon)
    env.reset(options={"start": (0.45, 1.2)})
    _, _, terminated, truncated, info = env.step(np.array([0.25]))
    assert terminated and not truncated and info["success"]


def test_determinism_same_seed_same_trajectory() -> None:
    def run(seed: int) -> np.ndarray:
        env = MountainCarEnv(start_noise=(0.1, 0.05))
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [obs]
        for _ in range(P.horizon):
            obs, *_ = env.step(env.action_space.sample())
            out.append(obs)
        return np.stack(out)

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], c[0])  # start noise depends on the seed


def test_reset_start_option_and_default_start() -> None:
    env = MountainCarEnv()
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [-0.55, 0.0])
    obs, _ = env.reset(options={"start": (-1.0, 0.5)})
    np.testing.assert_array_equal(obs, [-1.0, 0.5])


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x_shape", "u_shape", "bad"),
    [
        ((4,), (4, 1), "x"),
        ((4, 3), (4, 1), "x"),
        ((4, 2), (4,), "u"),
        ((4, 2), (3, 1), "u"),
        ((4, 2), (4, 2), "u"),
    ],
)
def test_step_rejects_wrong_shapes(x_shape, u_shape, bad) -> None:
    with pytest.raises(ValueError, match=rf"^{bad}: expected shape .*got \("):
        MountainCar().step(torch.zeros(x_shape, dtype=F64), torch.zeros(u_shape, dtype=F64))


def test_step_and_rollout_reject_nan_and_bad_types() -> None:
    mc = MountainCar()
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"^u: expected finite values \(no NaN or inf\)"):
        mc.step(x, torch.tensor([[0.1], [math.nan]], dtype=F64))
    with pytest.raises(ValueError, match=r"^x: expected finite values"):
        mc.step(torch.tensor([[math.inf, 0.0], [0.0, 0.0]], dtype=F64), torch.zeros_like(x[:, :1]))
    with pytest.raises(ValueError, match=r"^U: expected finite values"):
        mc.rollout(x, torch.full((2, 5, 1), math.nan, dtype=F64))
    with pytest.raises(ValueError, match=r"^U: expected shape \(B=2, T, 1\), got \(3, 5, 1\)"):
        mc.rollout(x, torch.zeros(3, 5, 1, dtype=F64))
    with pytest.raises(TypeError, match=r"^u: expected a torch.Tensor"):
        mc.step(x, np.zeros((2, 1)))
    with pytest.raises(TypeError, match=r"^u: expected dtype torch.float64"):
        mc.step(x, torch.zeros(2, 1, dtype=torch.float32))
    with pytest.raises(TypeError, match=r"^x: expected a floating-point tensor"):
        mc.step(torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"clamp_grad: .*did you mean 'straight_through'"):
        MountainCar(clamp_grad="straight_thru")  # type: ignore[arg-type]


def test_env_rejects_bad_actions_and_options() -> None:
    env = MountainCarEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"^action: expected shape \(1,\), got \(2,\)"):
        env.step(np.zeros(2))
    with pytest.raises(ValueError, match=r"^action: expected a finite number, got"):
        env.step(np.array([np.nan]))
    with pytest.raises(ValueError, match=r"^action: expected a finite number, got"):
        env.step(np.array([np.inf]))
    with pytest.raises(ValueError, match=r"options\['start'\]: expected p in"):
        env.reset(options={"start": (2.0, 0.0)})
    with pytest.raises(ValueError, match=r"options: expected only the key 'start'"):
        env.reset(options={"strat": (0.0, 0.0)})
    with pytest.raises(ValueError, match=r"^render_mode: "):
        MountainCarEnv(render_mode="human")
    with pytest.raises(ValueError, match=r"^start_noise: "):
        MountainCarEnv(start_noise=(-0.1, 0.0))


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("dt", 0.0, r"^dt: expected a positive number, got 0.0"),
        ("dt", -0.1, r"^dt: expected a positive number, got -0.1"),
        ("mass", 0.0, r"^mass: expected a positive number"),
        ("action_bound", -1.0, r"^action_bound: expected a positive number"),
        ("friction", -0.3, r"^friction: expected a number >= 0"),
        ("p_min", 0.6, r"^p_min: expected p_min < p_max, got p_min=0.6 > p_max=0.5"),
        ("v_max", -2.0, r"^v_min: expected v_min < v_max, got v_min=-1.5 > v_max=-2.0"),
        ("gravity", math.nan, r"^gravity: expected a finite number, got nan"),
        ("start", (-2.0, 0.0), r"^start: expected p in \[-1.2, 0.5\]"),
        ("goal", (0.5,), r"^goal: expected a pair of numbers"),
        ("horizon", 0, r"^horizon: expected an int >= 1, got 0"),
        ("horizon", 3.5, r"^horizon: expected an int, got 3.5"),
        (
            "intermediate_goal_steps",
            40,
            r"^intermediate_goal_steps: expected an int in \[0, horizon",
        ),
        ("success_position", 0.9, r"^success_position: expected a value in \[p_min, p_max\]"),
    ],
)
def test_params_validation_names_the_field(field, value, pattern) -> None:
    with pytest.raises((ValueError, TypeError), match=pattern):
        dataclasses.replace(P, **{field: value})


def test_params_defaults_are_the_papers() -> None:
    assert (P.mass, P.gravity, P.friction, P.dt, P.action_bound) == (0.2, -9.8, 0.3, 0.1, 0.25)
    assert (P.v_min, P.v_max, P.p_min, P.p_max) == (-1.5, 1.5, -1.2, 0.5)
    assert P.start == (-0.55, 0.0) and P.goal == (0.5, 1.0375) and P.horizon == 35
    assert P.intermediate_goal == (-0.947, -0.0055) and P.intermediate_goal_steps == 15
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.dt = 0.2  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def test_env_render_gives_nonblank_frames_that_depend_on_state() -> None:
    env = MountainCarEnv(render_mode="rgb_array", width=200, height=150)
    env.reset(options={"start": (-0.55, 0.0)})
    a = env.render()
    env.reset(options={"start": (0.3, 0.0)})
    b = env.render()
    assert a.shape == (150, 200, 3) and a.dtype == np.uint8
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 10  # hill, car, flag, background, text
    assert np.abs(a.astype(int) - b.astype(int)).sum(-1).astype(bool).mean() > 0.002
    assert MountainCarEnv().render() is None  # render_mode=None renders nothing


def test_render_trajectory_frames_for_write_video(tmp_path) -> None:
    from robots.video import write_video

    X = MountainCar().rollout(
        torch.tensor([P.start], dtype=F64), torch.full((1, 5, 1), -0.25, dtype=F64)
    )[0]
    frames = render_trajectory(X, width=160, height=120)
    assert frames.shape == (6, 120, 160, 3) and frames.dtype == np.uint8
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(5))
    path = write_video(frames, tmp_path / "mc.gif", fps=10)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"^states: expected shape \(T>=1, 2\), got \(3,\)"):
        render_trajectory(np.zeros(3))
