"""Model-based RL with a meta-learned loss on planar arms (ML3, paper section IV.A.2).

The pieces the reacher experiment composes:

* :func:`reach_features` and :data:`REACH_FEATURES`: what the learned control loss reads, per time
  step, independent of the number of joints (task-space terms plus per-joint terms pooled
  symmetrically across joints), so one learned loss applies to 2-, 3- and 4-link arms.
* :class:`ReachPolicy`: the paper's tanh MLP feedback policy with normalised inputs, one
  independent parameter set per goal stacked along a leading axis
  (:func:`ml3_robotics.core.inner.init_params` draws them).
* :func:`model_rollout`: closed-loop rollouts of ``G`` per-goal policies through a differentiable
  model in one batch (the policy is vmapped over goals, the model steps the whole batch).
* :class:`ReachTask`: goals, the joint-space goals from IK and the task loss (the paper's,
  through :class:`controllers.ReachCost` so that iLQR minimises exactly the same cost).
* :func:`adapt_policies`: K inner steps on a loss; :func:`meta_loss`: the ML3 meta-objective,
  which alone accepts extra-information terms (:func:`rest_at_goal_prior`, demonstrations);
  :func:`meta_test`: K steps on a learned loss, with no way to receive them.
* :func:`execute_policies` and :func:`execute_plan`: run policies or iLQR plans in the real
  simulator (batched over goals).

Gradients reach the policy parameters through the actions (directly, in the torque feature) and
through the states of the differentiable model rollout (every other feature).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from controllers import ILQR, Dynamics, ILQRConfig, ILQRResult, MLPPolicy, ReachCost
from controllers.policies import rollout
from ml3_robotics.core import policy_search
from ml3_robotics.core.inner import InnerOptimizer, Params, stacked_copies
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss
from ml3_robotics.core.policy_search import StepFn, bound_policy
from ml3_robotics.core.progress import progress_bar
from ml3_robotics.core.task_losses import ExtraTerm, MetaTrainObjective, PhysicsPrior, Rollout
from ml3_robotics.core.validation import check_choice
from robots.arm import (
    ArmConfig,
    ArmSim,
    ee_velocity,
    forward_kinematics,
    inverse_kinematics,
    kinetic_energy,
)

OnStep = Callable[[int, Params, Tensor], None]  # (k, params before step k, loss before step k)

#: Names of the learned-loss input features, in input order (recorded in the loss sidecar).
REACH_FEATURES: tuple[str, ...] = (
    "ee_error_x_m",  # end effector minus goal, world x (m)
    "ee_error_z_m",  # end effector minus goal, world z (m)
    "ee_distance_m",  # smooth norm of the error (m)
    "ee_velocity_x_mps",  # end-effector velocity (m/s)
    "ee_velocity_z_mps",
    "time_fraction",  # (t + 1) / T of the state x_{t+1}
    "mean_sq_joint_velocity",  # mean over joints of qdot^2 ((rad/s)^2)
    "mean_sq_torque_fraction",  # mean over joints of (u / torque limit)^2
    "terminal_step",  # 1 at the last step, else 0: a terminal cost apart from the running cost
)
# Fixed physical scales (not data statistics), so the normalisation is the same for every arm
# and every run: 0.1 m is the paper's link length, 0.5 m/s and 5 rad/s a brisk reach.
_FEATURE_SCALE = (0.1, 0.1, 0.1, 0.5, 0.5, 1.0, 25.0, 1.0, 1.0)
_DIST_EPS = 1e-4  # m; smooths the distance at zero so its gradient stays finite


def reach_feature_spec() -> FeatureSpec:
    """The :class:`FeatureSpec` of :func:`reach_features` (names and fixed scales)."""
    return FeatureSpec(REACH_FEATURES, shift=(0.0,) * len(REACH_FEATURES), scale=_FEATURE_SCALE)


def reach_features(config: ArmConfig, states: Tensor, actions: Tensor, goal: Tensor) -> Tensor:
    """Per-time-step features of a reach rollout, independent of the number of joints.

    Step ``t`` pairs the action ``u_t`` with the state it leads to, ``x_{t+1}``.

    Args:
        config: the arm (link lengths for the kinematics, torque limits).
        states: ``(B, T+1, 2n)`` rollout states ``[q, qdot]`` in rad and rad/s, ``x_0`` first.
        actions: ``(B, T, n)`` torques in N*m.
        goal: ``(B, 2)`` task-space goals ``(x, z)`` in m.

    Returns:
        ``(B, T, 9)`` features named by :data:`REACH_FEATURES` (raw units; the learned loss
        applies the spec's scales).
    """
    n = config.n_links
    if states.ndim != 3 or states.shape[-1] != 2 * n:
        raise ValueError(f"states: expected (B, T+1, {2 * n}), got {tuple(states.shape)}")
    B, T = actions.shape[0], actions.shape[1]
    if actions.shape != (B, T, n) or states.shape[:2] != (B, T + 1):
        raise ValueError(
            f"actions: expected ({B}, {states.shape[1] - 1}, {n}) to match states "
            f"{tuple(states.shape)}, got {tuple(actions.shape)}"
        )
    if goal.shape != (B, 2):
        raise ValueError(f"goal: expected ({B}, 2), got {tuple(goal.shape)}")
    x = states[:, 1:]
    q, qd = x[..., :n], x[..., n:]
    err = forward_kinematics(config, q) - goal.to(x)[:, None]
    dist = torch.sqrt((err * err).sum(-1, keepdim=True) + _DIST_EPS**2)
    vel = ee_velocity(config, q, qd)
    frac = torch.arange(1, T + 1, dtype=x.dtype) / T
    limits = torch.as_tensor(config.torque_limits, dtype=x.dtype)
    return torch.cat(
        [
            err,
            dist,
            vel,
            frac.expand(B, T)[..., None],
            (qd * qd).mean(-1, keepdim=True),
            ((actions.to(x) / limits) ** 2).mean(-1, keepdim=True),
            (frac == 1.0).to(x.dtype).expand(B, T)[..., None],
        ],
        dim=-1,
    )


# -- policies ----------------------------------------------------------------------------------


class ReachPolicy(nn.Module):
    """The paper's feedback policy: tanh MLP on the normalised state, torques within the limits.

    ``u = limit * tanh(MLP(x / scale))`` with ``scale = [pi] * n + [velocity_scale] * n``.

    Args:
        config: the arm.
        hidden: widths (paper: 64, 64).
        velocity_scale: rad/s that maps joint speeds to order one.
    """

    def __init__(
        self, config: ArmConfig, hidden: Sequence[int] = (64, 64), velocity_scale: float = 10.0
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if not hidden or len(set(hidden)) != 1:
            raise ValueError(f"hidden: expected equal widths like (64, 64), got {hidden!r}")
        if not velocity_scale > 0:
            raise ValueError(f"velocity_scale: expected > 0 rad/s, got {velocity_scale}")
        n = config.n_links
        self.config = config
        self.mlp = MLPPolicy(
            2 * n, n, depth=len(hidden), width=hidden[0], activation="tanh",
            action_bound=torch.as_tensor(config.torque_limits, dtype=torch.float32),
        )  # fmt: skip
        scale = torch.tensor([math.pi] * n + [float(velocity_scale)] * n)
        self.register_buffer("input_scale", scale)

    def forward(self, x: Tensor) -> Tensor:
        """Torques ``(..., n)`` for states ``x (..., 2n)``."""
        return self.mlp(x / self.input_scale.to(x))

    def bind(self, params: Mapping[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """Goal ``g``'s policy on state row ``g``, ``params (G, ...)`` fixed: ``x (G, 2n)`` ->
        ``(G, n)``.

        The same function as ``vmap(functional_call(self, ...))``, written with one batched
        matmul per layer (measured about 3x cheaper per call than the vmapped module); the
        weights' transposes and bias rows are taken once here, not at every step of a rollout.
        """
        return _bind_mlp(self.mlp, params, self.input_scale)


def _bind_mlp(
    mlp: MLPPolicy,
    params: Mapping[str, Tensor],
    input_scale: Tensor,
    first_bias: Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    """Per-goal tanh MLP ``x (G, d) -> u (G, n)`` with stacked ``params`` (``mlp``'s names):
    one batched matmul per layer, the transposes taken once. ``first_bias`` replaces the first
    layer's bias (a goal-conditioned policy folds its constant goal input into it)."""
    layers = [i for i, m in enumerate(mlp.net) if isinstance(m, nn.Linear)]
    weights = [params[f"mlp.net.{i}.weight"] for i in layers]
    weights[0] = weights[0][..., : input_scale.shape[0]]  # the state columns
    weights = [w.transpose(1, 2) for w in weights]
    biases = [params[f"mlp.net.{i}.bias"] for i in layers]
    if first_bias is not None:
        biases[0] = first_bias
    biases = [b[:, None, :] for b in biases]
    bound = mlp.action_bound if mlp.bounded else None

    def act(x: Tensor) -> Tensor:
        h = (x / input_scale.to(x))[:, None, :]
        for j, (w, b) in enumerate(zip(weights, biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if j < len(weights) - 1:
                h = torch.tanh(h)
        return h[:, 0] if bound is None else bound.to(h) * torch.tanh(h[:, 0])

    return act


class _BoundPolicy:
    """A module with ``bind(params)`` as a policy-search :data:`Policy` (``policy(params, x)``
    and ``bind``, which the rollout calls once per rollout)."""

    def __init__(self, module: nn.Module) -> None:
        self.bind = module.bind

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return self.bind(params)(x)


def batched_policy(policy: nn.Module) -> Callable[[Params, Tensor], Tensor]:
    """``f(params (G, ...), x (G, nx)) -> u (G, nu)``: goal g's policy on state row g.

    Uses the policy's own ``bind`` when it has one, else vmaps the module.
    """
    if hasattr(policy, "bind"):
        return _BoundPolicy(policy)
    return vmap(lambda p, x: functional_call(policy, p, (x,)))


def model_rollout(
    policy: nn.Module, params: Params, step: StepFn, x0: Tensor, horizon: int
) -> tuple[Tensor, Tensor]:
    """Closed-loop rollouts of ``G`` per-goal policies through differentiable dynamics.

    The policy call is vmapped over goals (each goal has its own parameters); the model steps the
    whole ``(G, nx)`` batch at once, outside vmap, because the ensemble's batched matmul already
    handles a batch and its vmap rule would copy the weights per goal.

    Args:
        policy: the policy module (its own parameters are not used).
        params: stacked per-goal parameters, leading axis ``G``.
        step: ``step(x (G, nx), u (G, nu)) -> (G, nx)``, e.g. ``ensemble.step``.
        x0: ``(G, nx)`` start states.
        horizon: ``T``.

    Returns:
        ``X (G, T+1, nx)``, ``U (G, T, nu)``.
    """
    act = bound_policy(batched_policy(policy), params)
    return rollout(lambda x, _t: act(x), step, x0, horizon)


# -- the task ------------------------------------------------------------------------------------


@dataclass
class ReachTask:
    """A batch of reach goals for one arm, with the paper's task loss.

    The task loss is the paper's joint-space loss with ``q_g`` from inverse kinematics,
    ``10 rho(q_T - q_g) + mean_{t=1..T} [rho(q_t - q_g) + 1e-4 rho(qdot_t)]`` with the smooth norm
    ``rho(r) = sqrt(||r||^2 + eps^2) - eps`` (eps = 1e-3; the plain norm has no gradient at 0) plus
    a negligible ``1e-6/T sum ||u||^2`` that keeps iLQR's control Hessian positive definite. It
    is :class:`controllers.ReachCost` (``norm="smooth"``), the very object iLQR minimises.

    Attributes:
        config: the arm.
        goals: ``(G, 2)`` task-space goals (m), float64.
        q_goal: ``(G, n)`` joint-space goals from IK (rad), float64.
        horizon: ``T``.
        cost: the :class:`controllers.ReachCost`.
    """

    config: ArmConfig
    goals: Tensor
    horizon: int
    q_goal: Tensor | None = None
    cost: ReachCost | None = None

    def __post_init__(self) -> None:
        self.goals = torch.as_tensor(self.goals, dtype=torch.float64)
        if self.goals.ndim != 2 or self.goals.shape[1] != 2:
            raise ValueError(f"goals: expected (G, 2), got {tuple(self.goals.shape)}")
        if self.q_goal is None:
            # Start at q = 0; IK's closed form picks the positive elbow for two links.
            self.q_goal = inverse_kinematics(self.config, self.goals)
        if self.cost is None:
            self.cost = ReachCost(self.q_goal, self.horizon, norm="smooth", eps=1e-3)

    @property
    def n(self) -> int:
        return self.goals.shape[0]

    @property
    def start(self) -> Tensor:
        """``(G, nx)`` start states (float32; rollouts cast them to the policy's dtype)."""
        return self.x0()

    def x0(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(G, nx)`` start states: the paper's zero state."""
        return torch.zeros(self.n, self.config.nx, dtype=dtype)

    def task_loss(self, X: Tensor, U: Tensor) -> Tensor:
        """Per-goal task loss ``(G,)`` of rollouts ``X (G, T+1, nx)``, ``U (G, T, nu)``."""
        assert self.cost is not None
        return self.cost.trajectory(X, U)

    def final_distance(self, X: Tensor | np.ndarray) -> np.ndarray:
        """``(G,)`` final end-effector distance to the goal in m."""
        X = torch.as_tensor(np.asarray(X), dtype=torch.float64)
        ee = forward_kinematics(self.config, X[:, -1, : self.config.n_links])
        return torch.linalg.vector_norm(ee - self.goals, dim=-1).numpy()

    def end_effector_error(self, X: Tensor, U: Tensor) -> Tensor:
        """Per-goal ``(G,)`` final end-effector distance to the goal in cm, smooth at zero
        (``sqrt(d^2 + eps^2) - eps``, eps = 0.1 mm) and differentiable: the task-space
        objective, which, unlike the joint-space task loss, no IK branch cut can mislead."""
        ee = forward_kinematics(self.config, X[:, -1, : self.config.n_links])
        d2 = ((ee - self.goals.to(ee)) ** 2).sum(-1)
        eps = 1e-2  # cm
        return torch.sqrt(1e4 * d2 + eps**2) - eps

    def subset(self, index: Sequence[int] | Tensor) -> ReachTask:
        idx = torch.as_tensor(index, dtype=torch.int64)
        assert self.q_goal is not None
        return ReachTask(self.config, self.goals[idx], self.horizon, self.q_goal[idx])


# -- inner loop and meta-objective -------------------------------------------------------------

LossFn = Callable[[Tensor, Tensor, ReachTask], Tensor]  # (X, U, task) -> per-goal (G,)


def learned_loss_fn(loss: LearnedLoss, params: Params | None = None) -> LossFn:
    """Per-goal learned loss ``mean_t M_phi(features_t)`` (with ``params`` substituted if given)."""

    def fn(X: Tensor, U: Tensor, task: ReachTask) -> Tensor:
        f = reach_features(task.config, X, U, task.goals.to(X))
        source = params.values() if params is not None else loss.parameters()
        f = f.to(next(iter(source)).dtype)  # float64 rollouts into a float32 loss, or back
        values = loss(f) if params is None else functional_call(loss, params, (f,))
        return values.mean(-1)

    return fn


def task_loss_fn(X: Tensor, U: Tensor, task: ReachTask) -> Tensor:
    """Per-goal task loss (the baseline's inner loss and ML3's meta-loss)."""
    return task.task_loss(X, U)


def end_effector_fn(X: Tensor, U: Tensor, task: ReachTask) -> Tensor:
    """:meth:`ReachTask.end_effector_error` as a :data:`LossFn` (a meta-objective's task term)."""
    return task.end_effector_error(X, U)


def _on_rollouts(loss: LossFn) -> policy_search.TaskLoss:
    return lambda rollout, task: loss(rollout.states, rollout.actions, task)


def adapt_policies(
    policy: nn.Module,
    params: Params,
    step: StepFn,
    task: ReachTask,
    loss: LossFn,
    optimizer: InnerOptimizer,
    *,
    differentiable: bool = True,
    steps: int | None = None,
    on_step: Callable[[int, Params, Tensor], None] | None = None,
) -> Params:
    """K inner steps on ``sum_g loss_g`` for ``G`` independent per-goal policies: the reacher's
    signature over :func:`ml3_robotics.core.policy_search.adapt_policies` (``loss(X, U, task)``,
    policy modules, a step function)."""
    return policy_search.adapt_policies(
        batched_policy(policy), params, step, task, _on_rollouts(loss), optimizer,
        differentiable=differentiable, steps=steps, on_step=on_step,
    )  # fmt: skip


def reach_rollout(X: Tensor, U: Tensor, task: ReachTask) -> Rollout:
    """A :class:`Rollout` of reach trajectories with their measurements as outputs.

    Outputs: ``"q"`` joint angles ``(G, T+1, n)`` (rad), ``"ee"`` end-effector positions
    ``(G, T+1, 2)`` (m) and ``"kinetic_energy"`` ``(G, T+1, 1)`` (J), so that extra-information
    terms can read them by name.
    """
    n = task.config.n_links
    q, qd = X[..., :n], X[..., n:]
    outputs = {
        "q": q,
        "ee": forward_kinematics(task.config, q),
        "kinetic_energy": kinetic_energy(task.config, q, qd)[..., None],
    }
    return Rollout(X, U, outputs)


def meta_loss(
    policy: nn.Module,
    params: Params,
    step: StepFn,
    task: ReachTask,
    learned: LossFn,
    optimizer: InnerOptimizer,
    extras: Sequence[ExtraTerm] = (),
    *,
    differentiable_steps: int | None = None,
    task_term: LossFn = task_loss_fn,
    step_weights: Sequence[float] | None = None,
) -> tuple[Tensor, Params]:
    """ML3's meta-objective: mean task loss of the K-step adapted policies' model rollouts.

    Args:
        extras: extra-information terms (:class:`ml3_robotics.core.task_losses.ExtraTerm`, e.g.
            :class:`~ml3_robotics.core.task_losses.Demonstrations` or :func:`rest_at_goal_prior`)
            added to the task loss at meta-train time; :func:`meta_test` has no way to take them.
        differentiable_steps: the meta-gradient flows through the last this many inner steps
            only (None: all K; a truncated meta-gradient is cheaper at large K).
        task_term: the task's term of the meta-objective, ``(X, U, task) -> (G,)`` (the paper's
            joint-space task loss, or :meth:`ReachTask.end_effector_error`).
        step_weights: None: the meta-objective scores the rollout after the last step (the
            paper's). Else K weights: the weighted sum over the rollouts after steps 1..K, so
            the loss is rewarded for every step and not only the last (:func:`ramp_weights`).

    Returns the meta-loss (differentiable w.r.t. the learned loss's parameters) and the adapted
    per-goal parameters.
    """
    objective = MetaTrainObjective(_on_rollouts(task_term), extras=tuple(extras))

    def score(rollout: Rollout) -> Tensor:
        if extras:  # they read the arm's measurements (joint angles, end effector, energy)
            rollout = reach_rollout(rollout.states, rollout.actions, task)
        return objective(rollout, task).mean()

    if step_weights is None:
        rollout, adapted = policy_search.adapted_rollout(
            batched_policy(policy), params, step, task, _on_rollouts(learned), optimizer,
            differentiable_steps=differentiable_steps,
        )  # fmt: skip
        return score(rollout), adapted
    if len(step_weights) != optimizer.steps:
        raise ValueError(
            f"step_weights: expected {optimizer.steps} weights (one per inner step), got "
            f"{len(step_weights)}"
        )
    rollouts, adapted = policy_search.adapted_rollouts(
        batched_policy(policy), params, step, task, _on_rollouts(learned), optimizer,
        differentiable_steps=differentiable_steps,
    )  # fmt: skip
    return sum(w * score(r) for w, r in zip(step_weights, rollouts, strict=True)), adapted


def ramp_weights(steps: int) -> list[float]:
    """``k / sum(1..K)`` for step ``k``: later steps weigh more, every step counts (sum 1)."""
    total = steps * (steps + 1) / 2
    return [k / total for k in range(1, steps + 1)]


#: What a meta-objective scores after the inner steps, and which steps it scores.
META_OBJECTIVES = ("last_step", "ramp")
META_DISTANCES = ("task_loss", "end_effector")


def meta_objective_terms(
    meta_objective: str, meta_distance: str, steps: int
) -> tuple[LossFn, list[float] | None]:
    """``(task_term, step_weights)`` of :func:`meta_loss` for the named choice.

    Args:
        meta_objective: ``"last_step"`` (the rollout after the K-th step, the paper's) or
            ``"ramp"`` (:func:`ramp_weights` over the rollouts after steps 1..K).
        meta_distance: ``"task_loss"`` (the paper's joint-space loss) or ``"end_effector"``
            (final end-effector distance, immune to the IK branch cut).
        steps: K.
    """
    check_choice("meta_objective", meta_objective, META_OBJECTIVES)
    check_choice("meta_distance", meta_distance, META_DISTANCES)
    task_term = task_loss_fn if meta_distance == "task_loss" else end_effector_fn
    return task_term, (ramp_weights(steps) if meta_objective == "ramp" else None)


def meta_test(
    loss: LearnedLoss,
    policy: nn.Module,
    init: Params,
    step: StepFn,
    task: ReachTask,
    optimizer: InnerOptimizer,
    on_step: OnStep | None = None,
) -> Params:
    """Meta-test: fresh per-goal policies take K plain steps on the learned loss alone.

    There is no parameter through which extra information could arrive: the loss reads only
    :data:`REACH_FEATURES` of the policies' own rollouts (its feature spec is checked), and a
    :class:`ReachTask` holds only the arm, the goals, the horizon and the task loss.
    """
    loss.features.require(REACH_FEATURES)
    return adapt_policies(
        policy, init, step, task, learned_loss_fn(loss), optimizer, differentiable=False,
        on_step=on_step,
    )  # fmt: skip


def rest_at_goal_prior(config: ArmConfig, weight: float = 1.0, final_fraction: float = 0.2):
    """Physics prior: the arm arrives at rest, its kinetic energy vanishing at the end.

    ``weight * mean over the last final_fraction of the steps of E_k(t) / E_ref`` with
    ``E_k = 0.5 qdot^T M(q) qdot`` from the arm's analytic mass matrix and ``E_ref`` the energy
    of every joint turning at 1 rad/s in the stretched posture (so the term is unit-free and
    comparable across arms).
    """
    if not 0 < final_fraction <= 1:
        raise ValueError(f"final_fraction: expected a fraction in (0, 1], got {final_fraction}")
    n = config.n_links
    e_ref = float(kinetic_energy(config, torch.zeros(n, dtype=torch.float64),
                                 torch.ones(n, dtype=torch.float64)))  # fmt: skip

    def energy(rollout: Rollout) -> Tensor:
        e = rollout.outputs["kinetic_energy"][:, 1:, 0]
        k = max(1, round(final_fraction * e.shape[1]))
        return e[:, -k:].mean(-1) / e_ref

    return PhysicsPrior(weight=weight, fn=energy, label="rest_at_goal")


def trace_inner_steps(run: Callable[[OnStep], Params]) -> list[Params]:
    """The parameters after 0, 1, ..., K inner steps of ``run(on_step) -> final params``.

    ``run`` is an adaptation (``meta_test`` or ``adapt_policies``) with its ``on_step`` bound
    to the recorder.
    """
    snapshots: list[Params] = []

    def record(_k: int, params: Params, _loss: Tensor) -> None:
        snapshots.append({n: t.detach() for n, t in params.items()})

    final = run(record)
    return [*snapshots, {n: t.detach() for n, t in final.items()}]


def steps_to_reach(distances: np.ndarray, threshold: float) -> list[int | None]:
    """Per goal, the first inner step whose real final distance is below ``threshold``.

    Args:
        distances: ``(K+1, G)`` distances after 0..K steps.
        threshold: in the distances' unit.

    Returns:
        ``G`` entries: the step index, or None when no step up to K got there.
    """
    below = np.asarray(distances) < threshold
    return [int(np.argmax(col)) if col.any() else None for col in below.T]


class GoalConditionedPolicy(nn.Module):
    """Behaviour-cloning policy ``u = limit * tanh(MLP([x / scale, goal / reach]))``.

    Unlike :class:`ReachPolicy` (one parameter set per goal) it takes the goal as input, so
    demonstrations of training goals can teach it held-out goals.
    """

    def __init__(self, config: ArmConfig, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        hidden = tuple(hidden)
        if not hidden or len(set(hidden)) != 1:
            raise ValueError(f"hidden: expected equal widths like (64, 64), got {hidden!r}")
        n = config.n_links
        self.config = config
        self.mlp = MLPPolicy(
            2 * n + 2, n, depth=len(hidden), width=hidden[0], activation="tanh",
            action_bound=torch.as_tensor(config.torque_limits, dtype=torch.float32),
        )  # fmt: skip
        scale = [math.pi] * n + [10.0] * n + [config.reach] * 2
        self.register_buffer("input_scale", torch.tensor(scale))

    def forward(self, x: Tensor, goal: Tensor) -> Tensor:
        """Torques ``(B, n)`` for states ``x (B, 2n)`` and goals ``(B, 2)``."""
        return self.mlp(torch.cat([x, goal.to(x)], -1) / self.input_scale.to(x))

    def reset_parameters(
        self, generator: torch.Generator, *, zero_output_layer: bool = False
    ) -> GoalConditionedPolicy:
        """Seeded uniform draws: weights as nn.Linear's default (1/sqrt(fan_in)); biases within
        1/sqrt(fan_out) (nn.Linear uses fan_in; kept so that measured BC figures reproduce).
        ``zero_output_layer``: the policy starts at zero torque (the arm rests)."""
        with torch.no_grad():
            for p in self.parameters():
                bound = 1.0 / math.sqrt(p.shape[-1] if p.ndim == 2 else p.shape[0])
                p.uniform_(-bound, bound, generator=generator)
            if zero_output_layer:
                last = [m for m in self.mlp.net if isinstance(m, nn.Linear)][-1]
                last.weight.zero_()
                last.bias.zero_()
        return self

    def stacked(self, n: int) -> Params:
        """``n`` copies of this policy's parameters, stacked (the start of per-goal fine-tuning:
        goal g's copy is then trained for goal g alone)."""
        return stacked_copies(self, n)

    def for_goals(self, goals: Tensor) -> GoalBoundPolicy:
        """Per-goal copies of this policy, each fed its own goal of ``goals (G, 2)``: a policy
        over stacked parameters (:meth:`stacked`) like :class:`ReachPolicy`."""
        return GoalBoundPolicy(self, goals)


class GoalBoundPolicy:
    """:class:`GoalConditionedPolicy` copies with stacked parameters, copy g fed goal g.

    ``bind(params)`` folds the (constant) goal input into the first layer's bias once per
    rollout, so a step costs what a :class:`ReachPolicy` step costs.
    """

    def __init__(self, policy: GoalConditionedPolicy, goals: Tensor) -> None:
        self.policy = policy
        self.goals = torch.as_tensor(goals)
        self.config = policy.config

    def bind(self, params: Mapping[str, Tensor]) -> Callable[[Tensor], Tensor]:
        nx = 2 * self.config.n_links
        w0 = params["mlp.net.0.weight"]
        scale = self.policy.input_scale
        goal_in = (self.goals.to(w0) / scale[nx:].to(w0))[:, :, None]  # (G, 2, 1)
        first_bias = params["mlp.net.0.bias"] + torch.bmm(w0[..., nx:], goal_in)[..., 0]
        return _bind_mlp(self.policy.mlp, params, scale[:nx], first_bias)

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return self.bind(params)(x)


def pretrain_goal_policy(
    config: ArmConfig,
    step: StepFn,
    task: ReachTask,
    *,
    hidden: Sequence[int] = (64, 64),
    steps: int = 1500,
    lr: float = 1e-3,
    batch: int = 64,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> GoalConditionedPolicy:
    """Train one :class:`GoalConditionedPolicy` for all of ``task``'s goals: Adam on the mean
    task loss of its rollouts through ``step`` (a learned model), ``batch`` goals a step.

    The start of the goal-conditioned route of issue 22: a policy that already reaches goals
    it never saw, which per-goal steps then fine-tune. ``progress``: a bar on a terminal
    (else a few log lines).
    """
    for name, value in (("steps", steps), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    generator = generator or torch.Generator().manual_seed(0)
    policy = GoalConditionedPolicy(config, hidden).reset_parameters(
        generator, zero_output_layer=True
    )
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    goals = task.goals.float()
    bar = progress_bar(steps, "pre-train policy", tty=progress)
    for _ in range(steps):
        index = torch.randperm(task.n, generator=generator)[: min(batch, task.n)]
        sub, sub_goals = task.subset(index), goals[index]
        X, U = rollout(lambda x, _t, g=sub_goals: policy(x, g), step, sub.x0(), task.horizon)
        loss = sub.task_loss(X, U).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.update()
        bar.set_postfix(task_loss=f"{float(loss.detach()):.3g}", refresh=False)
    bar.close()
    return policy.requires_grad_(False)


def behaviour_cloning(
    config: ArmConfig,
    states: Tensor,
    actions: Tensor,
    goals: Tensor,
    *,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 2000,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
) -> GoalConditionedPolicy:
    """Fit a :class:`GoalConditionedPolicy` to expert (state, goal) -> torque pairs.

    Full-batch Adam on the mean squared torque error in units of the torque limits.

    Args:
        states: ``(G, T+1, nx)`` expert states (the last one has no action and is dropped).
        actions: ``(G, T, nu)`` expert torques.
        goals: ``(G, 2)`` the goals the demonstrations reach.
    """
    if states.ndim != 3 or actions.ndim != 3 or states.shape[1] != actions.shape[1] + 1:
        raise ValueError(f"states/actions: expected (G, T+1, nx) and (G, T, nu), got "
                         f"{tuple(states.shape)} and {tuple(actions.shape)}")  # fmt: skip
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    policy = GoalConditionedPolicy(config, hidden)
    if generator is not None:
        policy.reset_parameters(generator)
    T = actions.shape[1]
    x = states[:, :-1].reshape(-1, states.shape[-1]).float()
    g = goals.float()[:, None].expand(-1, T, -1).reshape(-1, 2)
    limits = torch.as_tensor(config.torque_limits, dtype=torch.float32)
    target = (actions.reshape(-1, actions.shape[-1]).float() / limits).clamp(-1, 1)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(epochs):
        opt.zero_grad()
        loss = ((policy(x, g) / limits - target) ** 2).mean()
        loss.backward()
        opt.step()
    return policy.requires_grad_(False)


def loss_landscape(
    policy: nn.Module,
    center: Params,
    directions: tuple[Params, Params],
    alphas: Tensor,
    betas: Tensor,
    step: StepFn,
    task: ReachTask,
    losses: Mapping[str, LossFn],
) -> dict[str, Tensor]:
    """Per-goal losses on a plane of policy parameters ``center + a d1 + b d2``.

    Args:
        center, directions: parameters of ONE goal's policy (no leading goal axis).
        alphas, betas: ``(A,)``, ``(B,)`` grid coordinates.
        task: a one-goal :class:`ReachTask`.
        losses: name -> per-goal loss function (e.g. the learned and the task loss).

    Returns:
        name -> ``(A, B)`` values.
    """
    if task.n != 1:
        raise ValueError(f"task: expected one goal, got {task.n}")
    d1, d2 = directions
    a, b = torch.meshgrid(alphas, betas, indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    grid: Params = {}
    for n, c in center.items():
        view = (-1,) + (1,) * c.ndim
        grid[n] = c + a.view(view).to(c) * d1[n] + b.view(view).to(c) * d2[n]
    many = task.subset([0] * a.numel())
    if isinstance(policy, GoalBoundPolicy):  # the same policy, one copy per grid point
        policy = policy.policy.for_goals(many.goals)
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        X, U = model_rollout(policy, grid, step, many.x0(a.dtype), many.horizon)
        for name, fn in losses.items():
            out[name] = fn(X, U, many).reshape(len(alphas), len(betas))
    return out


# -- the real simulator --------------------------------------------------------------------------


def _execute(
    sim: ArmSim, act: Callable[[Tensor], Tensor], task: ReachTask, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Closed loop in the real simulator from the zero state: ``u = clip(act(x))`` per step."""
    x = np.zeros((task.n, sim.nx))
    xs, us = [x], []
    limits = np.asarray(task.config.torque_limits)
    with torch.no_grad():
        for _ in range(task.horizon):
            u = np.clip(act(torch.as_tensor(x, dtype=dtype)).double().numpy(), -limits, limits)
            x = sim.transition(x, u)
            xs.append(x)
            us.append(u)
    return np.stack(xs, 1), np.stack(us, 1)


def execute_policies(
    sim: ArmSim, policy: nn.Module, params: Mapping[str, Tensor], task: ReachTask
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``G`` per-goal policies closed loop in the real simulator from the zero state.

    Returns:
        ``X (G, T+1, nx)`` and the applied (clipped) torques ``U (G, T, nu)``, float64.
    """
    act = batched_policy(policy)
    p = {k: v.detach() for k, v in params.items()}
    return _execute(sim, lambda x: act(p, x), task, next(iter(p.values())).dtype)


def execute_goal_policy(
    sim: ArmSim, policy: GoalConditionedPolicy, task: ReachTask
) -> tuple[np.ndarray, np.ndarray]:
    """Run one goal-conditioned policy towards each of the task's goals (as above)."""
    goals = task.goals.float()
    return _execute(sim, lambda x: policy(x, goals), task, torch.float32)


def execute_plan(
    sim: ArmSim,
    states: np.ndarray,
    controls: np.ndarray,
    gains: np.ndarray | None,
    limits: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Run iLQR plans in the real simulator with their time-varying feedback.

    ``u_t = clip(controls_t + K_t (x - states_t))``; ``gains=None`` plays the controls open loop.

    Args:
        sim: the real simulator.
        states: ``(G, T+1, nx)`` planned states (``states[:, 0]`` is the start).
        controls: ``(G, T, nu)`` planned controls.
        gains: ``(G, T, nu, nx)`` or None.
        limits: torque limits.

    Returns:
        Real ``X (G, T+1, nx)`` and applied ``U (G, T, nu)``.
    """
    lim = np.asarray(limits, dtype=np.float64)
    x = np.asarray(states[:, 0], dtype=np.float64)
    xs, us = [x], []
    for t in range(controls.shape[1]):
        u = controls[:, t].copy()
        if gains is not None:
            u = u + np.einsum("gij,gj->gi", gains[:, t], x - states[:, t])
        u = np.clip(u, -lim, lim)
        x = sim.transition(x, u)
        xs.append(x)
        us.append(u)
    return np.stack(xs, 1), np.stack(us, 1)


def plan_and_execute(
    sim: ArmSim, dynamics: Dynamics, task: ReachTask, config: ILQRConfig
) -> tuple[ILQRResult, np.ndarray, np.ndarray]:
    """Box-constrained iLQR on ``dynamics`` (a learned model or the true one) for every goal of
    ``task`` from the zero state, then the plan executed in the real simulator with its
    feedback gains (:func:`execute_plan`).

    Returns:
        The plan, and the real ``X (G, T+1, nx)`` and applied ``U (G, T, nu)``.
    """
    limits = torch.as_tensor(task.config.torque_limits, dtype=torch.float64)
    planner = ILQR(dynamics, task.cost, task.horizon, lower=-limits, upper=limits, config=config)
    plan = planner.solve(task.x0(torch.float64))
    X, U = execute_plan(
        sim, plan.states.double().numpy(), plan.controls.double().numpy(),
        plan.K.double().numpy(), task.config.torque_limits,
    )  # fmt: skip
    return plan, X, U
