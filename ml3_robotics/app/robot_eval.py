"""``ml3r eval``: a saved reach loss on a robot, evaluated and reported; or a saved
model-fitting loss (:func:`run_model_eval`) fitting that robot's dynamics model. With several
robots (:func:`on_each_robot`) each gets its own complete evaluation in ``robots/<name>/``,
the robots split across processes under ``ml3r eval --nproc N``.

:func:`evaluate_and_report` composes the data-only
:func:`ml3_robotics.evaluation.robots.evaluate_on_robot` with the figures of
:func:`ml3_robotics.reporting.reach_figures.write_reach_figures`; the transfer study uses it per
robot, ``ml3r eval`` (:func:`run_reach_eval`) once per robot.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from ml3_robotics.app.runs import RunResult, execute_run
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.run_context import RUN_MARKER, RunContext
from ml3_robotics.core.serialization import load_learned_loss
from ml3_robotics.core.validation import check_ints
from ml3_robotics.evaluation.model_loss import ModelStudySettings, evaluate_on_new_robot
from ml3_robotics.evaluation.reach import MetaLearnedBaselines, ReachEvalConfig
from ml3_robotics.evaluation.robots import (
    DEFAULT_INNER_LR,
    DEFAULT_INNER_STEPS,
    RobotEvalSettings,
    evaluate_on_robot,
    inner_settings,
    load_reach_loss,
    load_start_policy,
)
from ml3_robotics.mbrl.loop import ReachModelConfig, load_reach_model
from ml3_robotics.mbrl.model_loss import ModelFitSettings
from ml3_robotics.reporting.reach_figures import write_reach_figures
from ml3_robotics.tasks.model_fitting import FITTING_LOSSES, MODEL_LOSS_FEATURES
from robots.arm import ArmConfig, check_goals, load_arm_config


def evaluate_and_report(
    loss: LearnedLoss,
    arm: ArmConfig,
    eval_config: ReachEvalConfig,
    model_config: ReachModelConfig,
    ctx: RunContext,
    *,
    plots: bool = True,
    **settings: Any,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """:func:`~ml3_robotics.evaluation.robots.evaluate_on_robot` (``settings`` go to it), then
    its plots (``plots``) and video into ``ctx``.

    Returns:
        ``(results per method, extra)``; extra ends with the video's name (None: no video).
    """
    robot = evaluate_on_robot(loss, arm, eval_config, model_config, ctx, **settings)
    video = write_reach_figures(
        ctx, robot.evaluation, loss, robot.model, robot.sim, eval_config, plots=plots
    )
    return robot.evaluation.results, robot.extra | {"video": video}


@dataclass(frozen=True)
class ReachEvalRunConfig(RobotEvalSettings, MetaLearnedBaselines):
    """``ml3r eval``: one saved loss on one robot and one policy architecture.

    Attributes:
        loss: path of the saved loss (``X.safetensors``, ``X.json`` or ``X``).
        robot: shipped arm names or YAML paths (one, or several: :func:`on_each_robot`).
        policy_depth: hidden layers of the fresh policies.
        goals: evaluation goals ``[[x, z], ...]`` in m instead of ``n_goals`` sampled ones
            (``n_goals`` becomes their number).
        video_goals, video_stride: the ML3 video (0 goals: none).
        landscape_grid: points per axis of the loss-landscape plot (0: none).
        start: ``as_trained``: the start the loss was meta-trained to adapt (fresh per-goal
            policies, or the goal-conditioned policy saved beside the loss, rebuilt on the arm it
            was trained on); ``fresh``: fresh per-goal policies whatever the loss was made for.
        model_checkpoint: a reacher run's checkpoint (``RUN/checkpoints/meta_train.safetensors``)
            whose learned model and data eval uses instead of fitting its own: the run's model
            after its refits, so that the run's held-out figures can be reproduced (one robot,
            the run's; the ``model`` group must be the run's).
        n_meta_goals: goals of the robot, apart from the evaluation goals, on which the
            meta-learned baselines meta-train (the task loss with learned per-step step sizes;
            MAML, a learned start: :class:`~ml3_robotics.evaluation.reach.MetaLearnedBaselines`,
            0 updates: not run).
        the rest: :class:`RobotEvalSettings` and
            :class:`~ml3_robotics.evaluation.reach.MetaLearnedBaselines`.
    """

    loss: str = ""
    start: Literal["as_trained", "fresh"] = "as_trained"
    model_checkpoint: str = ""
    n_meta_goals: int = 64
    robot: tuple[str, ...] = ("reacher2",)
    policy_depth: int = 2
    goals: tuple[tuple[float, float], ...] = ()
    video_goals: int = 4
    video_stride: int = 3
    landscape_grid: int = 21

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"loss: expected the path of a saved learned loss, got {self.loss!r}")
        depth = self.policy_depth
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ValueError(f"policy_depth: expected an integer >= 1, got {depth!r}")
        check_robots(self.robot)
        check_ints(self, ("n_meta_goals",), 1)
        if self.model_checkpoint and len(self.robot) != 1:
            raise ValueError(
                f"model_checkpoint: a run's model is one robot's; name one robot, got "
                f"{list(self.robot)}"
            )
        if self.goals:
            for robot in self.robot:
                check_goals(robot, self.goals)
            object.__setattr__(self, "n_goals", len(self.goals))
        super().__post_init__()
        self.eval_config(DEFAULT_INNER_STEPS, DEFAULT_INNER_LR, depth)


#: Field overrides of :class:`ReachEvalRunConfig` for ``ml3r eval --smoke`` (tests).
EVAL_SMOKE: dict[str, Any] = {
    "n_goals": 2,
    "n_tune_goals": 2,
    "model": {
        "babble_trajectories": 4,
        "ensemble_members": 2,
        "ensemble_hidden": (16, 16),
        "fit_epochs": 2,
    },
    "lr_grid": (1e-3, 1e-2),
    "ilqr_iters": 2,
    "n_holdout_trajectories": 2,
    "video_goals": 1,
    "video_stride": 16,
    "policy_width": 8,
    "curve_steps": 1,
    "landscape_grid": 3,
}


def check_robots(robots: Sequence[str]) -> None:
    if not robots:
        raise ValueError("robot: expected at least one arm name or YAML path")
    labels = [robot_label(r) for r in robots]
    for robot, label in zip(robots, labels, strict=True):
        # The label names the robot's folder robots/<label>: "...yaml" would make it "..".
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", label) or set(label) == {"."}:
            raise ValueError(
                f"robot: {robot!r} gives the folder name {label!r}; a robot's file name "
                "(without .yaml) must be letters, digits, '_', '-', '+' or '.', not starting "
                "with '.'"
            )
    if len(set(labels)) != len(labels):
        raise ValueError(f"robot: expected distinct robots, got {list(robots)}")


def robot_label(robot: str) -> str:
    """A robot's folder name in a several-robot evaluation: a shipped arm's name, or the
    stem of its YAML file."""
    return Path(robot).stem if robot.endswith((".yaml", ".yml")) else robot


EvalConfig = TypeVar("EvalConfig")  # ReachEvalRunConfig or ModelEvalRunConfig


def on_each_robot(
    run_one: Callable[[EvalConfig, RunContext], RunResult],
) -> Callable[[EvalConfig, RunContext], RunResult]:
    """An evaluation of one robot made an evaluation of ``config.robot``'s robots.

    One robot: ``run_one`` as it is. Several: each robot's evaluation is a complete run of its
    own in ``robots/<name>/`` (config, results, figures), written by the process that computes
    it; the robots are split across processes (``World.map_items``) and rank 0 writes the
    summary: per method, each figure's mean over the robots, and every robot's results.
    """

    def run(config: EvalConfig, ctx: RunContext) -> RunResult:
        if len(config.robot) == 1:
            return run_one(config, ctx)

        for robot in config.robot:  # rank 0 lists every robot's run before any is written
            ctx.path(f"robots/{robot_label(robot)}/{RUN_MARKER}")
        ctx.world.barrier()

        def evaluate(robot: str) -> tuple[str, RunResult]:
            label = robot_label(robot)
            sub = ctx.nested_run(f"robots/{label}")
            return label, execute_run(sub, "eval", replace(config, robot=(robot,)), run_one)

        done = ctx.world.map_items(list(config.robot), evaluate)
        if not ctx.world.finish():
            return RunResult.of_other_rank()
        methods = list(done[0][1].baselines)
        return RunResult(
            metrics=_mean_figures([r.metrics for _, r in done]),
            baselines={m: _mean_figures([r.baselines[m] for _, r in done]) for m in methods},
            extra={
                "summary": "per figure, the mean over the robots",
                "robots": {
                    label: {
                        "folder": f"robots/{label}",
                        "metrics": r.metrics,
                        "baselines": r.baselines,
                    }
                    for label, r in done
                },
            },
        )

    return run


def _mean_figures(per_robot: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each numeric figure every robot reports, averaged over the robots."""
    keys = [k for k in per_robot[0] if all(_is_number(r.get(k)) for r in per_robot)]
    return {k: float(sum(r[k] for r in per_robot) / len(per_robot)) for k in keys}


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


