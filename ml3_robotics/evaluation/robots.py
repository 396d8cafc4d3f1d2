"""Applying a saved learned reach loss to other robots and policy architectures.

* :func:`load_reach_loss`: a saved loss, refused unless it reads
  :data:`ml3_robotics.tasks.reach.REACH_FEATURES`.
* :func:`evaluate_on_robot`: babble on the given arm and fit its own learned model, then
  :func:`ml3_robotics.evaluation.reach.evaluate_reach` on fresh goals of that arm: ML3 vs the task
  loss (step size tuned on separate goals of the same arm) vs iLQR on the learned and on the true
  model, all executed in MuJoCo. Returns data; ``ml3r eval`` (:mod:`ml3_robotics.app.robot_eval`)
  and the transfer study write the files.
* :func:`transfer_grid`: the robot configurations of the transfer study.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from ml3_robotics.core.errors import LossFileError
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss, loss_paths
from ml3_robotics.core.validation import check_ints
from ml3_robotics.evaluation.reach import (
    METHODS,
    REACH_TASK_LR_GRID,
    ReachEvalConfig,
    ReachEvaluation,
    eval_config_from,
    evaluate_reach,
    round_figures,
)
from ml3_robotics.mbrl.loop import ReachModelConfig, fit_reach_model
from ml3_robotics.models.learned_dynamics import ProbabilisticEnsemble
from ml3_robotics.models.replay_buffer import ReplayBuffer
from ml3_robotics.tasks.reach import REACH_FEATURES, GoalConditionedPolicy
from robots.arm import ArmConfig, ArmSim, load_arm_config, sample_goals

log = logging.getLogger(__name__)

#: Seed offsets of the evaluation goals and of the step-size tuning goals of one robot.
GOAL_SEED = 7919
TUNE_GOAL_SEED = 104_729
META_GOAL_SEED = 1_299_709  # the meta-learned baselines' goals
#: Fallbacks when a loss's sidecar does not say how it was meta-trained.
DEFAULT_INNER_STEPS = 3
DEFAULT_INNER_LR = 1e-3


def load_reach_loss(path: str | Path) -> tuple[LearnedLoss, dict[str, Any]]:
    """Load a saved reach loss; a loss that reads other features is refused.

    Raises:
        FeatureSpecError: the loss was trained on features other than
            :data:`~ml3_robotics.tasks.reach.REACH_FEATURES` (one-line message for the CLI).
        LossFileError: missing or corrupt files.
    """
    return load_learned_loss(path, expect_features=REACH_FEATURES)


def check_fresh_start(sidecar: Mapping[str, Any], path: str | Path) -> None:
    """Refuse (:class:`LossFileError`, one line) a loss meta-trained to adapt a start other
    than fresh per-goal policies, where fresh policies are all there is (the transfer study's
    other robots): applied to them, a goal-conditioned loss left policies barely moving (226 mm
    on six goals) with no warning."""
    provenance = sidecar.get("provenance") or {}
    policy_class = provenance.get("policy_class", "per_goal")
    if policy_class != "per_goal":
        raise LossFileError(
            f"loss file: {path} was meta-trained to adapt a {policy_class} policy pre-trained in "
            "its run (provenance.policy_class), not the fresh per-goal policies this study "
            "starts from; ml3r eval rebuilds that start on the arm it was trained on"
        )


def load_start_policy(
    sidecar: Mapping[str, Any], path: str | Path, arm: ArmConfig
) -> GoalConditionedPolicy | None:
    """The start a saved loss was meta-trained to adapt, rebuilt for ``arm``: None for fresh
    per-goal policies, else the goal-conditioned policy saved beside the loss (its sidecar's
    ``provenance.start_policy``). Refuses (:class:`LossFileError`, one line) a start that
    cannot be rebuilt: no file (a loss saved before issue 30), another arm than the one the
    start was trained on, or weights that do not fit."""
    provenance = sidecar.get("provenance") or {}
    if provenance.get("policy_class", "per_goal") == "per_goal":
        return None
    other = "set start=fresh to apply it to fresh per-goal policies instead"
    name = provenance.get("start_policy")
    if not isinstance(name, str) or Path(name).name != name:
        raise LossFileError(
            f"loss file: {path} was meta-trained to adapt a goal-conditioned start its sidecar "
            f"names no file of (provenance.start_policy); {other}"
        )
    try:
        trained_on = load_arm_config(str(provenance.get("arm")))
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise LossFileError(f"loss file: {path}: provenance.arm: {e}") from e
    if trained_on != arm:
        raise LossFileError(
            f"loss file: {path} adapts a start policy trained on {provenance.get('arm')!r}, not "
            f"on {arm.name!r}; evaluate it there, or {other}"
        )
    weights = loss_paths(path)[1].parent / name
    policy = GoalConditionedPolicy(arm, tuple(provenance.get("policy_hidden") or ()))
    try:
        policy.load_state_dict(load_file(weights))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise LossFileError(f"loss file: start policy {weights} is unusable ({e})") from e
    return policy


def inner_settings(sidecar: Mapping[str, Any]) -> tuple[int, float]:
    """``(K, inner lr)`` the loss was meta-trained with, from its sidecar's provenance."""
    prov = sidecar.get("provenance", {}) or {}
    steps = prov.get("inner_steps", DEFAULT_INNER_STEPS)
    lr = prov.get("inner_lr", DEFAULT_INNER_LR)
    return int(steps), float(lr)


