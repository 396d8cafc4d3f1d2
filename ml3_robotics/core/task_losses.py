"""Task losses over rollouts, and the extra-information terms that exist only at meta-train time.

Everything here is a pure function of a :class:`Rollout` (what a policy did in a system) and data
the term was built with. Two kinds of terms, deliberately different types:

* **Task terms** (:class:`FinalDistance`, :class:`RunningDistance`, :class:`ControlEffort`) read
  a rollout and a :class:`ControlTask` (start, goal, horizon): what every user of a controller
  knows, at meta-train and at meta-test time.
* **Extra-information terms** (:class:`IntermediateGoal`, :class:`Demonstrations`,
  :class:`PhysicsPrior`, all :class:`ExtraTerm`) read a rollout and *their own* data (a waypoint,
  expert trajectories, a physics law). They are combined with a task term into a
  :class:`MetaTrainObjective`, the only place they are accepted. Meta-test code
  (:func:`ml3_robotics.core.policy_search.meta_test`) takes a learned loss, a policy initialisation,
  a system and :class:`ControlTask` s, none of which can carry an extra term; the learned loss
  reads only the per-step features of :data:`ml3_robotics.core.policy_search.CONTROL_FEATURES`.

All terms return one value per rollout, shape ``(B,)``, and are weighted by ``weight``; ``+``
composes task terms into a :class:`TermSum`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "ControlEffort",
    "ControlTask",
    "Demonstrations",
    "ExtraTerm",
    "FinalDistance",
    "IntermediateGoal",
    "MetaTrainObjective",
    "PhysicsPrior",
    "Rollout",
    "RunningDistance",
    "TaskTerm",
    "TermSum",
    "TrajectoryDistance",
]


def _check_weight(weight: float) -> None:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ValueError(f"weight: expected a finite number, got {weight!r}")
    if weight < 0:
        raise ValueError(f"weight: expected a number >= 0, got {weight!r}")


@dataclass(frozen=True)
class Rollout:
    """What a policy did: states, actions and optional system outputs, batched over rollouts.

    Attributes:
        states: ``(B, T+1, nx)``; ``states[:, 0]`` is the start state.
        actions: ``(B, T, nu)``; ``actions[:, t]`` moved ``states[:, t]`` to ``states[:, t+1]``.
        outputs: optional named per-step system outputs, each ``(B, T+1, d)`` (for example
            end-effector positions from forward kinematics). Outputs are measurements of the
            rollout, not extra information about the task.
    """

    states: Tensor
    actions: Tensor
    outputs: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.states, Tensor) or self.states.ndim != 3:
            raise ValueError(
                "states: expected a tensor (B, T+1, nx), got "
                f"{getattr(self.states, 'shape', self.states)!r}"
            )
        if not isinstance(self.actions, Tensor) or self.actions.ndim != 3:
            raise ValueError(
                f"actions: expected a tensor (B, T, nu), got "
                f"{getattr(self.actions, 'shape', self.actions)!r}"
            )
        b, t1, _ = self.states.shape
        if self.actions.shape[:2] != (b, t1 - 1):
            raise ValueError(
                f"actions: expected shape (B={b}, T={t1 - 1}, nu) to match states "
                f"{tuple(self.states.shape)}, got {tuple(self.actions.shape)}"
            )
        for name, value in self.outputs.items():
            if not isinstance(value, Tensor) or value.shape[:2] != (b, t1):
                raise ValueError(
                    f"outputs[{name!r}]: expected shape (B={b}, T+1={t1}, d), got "
                    f"{getattr(value, 'shape', value)!r}"
                )
        object.__setattr__(self, "outputs", dict(self.outputs))

    @property
    def horizon(self) -> int:
        return self.actions.shape[1]


@dataclass(frozen=True)
class ControlTask:
    """A control problem as seen at meta-test time: where to start, where to go, for how long.

    There is deliberately no field for extra information (no waypoint, demonstration or prior):
    a test task cannot carry it, so meta-test code cannot read it.

    Attributes:
        start: ``(B, nx)`` start states (one per problem).
        goal: ``(B, nx)`` goal states, or ``(nx,)`` shared by all problems.
        horizon: number of steps T.
    """

    start: Tensor
    goal: Tensor
    horizon: int

    def __post_init__(self) -> None:
        if not isinstance(self.start, Tensor) or self.start.ndim != 2:
            raise ValueError(
                "start: expected a tensor (B, nx), got "
                f"{getattr(self.start, 'shape', self.start)!r}"
            )
        goal = self.goal
        if not isinstance(goal, Tensor):
            raise TypeError(f"goal: expected a tensor (B, nx) or (nx,), got {type(goal).__name__}")
        if goal.ndim == 1:
            goal = goal.expand_as(self.start)
        if goal.shape != self.start.shape:
            raise ValueError(
                f"goal: expected shape {tuple(self.start.shape)} or ({self.start.shape[1]},), "
                f"got {tuple(self.goal.shape)}"
            )
        object.__setattr__(self, "goal", goal)
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {self.horizon!r}")

    @property
    def batch(self) -> int:
        return self.start.shape[0]

    def select(self, index: Tensor | slice | Sequence[int]) -> ControlTask:
        """The sub-batch of problems at ``index``."""
        return ControlTask(self.start[index], self.goal[index], self.horizon)


# -- task terms ------------------------------------------------------------------------------


@runtime_checkable
class TaskTerm(Protocol):
    """A task loss: ``term(rollout, task) -> (B,)``."""

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor: ...


def _norm(diff: Tensor, state_weights: tuple[float, ...] | None) -> Tensor:
    if state_weights is not None:
        diff = diff * torch.tensor(state_weights, dtype=diff.dtype, device=diff.device)
    # sqrt(x + tiny) instead of vector_norm: the Euclidean norm's gradient is undefined at 0,
    # and an exact hit would otherwise give NaN meta-gradients.
    return torch.sqrt((diff * diff).sum(-1) + 1e-12)


def _check_state_weights(state_weights: tuple[float, ...] | None) -> tuple[float, ...] | None:
    if state_weights is None:
        return None
    out = tuple(float(w) for w in state_weights)
    if not out or any(not (math.isfinite(w) and w >= 0) for w in out):
        raise ValueError(f"state_weights: expected finite numbers >= 0, got {state_weights!r}")
    return out


@dataclass(frozen=True)
class _Weighted:
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_weight(self.weight)

    def __add__(self, other: object) -> TermSum:
        return TermSum((self, other))  # type: ignore[arg-type]


@dataclass(frozen=True)
class _StateDistance(_Weighted):
    """A weighted distance of states to the goal, with optional per-dimension weights."""

    state_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "state_weights", _check_state_weights(self.state_weights))


@dataclass(frozen=True)
class FinalDistance(_StateDistance):
    """``weight * ||W (x_T - goal)||``: the paper's MountainCar task loss (W = identity).

    Attributes:
        weight: multiplier (>= 0).
        state_weights: optional per-state-dimension weights W (diagonal).
    """

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        return self.weight * _norm(rollout.states[:, -1] - task.goal, self.state_weights)


@dataclass(frozen=True)
class RunningDistance(_StateDistance):
    """``weight * mean_{t=1..T} ||W (x_t - goal)||`` (the reacher's running term)."""

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        diff = rollout.states[:, 1:] - task.goal[:, None]
        return self.weight * _norm(diff, self.state_weights).mean(-1)


def _check_first(first: Any) -> None:
    if isinstance(first, bool) or not isinstance(first, int) or first < 0:
        raise ValueError(f"first: expected a state index >= 0, got {first!r}")


@dataclass(frozen=True)
class TrajectoryDistance(_StateDistance):
    """``weight * ||W (X_{first..T} - goal)||_F``: the norm over the trajectory at once, i.e.
    ``sqrt(sum_t ||W (x_t - goal)||^2)``; the task loss of the paper's MountainCar code.

    Attributes:
        first: the first state covered: 1 (default) from the first step on, 0 with the start
            state as the paper's code does (a constant: the value moves, the gradient does not),
            15 for the goal part of the paper's intermediate-goal objective.
    """

    first: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_first(self.first)

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        if self.first > rollout.horizon:
            raise ValueError(f"first: {self.first} exceeds the rollout's horizon {rollout.horizon}")
        diff = rollout.states[:, self.first :] - task.goal[:, None]
        return self.weight * _norm(diff.flatten(1), _tile(self.state_weights, diff.shape[1]))


def _tile(weights: tuple[float, ...] | None, times: int) -> tuple[float, ...] | None:
    return None if weights is None else weights * times


@dataclass(frozen=True)
class ControlEffort(_Weighted):
    """``weight * mean_t ||u_t||^2``."""

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        return self.weight * (rollout.actions**2).sum(-1).mean(-1)


@dataclass(frozen=True)
class TermSum:
    """The sum of task terms (build it with ``+``)."""

    terms: tuple[TaskTerm, ...]

    def __post_init__(self) -> None:
        flat: list[TaskTerm] = []
        for term in self.terms:
            if isinstance(term, ExtraTerm):
                raise TypeError(
                    f"terms: {type(term).__name__} is extra information; combine it with a task "
                    "term through MetaTrainObjective(task_term, extras=(...)), not with '+'"
                )
            if isinstance(term, TermSum):
                flat.extend(term.terms)
            elif callable(term):
                flat.append(term)
            else:
                raise TypeError(f"terms: expected task terms, got {type(term).__name__}")
        if not flat:
            raise ValueError("terms: expected at least one term, got none")
        object.__setattr__(self, "terms", tuple(flat))

    def __add__(self, other: object) -> TermSum:
        return TermSum((self, other))  # type: ignore[arg-type]

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        return torch.stack([term(rollout, task) for term in self.terms]).sum(0)


# -- extra-information terms (meta-train only) -----------------------------------------------


@dataclass(frozen=True)
class ExtraTerm:
    """Base of extra-information terms: ``term(rollout) -> (B,)``, a function of the rollout and
    the term's own data only. Accepted only by :class:`MetaTrainObjective`."""

    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_weight(self.weight)

    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, rollout: Rollout) -> Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class IntermediateGoal(ExtraTerm):
    """Pull the first ``steps`` states towards a waypoint (the paper's shaped MountainCar loss).

    Value: ``weight * mean_t ||W (x_t - state)||`` (``reduction="mean"``) or
    ``weight * sqrt(sum_t ||W (x_t - state)||^2)`` (``"norm"``, the paper's code), over the
    ``steps`` states from ``first`` on.

    Attributes:
        state: ``(nx,)`` the waypoint.
        steps: how many states it applies to (>= 1; the last is at most T).
        first: the first state it applies to: 1 (default) from the first step on, 0 with the
            start state as the paper's code does (its ``s[:15]``).
        weight: multiplier (>= 0).
        state_weights: optional diagonal weights W.
        reduction: ``"mean"`` or ``"norm"`` over the steps.
    """

    state: tuple[float, ...] = ()
    steps: int = 1
    state_weights: tuple[float, ...] | None = None
    reduction: str = "mean"
    first: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        state = tuple(float(s) for s in self.state)
        if not state or not all(math.isfinite(s) for s in state):
            raise ValueError(
                f"state: expected a non-empty tuple of finite numbers, got {self.state!r}"
            )
        object.__setattr__(self, "state", state)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {self.steps!r}")
        object.__setattr__(self, "state_weights", _check_state_weights(self.state_weights))
        if self.reduction not in ("mean", "norm"):
            raise ValueError(f"reduction: expected 'mean' or 'norm', got {self.reduction!r}")
        _check_first(self.first)

    def __call__(self, rollout: Rollout) -> Tensor:
        if self.first + self.steps - 1 > rollout.horizon:
            raise ValueError(
                f"steps: states {self.first}..{self.first + self.steps - 1} exceed the rollout's "
                f"horizon {rollout.horizon}"
            )
        if rollout.states.shape[-1] != len(self.state):
            raise ValueError(
                f"state: has {len(self.state)} entries, the rollout's states have "
                f"{rollout.states.shape[-1]}"
            )
        target = torch.tensor(self.state, dtype=rollout.states.dtype, device=rollout.states.device)
        diff = rollout.states[:, self.first : self.first + self.steps] - target
        if self.reduction == "norm":
            weights = _tile(self.state_weights, self.steps)
            return self.weight * _norm(diff.flatten(1), weights)
        return self.weight * _norm(diff, self.state_weights).mean(-1)