@on_each_robot
def run_reach_eval(config: ReachEvalRunConfig, ctx: RunContext) -> RunResult:
    """``ml3r eval``: apply the loss at ``config.loss`` to ``config.robot`` (see
    :mod:`ml3_robotics.evaluation.robots`)."""
    loss, sidecar = load_reach_loss(config.loss)
    arm = load_arm_config(config.robot[0])
    start = load_start_policy(sidecar, config.loss, arm) if config.start == "as_trained" else None
    steps, lr = inner_settings(sidecar)
    eval_config = config.eval_config(steps, lr, config.policy_depth)
    fitted = None
    if config.model_checkpoint:
        fitted = load_reach_model(arm, config.model, config.model_checkpoint, ctx.seed)
    results, extra = evaluate_and_report(
        loss, arm, eval_config, config.model, ctx,
        n_goals=config.n_goals, n_tune_goals=config.n_tune_goals,
        goal_min_radius=config.goal_min_radius, goal_separation=config.goal_separation,
        goals=np.asarray(config.goals, dtype=np.float64) if config.goals else None,
        start_policy=start, fitted=fitted, n_meta_goals=config.n_meta_goals,
    )  # fmt: skip
    extra["start"] = "fresh per-goal policies" if start is None else "the loss's start policy"
    extra["inner_steps"] = eval_config.inner_steps
    extra["inner_lr"] = eval_config.inner_lr
    extra["policy_hidden"] = list(eval_config.policy_hidden)
    extra["loss_provenance"] = sidecar.get("provenance", {})
    return RunResult(
        metrics=results["ml3"],
        baselines={name: r for name, r in results.items() if name != "ml3"},
        extra=extra,
    )


