"""Applying a saved learned reach loss to other robots and policy architectures.

* :class:`ReachEvalRunConfig` and :func:`run_reach_eval`: what ``ml3r eval`` does. Load a saved
  loss (refused unless it reads :data:`ml3_robotics.mbrl.REACH_FEATURES`), babble on the given arm
  and fit its own learned model, then :func:`ml3_robotics.reach_eval.evaluate_reach` on fresh
  goals of that arm: ML3 vs the task loss (step size tuned on separate goals of the same arm) vs
  iLQR on the learned and on the true model, all executed in MuJoCo.
* :func:`transfer_grid`: the robot configurations of the transfer study.
* :func:`plot_transfer_heatmap`: final distance per configuration and method.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml3_robotics.learned_dynamics import ProbabilisticEnsemble
from ml3_robotics.learned_loss import LearnedLoss
from ml3_robotics.mbrl import REACH_FEATURES
from ml3_robotics.plotting import new_figure, save
from ml3_robotics.reach_eval import (
    METHODS,
    REACH_TASK_LR_GRID,
    SUCCESS_MM,
    ReachEvalConfig,
    ReachModelConfig,
    eval_config_from,
    evaluate_reach,
    fit_reach_model,
    model_config_from,
    round_figures,
)
from ml3_robotics.reach_figures import write_reach_figures
from ml3_robotics.replay_buffer import ReplayBuffer
from ml3_robotics.runs import RunContext, RunResult
from ml3_robotics.serialization import load_learned_loss
from ml3_robotics.validation import check_ints
from robots.arm import ArmConfig, ArmSim, check_goals, load_arm_config, sample_goals

log = logging.getLogger(__name__)

#: Seed offsets of the evaluation goals and of the step-size tuning goals of one robot.
GOAL_SEED = 7919
TUNE_GOAL_SEED = 104_729
#: Fallbacks when a loss's sidecar does not say how it was meta-trained.
DEFAULT_INNER_STEPS = 3
DEFAULT_INNER_LR = 1e-3


def load_reach_loss(path: str | Path) -> tuple[LearnedLoss, dict[str, Any]]:
    """Load a saved reach loss; a loss that reads other features is refused.

    Raises:
        FeatureSpecError: the loss was trained on features other than
            :data:`~ml3_robotics.mbrl.REACH_FEATURES` (one-line message for the CLI).
        LossFileError: missing or corrupt files.
    """
    return load_learned_loss(path, expect_features=REACH_FEATURES)


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
        babble_trajectories, babble_hold, ensemble_members, ensemble_hidden, fit_epochs: the
            robot's learned model (see :class:`~ml3_robotics.reach_eval.ReachModelConfig`).
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
    babble_trajectories: int = 100
    babble_hold: int = 8
    ensemble_members: int = 5
    ensemble_hidden: tuple[int, ...] = (128, 128)
    fit_epochs: int = 100
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
        # The nested configs validate the remaining fields now, not halfway through a run.
        self.model_config()

    def model_config(self) -> ReachModelConfig:
        return model_config_from(self)

    def eval_config(self, steps: int, lr: float, depth: int, **changes: Any) -> ReachEvalConfig:
        """The evaluation settings for policies ``depth`` hidden layers deep, with K and the
        inner lr resolved (``steps``, ``lr`` are the fallbacks when this config leaves them
        None); ``changes`` override further fields."""
        return eval_config_from(
            self,
            inner_steps=self.inner_steps if self.inner_steps is not None else steps,
            inner_lr=self.inner_lr if self.inner_lr is not None else lr,
            policy_hidden=(self.policy_width,) * depth,
            **changes,
        )


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
    "babble_trajectories": 4,
    "ensemble_members": 2,
    "ensemble_hidden": (16, 16),
    "fit_epochs": 2,
    "lr_grid": (1e-3, 1e-2),
    "ilqr_iters": 2,
    "n_holdout_trajectories": 2,
    "video_goals": 1,
    "video_stride": 16,
    "policy_width": 8,
    "curve_steps": 1,
    "landscape_grid": 3,
}


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
    plots: bool = True,
    fitted: tuple[ProbabilisticEnsemble, ReplayBuffer] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Fit ``arm``'s learned model by babbling, then evaluate ``loss`` and the baselines on it.

    ``fitted``: ``arm``'s model and buffer from an earlier :func:`fit_reach_model` with the same
    seed and ``model_config`` (skips the fit; the transfer study evaluates several losses and
    policy sizes per robot).

    Returns:
        ``(results per method, extra)`` where extra holds the goals, the model's real steps
        and prediction errors, and the video name.
    """
    sim = ArmSim(arm, "mujoco")
    test_goals, tune_goals = robot_goals(
        arm, n_goals, n_tune_goals, ctx.seed, goal_min_radius, goal_separation, goals
    )
    if fitted is None:
        with ctx.phase("model_fit"):
            fitted = fit_reach_model(arm, sim, model_config, ctx.seed)
    model, buffer = fitted
    evaluation = evaluate_reach(
        loss, arm, model, test_goals, tune_goals, eval_config, ctx,
        model_env_steps=buffer.n_transitions_added, sim=sim, methods=methods,
    )  # fmt: skip
    video = write_reach_figures(ctx, evaluation, loss, model, sim, eval_config, plots=plots)
    extra = {
        "robot": arm.to_dict(),
        "test_goals": test_goals.tolist(),
        "tune_goals": tune_goals.tolist(),
        "model_train_env_steps": buffer.n_transitions_added,
        "prediction_error_babble_holdout": round_figures(evaluation.model_error["babble_holdout"]),
        "prediction_error_ml3_test_rollouts": round_figures(
            evaluation.model_error["ml3_test_rollouts"]
        ),
        "video": video,
    }
    return evaluation.results, extra