@dataclass(frozen=True, eq=False)
class Demonstrations(ExtraTerm):
    """Imitation of expert demonstrations, one per rollout in the batch.

    Value: ``weight * (state_weight * mean_t ||x_t - x*_t||^2
    + action_weight * mean_t ||u_t - u*_t||^2)`` over the steps the demonstration covers.

    Attributes:
        states: ``(B, T+1, nx)`` expert states, or None.
        actions: ``(B, T, nu)`` expert actions, or None (at least one of the two).
        state_weight, action_weight: relative weights (>= 0).
        output: optional name of a rollout output to imitate instead of the states (for example
            ``"ee"``: end-effector positions); ``states`` then holds that output's expert values.
    """

    states: Tensor | None = None
    actions: Tensor | None = None
    state_weight: float = 1.0
    action_weight: float = 1.0
    output: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.states is None and self.actions is None:
            raise ValueError("states/actions: expected at least one demonstration array, got none")
        for name in ("states", "actions"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, Tensor) or value.ndim != 3):
                raise ValueError(
                    f"{name}: expected a tensor (B, T, d), got {getattr(value, 'shape', value)!r}"
                )
            if value is not None:
                object.__setattr__(self, name, value.detach())
        _check_weight(self.state_weight)
        _check_weight(self.action_weight)

    def __call__(self, rollout: Rollout) -> Tensor:
        total = rollout.states.new_zeros(rollout.states.shape[0])
        if self.states is not None:
            if self.output is not None:
                if self.output not in rollout.outputs:
                    raise KeyError(
                        f"output: the rollout has no output {self.output!r} "
                        f"(it has {sorted(rollout.outputs)})"
                    )
                ours = rollout.outputs[self.output]
            else:
                ours = rollout.states
            n = min(ours.shape[1], self.states.shape[1])
            diff = ours[:, :n] - self.states[:, :n].to(ours.dtype)
            total = total + self.state_weight * (diff**2).sum(-1).mean(-1)
        if self.actions is not None:
            n = min(rollout.actions.shape[1], self.actions.shape[1])
            diff = rollout.actions[:, :n] - self.actions[:, :n].to(rollout.actions.dtype)
            total = total + self.action_weight * (diff**2).sum(-1).mean(-1)
        return self.weight * total