@dataclass(frozen=True)
class RobotEvalSettings:
    """What evaluating a learned loss on a robot needs beyond the loss: goals, K and step sizes,
    the robot's learned model and the baselines. Shared by ``ml3r eval`` and the transfer study.

    Attributes:
        n_goals: evaluation goals (fresh, sampled on the robot).
        n_tune_goals: other goals of the same robot on which the task-loss step size is tuned.
        inner_steps: K; None: what the loss was meta-trained with (sidecar), else 3.
        inner_lr: ML3's step size; None: the sidecar's, else 1e-3.
        inner_method: "sgd" or "adam".
        policy_width: hidden width of the fresh policies.
        goal_min_radius: goals at least this fraction of the reach from the base.
        goal_separation: m between any two goals (evaluation vs tuning too).
        horizon: steps per rollout.
        model: the robot's learned model (the ``model`` group,
            :class:`~ml3_robotics.mbrl.loop.ReachModelConfig`).
        lr_grid: task-loss step sizes tried on the tuning goals.
        ilqr_iters: iLQR iterations.
        n_holdout_trajectories: held-out babbling for the model-error figures.
        curve_steps: ML3 and the task loss go on to this many steps, executed after every step
            (the distance-by-step curves; the table is at K).
    """

    n_goals: int = 10
    n_tune_goals: int = 8
    inner_steps: int | None = None
    inner_lr: float | None = None
    inner_method: str = "sgd"
    policy_width: int = 64
    goal_min_radius: float = 0.3
    goal_separation: float = 0.02
    horizon: int = 65
    model: ReachModelConfig = field(default_factory=ReachModelConfig)
    lr_grid: tuple[float, ...] = REACH_TASK_LR_GRID
    ilqr_iters: int = 30
    n_holdout_trajectories: int = 20
    curve_steps: int = 10

    def __post_init__(self) -> None:
        check_ints(self, ("n_goals", "n_tune_goals", "policy_width"), 1)
        if self.inner_steps is not None and (
            not isinstance(self.inner_steps, int) or self.inner_steps < 1
        ):
            raise ValueError(f"inner_steps: expected an integer >= 1, got {self.inner_steps!r}")
        if self.inner_lr is not None and not self.inner_lr > 0:
            raise ValueError(f"inner_lr: expected a positive number, got {self.inner_lr!r}")
        if not 0 <= self.goal_min_radius < 1:
            raise ValueError(
                f"goal_min_radius: expected a fraction in [0, 1), got {self.goal_min_radius}"
            )
        if not self.goal_separation >= 0:
            raise ValueError(f"goal_separation: expected >= 0 m, got {self.goal_separation}")
        check_ints(self, ("horizon",), 1)

    def eval_config(self, steps: int, lr: float, depth: int, **changes: Any) -> ReachEvalConfig:
        """The evaluation settings for policies ``depth`` hidden layers deep, with K and the
        inner lr resolved (``steps``, ``lr`` are the fallbacks when this config leaves them
        None); ``changes`` override further fields."""
        return eval_config_from(
            self,
            inner_steps=self.inner_steps if self.inner_steps is not None else steps,
            inner_lr=self.inner_lr if self.inner_lr is not None else lr,
            policy_hidden=(self.policy_width,) * depth,
            babble_hold=self.model.babble_hold,
            **changes,
        )


