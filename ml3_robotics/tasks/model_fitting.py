"""Fitting a robot's dynamics model with a learned loss (issue 14).

A learned model-fitting loss M_psi reads, per transition and per state dimension, the model's
predicted change of that dimension next to the real one (both in the fitting data's normalised
units), whether the dimension is an angle or a velocity, and that joint's speed and torque. It is
one small network applied elementwise, so one loss fits arms with any number of links. A model
is fitted by K plain steps (SGD or Adam) on the mean of M_psi over the fitting data, exactly as
on the MSE or the Gaussian NLL (the baselines).

* :func:`fresh_model`, :func:`fitting_objective`, :func:`fit_model`: the model, the K-step
  inner loop and its three objectives (``"mse"``, ``"nll"``, a learned loss).
* :func:`rollout_error`: open-loop multi-step error of a fitted model on real trajectories,
  differentiable in the model's parameters (the meta-objective).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ml3_robotics.core.inner import InnerOptimizer, Params, adapt, call
from ml3_robotics.core.learned_loss import FeatureSpec
from ml3_robotics.models.learned_dynamics import (
    EnsembleConfig,
    ProbabilisticEnsemble,
    gaussian_nll,
)
from robots.arm import ArmConfig

#: What a model-fitting loss reads per transition and state dimension.
MODEL_LOSS_FEATURES = (
    "predicted_delta",  # the model's change of this dimension, normalised by the fitting data
    "target_delta",  # the real change, same units
    "error",  # predicted minus real
    "is_velocity",  # 0 for a joint angle, 1 for a joint velocity
    "joint_speed",  # |qdot| of this dimension's joint over its std in the fitting data
    "joint_torque",  # this joint's torque over its limit
)
FITTING_LOSSES = ("mse", "nll")
#: A fitting loss: a name in :data:`FITTING_LOSSES` or a learned loss (features -> values).
LossLike = str | Callable[[Tensor], Tensor]


def model_loss_feature_spec() -> FeatureSpec:
    return FeatureSpec(MODEL_LOSS_FEATURES)


@dataclass(frozen=True)
class Transitions:
    """Flattened transitions of some trajectories: ``x``, ``u``, ``x_next`` each ``(N, .)``."""

    x: Tensor
    u: Tensor
    x_next: Tensor

    @classmethod
    def of(
        cls, X: np.ndarray | Tensor, U: np.ndarray | Tensor, dtype: torch.dtype = torch.float32
    ) -> Transitions:
        """From trajectories ``X (M, T+1, nx)``, ``U (M, T, nu)``."""
        X, U = (
            torch.as_tensor(np.asarray(X), dtype=dtype),
            torch.as_tensor(np.asarray(U), dtype=dtype),
        )
        nx, nu = X.shape[-1], U.shape[-1]
        return cls(X[:, :-1].reshape(-1, nx), U.reshape(-1, nu), X[:, 1:].reshape(-1, nx))


def fresh_model(
    arm: ArmConfig,
    data: Transitions,
    hidden: tuple[int, ...],
    members: int,
    generator: torch.Generator,
) -> ProbabilisticEnsemble:
    """An untrained ensemble for ``arm`` with its normalisation set from ``data`` (what ``fit``
    would set), weights drawn from ``generator``."""
    config = EnsembleConfig(n_members=members, hidden=hidden, angle_dims=tuple(range(arm.n_links)))
    model = ProbabilisticEnsemble(
        arm.nx, arm.nu, arm.dt, config, generator=generator, dtype=data.x.dtype
    )
    model.set_normalization(data.x, data.u, data.x_next)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _NormalizedPass(nn.Module):
    """``functional_call`` target: the ensemble's pass in normalised units."""

    def __init__(self, model: ProbabilisticEnsemble, mean_only: bool) -> None:
        super().__init__()
        self.model = model
        self.mean_only = mean_only

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.model.forward_normalized(z, mean_only=self.mean_only)


def fitted_parameters(model: ProbabilisticEnsemble, loss: LossLike) -> Params:
    """The parameters a fitting loss trains, detached: all for the NLL; for the MSE and a
    learned loss, which read only the predicted mean, all but the log-variance bounds."""
    return {
        k: v.detach().clone()
        for k, v in model.named_parameters()
        if loss == "nll" or k not in ("max_logvar", "min_logvar")
    }


def model_loss_features(arm: ArmConfig, mean_n: Tensor, data: Transitions,
                        target_n: Tensor) -> Tensor:  # fmt: skip
    """Per-element features ``(E, N, nx, 6)`` of :data:`MODEL_LOSS_FEATURES`.

    Args:
        arm: the robot (its link count and torque limits).
        mean_n: ``(E, N, nx)`` predicted normalised deltas.
        data: the transitions (``N`` of them).
        target_n: ``(N, nx)`` real normalised deltas.
    """
    n = arm.n_links
    qd = data.x[:, n:]
    speed = qd.abs() / qd.std(0).clamp_min(1e-3)  # (N, n)
    torque = data.u / torch.as_tensor(arm.torque_limits, dtype=data.u.dtype)
    per_dim = torch.cat([speed, speed], dim=1), torch.cat([torque, torque], dim=1)  # (N, nx)
    is_vel = (torch.arange(arm.nx) >= n).to(mean_n.dtype).expand_as(target_n)
    target = target_n.expand_as(mean_n)
    return torch.stack(
        [mean_n, target, mean_n - target, is_vel.expand_as(mean_n),
         per_dim[0].expand_as(mean_n), per_dim[1].expand_as(mean_n)], dim=-1,
    )  # fmt: skip


