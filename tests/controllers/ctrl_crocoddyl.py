"""The 2-link reach as a native Crocoddyl problem, identical to MujocoDynamics + ReachCost.

Same model (planar 2R arm, 0.1 m links, point masses with the MJCF inertials, no damping, no
armature, gravity along the joint axes so it has no effect), same semi-implicit Euler integrator
(MuJoCo's Euler and Crocoddyl's IntegratedActionModelEuler both do v' = v + dt a, q' = q + dt v'),
same cost. ReachCost ("squared") maps onto Crocoddyl's 0.5 * sum_i w_i r_i^2 activations with

    running node t >= 1 (scaled by dt by the Euler model):  w_x = 2/(T dt) [1, 1, w_v, w_v]
    running node 0 (x_0 fixed): state term left out, as in ReachCost
    controls: w = 2 w_u / (T dt)
    terminal: w = [2 (w_T + 1/T)] * n, [2 w_v / T] * n.
"""

from __future__ import annotations

import numpy as np

LINK = 0.1
MASS = 0.1
COM = 0.05
INERTIA = (1e-5, 1e-4, 1e-4)


def pinocchio_two_link(mass: float = MASS):
    import pinocchio as pin

    model = pin.Model()
    inertia = pin.Inertia(mass, np.array([COM, 0.0, 0.0]), np.diag(INERTIA))
    j1 = model.addJoint(0, pin.JointModelRZ(), pin.SE3.Identity(), "j1")
    model.appendBodyToJoint(j1, inertia, pin.SE3.Identity())
    j2 = model.addJoint(
        j1, pin.JointModelRZ(), pin.SE3(np.eye(3), np.array([LINK, 0.0, 0.0])), "j2"
    )
    model.appendBodyToJoint(j2, inertia, pin.SE3.Identity())
    return model


def reach_problem(
    q_goal: np.ndarray,
    T: int,
    dt: float,
    *,
    terminal_weight: float = 10.0,
    velocity_weight: float = 1e-4,
    control_weight: float = 1e-6,
    x0: np.ndarray | None = None,
    model=None,
):
    """A crocoddyl.ShootingProblem equal to ILQR(MujocoDynamics(two-link), ReachCost(...))."""
    import crocoddyl

    model = pinocchio_two_link() if model is None else model
    n = model.nv
    state = crocoddyl.StateMultibody(model)
    actuation = crocoddyl.ActuationModelFull(state)
    xref = np.concatenate([np.asarray(q_goal, dtype=float), np.zeros(n)])

    def dam(state_w, with_control: bool):
        costs = crocoddyl.CostModelSum(state, actuation.nu)
        if state_w is not None:
            costs.addCost(
                "x",
                crocoddyl.CostModelResidual(
                    state,
                    crocoddyl.ActivationModelWeightedQuad(np.asarray(state_w, dtype=float)),
                    crocoddyl.ResidualModelState(state, xref, actuation.nu),
                ),
                1.0,
            )
        if with_control:
            costs.addCost(
                "u",
                crocoddyl.CostModelResidual(
                    state,
                    crocoddyl.ActivationModelWeightedQuad(
                        np.full(n, 2 * control_weight / (T * dt))
                    ),
                    crocoddyl.ResidualModelControl(state, actuation.nu),
                ),
                1.0,
            )
        return crocoddyl.DifferentialActionModelFreeFwdDynamics(state, actuation, costs)

    w_run = 2.0 / (T * dt) * np.array([1.0] * n + [velocity_weight] * n)
    w_term = np.array([2 * (terminal_weight + 1.0 / T)] * n + [2 * velocity_weight / T] * n)
    first = crocoddyl.IntegratedActionModelEuler(dam(None, True), dt)
    run = crocoddyl.IntegratedActionModelEuler(dam(w_run, True), dt)
    term = crocoddyl.IntegratedActionModelEuler(dam(w_term, False), 0.0)
    x0 = np.zeros(2 * n) if x0 is None else np.asarray(x0, dtype=float)
    problem = crocoddyl.ShootingProblem(x0, [first] + [run] * (T - 1), term)
    problem.nthreads = 1  # crocoddyl crashes/oversubscribes with threads on small machines
    return problem


def solve_fddp(problem, T: int, maxiter: int = 200):
    import crocoddyl

    solver = crocoddyl.SolverFDDP(problem)
    x0 = problem.x0
    ok = solver.solve([x0] * (T + 1), [np.zeros(problem.runningModels[0].nu)] * T, maxiter)
    return solver, ok


def solve_goals_in_place(goals: np.ndarray, T: int, dt: float, **cost_kwargs) -> list:
    """Crocoddyl's fastest way through many goals: one problem and one solver, the goal changed in
    place (the running nodes share one model) before each solve from zero controls.

    Returns the solver's ``(cost, iterations)`` per goal.
    """
    import crocoddyl

    problem = reach_problem(goals[0], T, dt, **cost_kwargs)
    solver = crocoddyl.SolverFDDP(problem)
    x0, nu = problem.x0, problem.runningModels[0].nu
    goal_models = (problem.runningModels[1], problem.terminalModel)
    out = []
    for g in goals:
        xref = np.concatenate([np.asarray(g, dtype=float), np.zeros(len(g))])
        for model in goal_models:
            model.differential.costs.costs["x"].cost.residual.reference = xref
        solver.solve([x0] * (T + 1), [np.zeros(nu)] * T, 200)
        out.append((solver.cost, solver.iter))
    return out