def robot_goals(
    arm: ArmConfig,
    n: int,
    n_tune: int,
    seed: int,
    min_radius: float,
    separation: float,
    goals: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(evaluation goals (n, 2), tuning goals (n_tune, 2))`` of one robot, apart. Given
    ``goals`` are the evaluation goals (``n`` is then unused); the tuning goals avoid them."""
    kw = {"min_radius": min_radius, "min_distance": separation}
    if goals is not None:
        return goals, sample_goals(arm, n_tune, seed + TUNE_GOAL_SEED, exclude=goals, **kw)
    tune = sample_goals(arm, n_tune, seed + TUNE_GOAL_SEED, **kw)
    test = sample_goals(arm, n, seed + GOAL_SEED, exclude=tune, **kw)
    return test, tune


@dataclass
class RobotEvaluation:
    """What :func:`evaluate_on_robot` measured on one robot, and the model and simulator it
    measured with (the figures need them)."""

    evaluation: ReachEvaluation
    model: ProbabilisticEnsemble
    sim: ArmSim
    extra: dict[str, Any]


def evaluate_on_robot(
    loss: LearnedLoss,
    arm: ArmConfig,
    eval_config: ReachEvalConfig,
    model_config: ReachModelConfig,
    ctx: RunContext,
    *,
    n_goals: int,
    n_tune_goals: int,
    goal_min_radius: float = 0.3,
    goal_separation: float = 0.02,
    goals: np.ndarray | None = None,
    methods: Sequence[str] = METHODS,
    fitted: tuple[ProbabilisticEnsemble, ReplayBuffer] | None = None,
    start_policy: GoalConditionedPolicy | None = None,
    n_meta_goals: int = 0,
) -> RobotEvaluation:
    """Fit ``arm``'s learned model by babbling, then evaluate ``loss`` and the baselines on it
    (data only: :func:`ml3_robotics.app.robot_eval.evaluate_and_report` adds the figures).

    ``fitted``: ``arm``'s model and buffer from an earlier :func:`fit_reach_model` with the same
    seed and ``model_config`` (skips the fit; the transfer study evaluates several losses and
    policy sizes per robot). ``start_policy``: the goal-conditioned start the loss adapts
    (:func:`load_start_policy`; None: fresh per-goal policies). ``n_meta_goals``: goals of
    the robot, apart from the evaluation goals, on which the meta-learned baselines
    (``eval_config.step_size_updates``, ``maml_updates``) meta-train, when they run.

    Returns:
        The evaluation, the robot's model and simulator, and ``extra``: the robot, the goals,
        the model's real steps and its prediction errors.
    """
    sim = ArmSim(arm, "mujoco")
    test_goals, tune_goals = robot_goals(
        arm, n_goals, n_tune_goals, ctx.seed, goal_min_radius, goal_separation, goals
    )
    if fitted is None:
        with ctx.phase("model_fit"):
            fitted = fit_reach_model(arm, sim, model_config, eval_config.horizon, ctx.seed)
    model, buffer = fitted
    meta_goals = None
    if n_meta_goals and (eval_config.step_size_updates or eval_config.maml_updates):
        meta_goals = sample_goals(
            arm, n_meta_goals, ctx.seed + META_GOAL_SEED, exclude=test_goals,
            min_radius=goal_min_radius, min_distance=goal_separation,
        )  # fmt: skip
    evaluation = evaluate_reach(
        loss, arm, model, test_goals, tune_goals, eval_config, ctx,
        model_env_steps=buffer.n_transitions_added, sim=sim, methods=methods,
        start_policy=start_policy, meta_goals=meta_goals,
    )  # fmt: skip
    extra = {
        "robot": arm.to_dict(),
        "test_goals": test_goals.tolist(),
        "tune_goals": tune_goals.tolist(),
        "model_train_env_steps": buffer.n_transitions_added,
        "prediction_error_babble_holdout": round_figures(evaluation.model_error["babble_holdout"]),
        "prediction_error_ml3_test_rollouts": round_figures(
            evaluation.model_error["ml3_test_rollouts"]
        ),
    }
    return RobotEvaluation(evaluation, model, sim, extra)


# -- the transfer grid ---------------------------------------------------------------------------


def transfer_grid(base: str | ArmConfig = "reacher2", *, arm7: bool = True) -> dict[str, ArmConfig]:
    """The robot configurations of the transfer study, by label.

    The base arm, its lengths and masses scaled 0.5x to 2x, damping 0.2x and 5x, torque limits
    0.5x and 2x, the shipped 2-link variants, the 3- and 4-link arms and (``arm7``) the 7-link
    planar chain.
    """
    arm = load_arm_config(base)
    grid: dict[str, ArmConfig] = {arm.name: arm}
    scalings = (
        ("length", 0.5), ("length", 0.75), ("length", 1.5), ("length", 2.0),
        ("mass", 0.5), ("mass", 2.0), ("damping", 0.2), ("damping", 5.0),
        ("torque", 0.5), ("torque", 2.0),
    )  # fmt: skip
    for what, factor in scalings:
        label = f"{arm.name} {what} x{factor:g}"
        grid[label] = arm.scaled(**{what: factor}, name=label.replace(" ", "_"))
    names = ["reacher2_heavy", "reacher2_long", "arm3", "arm4"] + (["arm7_planar"] if arm7 else [])
    for name in names:
        grid[name] = load_arm_config(name)
    return grid


def grid_configs(labels: Sequence[str], base: str | ArmConfig = "reacher2") -> dict[str, ArmConfig]:
    """The ``labels`` of :func:`transfer_grid` (unknown labels suggest the nearest)."""
    grid = transfer_grid(base)
    out: dict[str, ArmConfig] = {}
    for label in labels:
        if label not in grid:
            close = difflib.get_close_matches(label, list(grid), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"robots: unknown configuration {label!r}{hint} (available: {list(grid)})"
            )
        out[label] = grid[label]
    return out
