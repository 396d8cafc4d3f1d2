"""Torch kinematics against both simulators, gradients, inverse kinematics, goal sampling."""

import numpy as np
import pytest
import torch

from robots.arm import (
    BACKENDS,
    ArmConfig,
    ArmSim,
    ee_velocity,
    forward_kinematics,
    inverse_kinematics,
    jacobian,
    joint_positions,
    kinetic_energy,
    load_arm_config,
    mass_matrix,
    sample_goals,
)

# MuJoCo reports positions in float64; PyBullet's getLinkState returns float32-rounded poses
# (measured error 1.6e-8 m), hence a looser bound for it.
FK_TOL = {"mujoco": 1e-12, "pybullet": 1e-7}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["reacher2", "reacher2_long", "arm4", "arm7_planar"])
def test_fk_matches_simulator(backend: str, name: str) -> None:
    cfg = load_arm_config(name).replace(joint_limits=None)
    Q = np.random.default_rng(1).uniform(-np.pi, np.pi, size=(30, cfg.n_links))
    fk = forward_kinematics(cfg, torch.as_tensor(Q)).numpy()
    with ArmSim(cfg, backend) as sim:
        ee = []
        for q in Q:
            sim.reset(np.concatenate([q, np.zeros(cfg.n_links)]))
            ee.append(sim.ee_position())
    np.testing.assert_allclose(np.array(ee), fk, rtol=0, atol=FK_TOL[backend])


def test_fk_batched_shapes_and_joint_positions() -> None:
    cfg = load_arm_config("arm3")
    q = torch.randn(4, 5, 3, dtype=torch.float64)
    p = forward_kinematics(cfg, q)
    assert p.shape == (4, 5, 2)
    pts = joint_positions(cfg, q)
    assert pts.shape == (4, 5, 4, 2)
    torch.testing.assert_close(pts[..., -1, :], p)
    seg = (pts[..., 1:, :] - pts[..., :-1, :]).norm(dim=-1)
    lengths = torch.tensor(cfg.link_lengths, dtype=torch.float64)
    torch.testing.assert_close(seg, lengths.expand(4, 5, 3))
    with pytest.raises(ValueError, match=r"q: expected shape \(\.\.\., 3\)"):
        forward_kinematics(cfg, torch.zeros(2, 2))


def test_fk_exact_values() -> None:
    cfg = ArmConfig()
    q = torch.tensor([[0.0, 0.0], [np.pi / 2, 0.0], [0.0, np.pi / 2]], dtype=torch.float64)
    expected = torch.tensor([[0.2, 0.0], [0.0, 0.2], [0.1, 0.1]], dtype=torch.float64)
    torch.testing.assert_close(forward_kinematics(cfg, q), expected, atol=1e-15, rtol=0)


