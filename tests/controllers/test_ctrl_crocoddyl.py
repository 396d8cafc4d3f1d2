"""Cross-check against Crocoddyl (optional dependency) on the same 2-link reach, T=100, dt=0.01."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch
from ctrl_models import TWO_LINK_MJCF

from controllers import ILQR, MujocoDynamics, PlanarChainDynamics, ReachCost

pytestmark = pytest.mark.crocoddyl
crocoddyl = pytest.importorskip("crocoddyl")
pytest.importorskip("pinocchio")

from ctrl_crocoddyl import reach_problem, solve_fddp, solve_goals_in_place  # noqa: E402

T, DT = 100, 0.01
GOALS = np.array([[0.41, -0.69], [-1.3, 1.1], [1.5, 0.2]])


def test_problems_are_identical() -> None:
    """Same rollout and same cost for the same controls, so comparing optima is meaningful."""
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    assert dyn.dt == DT
    rng = np.random.default_rng(0)
    U = rng.uniform(-0.05, 0.05, (T, 2))
    problem = reach_problem(GOALS[0], T, DT)
    xs = problem.rollout(list(U))
    X = [np.zeros(4)]
    for t in range(T):
        X.append(dyn.step(torch.tensor(X[-1][None]), torch.tensor(U[t][None]))[0].numpy())
    X = np.array(X)
    np.testing.assert_allclose(np.array(xs), X, atol=1e-10)
    ours = ReachCost(GOALS[0], T).trajectory(torch.tensor(X[None]), torch.tensor(U[None]))
    np.testing.assert_allclose(problem.calc(xs, list(U)), ours.item(), rtol=1e-12)


@pytest.mark.parametrize("dynamics", [MujocoDynamics, PlanarChainDynamics.from_mujoco])
@pytest.mark.parametrize("control_weight", [1e-6, 1e-3])
def test_final_cost_matches_crocoddyl_fddp(control_weight: float, dynamics) -> None:
    dyn = dynamics(mujoco.MjModel.from_xml_string(TWO_LINK_MJCF))
    cost = ReachCost(GOALS, T, control_weight=control_weight)
    res = ILQR(dyn, cost, T).solve(torch.zeros(len(GOALS), 4, dtype=torch.float64))
    assert res.converged.all()
    for i, g in enumerate(GOALS):
        solver, ok = solve_fddp(reach_problem(g, T, DT, control_weight=control_weight), T)
        assert ok
        rel = abs(res.cost[i].item() - solver.cost) / solver.cost
        assert rel < 1e-3, (i, res.cost[i].item(), solver.cost)


def test_goals_changed_in_place_give_the_rebuilt_problems_solutions() -> None:
    """The bench's in-place Crocoddyl baseline solves the same problems as rebuilding them."""
    T_short = 30
    in_place = solve_goals_in_place(GOALS, T_short, DT, control_weight=1e-3)
    for g, (cost, _) in zip(GOALS, in_place, strict=True):
        solver, ok = solve_fddp(reach_problem(g, T_short, DT, control_weight=1e-3), T_short)
        assert ok
        assert cost == pytest.approx(solver.cost, rel=1e-12)
