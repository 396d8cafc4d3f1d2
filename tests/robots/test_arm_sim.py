"""ArmSim on both backends: input checks, blow-ups, rollouts, gravity compensation, agreement."""

import numpy as np
import pytest

from robots.arm import BACKENDS, ArmConfig, ArmSim, SimulationError, load_arm_config

# Backend agreement tolerance (docs/arms.md): measured worst case over the shipped configs with
# joint limits removed, gravity compensation on and off, 5 random torque sequences of 200 steps
# each was 1.1e-12 rad and 1.7e-11 rad/s; enforced with a margin for floating-point reordering.
AGREE_Q_TOL = 1e-9  # rad
AGREE_QD_TOL = 1e-8  # rad/s


@pytest.fixture(scope="module", params=BACKENDS)
def sim(request):
    s = ArmSim("reacher2", backend=request.param)
    yield s
    s.close()


def test_unknown_backend_suggests_nearest() -> None:
    with pytest.raises(ValueError, match=r"'mujuco'.*Did you mean 'mujoco'"):
        ArmSim("reacher2", backend="mujuco")
    with pytest.raises(ValueError, match=r"'bullet'.*'pybullet'"):
        ArmSim("reacher2", backend="bullet")


def test_interface(sim: ArmSim) -> None:
    assert (sim.nx, sim.nu, sim.dt) == (4, 2, 0.01)
    x = sim.reset()
    assert x.dtype == np.float64 and np.all(x == 0)
    x = sim.step([0.1, -0.1])
    assert x.shape == (4,) and x[2] > 0 and x[3] < 0
    np.testing.assert_array_equal(sim.state, x)


