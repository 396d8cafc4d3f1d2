"""ArmConfig validation, YAML loading and the generated MJCF."""

import dataclasses

import mujoco
import numpy as np
import pytest

from robots.arm import ArmConfig, ArmSim, available_arm_configs, load_arm_config


def test_default_is_the_papers_reacher() -> None:
    c = ArmConfig()
    assert c.n_links == 2 and c.link_lengths == (0.1, 0.1)
    assert c.dt == 0.01 and c.gravity_compensation
    assert c == load_arm_config("reacher2")


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"n_links": 0}, "n_links", "0"),
        ({"n_links": 8}, "n_links", "8"),
        ({"link_lengths": [0.1, 0.0]}, "link_lengths[1]", "0.0"),
        ({"link_lengths": [-0.1, 0.1]}, "link_lengths[0]", "-0.1"),
        ({"link_masses": [0.1, 0.0]}, "link_masses[1]", "0.0"),
        ({"link_masses": -1.0}, "link_masses[0]", "-1.0"),
        ({"joint_damping": [0.01, -0.01]}, "joint_damping[1]", "-0.01"),
        ({"torque_limits": [0.0, 0.3]}, "torque_limits[0]", "0.0"),
        ({"link_lengths": [0.1, 0.1, 0.1]}, "link_lengths", "3"),
        ({"link_masses": [0.1]}, "link_masses", "1"),
        ({"joint_limits": [(-1.0, 1.0)] * 3}, "joint_limits", "3"),
        ({"joint_limits": [(1.0, -1.0), None]}, "joint_limits[0]", "1.0"),
        ({"dt": 0.0}, "dt", "0.0"),
        ({"dt": -0.01}, "dt", "-0.01"),
    ],
)
def test_bad_config_names_field_and_value(kwargs: dict, field: str, value: str) -> None:
    with pytest.raises(ValueError) as err:
        ArmConfig(**kwargs)
    assert field in str(err.value) and value in str(err.value)


def test_bad_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="n_links"):
        ArmConfig(n_links=2.0)
    with pytest.raises(TypeError, match="link_lengths"):
        ArmConfig(link_lengths="long")


def test_per_link_fields_broadcast_and_replace_revalidates() -> None:
    c = ArmConfig(n_links=3, link_lengths=0.2, joint_limits=(-1.0, 1.0), name="c3")
    assert c.link_lengths == (0.2, 0.2, 0.2) and c.link_masses == (0.1, 0.1, 0.1)
    assert c.joint_limits == ((-1.0, 1.0),) * 3
    assert c.reach == pytest.approx(0.6)
    with pytest.raises(ValueError, match="link_masses"):
        dataclasses.replace(c, link_masses=[0.1, 0.1])
    s = c.scaled(length=2.0, mass=0.5)
    assert s.link_lengths == (0.4,) * 3 and s.link_masses == (0.05,) * 3
    assert ArmConfig(**c.to_dict()) == c
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_links = 4  # type: ignore[misc]


def test_shipped_configs_load_by_name_and_path(tmp_path) -> None:
    names = available_arm_configs()
    assert {"reacher2", "arm3", "arm4"} <= set(names)
    for name in names:
        assert load_arm_config(name).name == name
    path = tmp_path / "mine.yaml"
    path.write_text("n_links: 3\nlink_lengths: [0.1, 0.1, 0.05]\n")
    c = load_arm_config(path)
    assert c.n_links == 3 and c.name == "mine" and c.link_lengths[2] == 0.05


def test_unknown_config_name_suggests_nearest() -> None:
    with pytest.raises(ValueError, match=r"'arm5'.*Did you mean 'arm4'"):
        load_arm_config("arm5")
    with pytest.raises(ValueError, match=r"'reacher'.*'reacher2'"):
        load_arm_config("reacher")


def test_unknown_yaml_field_suggests_nearest(tmp_path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("n_links: 2\nlink_length: [0.1, 0.1]\n")
    with pytest.raises(ValueError, match=r"'link_length'.*'link_lengths'"):
        load_arm_config(path)


@pytest.mark.parametrize("name", ["reacher2", "arm3", "arm7_planar"])
def test_mjcf_matches_config(name: str) -> None:
    c = load_arm_config(name)
    m = mujoco.MjModel.from_xml_string(c.to_mjcf())
    assert (m.nq, m.nv, m.nu) == (c.n_links,) * 3
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert m.opt.timestep == c.dt
    np.testing.assert_allclose(m.body_mass[1:], c.link_masses)
    np.testing.assert_allclose(m.dof_damping, c.joint_damping)
    np.testing.assert_allclose(m.actuator_ctrlrange[:, 1], c.torque_limits)
    for i, lim in enumerate(c.joint_limits):
        assert bool(m.jnt_limited[i]) == (lim is not None)
        if lim is not None:
            np.testing.assert_allclose(m.jnt_range[i], lim)


def test_mjcf_supports_transition_fd() -> None:
    sim = ArmSim("reacher2")
    m, d = sim.mj_model, sim.mj_data
    A = np.zeros((2 * m.nv, 2 * m.nv))
    B = np.zeros((2 * m.nv, m.nu))
    mujoco.mjd_transitionFD(m, d, 1e-6, True, A, B, None, None)
    # dq'/du = dt^2 M^-1 at rest with zero damping effect on q: B must be non-zero and finite.
    assert np.all(np.isfinite(A)) and np.abs(B).max() > 0