def test_jacobian_and_gradcheck() -> None:
    cfg = load_arm_config("arm4")
    q = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q: forward_kinematics(cfg, q), (q,))
    J_auto = torch.func.vmap(torch.func.jacrev(lambda q: forward_kinematics(cfg, q)))(q.detach())
    torch.testing.assert_close(jacobian(cfg, q.detach()), J_auto)
    qdot = torch.randn(3, 4, dtype=torch.float64)
    # ee velocity equals the finite-difference derivative of FK along qdot
    h = 1e-6
    fd = (
        forward_kinematics(cfg, q.detach() + h * qdot)
        - forward_kinematics(cfg, q.detach() - h * qdot)
    ) / (2 * h)
    torch.testing.assert_close(ee_velocity(cfg, q.detach(), qdot), fd, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", ["reacher2", "reacher2_long", "arm3", "arm4", "arm7_planar"])
def test_ik_round_trip(name: str) -> None:
    cfg = load_arm_config(name)
    goals = torch.as_tensor(sample_goals(cfg, 40, seed=3))
    q = inverse_kinematics(cfg, goals)
    assert q.shape == (40, cfg.n_links)
    torch.testing.assert_close(forward_kinematics(cfg, q), goals, atol=1e-6, rtol=0)
    for i, lim in enumerate(cfg.joint_limits):
        if lim is not None:
            assert bool(((q[:, i] >= lim[0]) & (q[:, i] <= lim[1])).all())


def test_ik_two_link_respects_preference_and_limits() -> None:
    cfg = ArmConfig()
    target = torch.tensor([0.12, 0.05], dtype=torch.float64)
    q_up = inverse_kinematics(cfg, target)
    assert q_up[1] > 0
    q_down = inverse_kinematics(cfg, target, q0=torch.tensor([0.5, -1.0]))
    assert q_down[1] < 0
    torch.testing.assert_close(forward_kinematics(cfg, q_down), target, atol=1e-12, rtol=0)
    limited = cfg.replace(joint_limits=[None, (-3.0, 0.0)])
    assert inverse_kinematics(limited, target)[1] <= 0


def test_ik_reports_unreachable_targets() -> None:
    cfg = ArmConfig()
    targets = torch.tensor([[0.1, 0.0], [0.3, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"outside the reachable annulus.*\[1\]"):
        inverse_kinematics(cfg, targets)
    q = inverse_kinematics(cfg, targets, strict=False)  # best effort: stretched towards it
    torch.testing.assert_close(
        forward_kinematics(cfg, q[1]),
        torch.tensor([0.2, 0.0], dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    limited = cfg.replace(joint_limits=[(-0.1, 0.1), (-0.1, 0.1)])
    with pytest.raises(ValueError, match="not reached"):
        inverse_kinematics(limited, torch.tensor([0.0, 0.2], dtype=torch.float64))


def test_sample_goals_reachable_seeded_and_excluding() -> None:
    cfg = load_arm_config("arm3")
    a = sample_goals(cfg, 64, seed=0)
    np.testing.assert_array_equal(a, sample_goals(cfg, 64, seed=0))
    assert not np.array_equal(a, sample_goals(cfg, 64, seed=1))
    assert a.shape == (64, 2) and np.linalg.norm(a, axis=1).max() <= cfg.reach + 1e-12
    held_out = sample_goals(cfg, 16, seed=1, exclude=a, min_distance=0.02)
    d = np.linalg.norm(held_out[:, None] - a[None], axis=-1)
    assert d.min() >= 0.02
    ring = sample_goals(cfg, 32, seed=2, min_radius=0.5, max_radius=0.9)
    r = np.linalg.norm(ring, axis=1) / cfg.reach
    assert r.min() >= 0.5 and r.max() <= 0.9
    with pytest.raises(ValueError, match="found only"):
        sample_goals(cfg, 1000, seed=0, min_distance=0.2, max_tries=3)


def test_ee_velocity_matches_mujoco_site_velocity() -> None:
    import mujoco

    cfg = load_arm_config("arm4").replace(joint_limits=None)
    rng = np.random.default_rng(2)
    with ArmSim(cfg) as sim:
        m, d = sim.mj_model, sim.mj_data
        for _ in range(5):
            x = rng.normal(size=8)
            sim.reset(x)
            vel = np.zeros(6)  # [angular, linear] in the world frame
            mujoco.mj_objectVelocity(m, d, mujoco.mjtObj.mjOBJ_SITE, m.site("ee").id, vel, 0)
            v = ee_velocity(cfg, torch.as_tensor(x[:4]), torch.as_tensor(x[4:])).numpy()
            np.testing.assert_allclose(v, vel[[3, 5]], atol=1e-12)
            assert abs(vel[4]) < 1e-12  # no motion out of the plane


@pytest.mark.parametrize("name", ["reacher2", "reacher2_heavy", "arm3", "arm4", "arm7_planar"])
def test_mass_matrix_matches_mujoco(name: str) -> None:
    import mujoco

    cfg = load_arm_config(name)
    rng = np.random.default_rng(3)
    with ArmSim(cfg) as sim:
        m, d = sim.mj_model, sim.mj_data
        q = rng.uniform(-3.0, 3.0, (6, cfg.n_links))
        ours = mass_matrix(cfg, torch.as_tensor(q)).numpy()  # batched in one call
        for qi, mi in zip(q, ours, strict=True):
            d.qpos[:] = qi
            mujoco.mj_forward(m, d)
            full = np.zeros((m.nv, m.nv))
            mujoco.mj_fullM(m, d, full)
            np.testing.assert_allclose(mi, full, rtol=1e-12, atol=1e-15)
        qd = rng.normal(size=(6, cfg.n_links))
        energy = kinetic_energy(cfg, torch.as_tensor(q), torch.as_tensor(qd)).numpy()
        np.testing.assert_allclose(energy, 0.5 * np.einsum("bj,bjl,bl->b", qd, ours, qd))
        assert (energy > 0).all()


def test_sample_goals_dense_pool_kept_away_from_held_out_goals() -> None:
    cfg = load_arm_config("reacher2")
    held_out = sample_goals(cfg, 10, 1, min_distance=0.02, min_radius=0.3)
    pool = sample_goals(cfg, 256, 2, exclude=held_out, min_distance=0.02, min_spacing=0.0,
                        min_radius=0.3)  # fmt: skip
    gaps = np.linalg.norm(pool[:, None] - held_out[None], axis=-1)
    assert gaps.min() >= 0.02
    # 256 goals do not fit with 2 cm between each other too (found ~200).
    with pytest.raises(ValueError, match=r"min_spacing=0\.02"):
        sample_goals(cfg, 256, 2, exclude=held_out, min_distance=0.02, min_radius=0.3)
    with pytest.raises(ValueError, match="min_spacing"):
        sample_goals(cfg, 3, 2, min_spacing=-1.0)
