"""MPC over iLQR on the MuJoCo 2-link arm, run against a separate 'real' simulator."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from ctrl_lq_problems import LinearDynamics, dense_solution, random_lq
from ctrl_models import TWO_LINK_MJCF

from controllers import ILQR, MPC, ILQRConfig, MujocoDynamics, QuadraticCost, ReachCost

GOAL = np.array([[0.6, -0.8], [-1.0, 0.5]])


def _real_sim(mass_scale: float):
    """The 'real' robot: MuJoCo with heavier links than the planner's model."""
    xml = TWO_LINK_MJCF.replace('mass="0.1"', f'mass="{0.1 * mass_scale}"')
    return MujocoDynamics(mujoco.MjModel.from_xml_string(xml)).step


def test_mpc_reaches_goal_under_model_mismatch_where_open_loop_misses() -> None:
    H, steps = 20, 40
    model = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    cost = ReachCost(GOAL, H, control_weight=1e-3)
    planner = ILQR(model, cost, H, config=ILQRConfig(max_iters=20))
    real = _real_sim(1.5)
    x0 = torch.zeros(2, 4, dtype=torch.float64)
    run = MPC(planner, H).run(real, x0, steps)
    assert run.states.shape == (2, steps + 1, 4) and run.controls.shape == (2, steps, 2)
    err_mpc = np.abs(run.states[:, -1, :2].numpy() - GOAL).max()
    # open loop: execute the first plan (planned on the wrong model) for H steps, then zero torque
    plan = ILQR(model, cost, H).solve(x0)
    x = x0
    for t in range(steps):
        x = real(x, plan.controls[:, t] if t < H else torch.zeros(2, 2, dtype=torch.float64))
    err_open = np.abs(x[:, :2].numpy() - GOAL).max()
    assert err_mpc < 0.02, err_mpc  # 0.02 rad ~ 2 mm at the tip of 0.1 m links
    assert err_open > 5 * err_mpc, (err_open, err_mpc)


def test_mpc_first_action_is_exact_lq_solution_and_warm_start_is_shifted_plan() -> None:
    A, B, c, Q, R, Qf, x0, goal = random_lq(0)
    T = 10
    dyn = LinearDynamics(A, B, c)
    mpc = MPC(ILQR(dyn, QuadraticCost(Q, R, Qf, goal), T), T, shift_fill="zero")
    x = torch.tensor(x0)
    u = mpc.act(x)
    exact = np.stack([dense_solution(A, B, c, Q, R, Qf, x0[i], goal[i], T) for i in range(3)])
    np.testing.assert_allclose(u.numpy(), exact[:, 0], atol=1e-9)
    plan = mpc.last_plan
    np.testing.assert_array_equal(mpc._warm[:, :-1].numpy(), plan.controls[:, 1:].numpy())
    assert (mpc._warm[:, -1] == 0).all()


def test_mpc_bad_input() -> None:
    A, B, c, Q, R, Qf, x0, goal = random_lq(0)
    planner = ILQR(LinearDynamics(A, B, c), QuadraticCost(Q, R, Qf, goal), 10)
    with pytest.raises(ValueError, match="horizon"):
        MPC(planner, 5)
    with pytest.raises(ValueError, match="shift_fill"):
        MPC(planner, 10, shift_fill="repeat")
    with pytest.raises(TypeError, match="planner"):
        MPC(object(), 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        MPC(planner).run(lambda x, u: x, torch.tensor(x0), 0)
