"""The 7-DoF KUKA iiwa (SpatialArmSim) on MuJoCo and PyBullet."""

import mujoco
import numpy as np
import pytest

from robots.arm import BACKENDS, RenderingUnavailableError
from robots.arm.spatial import SpatialArmSim

# Measured worst case over 3 seeds x 2 rollouts of 150 steps with torques up to +-10 N*m (joint
# limits never reached): 1.9e-14 rad, 2.2e-13 rad/s. Enforced with the planar arms' margins.
AGREE_Q_TOL, AGREE_QD_TOL = 1e-9, 1e-8


@pytest.fixture(scope="module")
def sims():
    s = {b: SpatialArmSim(b) for b in BACKENDS}
    yield s
    for sim in s.values():
        sim.close()


def test_interface_and_urdf_numbers(sims) -> None:
    for sim in sims.values():
        assert (sim.nx, sim.nu, sim.dt) == (14, 7, 0.01)
        np.testing.assert_allclose(sim.joint_damping, 0.5)
    m = sims["mujoco"].mj_model
    np.testing.assert_allclose(m.dof_damping, sims["mujoco"].joint_damping)
    np.testing.assert_allclose(m.jnt_range, sims["mujoco"].joint_limits)
    np.testing.assert_allclose(m.body_mass[1:], [4, 4, 3, 2.7, 1.7, 1.8, 0.3])
    A, B = np.zeros((14, 14)), np.zeros((14, 7))
    mujoco.mjd_transitionFD(m, sims["mujoco"].mj_data, 1e-6, True, A, B, None, None)
    assert np.all(np.isfinite(A)) and np.abs(B).max() > 0


def test_backends_agree(sims) -> None:
    rng = np.random.default_rng(0)
    x0 = np.zeros((2, 14))
    x0[:, :7] = rng.uniform(-0.5, 0.5, size=(2, 7))
    U = rng.uniform(-10, 10, size=(2, 150, 7))
    Xm, Xp = sims["mujoco"].rollout(x0, U), sims["pybullet"].rollout(x0, U)
    lim = sims["mujoco"].joint_limits
    assert (np.minimum(Xm[..., :7] - lim[:, 0], lim[:, 1] - Xm[..., :7]) > 0.1).all()
    assert np.abs(Xm[:, -1, 7:]).max() > 1.0
    np.testing.assert_allclose(Xm[..., :7], Xp[..., :7], rtol=0, atol=AGREE_Q_TOL)
    np.testing.assert_allclose(Xm[..., 7:], Xp[..., 7:], rtol=0, atol=AGREE_QD_TOL)


def test_end_effector_agrees(sims) -> None:
    Q = np.random.default_rng(1).uniform(-1.5, 1.5, size=(10, 7))
    ee = {b: sim.ee_positions(Q) for b, sim in sims.items()}
    np.testing.assert_allclose(ee["mujoco"], ee["pybullet"], rtol=0, atol=1e-6)  # PyBullet: f32


def test_gravity_compensation_holds(sims) -> None:
    x0 = np.r_[0.3, 0.8, 0.0, -1.0, 0.0, 0.5, 0.0, np.zeros(7)]
    for sim in sims.values():
        X = sim.rollout(x0[None], np.zeros((1, 50, 7)))
        np.testing.assert_allclose(X[0, -1], x0, atol=1e-12)


def test_render_not_blank(sims) -> None:
    for b in ("pybullet", "mujoco"):  # PyBullet first: it renders anywhere
        try:
            img = sims[b].render(96, 72)
        except RenderingUnavailableError as e:
            pytest.skip(str(e))
        assert img.shape == (72, 96, 3) and img.std() > 5.0
