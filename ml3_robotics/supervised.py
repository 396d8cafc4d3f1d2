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

from ml3_robotics.inner import InnerOptimizer, Params, adapt, call, stack_params

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
