"""Supervised ML3 problems: sine regression (paper IV.A.1) and the shaped sine (paper IV.B).

The pieces are pure functions of parameter dicts so that a batch of tasks runs under vmap.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml3_robotics.core.inner import InnerOptimizer, Params, adapt, call, stack_params
from ml3_robotics.core.meta_trainer import OuterStep

SINE_FEATURES = ("y_pred", "y_target")
SHAPED_SINE_FEATURES = ("x", "y_pred", "y_target")


@dataclass(frozen=True)
class SineTasks:
    """A distribution of sine tasks ``y = A sin(f (x - phase))``.

    Attributes:
        amplitude, phase, frequency, x_range: ``(low, high)`` of uniform distributions.
    """

    amplitude: tuple[float, float] = (1.0, 1.0)
    phase: tuple[float, float] = (math.pi, math.pi)
    frequency: tuple[float, float] = (1.0, 1.0)
    x_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        for name in ("amplitude", "phase", "frequency", "x_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: expected low <= high, got ({lo}, {hi})")

    def sample(
        self, n_tasks: int, n_points: int, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Task parameters and inputs.

        Returns:
            ``params (n_tasks, 3)`` as (amplitude, frequency, phase), and two independent input
            sets ``x_train, x_heldout`` of shape ``(n_tasks, n_points, 1)``.
        """

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            lo, hi = bounds
            return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=dtype)

        params = torch.stack(
            [
                uniform(self.amplitude, n_tasks),
                uniform(self.frequency, n_tasks),
                uniform(self.phase, n_tasks),
            ],
            dim=1,
        )
        x_train = uniform(self.x_range, n_tasks, n_points, 1)
        x_heldout = uniform(self.x_range, n_tasks, n_points, 1)
        return params, x_train, x_heldout


def sine(params: Tensor, x: Tensor) -> Tensor:
    """``A sin(f (x - phase))`` for ``params (..., 3)`` and ``x (..., N, 1)``."""
    a, f, ph = (params[..., i, None, None] for i in range(3))
    return a * torch.sin(f * (x - ph))


def regressor(hidden: tuple[int, ...], activation: type[nn.Module] = nn.ReLU) -> nn.Module:
    """The paper's optimizee: an MLP ``1 -> hidden -> 1`` (default ``(100, 10)``)."""
    widths = (1, *hidden)
    layers: list[nn.Module] = []
    for w_in, w_out in itertools.pairwise(widths):
        layers += [nn.Linear(w_in, w_out), activation()]
    layers.append(nn.Linear(widths[-1], 1))
    return nn.Sequential(*layers)


def xavier_init(model: nn.Module, n: int, generator: torch.Generator, dtype: torch.dtype) -> Params:
    """``n`` independent initialisations stacked on a leading axis: Xavier-uniform weights and
    zero biases, as the paper's code resets its optimizees."""
    inits = []
    for _ in range(n):
        p: Params = {}
        for name, value in model.named_parameters():
            if value.ndim == 2:
                fan_out, fan_in = value.shape
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p[name] = (
                    torch.rand(value.shape, generator=generator, dtype=dtype) * 2 - 1
                ) * bound
            else:
                p[name] = torch.zeros(value.shape, dtype=dtype)
        inits.append(p)
    return stack_params(inits)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return ((pred - target) ** 2).mean()


LossFn = Callable[[Tensor, Tensor], Tensor]


def learned_regression_loss(loss: nn.Module, phi: Mapping[str, Tensor] | None = None) -> LossFn:
    """``(y_pred, y_target) -> scalar``: the mean of M_phi over the points."""

    def fn(pred: Tensor, target: Tensor) -> Tensor:
        features = torch.cat([pred, target], dim=-1)
        values = loss(features) if phi is None else call(loss, phi, features)
        return values.mean()

    return fn