def fitting_objective(
    model: ProbabilisticEnsemble,
    arm: ArmConfig,
    data: Transitions,
    loss: LossLike,
) -> Callable[[Params], Tensor]:
    """``params -> scalar`` fitting loss of ``model`` on ``data``.

    ``"mse"``: the members' mean squared error of the normalised delta; ``"nll"``: the Gaussian
    NLL of ``fit`` (with its log-variance bound term); a learned loss (a ``LearnedLoss`` on
    :data:`MODEL_LOSS_FEATURES`): the mean of M_psi over every transition, state dimension
    and member. Every member sees all of ``data``
    (no bootstrap: the few-trajectory regime).
    """
    if isinstance(loss, str) and loss not in FITTING_LOSSES:
        raise ValueError(
            f"loss: expected one of {list(FITTING_LOSSES)} or a LearnedLoss, got {loss!r}"
        )
    wrapper = _NormalizedPass(model, mean_only=loss != "nll")
    with torch.no_grad():
        z = model.normalize_input(data.x, data.u)
        y = model.normalize_delta(data.x_next - data.x)
    bound_coef = model.config.logvar_bound_coef

    def objective(params: Params) -> Tensor:
        mean, logvar = call(wrapper, {f"model.{k}": v for k, v in params.items()}, z)
        if loss == "mse":
            return (mean - y).pow(2).mean(dim=(1, 2)).sum()
        if loss == "nll":
            bound = params["max_logvar"].sum() - params["min_logvar"].sum()
            return gaussian_nll(mean, logvar, y).mean(dim=(1, 2)).sum() + bound_coef * bound
        return loss(model_loss_features(arm, mean, data, y)).mean()

    return objective


def fit_model(
    model: ProbabilisticEnsemble,
    arm: ArmConfig,
    data: Transitions,
    loss: LossLike,
    optimizer: InnerOptimizer,
    *,
    params: Params | None = None,
    differentiable: bool = False,
    differentiable_steps: int | None = None,
) -> Params:
    """``optimizer.steps`` full-batch steps of ``loss`` on ``data`` from ``params`` (default:
    the model's own :func:`fitted_parameters`). Differentiable: the result keeps the graph to
    M_psi's parameters. Returns the trained parameters (a subset for the MSE and a learned
    loss; ``call(model, params, ...)`` takes the rest from the model)."""
    start = fitted_parameters(model, loss) if params is None else params
    return adapt(
        fitting_objective(model, arm, data, loss), start, optimizer,
        differentiable=differentiable, differentiable_steps=differentiable_steps,
        gradients="autograd",
    )  # fmt: skip


def rollout_error(
    model: ProbabilisticEnsemble,
    params: Mapping[str, Tensor],
    X: np.ndarray | Tensor,
    U: np.ndarray | Tensor,
    scale: Tensor,
    horizon: int | None = None,
) -> Tensor:
    """Open-loop error of the model with ``params`` on real trajectories: per trajectory, the
    mean over steps of :func:`rollout_step_errors`, ``(M,)``, differentiable in ``params``."""
    return rollout_step_errors(model, params, X, U, scale, horizon).mean(1)


def rollout_step_errors(
    model: ProbabilisticEnsemble,
    params: Mapping[str, Tensor],
    X: np.ndarray | Tensor,
    U: np.ndarray | Tensor,
    scale: Tensor,
    horizon: int | None = None,
) -> Tensor:
    """Rolls the model with ``params`` from each ``X[:, 0]`` with the recorded ``U`` for
    ``horizon`` steps (all by default); per trajectory and step, the mean over dimensions of
    the squared error divided by ``scale**2``: ``(M, horizon)``, differentiable in ``params``.
    """
    dtype = next(iter(params.values())).dtype
    X, U = torch.as_tensor(np.asarray(X), dtype=dtype), torch.as_tensor(np.asarray(U), dtype=dtype)
    scale = scale.to(dtype)
    T = U.shape[1] if horizon is None else min(horizon, U.shape[1])
    x = X[:, 0]
    errors = []
    for t in range(T):
        x = call(model, params, x, U[:, t])
        errors.append(((x - X[:, t + 1]) / scale).pow(2).mean(-1))
    return torch.stack(errors, 1)


def imitate_mse(
    loss: nn.Module,
    samples: Sequence[tuple[ArmConfig, Transitions]],
    generator: torch.Generator,
    *,
    steps: int = 500,
    lr: float = 3e-3,
) -> float:
    """Start M_psi at the MSE: regress its value onto the squared error on features of real
    transitions with synthetic predictions (the real change plus noise of random size).

    Meta-training then begins where the baseline is instead of at a random loss, whose first
    fits are far worse than any baseline's. Uses no meta-objective and no test data.

    Returns:
        The final regression error (squared, relative to ``1 +`` the target).
    """
    features = []
    for arm, data in samples:
        mean = data.x_next - data.x
        std = mean.std(0).clamp_min(1e-6)
        y = (mean - mean.mean(0)) / std
        size = torch.exp(torch.empty(y.shape[0], 1).uniform_(-4.6, 1.1, generator=generator))
        pred = y + size * torch.randn(y.shape, generator=generator)
        features.append(model_loss_features(arm, pred.unsqueeze(0), data, y).reshape(-1, 6))
    f = torch.cat(features).to(next(loss.parameters()).dtype)
    target = f[:, 2] ** 2
    optimizer = torch.optim.Adam(loss.parameters(), lr=lr)
    value = torch.tensor(float("nan"))
    for _ in range(steps):
        optimizer.zero_grad()
        # relative to the target's size: small errors matter as much as large ones
        value = ((loss(f) - target).pow(2) / (1 + target)).mean()
        value.backward()
        optimizer.step()
    return float(value.detach())
