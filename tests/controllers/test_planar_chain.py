"""PlanarChainDynamics: the closed form reproduces MuJoCo's Euler step; its Jacobians are exact."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from ctrl_models import TWO_LINK_MJCF
from test_ctrl_jacobians import TOL, central_fd

from controllers import ILQR, MujocoDynamics, PlanarChainDynamics, ReachCost
from robots.arm import load_arm_config

# Three links with what the closed form must get right beyond the bench arm: a joint turning
# about -z, a link pointing along y at q = 0 (angle offsets), a centre of mass behind its joint
# on the last link, armature, implicit damping, gear and gain, clipped controls, and gravity in
# the plane cancelled by gravcomp.
GENERAL_MJCF = """
<mujoco model="general_chain">
  <option timestep="0.005" integrator="Euler" gravity="0 -9.81 0"/>
  <worldbody>
    <body name="a" pos="0.3 0.2 0" gravcomp="1">
      <joint name="j1" type="hinge" axis="0 0 1" damping="0.02" armature="0.003"/>
      <inertial pos="0.06 0 0" mass="0.3" diaginertia="1e-4 2e-4 3e-4"/>
      <body name="b" pos="0.12 0 0" gravcomp="1">
        <joint name="j2" type="hinge" axis="0 0 -1" damping="0.01"/>
        <inertial pos="0 0.05 0" quat="0.7071068 0 0 0.7071068" mass="0.2"
                  diaginertia="1e-4 1.5e-4 2e-4"/>
        <body name="c" pos="0 0.1 0" gravcomp="1">
          <joint name="j3" type="hinge" axis="0 0 2" armature="0.001"/>
          <inertial pos="-0.02 0 0" mass="0.1" diaginertia="2e-5 2e-5 4e-5"/>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="j1" gear="2" ctrlrange="-0.5 0.5"/>
    <general joint="j2" gainprm="3" ctrllimited="false"/>
    <motor joint="j3" ctrlrange="-0.2 0.1"/>
  </actuator>