def run_reach_eval(config: ReachEvalRunConfig, ctx: RunContext) -> RunResult:
    """``ml3r eval``: apply the loss at ``config.loss`` to ``config.robot`` (see module doc)."""
    loss, sidecar = load_reach_loss(config.loss)
    arm = load_arm_config(config.robot)
    steps, lr = inner_settings(sidecar)
    eval_config = config.eval_config(steps, lr, config.policy_depth)
    results, extra = evaluate_on_robot(
        loss, arm, eval_config, config.model_config(), ctx,
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


def plot_transfer_heatmap(
    path: Path, table: Sequence[Mapping[str, Any]], methods: Sequence[str], title: str
) -> Path:
    """Heatmap of the mean final distance (mm, log colour scale) per row and method.

    Args:
        path: the PNG to write (inside a run directory).
        table: rows with ``"label"`` and, per method, ``"<method>_mm"`` (None: not run/failed).
        methods: the columns.
        title: the figure title.
    """
    from matplotlib.colors import LogNorm

    labels = [r["label"] for r in table]
    values = np.array(
        [[np.nan if r.get(f"{m}_mm") is None else r[f"{m}_mm"] for m in methods] for r in table],
        dtype=float,
    )
    fig, axes = new_figure(1, size=(1.6 * len(methods) + 3.0, 0.38 * len(labels) + 1.6))
    ax = axes[0, 0]
    finite = values[np.isfinite(values)]
    lo = max(0.1, float(finite.min())) if finite.size else 0.1
    hi = max(lo * 10, float(finite.max())) if finite.size else 1000.0
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", aspect="auto",
                   norm=LogNorm(vmin=lo, vmax=hi))  # fmt: skip
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "fail" if not np.isfinite(v) else f"{v:.3g}"
            weight = "bold" if np.isfinite(v) and v < SUCCESS_MM else "normal"
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="w"
                    if np.isfinite(v) and v > np.sqrt(lo * hi) else "k", weight=weight)  # fmt: skip
    ax.set_xticks(range(len(methods)), list(methods), rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mean final distance (mm)")
    return save(fig, path)