def sine_meta_loss(
    model: nn.Module,
    loss: nn.Module,
    tasks: SineTasks,
    inner: InnerOptimizer,
    *,
    batch: int,
    n_points: int,
    generator: torch.Generator,
    vectorize: bool = True,
) -> Tensor:
    """The ML3 meta-objective for sine regression.

    Fresh optimizees (one per task) take ``inner.steps`` differentiable steps on M_phi's loss
    of the training points; the task loss is the MSE of the adapted optimizee on held-out
    points of the same task. Returns the mean over the batch, differentiable in M_phi.
    """
    dtype = next(loss.parameters()).dtype
    theta0 = xavier_init(model, batch, generator, dtype)
    params, x_tr, x_ho = tasks.sample(batch, n_points, generator, dtype)
    y_tr, y_ho = sine(params, x_tr), sine(params, x_ho)
    train_loss = learned_regression_loss(loss)

    def one_task(theta: Params, x: Tensor, y: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        adapted = adapt(lambda p: train_loss(call(model, p, x), y), theta, inner)
        return mse(call(model, adapted, xq), yq)

    if vectorize:
        return torch.func.vmap(one_task)(theta0, x_tr, y_tr, x_ho, y_ho).mean()
    per_task = [
        one_task({k: v[i] for k, v in theta0.items()}, x_tr[i], y_tr[i], x_ho[i], y_ho[i])
        for i in range(batch)
    ]
    return torch.stack(per_task).mean()


def train_and_trace(
    model: nn.Module,
    theta0: Params,
    loss_fn: LossFn,
    inner: InnerOptimizer,
    x: Tensor,
    y: Tensor,
    x_eval: Tensor,
    y_eval: Tensor,
) -> Tensor:
    """Plain (non-differentiable) training of one optimizee, tracing the held-out MSE.

    Returns:
        ``(inner.steps + 1,)`` held-out MSE before each step and after the last.
    """
    trace: list[Tensor] = []

    def record(_k: int, p: Params, _loss: Tensor) -> None:
        with torch.no_grad():
            trace.append(mse(call(model, p, x_eval), y_eval))

    with torch.no_grad():
        final = adapt(
            lambda p: loss_fn(call(model, p, x), y),
            theta0,
            inner,
            differentiable=False,
            on_step=record,
        )
        trace.append(mse(call(model, final, x_eval), y_eval))
    return torch.stack(trace)


def evaluate_sine(
    model: nn.Module,
    loss_fn: LossFn,
    tasks: SineTasks,
    inner: InnerOptimizer,
    *,
    n_tasks: int,
    n_points: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Held-out MSE traces of fresh optimizees trained with ``loss_fn`` on ``n_tasks`` tasks.

    The task set and the initialisations depend only on ``seed``, so two losses evaluated
    with the same seed see the same tasks, points and starting weights.

    Returns:
        ``(n_tasks, inner.steps + 1)`` held-out MSE per task and step.
    """
    g = torch.Generator().manual_seed(seed)
    params, x_tr, x_ho = tasks.sample(n_tasks, n_points, g, dtype)
    theta0 = xavier_init(model, n_tasks, g, dtype)
    y_tr, y_ho = sine(params, x_tr), sine(params, x_ho)

    def one_task(theta: Params, x: Tensor, y: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return train_and_trace(model, theta, loss_fn, inner, x, y, xq, yq)

    return torch.func.vmap(one_task)(theta0, x_tr, y_tr, x_ho, y_ho)


# -- shaped sine (paper IV.B): optimizee sin(theta x), physics prior at meta-train time ---------


#
# Everything below works on one scalar parameter per task, ``{"theta": ()}``, so a batch of tasks
# is a ``(B,)`` tensor under vmap. The learned loss reads per point (x, y_pred, y_target)
# (SHAPED_SINE_FEATURES) and is averaged over the points.

ShapedLossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ShapedSineTasks:
    """A distribution of shaped-sine tasks ``y = sin(theta* x)`` with a starting ``theta_0``.

    Attributes:
        theta_range: ``(low, high)`` of the uniform target frequency theta* (paper: [-5, 5]).
        x_range: ``(low, high)`` of the uniform inputs (paper: [-5, 5]).
        theta0_range: ``(low, high)`` of the uniform starting frequency (paper's code: 0.1 fixed,
            i.e. ``(0.1, 0.1)``; random pairs are needed for the recovery metric).
    """

    theta_range: tuple[float, float] = (-5.0, 5.0)
    x_range: tuple[float, float] = (-5.0, 5.0)
    theta0_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        for name in ("theta_range", "x_range", "theta0_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: expected low <= high, got ({lo}, {hi})")

    def sample(
        self, n_tasks: int, n_points: int, generator: torch.Generator, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw tasks.

        Returns:
            ``theta_star (n_tasks,)``, ``theta0 (n_tasks,)``, ``x (n_tasks, n_points)`` and
            ``y = sin(theta_star x)`` of shape ``(n_tasks, n_points)``.
        """

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            lo, hi = bounds
            return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=dtype)

        theta_star = uniform(self.theta_range, n_tasks)
        theta0 = uniform(self.theta0_range, n_tasks)
        x = uniform(self.x_range, n_tasks, n_points)
        return theta_star, theta0, x, torch.sin(theta_star[:, None] * x)


def shaped_sine_features(x: Tensor, y_pred: Tensor, y_target: Tensor) -> Tensor:
    """Stack the per-point features in SHAPED_SINE_FEATURES order: ``(..., N) -> (..., N, 3)``."""
    return torch.stack([x, y_pred, y_target], dim=-1)


def learned_shaped_loss(loss: nn.Module) -> ShapedLossFn:
    """``(x, y_pred, y_target) -> scalar``: the mean of M_phi over the points."""

    def fn(x: Tensor, pred: Tensor, target: Tensor) -> Tensor:
        return loss(shaped_sine_features(x, pred, target)).mean()

    return fn


def shaped_mse(x: Tensor, pred: Tensor, target: Tensor) -> Tensor:
    """The plain regression loss with the shaped-sine signature (``x`` unused)."""
    del x
    return ((pred - target) ** 2).mean()


def shaped_sine_train(
    loss_fn: ShapedLossFn, theta0: Tensor, x: Tensor, y: Tensor, inner: InnerOptimizer
) -> Tensor:
    """Meta-test: plain gradient steps on ``loss_fn`` alone, for a batch of tasks.

    Deliberately takes no theta* and no prior: at meta-test the learner sees only its points.

    Args:
        loss_fn: ``(x (N,), y_pred (N,), y_target (N,)) -> scalar``.
        theta0: ``(B,)`` starting frequencies.
        x: ``(B, N)`` inputs; y: ``(B, N)`` targets.
        inner: the optimizer (``inner.steps`` steps).

    Returns:
        ``(B, inner.steps + 1)`` the trajectory of theta, starting with ``theta0``.
    """

    def one_task(th0: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
        trace: list[Tensor] = []

        def record(_k: int, p: Params, _loss: Tensor) -> None:
            trace.append(p["theta"])

        final = adapt(
            lambda p: loss_fn(xs, torch.sin(p["theta"] * xs), ys),
            {"theta": th0},
            inner,
            differentiable=False,
            on_step=record,
        )
        trace.append(final["theta"])
        return torch.stack(trace)

    with torch.no_grad():
        return torch.func.vmap(one_task)(theta0, x, y)


def shaped_sine_landscape(loss_fn: ShapedLossFn, thetas: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The loss of ``sin(theta x)`` against targets ``y`` for every theta in ``thetas``.

    Args:
        thetas: ``(G,)`` frequencies; x, y: ``(N,)`` one task's points.

    Returns:
        ``(G,)`` loss values.
    """
    with torch.no_grad():
        return torch.func.vmap(lambda th: loss_fn(x, torch.sin(th * x), y))(thetas)


def recovery_rate(trace: Tensor, theta_star: Tensor, tol: float = 0.1) -> Tensor:
    """Fraction of tasks with ``|theta - theta*| < tol`` at every step.

    Args:
        trace: ``(B, T)`` theta trajectories; theta_star: ``(B,)``.

    Returns:
        ``(T,)`` fractions in [0, 1].
    """
    if not tol > 0:
        raise ValueError(f"tol: expected a positive tolerance, got {tol}")
    return ((trace - theta_star[:, None]).abs() < tol).to(trace.dtype).mean(dim=0)


class ShapedSineStepper:
    """The paper's truncated meta-objective, one meta-update per inner step.

    The paper's code updates M_phi after every single inner step: theta takes one step on
    M_phi's loss, the task loss of the updated theta is backpropagated into phi, and theta is
    detached before its next step. Here each call is one such step for a vmapped batch of tasks;
    every ``inner.steps`` calls a fresh batch is drawn. The in-flight batch (targets, inputs,
    current theta) is the problem state that :class:`~ml3_robotics.core.meta_trainer.MetaTrainer`
    checkpoints, so a resumed run repeats an uninterrupted one exactly.

    Use it as the trainer's ``objective`` and ``state``; one outer iteration of the paper
    (a batch of tasks taken through K steps) is ``inner.steps`` meta-updates here.

    Args:
        loss: M_phi (reads SHAPED_SINE_FEATURES).
        tasks: the task distribution.
        inner: inner optimizer; ``inner.steps`` is the episode length K.
        batch: tasks per meta-update.
        n_points: points per task.
        shaped: task loss ``(theta - theta*)^2`` (physics prior) instead of the MSE.
    """

    def __init__(
        self,
        loss: nn.Module,
        tasks: ShapedSineTasks,
        inner: InnerOptimizer,
        *,
        batch: int,
        n_points: int,
        shaped: bool,
    ) -> None:
        if batch < 1 or n_points < 1:
            raise ValueError(f"batch, n_points: expected ints >= 1, got {batch}, {n_points}")
        self.loss = loss
        self.tasks = tasks
        self.inner = inner
        self.batch = batch
        self.n_points = n_points
        self.shaped = shaped
        self._state: dict[str, Tensor] = {}

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self._state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self._state = {k: v.clone() for k, v in state.items()}

    def __call__(self, update: int, generator: torch.Generator) -> OuterStep:
        dtype = next(self.loss.parameters()).dtype
        step = update % self.inner.steps
        if step == 0 or not self._state:
            theta_star, theta0, x, y = self.tasks.sample(
                self.batch, self.n_points, generator, dtype
            )
            self._state = {"theta_star": theta_star, "theta": theta0, "x": x, "y": y}
        s = self._state
        train_loss = learned_shaped_loss(self.loss)
        one_step = InnerOptimizer(self.inner.method, lr=self.inner.lr, steps=1)
        shaped = self.shaped

        def one_task(th: Tensor, t_star: Tensor, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
            def objective(p: Params) -> Tensor:
                return train_loss(xs, torch.sin(p["theta"] * xs), ys)

            new = adapt(objective, {"theta": th}, one_step)["theta"]
            if shaped:
                return (new - t_star) ** 2, new
            return ((torch.sin(new * xs) - ys) ** 2).mean(), new

        per_task, new_theta = torch.func.vmap(one_task)(
            s["theta"].detach(), s["theta_star"], s["x"], s["y"]
        )
        self._state = {**s, "theta": new_theta.detach()}
        error = (new_theta.detach() - s["theta_star"]).abs()
        return OuterStep(
            per_task.mean(), {"inner_step": float(step), "abs_error": float(error.mean())}
        )