</mujoco>
"""

MODELS = {
    "two_link": TWO_LINK_MJCF,
    "reacher2": load_arm_config("reacher2").to_mjcf(),
    "general": GENERAL_MJCF,
}


def _model(name: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_string(MODELS[name])


def _states(n: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-np.pi, np.pi, (rows, n)), rng.uniform(-5, 5, (rows, n))], 1)
    u = rng.uniform(-0.6, 0.6, (rows, n))  # beyond some control ranges: clipping is exercised
    return x, u


@pytest.mark.parametrize("name", list(MODELS))
def test_trajectories_match_mujoco_euler_step(name: str) -> None:
    model = _model(name)
    chain, sim = PlanarChainDynamics.from_mujoco(model), MujocoDynamics(model)
    x, u = _states(model.nv, 16, seed=0)
    # One step agrees to round-off ...
    one = sim.step_numpy(x, u)
    np.testing.assert_allclose(chain.step_numpy(x, u), one, rtol=0, atol=1e-13 * np.abs(one).max())
    # ... and so do 50-step trajectories (round-off grows with the motion; this one is fast).
    xc, xm = x.copy(), x.copy()
    for t in range(50):
        ut = 0.1 * np.roll(u, t, axis=0)
        xc, xm = chain.step_numpy(xc, ut), sim.step_numpy(xm, ut)
    np.testing.assert_allclose(xc, xm, rtol=0, atol=1e-10 * np.abs(xm).max())
    assert np.abs(xm - x).max() > 0.1  # the arms moved


@pytest.mark.parametrize("name", list(MODELS))
def test_jacobians_are_exact(name: str) -> None:
    model = _model(name)
    chain = PlanarChainDynamics.from_mujoco(model)
    x, u = _states(model.nv, 8, seed=1)
    lo, hi = chain.ctrl_lower, chain.ctrl_upper
    u = np.clip(u, lo + 0.01, hi - 0.01)  # away from the clip kinks, where FD is one-sided
    A, B = chain.jacobians(torch.from_numpy(x), torch.from_numpy(u))
    Af, Bf = central_fd(chain.step_numpy, x, u, TOL)
    # Central differences with h = eps^(1/3) are accurate to ~eps^(2/3) ~ 4e-11 relative.
    np.testing.assert_allclose(A.numpy(), Af, rtol=0, atol=1e-8 * (1 + np.abs(Af).max()))
    np.testing.assert_allclose(B.numpy(), Bf, rtol=0, atol=1e-8 * (1 + np.abs(Bf).max()))
    # ... and agree with MuJoCo's own (centered) finite differences of the same model
    Am, Bm = MujocoDynamics(model, centered=True).jacobians(
        torch.from_numpy(x), torch.from_numpy(u)
    )
    np.testing.assert_allclose(A.numpy(), Am.numpy(), rtol=0, atol=1e-6 * (1 + Am.abs().max()))
    np.testing.assert_allclose(B.numpy(), Bm.numpy(), rtol=0, atol=1e-6 * (1 + Bm.abs().max()))
    assert np.abs(B.numpy()[:, model.nv :]).min() > 0  # every motor moves its joint


def test_control_jacobian_is_zero_outside_the_clip_range() -> None:
    chain = PlanarChainDynamics.from_mujoco(_model("reacher2"))  # |u| <= 0.2
    x = np.zeros((2, 4))
    u = np.array([[0.5, 0.1], [-0.2, -0.3]])
    _, B = chain.jacobians_numpy(x, u)
    assert (B[0, :, 0] == 0).all() and (B[0, :, 1] != 0).all()
    assert (B[1, :, 0] != 0).all() and (B[1, :, 1] == 0).all()  # on the bound: from inside


def test_ilqr_plans_with_the_closed_form_equal_plans_with_mujoco() -> None:
    model = mujoco.MjModel.from_xml_string(TWO_LINK_MJCF)
    goals = np.array([[0.41, -0.69], [-1.3, 1.1], [1.5, 0.2]])
    cost = ReachCost(goals, 100, control_weight=1e-3)
    x0 = torch.zeros(3, 4, dtype=torch.float64)
    closed = ILQR(PlanarChainDynamics.from_mujoco(model), cost, 100).solve(x0)
    sim = ILQR(MujocoDynamics(model), cost, 100).solve(x0)
    assert closed.converged.all() and sim.converged.all()
    np.testing.assert_allclose(closed.cost.numpy(), sim.cost.numpy(), rtol=1e-7)
    np.testing.assert_allclose(closed.controls.numpy(), sim.controls.numpy(), atol=1e-5)
    # The closed-form plan, executed in MuJoCo, ends where the plan says.
    X = closed.states.numpy()
    x = X[:, 0]
    for t in range(100):
        x = MujocoDynamics(model).step_numpy(x, closed.controls.numpy()[:, t])
    np.testing.assert_allclose(x, X[:, -1], atol=1e-9)


def test_diverged_rows_come_back_non_finite_without_warnings() -> None:
    chain = PlanarChainDynamics.from_mujoco(_model("two_link"))
    x = np.array([[0.1, 0.2, 0.0, 0.0], [0.3, 0.5, 1e160, -1e160]])
    with chain.numpy_session():
        y = chain.step_numpy(x, np.zeros((2, 2)))
    assert np.isfinite(y[0]).all() and not np.isfinite(y[1]).all()


def _edit(xml: str, old: str, new: str) -> mujoco.MjModel:
    assert old in xml
    return mujoco.MjModel.from_xml_string(xml.replace(old, new, 1))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: _edit(TWO_LINK_MJCF, 'integrator="Euler"', 'integrator="RK4"'), "Euler"),
        (
            lambda: _edit(TWO_LINK_MJCF, 'damping="0.0"/>', 'range="-1 1" limited="true"/>'),
            "joint limits",
        ),
        (lambda: _edit(TWO_LINK_MJCF, 'damping="0.0"/>', 'stiffness="1"/>'), "springs"),
        (
            lambda: _edit(
                TWO_LINK_MJCF.replace('contype="0" conaffinity="0"', 'contype="1" conaffinity="1"'),
                '<flag contact="disable"/>',
                "",
            ),
            "collide",
        ),
        (
            lambda: _edit(
                TWO_LINK_MJCF,
                'axis="0 0 1" damping="0.0"/>\n      <inertial',
                'axis="0 1 0"/>\n      <inertial',
            ),
            "parallel",
        ),
        (
            lambda: _edit(
                TWO_LINK_MJCF,
                'pos="0.05 0 0" mass="0.1" diaginertia="1e-5 1e-4 1e-4"/>\n      <geom',
                'pos="0.05 0.02 0" mass="0.1" diaginertia="1e-5 1e-4 1e-4"/>\n      <geom',
            ),
            "centre of mass on the line",
        ),
        (lambda: _edit(TWO_LINK_MJCF, 'gravity="0 0 -9.81"', 'gravity="0 -9.81 0"'), "gravity"),
        (
            lambda: _edit(TWO_LINK_MJCF, '<motor joint="j2" gear="1" ctrllimited="false"/>', ""),
            "one actuator per joint",
        ),
        (
            lambda: _edit(
                TWO_LINK_MJCF,
                '<motor joint="j2" gear="1"',
                '<motor joint="j2" gear="1" forcerange="-1 1"',
            ),
            "motor",
        ),
        (
            lambda: mujoco.MjModel.from_xml_string(
                "<mujoco><worldbody><body><freejoint/><geom size='0.1'/></body>"
                "</worldbody></mujoco>"
            ),
            "chain",
        ),
    ],
)
def test_from_mujoco_refuses_what_it_does_not_model(model, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        PlanarChainDynamics.from_mujoco(model())
    assert "MujocoDynamics" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"masses": [0.1, 0.0]}, "masses"),
        ({"inertias": [1e-4]}, "inertias"),
        ({"dt": 0.0}, "dt"),
        ({"damping": -1.0}, "damping"),
        ({"ctrl_lower": 1.0, "ctrl_upper": -1.0}, "ctrl_lower"),
        ({"axis_signs": [1, 0]}, "axis_signs"),
        ({"gear": [1.0, 0.0]}, "gear"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict, message: str) -> None:
    args = {
        "link_lengths": [0.1, 0.1],
        "masses": [0.1, 0.1],
        "com_offsets": [0.05, 0.05],
        "inertias": [1e-4, 1e-4],
        "dt": 0.01,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PlanarChainDynamics(**args)


def test_bad_input_shapes_are_refused() -> None:
    chain = PlanarChainDynamics.from_mujoco(_model("two_link"))
    with pytest.raises(ValueError, match="x: expected shape"):
        chain.step(torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="u: expected shape"):
        chain.jacobians(torch.zeros(3, 4), torch.zeros(2, 2))