@dataclass(frozen=True, eq=False)
class PhysicsPrior(ExtraTerm):
    """A physics-derived law as a penalty: ``weight * fn(rollout)``.

    Attributes:
        fn: ``fn(rollout) -> (B,)``, differentiable, closing over its own physical data (for
            example the gravity-compensating torque of the goal posture).
        label: name for logging.
    """

    fn: Callable[[Rollout], Tensor] | None = None
    label: str = "physics_prior"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.fn):
            raise TypeError(f"fn: expected a callable rollout -> (B,), got {self.fn!r}")

    @property
    def name(self) -> str:
        return self.label

    def __call__(self, rollout: Rollout) -> Tensor:
        assert self.fn is not None  # checked in __post_init__
        value = self.fn(rollout)
        if value.shape != rollout.states.shape[:1]:
            raise ValueError(
                f"fn: expected a value of shape (B={rollout.states.shape[0]},), got "
                f"{tuple(value.shape)}"
            )
        return self.weight * value


@dataclass(frozen=True, eq=False)
class MetaTrainObjective:
    """The meta-train task loss: a task term plus extra-information terms.

    ``objective(rollout, task) = task_term(rollout, task) + sum_e e(rollout)``, shape ``(B,)``.

    Attributes:
        task_term: the task loss (a :class:`TaskTerm`, e.g. ``FinalDistance()``).
        extras: extra-information terms, used at meta-train time only.
    """

    task_term: TaskTerm
    extras: tuple[ExtraTerm, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.task_term, ExtraTerm) or not callable(self.task_term):
            raise TypeError(
                f"task_term: expected a task term (rollout, task) -> (B,), got "
                f"{type(self.task_term).__name__}"
            )
        extras = tuple(self.extras)
        for e in extras:
            if not isinstance(e, ExtraTerm):
                raise TypeError(
                    f"extras: expected ExtraTerm instances (IntermediateGoal, Demonstrations, "
                    f"PhysicsPrior), got {type(e).__name__}"
                )
        object.__setattr__(self, "extras", extras)

    def terms(self, rollout: Rollout, task: ControlTask) -> dict[str, Tensor]:
        """Each term's ``(B,)`` value: ``"task"`` and one entry per extra (by name)."""
        out = {"task": self.task_term(rollout, task)}
        for i, e in enumerate(self.extras):
            key = e.name if e.name not in out else f"{e.name}_{i}"
            out[key] = e(rollout)
        return out

    def __call__(self, rollout: Rollout, task: ControlTask) -> Tensor:
        task_value, *extra_values = self.terms(rollout, task).values()
        return task_value + sum(extra_values)  # (task + (e1 + e2 ...): fixed summation order)

    def without_extras(self) -> MetaTrainObjective:
        return dataclasses.replace(self, extras=())