# -- a model-fitting loss (issue 14) ------------------------------------------------------------


@dataclass(frozen=True)
class ModelEvalRunConfig(ModelStudySettings):
    """``ml3r eval`` of a saved model-fitting loss (``ml3r run model-loss``) on one robot.

    The model, the inner optimizer, K and the step size are the loss's own (its sidecar) unless
    given here; the MSE and the NLL fit the same model with step sizes tuned on a separate
    collection of the robot's babbling.

    Attributes:
        loss: path of the saved loss.
        robot: shipped arm names or YAML paths (one, or several: :func:`on_each_robot`).
        inner_steps, inner_lr: K and the loss's step size (None: from the sidecar).
        the rest: :class:`~ml3_robotics.evaluation.model_loss.ModelStudySettings`.
    """

    loss: str = ""
    robot: tuple[str, ...] = ("reacher2",)
    inner_steps: int | None = None
    inner_lr: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.loss, str) or not self.loss:
            raise ValueError(f"loss: expected the path of a saved learned loss, got {self.loss!r}")
        super().__post_init__()
        check_robots(self.robot)
        if self.inner_steps is not None:
            check_ints(self, ("inner_steps",), 1)
        if self.inner_lr is not None and not self.inner_lr > 0:
            raise ValueError(f"inner_lr: expected a positive number, got {self.inner_lr!r}")


#: Field overrides of :class:`ModelEvalRunConfig` for ``ml3r eval --smoke`` (tests).
MODEL_EVAL_SMOKE: dict[str, Any] = {
    "fit_sizes": (1, 2),
    "repeats": 1,
    "fit_pool": 3,
    "check_trajectories": 2,
    "horizon": 12,
    "n_goals": 1,
    "ilqr_iters": 2,
    "inner_steps": 3,
    "lr_grid": (1e-2,),
}


def is_model_loss(sidecar: Mapping[str, Any]) -> bool:
    """Whether a saved loss's sidecar says it reads :data:`MODEL_LOSS_FEATURES`."""
    names = sidecar.get("config", {}).get("features", {}).get("names")
    return tuple(names or ()) == MODEL_LOSS_FEATURES


@on_each_robot
def run_model_eval(config: ModelEvalRunConfig, ctx: RunContext) -> RunResult:
    """``ml3r eval`` of a model-fitting loss: see
    :func:`ml3_robotics.evaluation.model_loss.evaluate_on_new_robot`."""
    loss, sidecar = load_learned_loss(config.loss, expect_features=MODEL_LOSS_FEATURES)
    prov = sidecar.get("provenance", {}) or {}
    arm = load_arm_config(config.robot[0])
    optimizer = InnerOptimizer(
        str(prov.get("inner_method", "adam")),
        lr=float(config.inner_lr or prov.get("inner_lr", 1e-2)),
        steps=int(config.inner_steps or prov.get("inner_steps", 100)),
    )
    settings = ModelFitSettings(
        tuple(prov.get("model_hidden", (64, 64))), int(prov.get("model_members", 1)),
        optimizer, tuple(config.fit_sizes),
    )  # fmt: skip
    result = evaluate_on_new_robot(loss, optimizer.lr, arm, settings, config, ctx)

    def flat(by_size: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        return {f"{k}_{n}": v for n, figures in by_size.items() for k, v in figures.items()}

    summary = result["summary"]
    return RunResult(
        metrics=flat(summary["ml3"]),
        baselines={name: flat(summary[name]) for name in FITTING_LOSSES},
        extra={
            "robot": arm.to_dict(),
            "per_arm": result["per_arm"],
            "tuning": result["tuning"],
            "inner_steps": optimizer.steps,
            "inner_lr": optimizer.lr,
            "loss_provenance": prov,
        },
    )