@pytest.mark.parametrize(
    ("u", "match"),
    [
        ([0.1], r"u: expected shape \(2,\).*got \(1,\)"),
        ([[0.1, 0.1]], r"u: expected shape \(2,\).*got \(1, 2\)"),
        ([np.nan, 0.0], r"u: expected finite values.*NaN"),
        ([0.0, np.inf], r"u: expected finite values"),
    ],
)
def test_bad_action(sim: ArmSim, u, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sim.step(u)


def test_bad_rollout_inputs(sim: ArmSim) -> None:
    with pytest.raises(ValueError, match="x0"):
        sim.rollout(np.zeros((2, 3)), np.zeros((2, 5, 2)))
    with pytest.raises(ValueError, match="U"):
        sim.rollout(np.zeros((2, 4)), np.zeros((2, 5, 3)))
    with pytest.raises(ValueError, match="U: expected finite"):
        sim.rollout(np.zeros((1, 4)), np.full((1, 5, 2), np.nan))


def test_torques_are_clipped_to_limits(sim: ArmSim) -> None:
    sim.reset()
    a = sim.step([0.2, -0.2])
    sim.reset()
    b = sim.step([30.0, -30.0])
    np.testing.assert_array_equal(a, b)


def test_rollout_equals_step_loop_and_keeps_state(sim: ArmSim) -> None:
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 4))
    U = rng.uniform(-0.2, 0.2, size=(3, 20, 2))
    sim.reset(np.array([0.5, 0.5, 0.0, 0.0]))
    X = sim.rollout(x0, U)
    np.testing.assert_array_equal(sim.state, [0.5, 0.5, 0.0, 0.0])
    assert X.shape == (3, 21, 4)
    for b in range(3):
        sim.reset(x0[b])
        steps = np.array([sim.step(u) for u in U[b]])
        np.testing.assert_allclose(X[b, 1:], steps, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sim.transition(x0, U[:, 0]), X[:, 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gravity_compensation_holds_posture(backend: str) -> None:
    q0 = np.array([0.3, -1.1, 0.0, 0.0])  # a posture gravity would pull down
    with ArmSim(ArmConfig(gravity_compensation=True), backend) as held:
        held.reset(q0)
        X = held.rollout(q0[None], np.zeros((1, 100, 2)))
    np.testing.assert_allclose(X[0, -1], q0, atol=1e-12)
    with ArmSim(ArmConfig(gravity_compensation=False), backend) as falling:
        X = falling.rollout(q0[None], np.zeros((1, 100, 2)))
    assert np.abs(X[0, -1, :2] - q0[:2]).max() > 0.1  # without it, the arm falls


@pytest.mark.parametrize("backend", BACKENDS)
def test_blow_up_raises_simulation_error(backend: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo itself appends its warnings to ./MUJOCO_LOG.TXT
    # Undamped, light 7-link chain driven hard: semi-implicit Euler at dt = 0.05 diverges.
    cfg = ArmConfig(
        n_links=7, joint_damping=0.0, link_masses=0.01, torque_limits=50.0, dt=0.05, name="unstable"
    )
    U = np.random.default_rng(0).uniform(-50, 50, size=(1, 300, 7))
    with ArmSim(cfg, backend) as s, pytest.raises(SimulationError, match="blew up"):
        s.rollout(np.zeros((1, 14)), U)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_blow_up_raises(backend: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo itself appends its warnings to ./MUJOCO_LOG.TXT
    cfg = ArmConfig(
        n_links=7, joint_damping=0.0, link_masses=0.01, torque_limits=50.0, dt=0.05, name="unstable"
    )
    U = np.random.default_rng(0).uniform(-50, 50, size=(300, 7))
    with ArmSim(cfg, backend) as s, pytest.raises(SimulationError, match="blew up"):
        for u in U:
            s.step(u)


@pytest.mark.parametrize("name", ["reacher2", "reacher2_long", "arm3", "arm7_planar"])
@pytest.mark.parametrize("gravity_compensation", [True, False])
def test_backends_agree(name: str, gravity_compensation: bool) -> None:
    # Joint limits removed: at an active limit the backends differ by design (MuJoCo's soft
    # constraint vs PyBullet's hard one), see docs/arms.md.
    cfg = load_arm_config(name).replace(
        joint_limits=None, gravity_compensation=gravity_compensation
    )
    n = cfg.n_links
    U = np.random.default_rng(7).uniform(-1, 1, size=(2, 150, n)) * np.array(cfg.torque_limits)
    x0 = np.zeros((2, 2 * n))
    with ArmSim(cfg, "mujoco") as mj, ArmSim(cfg, "pybullet") as pb:
        Xm, Xp = mj.rollout(x0, U), pb.rollout(x0, U)
    assert np.abs(Xm[:, -1, n:]).max() > 1.0  # the arms really moved
    np.testing.assert_allclose(Xm[..., :n], Xp[..., :n], rtol=0, atol=AGREE_Q_TOL)
    np.testing.assert_allclose(Xm[..., n:], Xp[..., n:], rtol=0, atol=AGREE_QD_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_joint_limits_are_enforced(backend: str) -> None:
    cfg = ArmConfig(joint_limits=[None, (-0.5, 0.5)], name="limited")
    U = np.tile([0.0, 0.01], (1, 150, 1))  # push joint 2 gently into its upper limit
    with ArmSim(cfg, backend) as s:
        X = s.rollout(np.zeros((1, 4)), U)
    # MuJoCo's limit is a soft constraint (measured penetration 0.009 rad here, PyBullet 0.0006).
    assert X[0, :, 1].max() < 0.5 + 0.02
    assert X[0, -1, 1] > 0.49


def test_sim_dynamics_satisfies_the_controllers_protocol() -> None:
    import torch

    from controllers.protocols import Dynamics

    with ArmSim("arm3") as sim:
        dyn = sim.as_dynamics()
        assert isinstance(dyn, Dynamics) and (dyn.nx, dyn.nu, dyn.dt) == (6, 3, 0.01)
        x = torch.zeros(5, 6, dtype=torch.float64)
        u = torch.full((5, 3), 0.05, dtype=torch.float64)
        y = dyn.step(x, u)
        assert y.shape == (5, 6) and y.dtype == torch.float64
        np.testing.assert_allclose(y.numpy(), sim.transition(x.numpy(), u.numpy()))
