"""ML3 for policies: learned losses over rollouts of any differentiable system.

* :class:`ControlFeatures` builds a learned loss's :class:`FeatureSpec` from a fixed vocabulary of
  per-step features (:data:`CONTROL_FEATURES`: state, action, goal, goal error, time). Nothing
  else can be a feature; in particular no extra information (waypoints, demonstrations, priors).
* :func:`policy_rollout` rolls a batch of feedback policies (one parameter set per problem) out
  through ``system.step``.
* :func:`meta_train_loss` is the ML3 meta-objective: K differentiable inner steps on the learned
  loss, then any meta-train objective (a task term plus extra-information terms, see
  :mod:`ml3_robotics.core.task_losses`) on the adapted policy's rollout.
* :func:`meta_test` trains fresh policies with the learned loss alone. Its inputs are the learned
  loss, the policy, its initial parameters, the system, the :class:`ControlTask` s and the inner
  optimizer: no argument can carry extra information, and this module does not import the
  extra-information terms (a test checks both).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from controllers.policies import rollout
from ml3_robotics.core.errors import FeatureSpecError
from ml3_robotics.core.inner import InnerOptimizer, Params, adapt, call, init_params
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss
from ml3_robotics.core.task_losses import ControlTask, Rollout

__all__ = [
    "CONTROL_FEATURES",
    "BatchedMLP",
    "ControlFeatures",
    "ModulePolicy",
    "Policy",
    "PolicyTrace",
    "System",
    "adapt_policies",
    "adapt_policy",
    "adapted_rollout",
    "adapted_rollouts",
    "bound_policy",
    "learned_control_loss",
    "meta_test",
    "meta_train_loss",
    "policy_rollout",
]

#: The per-step features a learned control loss may read (group -> meaning, for step t=0..T-1).
CONTROL_FEATURES: dict[str, str] = {
    "state": "x_t, the state the action was taken in (nx values)",
    "next_state": "x_{t+1}, the state the action led to (nx values)",
    "action": "u_t (nu values)",
    "next_state_action": "x_{t+1} (x) u_t, each next-state value times each action value "
    "(nx * nu values; for velocities and forces, the power the action puts in)",
    "goal": "the task's goal state (nx values)",
    "goal_error": "x_{t+1} - goal (nx values)",
    "goal_distance": "||x_{t+1} - goal|| (1 value)",
    "final_goal_distance": "||x_T - goal||, the rollout's outcome, at every step (1 value)",
    "time": "(t+1)/T, the fraction of the horizon elapsed (1 value)",
}

TaskLoss = Callable[[Rollout, ControlTask], Tensor]
StepFn = Callable[[Tensor, Tensor], Tensor]  # step(x (B, nx), u (B, nu)) -> (B, nx)


@runtime_checkable
class System(Protocol):
    """Batched dynamics ``step(x (B, nx), u (B, nu)) -> (B, nx)`` (e.g. ``robots.MountainCar``;
    a ``validate`` keyword, when the system has one, is set to False inside rollouts)."""

    def step(self, x: Tensor, u: Tensor) -> Tensor: ...


def bound_policy(policy: Policy, params: Mapping[str, Tensor]) -> Callable[[Tensor], Tensor]:
    """``x -> policy(params, x)``; through ``policy.bind(params)`` when the policy has one (it
    does the per-rollout work, such as transposing weights, once instead of at every step)."""
    bind = getattr(policy, "bind", None)
    if bind is not None:
        return bind(params)
    return lambda x: policy(params, x)


@runtime_checkable
class Policy(Protocol):
    """A batch of feedback policies, one parameter set per problem.

    ``policy(params, x (B, nx)) -> u (B, nu)`` where every tensor in ``params`` has a leading
    problem axis ``B``; ``policy.init(n, generator, dtype)`` draws ``n`` fresh parameter sets.
    A policy may also offer ``bind(params) -> (x -> u)`` (see :func:`bound_policy`).
    """

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor: ...

    def init(self, n: int, generator: torch.Generator, dtype: torch.dtype = ...) -> Params: ...


_POLICY_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda z: z,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "elu": torch.nn.functional.elu,
}


class BatchedMLP:
    """An MLP feedback policy with one parameter set per problem, evaluated with batched matmuls.

    Parameters are ``w{i}: (B, out, in)`` and, with ``bias``, ``b{i}: (B, out)``. Output
    ``bound * tanh(z)`` when ``bound`` is given (actions inside the box, with an honest
    gradient), else ``z``. Equivalent to :class:`ModulePolicy` over an ``nn.Sequential`` of
    Linear layers, but about 20x faster on small batches (no per-step functional_call).

    Args:
        widths: layer widths ``(nx, hidden..., nu)``.
        bias: whether layers carry biases.
        activation: hidden activation (``"none"`` gives the paper's linear MountainCar policy).
        bound: action bound, or None for unbounded outputs.
        input_scale: optional per-input divisor ``(nx,)``: the network sees ``x / input_scale``
            (so that small-but-important state components get comparable gradients).
    """

    def __init__(
        self,
        widths: Sequence[int],
        *,
        bias: bool = True,
        activation: str = "tanh",
        bound: float | None = None,
        input_scale: Sequence[float] | None = None,
    ) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths: expected at least (nx, nu), all >= 1, got {widths!r}")
        if activation not in _POLICY_ACTIVATIONS:
            close = difflib.get_close_matches(activation, list(_POLICY_ACTIVATIONS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"activation: got {activation!r}, expected one of "
                f"{sorted(_POLICY_ACTIVATIONS)}{hint}"
            )
        if bound is not None and not bound > 0:
            raise ValueError(f"bound: expected a positive number or None, got {bound!r}")
        if input_scale is not None:
            input_scale = tuple(float(v) for v in input_scale)
            if len(input_scale) != widths[0] or any(not v > 0 for v in input_scale):
                raise ValueError(
                    f"input_scale: expected {widths[0]} positive numbers, got {input_scale!r}"
                )
        self.input_scale = input_scale
        self.widths = widths
        self.bias = bias
        self.activation = activation
        self.bound = bound

    def init(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Params:
        """``n`` fresh parameter sets (torch's default Linear init: U(+-1/sqrt(fan_in)))."""
        params: Params = {}
        for i, (w_in, w_out) in enumerate(itertools.pairwise(self.widths)):
            bound = 1.0 / math.sqrt(w_in)
            params[f"w{i}"] = (
                torch.rand(n, w_out, w_in, generator=generator, dtype=dtype) * 2 - 1
            ) * bound
            if self.bias:
                params[f"b{i}"] = (
                    torch.rand(n, w_out, generator=generator, dtype=dtype) * 2 - 1
                ) * bound
        return params

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        act = _POLICY_ACTIVATIONS[self.activation]
        h = x
        if self.input_scale is not None:
            h = h / torch.tensor(self.input_scale, dtype=x.dtype, device=x.device)
        n_layers = len(self.widths) - 1
        for i in range(n_layers):
            h = (params[f"w{i}"] @ h[..., None])[..., 0]
            if self.bias:
                h = h + params[f"b{i}"]
            if i < n_layers - 1:
                h = act(h)
        return h if self.bound is None else self.bound * torch.tanh(h)


class ModulePolicy:
    """Any ``nn.Module`` ``(nx,) -> (nu,)`` as a :data:`Policy` (vmap over functional_call)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._act = torch.func.vmap(lambda p, x: call(module, p, x))

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return self._act(dict(params), x)

    def init(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Params:
        """``n`` parameter sets drawn as ``nn.Linear``'s default (:func:`init_params`)."""
        return init_params(self.module, n, generator, dtype)


@dataclass(frozen=True)
class ControlFeatures:
    """Which per-step features a learned control loss reads, from :data:`CONTROL_FEATURES` only.

    Attributes:
        groups: feature groups in input order, e.g. ``("next_state", "action", "goal_error",
            "time")``.
        nx: state dimension.
        nu: action dimension.
    """

    groups: tuple[str, ...]
    nx: int
    nu: int

    def __post_init__(self) -> None:
        groups = tuple(self.groups)
        object.__setattr__(self, "groups", groups)
        if not groups:
            raise ValueError("groups: expected at least one feature group, got none")
        for g in groups:
            if g not in CONTROL_FEATURES:
                close = difflib.get_close_matches(str(g), list(CONTROL_FEATURES), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise FeatureSpecError(
                    f"groups: {g!r} is not a per-step control feature{hint} (allowed: "
                    f"{sorted(CONTROL_FEATURES)}); extra information such as intermediate goals, "
                    "demonstrations or physics priors belongs in the meta-train objective, never "
                    "in the learned loss's inputs"
                )
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups: expected unique groups, got {groups!r}")
        for name in ("nx", "nu"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")

    def _width(self, group: str) -> int:
        if group in ("state", "next_state", "goal", "goal_error"):
            return self.nx
        if group == "action":
            return self.nu
        if group == "next_state_action":
            return self.nx * self.nu
        return 1

    def names(self) -> tuple[str, ...]:
        """Scalar feature names, e.g. ``("next_state.0", "next_state.1", "action.0", "time")``."""
        out: list[str] = []
        for g in self.groups:
            w = self._width(g)
            scalar = g in ("goal_distance", "final_goal_distance", "time")
            out += [g] if scalar else [f"{g}.{i}" for i in range(w)]
        return tuple(out)

    def spec(
        self, shift: Sequence[float] | None = None, scale: Sequence[float] | None = None
    ) -> FeatureSpec:
        """The :class:`FeatureSpec` of these features (with optional normalisation)."""
        return FeatureSpec(
            self.names(),
            shift=None if shift is None else tuple(shift),
            scale=None if scale is None else tuple(scale),
        )

    @classmethod
    def from_spec(cls, spec: FeatureSpec, nx: int, nu: int) -> ControlFeatures:
        """Recover the groups of a (loaded) loss's spec; refuses any name outside the vocabulary."""
        groups: list[str] = []
        for name in spec.names:
            group = name.split(".", 1)[0]
            if group not in CONTROL_FEATURES:
                raise FeatureSpecError(
                    f"feature spec: {name!r} is not a per-step control feature (allowed groups: "
                    f"{sorted(CONTROL_FEATURES)})"
                )
            if not groups or groups[-1] != group:
                groups.append(group)
        features = cls(tuple(groups), nx, nu)
        spec.require(features.names())
        return features

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        """Per-step features ``(B, T, F)`` of a rollout for its task."""
        x = rollout.states
        b, t1, nx = x.shape
        if nx != self.nx or rollout.actions.shape[-1] != self.nu:
            raise ValueError(
                f"rollout: expected nx={self.nx}, nu={self.nu}, got states {tuple(x.shape)} and "
                f"actions {tuple(rollout.actions.shape)}"
            )
        horizon = t1 - 1
        goal = task.goal.to(x.dtype)[:, None].expand(b, horizon, nx)
        parts: list[Tensor] = []
        for g in self.groups:
            if g == "state":
                parts.append(x[:, :-1])
            elif g == "next_state":
                parts.append(x[:, 1:])
            elif g == "action":
                parts.append(rollout.actions)
            elif g == "next_state_action":
                outer = x[:, 1:, :, None] * rollout.actions[:, :, None, :]
                parts.append(outer.reshape(b, horizon, nx * self.nu))
            elif g == "goal":
                parts.append(goal)
            elif g == "goal_error":
                parts.append(x[:, 1:] - goal)
            elif g == "goal_distance":
                d = x[:, 1:] - goal
                parts.append(torch.sqrt((d * d).sum(-1, keepdim=True) + 1e-12))
            elif g == "final_goal_distance":
                d = x[:, -1] - task.goal.to(x.dtype)
                dist = torch.sqrt((d * d).sum(-1) + 1e-12)
                parts.append(dist[:, None, None].expand(b, horizon, 1))
            else:  # "time", validated in __post_init__
                t = torch.arange(1, horizon + 1, dtype=x.dtype, device=x.device) / horizon
                parts.append(t[None, :, None].expand(b, horizon, 1))
        return torch.cat(parts, dim=-1)


def learned_control_loss(
    loss: LearnedLoss, features: ControlFeatures, phi: Mapping[str, Tensor] | None = None
) -> TaskLoss:
    """``(rollout, task) -> (B,)``: the mean over steps of M_phi's per-step values."""
    loss.features.require(features.names())

    def fn(rollout: Rollout, task: ControlTask) -> Tensor:
        f = features(rollout, task)
        values = loss(f) if phi is None else call(loss, phi, f)
        return values.mean(-1)

    return fn


def _stepper(system: System | StepFn) -> StepFn:
    """``step(x, u)`` of a system, or the step function itself (e.g. a learned model's)."""
    step = system.step if hasattr(system, "step") else system  # type: ignore[union-attr]
    # Validation calls bool() on tensors; skip it per step where the system allows (inputs come
    # from our own rollout, checked once).
    if "validate" in inspect.signature(step).parameters:
        return lambda x, u: step(x, u, validate=False)
    return step


def policy_rollout(
    policy: Policy,
    params: Mapping[str, Tensor],
    system: System | StepFn,
    task: ControlTask,
) -> Rollout:
    """Roll out one feedback policy per problem: ``u_t = pi_b(x_t)``, ``x_{t+1} = f(x_t, u_t)``.

    Args:
        policy: a :data:`Policy` (e.g. :class:`BatchedMLP`); it bounds its actions itself.
        params: its parameters, one set per problem, each ``(B, *shape)``.
        system: anything with ``step(x (B, nx), u (B, nu)) -> (B, nx)``, or that function.
        task: the problems (``start (B, nx)``, cast to the parameters' dtype, and ``horizon``).

    Returns:
        The :class:`Rollout`, differentiable in ``params``.
    """
    x0 = task.start.to(next(iter(params.values())).dtype)
    act = bound_policy(policy, params)
    states, actions = rollout(lambda x, _t: act(x), _stepper(system), x0, task.horizon)
    return Rollout(states, actions)


@dataclass
class PolicyTrace:
    """A policy trained for K steps: the rollout before every step and after the last.

    Attributes:
        states: ``(K+1, B, T+1, nx)``; ``states[k]`` is the rollout after k steps.
        actions: ``(K+1, B, T, nu)``.
        losses: ``(K+1, B)`` the training loss of each rollout.
    """

    states: Tensor
    actions: Tensor
    losses: Tensor


def adapt_policies(
    policy: Policy,
    params: Mapping[str, Tensor],
    system: System | StepFn,
    task: ControlTask,
    loss_fn: TaskLoss,
    optimizer: InnerOptimizer,
    *,
    differentiable: bool = True,
    differentiable_steps: int | None = None,
    steps: int | None = None,
    on_step: Callable[[int, Params, Tensor], None] | None = None,
) -> Params:
    """K inner steps on ``sum_b loss_fn(rollout, task)_b`` for ``B`` independent policies
    (``differentiable_steps``: a truncated meta-gradient, see
    :func:`~ml3_robotics.core.inner.adapt`).

    Problems share nothing but the batch, so the gradient of the sum with respect to problem
    b's parameters is problem b's own: one backward pass adapts every problem (SGD and Adam are
    elementwise, so each update is exactly its own). ``task`` needs ``start`` and ``horizon``;
    ``loss_fn`` may read anything else it carries.
    """

    def objective(p: Params) -> Tensor:
        return loss_fn(policy_rollout(policy, p, system, task), task).sum()

    # The problems are batched here, not vmapped: autograd.grad is the cheaper gradient.
    return adapt(
        objective, params, optimizer, differentiable=differentiable, steps=steps,
        differentiable_steps=differentiable_steps, gradients="autograd", on_step=on_step,
    )  # fmt: skip


def adapted_rollout(
    policy: Policy,
    policy_init: Mapping[str, Tensor],
    system: System | StepFn,
    task: ControlTask,
    inner_loss: TaskLoss,
    optimizer: InnerOptimizer,
    *,
    differentiable_steps: int | None = None,
) -> tuple[Rollout, Params]:
    """The inner loop of every ML3 meta-objective: ``optimizer.steps`` differentiable steps on
    ``inner_loss`` (the learned loss; the meta-gradient through the last
    ``differentiable_steps`` of them, all when None), then the adapted policies' rollout and
    parameters."""
    rollouts, adapted = adapted_rollouts(
        policy, policy_init, system, task, inner_loss, optimizer,
        differentiable_steps=differentiable_steps,
    )  # fmt: skip
    return rollouts[-1], adapted


def adapted_rollouts(
    policy: Policy,
    policy_init: Mapping[str, Tensor],
    system: System | StepFn,
    task: ControlTask,
    inner_loss: TaskLoss,
    optimizer: InnerOptimizer,
    *,
    differentiable_steps: int | None = None,
) -> tuple[list[Rollout], Params]:
    """:func:`adapted_rollout` with the rollout after every step: ``K`` rollouts, after steps
    ``1..K``, each differentiable through the steps before it (for meta-objectives that weigh
    every step). The rollouts the inner loss already made are reused, not rerun."""
    made: list[Rollout] = []
    # A step before the truncation point frees its graph (no meta-gradient flows through it), so
    # the rollout it made is kept as a constant: it does not depend on M_phi.
    untracked = 0 if differentiable_steps is None else optimizer.steps - differentiable_steps

    def recording_loss(rollout: Rollout, t: ControlTask) -> Tensor:
        if len(made) < untracked:
            made.append(Rollout(rollout.states.detach(), rollout.actions.detach(),
                                {k: v.detach() for k, v in rollout.outputs.items()}))  # fmt: skip
        else:
            made.append(rollout)
        return inner_loss(rollout, t)

    adapted = adapt_policies(
        policy, policy_init, system, task, recording_loss, optimizer,
        differentiable_steps=differentiable_steps,
    )  # fmt: skip
    # made[k] is the rollout of the parameters after k steps (k = 0..K-1)
    return [*made[1:], policy_rollout(policy, adapted, system, task)], adapted


def adapt_policy(
    loss_fn: TaskLoss,
    policy: Policy,
    policy_init: Mapping[str, Tensor],
    system: System,
    task: ControlTask,
    optimizer: InnerOptimizer,
) -> PolicyTrace:
    """Train one fresh policy per problem with ``loss_fn`` (plain, not differentiable), and
    record the rollout before every step and after the last."""
    states, actions, losses = [], [], []

    def record(params: Params) -> None:
        with torch.no_grad():
            r = policy_rollout(policy, params, system, task)
            states.append(r.states)
            actions.append(r.actions)
            losses.append(loss_fn(r, task))

    final = adapt_policies(
        policy, policy_init, system, task, loss_fn, optimizer, differentiable=False,
        on_step=lambda _k, p, _loss: record(p),
    )  # fmt: skip
    record(final)
    return PolicyTrace(torch.stack(states), torch.stack(actions), torch.stack(losses))


def meta_test(
    loss: LearnedLoss,
    policy: Policy,
    policy_init: Mapping[str, Tensor],
    system: System,
    task: ControlTask,
    optimizer: InnerOptimizer,
) -> PolicyTrace:
    """Meta-test: train fresh policies with the learned loss alone.

    Args:
        loss: M_phi; its feature spec must use :data:`CONTROL_FEATURES` only.
        policy: the :data:`Policy`.
        policy_init: initial parameters, stacked per problem ``(B, *shape)``.
        system: the dynamics (``step(x, u)``).
        task: the test problems (start, goal, horizon; no extra information).
        optimizer: the inner optimizer (``steps`` = K).

    Returns:
        The :class:`PolicyTrace` (rollouts after 0..K steps; ``losses`` are M_phi's values).
    """
    nx, nu = task.start.shape[1], _action_dim(policy, policy_init, task)
    features = ControlFeatures.from_spec(loss.features, nx, nu)
    return adapt_policy(
        learned_control_loss(loss, features), policy, policy_init, system, task, optimizer
    )


def _action_dim(policy: Policy, params: Mapping[str, Tensor], task: ControlTask) -> int:
    with torch.no_grad():
        u = policy({k: v[:1] for k, v in params.items()}, task.start[:1])
    return int(u.shape[-1])


def meta_train_loss(
    loss: LearnedLoss,
    features: ControlFeatures,
    policy: Policy,
    policy_init: Mapping[str, Tensor],
    system: System,
    task: ControlTask,
    objective: TaskLoss,
    optimizer: InnerOptimizer,
    phi: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Rollout]:
    """The ML3 meta-objective over rollouts.

    Fresh policies take ``optimizer.steps`` differentiable steps on the learned loss of their
    own rollouts; the meta-train ``objective`` (task term plus extra terms) of the adapted
    policies' rollouts is averaged over problems.

    Args:
        phi: optional substitute for M_phi's parameters (functional use, e.g. gradcheck).

    Returns:
        ``(meta_loss, adapted_rollout)``: a scalar differentiable in M_phi's parameters (or in
        ``phi``), and the adapted rollout (for metrics).
    """
    learned = learned_control_loss(loss, features, phi)
    rollout, _ = adapted_rollout(policy, policy_init, system, task, learned, optimizer)
    return objective(rollout, task).mean(), rollout
