"""Meta-test of model-fitting losses on arms never seen at meta-train time (issue 14).

For every test arm, fitting-set size and repeat, every method fits the same fresh model (same
initial weights, same transitions, same K steps of the same optimizer) under its loss: a learned
loss at the step size it was meta-trained with, the MSE and the Gaussian NLL at step sizes tuned
on the meta-training arms. Each fitted model is then scored on the arm's held-out babbling
(open-loop error over the whole horizon and over 10 steps) and used by iLQR to reach goals, the
plans executed in MuJoCo with their feedback gains.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from controllers.ilqr import ILQRConfig
from controllers.mujoco_dynamics import MujocoDynamics
from ml3_robotics.core.inner import Params
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.validation import check_ints
from ml3_robotics.evaluation.reach import mujoco_model
from ml3_robotics.mbrl.arm_data import ArmData
from ml3_robotics.mbrl.model_loss import ModelFitSettings, draw_fit
from ml3_robotics.models.learned_dynamics import ProbabilisticEnsemble
from ml3_robotics.tasks.model_fitting import (
    FITTING_LOSSES,
    LossLike,
    fit_model,
    fresh_model,
    rollout_step_errors,
)
from ml3_robotics.tasks.reach import ReachTask, plan_and_execute
from robots.arm import ArmConfig, ArmSim, sample_goals

#: Seed offsets: the fitting draws of meta-test and step-size tuning, the reach goals.
EVAL_DRAW_SEED = 70_001
TUNE_DRAW_SEED = 80_021
GOAL_SEED = 90_011
SHORT_HORIZON = 10


@dataclass(frozen=True)
class ModelStudySettings:
    """The data and the meta-test of a model-loss study (``ml3r run model-loss``, and
    ``ml3r eval`` of a model loss).

    Attributes:
        fit_sizes: fitting-set sizes (babbling trajectories) to meta-train on and report.
        repeats: fitting draws (data and initial weights) per test arm and size.
        fit_pool: babbling trajectories per arm that fitting sets are drawn from.
        check_trajectories: held-out babbling per arm (errors are scored on it).
        horizon: steps per trajectory (the reacher's 65).
        babble_hold: babbling torques are held this many steps.
        n_goals: reach goals per arm for iLQR on each fitted model (0: no iLQR).
        goal_min_radius: goals at least this fraction of the reach from the base.
        ilqr_iters: iLQR iterations.
        lr_grid: step sizes tried for the MSE and the NLL.
    """

    fit_sizes: tuple[int, ...] = (5, 20)
    repeats: int = 2
    fit_pool: int = 40
    check_trajectories: int = 10
    horizon: int = 65
    babble_hold: int = 8
    n_goals: int = 5
    goal_min_radius: float = 0.3
    ilqr_iters: int = 30
    lr_grid: tuple[float, ...] = (3e-3, 1e-2, 3e-2)

    def __post_init__(self) -> None:
        check_ints(self, ("repeats", "fit_pool", "check_trajectories", "horizon", "babble_hold",
                          "ilqr_iters"), 1)  # fmt: skip
        check_ints(self, ("n_goals",), 0)
        if not self.fit_sizes or any(not 1 <= n <= self.fit_pool for n in self.fit_sizes):
            raise ValueError(
                f"fit_sizes: expected sizes in 1..fit_pool={self.fit_pool}, got {self.fit_sizes!r}"
            )
        if not 0 <= self.goal_min_radius < 1:
            raise ValueError(
                f"goal_min_radius: expected a fraction in [0, 1), got {self.goal_min_radius}"
            )
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid: expected positive step sizes, got {self.lr_grid!r}")


def load_params(model: ProbabilisticEnsemble, params: Mapping[str, torch.Tensor]) -> None:
    """Write fitted parameters into the model (so iLQR and plain calls use them)."""
    with torch.no_grad():
        for name, value in model.named_parameters():
            if name in params:
                value.copy_(params[name].detach())


def fit_errors(
    data: ArmData, model: ProbabilisticEnsemble, params: Params
) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out trajectory: normalised open-loop error over the horizon and over its first
    10 steps (one rollout)."""
    with torch.no_grad():
        steps = rollout_step_errors(model, params, data.check_X, data.check_U, data.state_scale)
    return steps.mean(1).numpy(), steps[:, :SHORT_HORIZON].mean(1).numpy()


def tune_step_size(
    loss: str,
    arms: Sequence[ArmData],
    settings: ModelFitSettings,
    n: int,
    grid: Sequence[float],
    seed: int,
) -> tuple[float, dict[str, float]]:
    """The step size of ``grid`` whose fits of ``n`` trajectories have the lowest median
    open-loop error on the meta-training arms (their held-out babbling), and every score."""
    scores: dict[str, float] = {}
    for lr in grid:
        optimizer = replace(settings.optimizer, lr=lr)
        errors = []
        for i, data in enumerate(arms):
            g = torch.Generator().manual_seed(seed + TUNE_DRAW_SEED + i)
            fit_data = draw_fit(data, n, g)
            model = fresh_model(data.arm, fit_data, settings.hidden, settings.members, g)
            params = fit_model(model, data.arm, fit_data, loss, optimizer)
            errors.append(fit_errors(data, model, params)[0])
        scores[f"{lr:g}"] = float(np.median(np.concatenate(errors)))
    best = min(grid, key=lambda lr: scores[f"{lr:g}"])
    return best, scores


def evaluate_model_losses(
    methods: Mapping[str, tuple[LossLike, Mapping[int, float]]],
    arms: Sequence[ArmData],
    settings: ModelFitSettings,
    config: ModelStudySettings,
    ctx: RunContext,
) -> dict[str, Any]:
    """Fit and score every method on every test arm (see the module docstring).

    Args:
        methods: name -> (fitting loss, step size per fitting-set size).
        arms: the test arms' data.
        settings: the model and the inner optimizer (its ``lr`` is replaced per method).

    Returns:
        ``{"per_arm": [...], "summary": {method: {size: figures}}}``: per arm its name, link
        count, iLQR on the true model, and per method and size the errors and reach distance
        of every repeat; the summary pools arms and repeats (mean and median).
    """
    per_arm: list[dict[str, Any]] = []
    for a, data in enumerate(arms):
        arm = data.arm
        sim = ArmSim(arm, "mujoco")
        entry: dict[str, Any] = {"arm": arm.name, "links": arm.n_links, "methods": {}}
        task = None
        if config.n_goals > 0:
            goals = sample_goals(arm, config.n_goals, ctx.seed + GOAL_SEED + a,
                                 min_radius=config.goal_min_radius)  # fmt: skip
            task = ReachTask(arm, goals, data.check_U.shape[1])
            with ctx.phase("ilqr_true_model"):
                _, X, _ = plan_and_execute(
                    sim, MujocoDynamics(mujoco_model(sim, arm)), task,
                    ILQRConfig(max_iters=config.ilqr_iters),
                )  # fmt: skip
            entry["ilqr_true_model_mm"] = float(1000 * task.final_distance(X).mean())
        for name, (loss, lrs) in methods.items():
            rows: dict[str, Any] = {}
            for n in config.fit_sizes:
                optimizer = replace(settings.optimizer, lr=lrs[n])
                runs = []
                for r in range(config.repeats):
                    g = torch.Generator().manual_seed(ctx.seed + EVAL_DRAW_SEED + 100 * a + r)
                    fit_data = draw_fit(data, n, g)
                    model = fresh_model(arm, fit_data, settings.hidden, settings.members, g)
                    t0 = time.perf_counter()
                    with ctx.phase(f"fit_{name}"):
                        params = fit_model(model, arm, fit_data, loss, optimizer)
                    seconds = time.perf_counter() - t0
                    full, short = fit_errors(data, model, params)
                    run: dict[str, Any] = {
                        "error_full": float(np.mean(full)),
                        "error_10": float(np.mean(short)),
                        "fit_seconds": seconds,
                    }
                    if task is not None:
                        load_params(model, params)
                        with ctx.phase(f"ilqr_{name}"):
                            _, X, _ = plan_and_execute(
                                sim, model, task,
                                ILQRConfig(max_iters=config.ilqr_iters, dtype=torch.float32),
                            )  # fmt: skip
                        run["ilqr_mm"] = float(1000 * task.final_distance(X).mean())
                    runs.append(run)
                rows[str(n)] = runs
            entry["methods"][name] = rows
        per_arm.append(entry)
    return {"per_arm": per_arm, "summary": summarize(per_arm, list(methods), config.fit_sizes)}


def summarize(
    per_arm: Sequence[Mapping[str, Any]], methods: Sequence[str], sizes: Sequence[int]
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and median over arms and repeats, per method and fitting-set size."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in methods:
        out[name] = {}
        for n in sizes:
            runs = [r for entry in per_arm for r in entry["methods"][name][str(n)]]
            figures: dict[str, float] = {}
            for key in ("error_full", "error_10", "ilqr_mm"):
                values = [r[key] for r in runs if key in r]
                if values:
                    figures[f"{key}_mean"] = float(np.mean(values))
                    figures[f"{key}_median"] = float(np.median(values))
            out[name][str(n)] = figures
    return out


#: Seed offsets of a new robot's evaluation data and of its separate tuning data.
ROBOT_DATA_SEED = 3_001
ROBOT_TUNE_SEED = 4_001


def evaluate_on_new_robot(
    loss: LossLike,
    lr: float,
    arm: ArmConfig,
    settings: ModelFitSettings,
    config: ModelStudySettings,
    ctx: RunContext,
) -> dict[str, Any]:
    """A saved model-fitting loss on one robot (``ml3r eval``), against the MSE and the NLL.

    The robot's babbling is collected twice from different seeds: the baselines' step sizes
    are tuned on the second collection (its own fitting pool and held-out trajectories), the
    methods are compared on the first.

    Returns:
        As :func:`evaluate_model_losses`, plus ``"tuning"``: the baselines' step sizes.
    """

    def collect(seed: int) -> ArmData:
        return ArmData.collect(
            arm, seed, n_fit=config.fit_pool, n_check=config.check_trajectories, n_prior=0,
            horizon=config.horizon, hold=config.babble_hold,
        )  # fmt: skip

    with ctx.phase("robot_data"):
        data = collect(ctx.seed + ROBOT_DATA_SEED)
        tune_data = collect(ctx.seed + ROBOT_TUNE_SEED)
    methods: dict[str, tuple[LossLike, dict[int, float]]] = {
        "ml3": (loss, dict.fromkeys(config.fit_sizes, lr))
    }
    with ctx.phase("tune_baselines"):
        tuning = tune_baselines(methods, [tune_data], settings, config, ctx.seed)
    with ctx.phase("meta_test"):
        result = evaluate_model_losses(methods, [data], settings, config, ctx)
    return result | {"tuning": tuning}


def tune_baselines(
    methods: dict[str, tuple[LossLike, dict[int, float]]],
    arms: Sequence[ArmData],
    settings: ModelFitSettings,
    config: ModelStudySettings,
    seed: int,
) -> dict[str, Any]:
    """Add the MSE and the NLL to ``methods``, each at its step size tuned per fitting-set size
    on ``arms`` (:func:`tune_step_size`); returns the tuning record."""
    tuning: dict[str, Any] = {}
    for name in FITTING_LOSSES:
        lrs = {}
        for n in config.fit_sizes:
            lrs[n], scores = tune_step_size(name, arms, settings, n, config.lr_grid, seed)
            tuning[f"{name}_{n}"] = {"lr": lrs[n], "median_error_full": scores}
        methods[name] = (name, lrs)
    return tuning
