"""Meta-training a model-fitting loss over a distribution of arms (issue 14).

Each outer iteration draws a few meta-training arms; for each, a handful of its babbling
trajectories (5 or 20, say) and a fresh model. The model takes K plain steps on M_psi's loss of
those transitions; the meta-objective is the fitted model's open-loop error on the arm's held-out
trajectories, plus, for the physics-prior variants, its error on true-simulator data the fitting
data never shows: rollouts from broad starts (random angles and speeds), or the arm's reaching
motions (iLQR on the true model, the states a planner needs). Neither term exists at meta-test,
where M_psi alone fits a model to a new arm's data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.mbrl.arm_data import ArmData
from ml3_robotics.tasks.model_fitting import (
    LossLike,
    Transitions,
    fit_model,
    fresh_model,
    rollout_error,
)


@dataclass(frozen=True)
class ModelFitSettings:
    """How a model is fitted at meta-train and meta-test time (the same for every loss).

    Attributes:
        hidden: hidden widths of the model.
        members: ensemble members.
        optimizer: the K-step inner optimizer.
        trajectories: fitting-set sizes (trajectories) drawn from at meta-train time.
    """

    hidden: tuple[int, ...]
    members: int
    optimizer: InnerOptimizer
    trajectories: tuple[int, ...]


def draw_fit(
    data: ArmData, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> Transitions:
    """``n`` trajectories of ``data``'s fitting pool, drawn without replacement."""
    pool = data.fit_X.shape[0]
    if not 1 <= n <= pool:
        raise ValueError(f"n: expected 1..{pool} fitting trajectories (the pool), got {n}")
    idx = torch.randperm(pool, generator=generator)[:n].numpy()
    return Transitions.of(data.fit_X[idx], data.fit_U[idx], dtype)


class ModelLossObjective:
    """The meta-objective of a model-fitting loss (see the module docstring): an
    :class:`~ml3_robotics.core.distributed.ItemObjective` whose items are meta-training arms
    (:class:`~ml3_robotics.core.meta_trainer.MetaTrainer` takes their mean and its gradient).

    Args:
        loss: M_psi.
        arms: the meta-training arms' data.
        settings: model and inner loop.
        arms_per_iteration: arms per outer iteration.
        meta_horizon: steps of the open-loop rollouts scored (at most the data's horizon).
        prior_weight: weight of the broad-start rollouts' term (0: none).
        reach_weight: weight of the reaching motions' term (0: none).
        differentiable_steps: truncate the meta-gradient to the last this many inner steps.
    """

    def __init__(
        self,
        loss: LossLike,
        arms: Sequence[ArmData],
        settings: ModelFitSettings,
        *,
        arms_per_iteration: int,
        meta_horizon: int,
        prior_weight: float,
        reach_weight: float = 0.0,
        differentiable_steps: int | None = None,
    ) -> None:
        if prior_weight > 0 and any(a.prior_X is None for a in arms):
            raise ValueError("prior_weight > 0 needs every arm's prior rollouts (n_prior > 0)")
        if reach_weight > 0 and any(a.reach_X is None for a in arms):
            raise ValueError("reach_weight > 0 needs every arm's reaching motions (n_reach > 0)")
        self.loss = loss
        self.arms = list(arms)
        self.settings = settings
        self.arms_per_iteration = min(arms_per_iteration, len(self.arms))
        self.meta_horizon = meta_horizon
        self.prior_weight = prior_weight
        self.reach_weight = reach_weight
        self.differentiable_steps = differentiable_steps

    def items(self, iteration: int, generator: torch.Generator) -> list[int]:
        """The meta-training arms of one outer iteration (indices, in order)."""
        picks = torch.randperm(len(self.arms), generator=generator)[: self.arms_per_iteration]
        return picks.tolist()

    def item_loss(
        self, arm_index: int, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        """One arm's term: a fitting set and a fresh model drawn from ``generator``, K steps
        of M_psi's loss, the fitted model's held-out (and prior) error."""
        data = self.arms[arm_index]
        sizes = self.settings.trajectories
        n = sizes[int(torch.randint(len(sizes), (1,), generator=generator))]
        fit_data = draw_fit(data, n, generator)
        model = fresh_model(data.arm, fit_data, self.settings.hidden, self.settings.members,
                            generator)  # fmt: skip
        fitted = fit_model(
            model, data.arm, fit_data, self.loss, self.settings.optimizer,
            differentiable=True, differentiable_steps=self.differentiable_steps,
        )  # fmt: skip
        # The held-out babbling, then the priors' true-simulator data, each as weight times
        # the mean of log(1 + open-loop error) over its trajectories.
        scored = (("check", data.check_X, data.check_U, 1.0),
                  ("prior", data.prior_X, data.prior_U, self.prior_weight),
                  ("reach", data.reach_X, data.reach_U, self.reach_weight))  # fmt: skip
        term: Tensor | None = None
        metrics: dict[str, float] = {}
        for name, X, U, weight in scored:
            if weight > 0:
                error = rollout_error(model, fitted, X, U, data.state_scale, self.meta_horizon)
                part = weight * torch.log1p(error).mean()
                term = part if term is None else term + part
                metrics[f"{name}_error"] = float(error.detach().mean())
        assert term is not None  # the held-out term always counts
        return term, metrics
