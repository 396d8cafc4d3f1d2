"""``ml3r eval``: one saved reach loss on one robot, evaluated and reported.

:func:`evaluate_and_report` composes the data-only
:func:`ml3_robotics.evaluation.robots.evaluate_on_robot` with the figures of
:func:`ml3_robotics.reporting.reach_figures.write_reach_figures`; the transfer study uses it per
robot, ``ml3r eval`` (:func:`run_reach_eval`) once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ml3_robotics.app.runs import RunResult
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.evaluation.reach import METHODS, ReachEvalConfig
from ml3_robotics.evaluation.robots import (
    DEFAULT_INNER_LR,
    DEFAULT_INNER_STEPS,
    RobotEvalSettings,
    evaluate_on_robot,
    inner_settings,
    load_reach_loss,
)
from ml3_robotics.mbrl.loop import ReachModelConfig
from ml3_robotics.reporting.reach_figures import write_reach_figures
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
class ReachEvalRunConfig(RobotEvalSettings):
    """``ml3r eval``: one saved loss on one robot and one policy architecture.

    Attributes:
        loss: path of the saved loss (``X.safetensors``, ``X.json`` or ``X``).
        robot: shipped arm name or YAML path.
        policy_depth: hidden layers of the fresh policies.
        goals: evaluation goals ``[[x, z], ...]`` in m instead of ``n_goals`` sampled ones
            (``n_goals`` becomes their number).
        video_goals, video_stride: the ML3 video (0 goals: none).
        landscape_grid: points per axis of the loss-landscape plot (0: none).
        the rest: :class:`RobotEvalSettings`.
    """

    loss: str = ""
    robot: str = "reacher2"
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
        if self.goals:
            check_goals(self.robot, self.goals)
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


def run_reach_eval(config: ReachEvalRunConfig, ctx: RunContext) -> RunResult:
    """``ml3r eval``: apply the loss at ``config.loss`` to ``config.robot`` (see
    :mod:`ml3_robotics.evaluation.robots`)."""
    loss, sidecar = load_reach_loss(config.loss)
    arm = load_arm_config(config.robot)
    steps, lr = inner_settings(sidecar)
    eval_config = config.eval_config(steps, lr, config.policy_depth)
    results, extra = evaluate_and_report(
        loss, arm, eval_config, config.model, ctx,
        n_goals=config.n_goals, n_tune_goals=config.n_tune_goals,
        goal_min_radius=config.goal_min_radius, goal_separation=config.goal_separation,
        goals=np.asarray(config.goals, dtype=np.float64) if config.goals else None,
    )  # fmt: skip
    extra["inner_steps"] = eval_config.inner_steps
    extra["inner_lr"] = eval_config.inner_lr
    extra["policy_hidden"] = list(eval_config.policy_hidden)
    extra["loss_provenance"] = sidecar.get("provenance", {})
    return RunResult(
        metrics=results["ml3"],
        baselines={name: results[name] for name in METHODS[1:]},
        extra=extra,
    )
