"""Transfer study: one learned reach loss on many robot configurations and policy sizes.

Takes a saved loss (``loss_path``) or meta-trains the reacher's loss first (``source_size``:
the reacher's smoke, demo or full size, into ``<out>/source``). Then, for every configuration of
the grid (:func:`ml3_robotics.evaluation.robots.transfer_grid`: lengths and masses scaled 0.5x..2x,
damping, torque limits, the shipped 2-link variants, 3-, 4- and 7-link arms), it babbles on that
robot, fits that robot's own learned model and compares, on fresh goals of that robot, ML3 (K
steps under the loss only) with the task loss (step size tuned on other goals of the same robot)
and iLQR on the learned and on the true model, all executed in MuJoCo. The policy-size sweep
(2 to 5 hidden layers) reruns the policy-based methods on ``depth_robots``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml3_robotics.app.robot_eval import evaluate_and_report
from ml3_robotics.app.runs import (
    Experiment,
    RunResult,
    build_config,
    execute_run,
    get_experiment,
    parse_set_options,
)
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.validation import check_choice
from ml3_robotics.evaluation.reach import METHODS, SUCCESS_MM
from ml3_robotics.evaluation.robots import (
    DEFAULT_INNER_LR,
    DEFAULT_INNER_STEPS,
    RobotEvalSettings,
    check_fresh_start,
    grid_configs,
    inner_settings,
    load_reach_loss,
    transfer_grid,
)
from ml3_robotics.mbrl.loop import fit_reach_model
from ml3_robotics.reporting.plotting import new_figure, save
from ml3_robotics.reporting.reach_figures import plot_transfer_heatmap
from robots.arm import ArmSim, SimulationError

log = logging.getLogger(__name__)

SOURCE_SIZES = ("smoke", "demo", "full")


@dataclass(frozen=True)
class TransferConfig(RobotEvalSettings):
    """Sizes of the transfer study (defaults: the full study).

    Attributes:
        loss_path: the loss to transfer; None: meta-train the reacher's loss first.
        other_losses: more losses evaluated on the same robots and goals, each ``label=path``
            (e.g. a loss meta-trained over a distribution of arms); their rows are
            ``ml3[label]``.
        source_size: reacher size for meta-training the loss ("smoke", "demo", "full").
        source_set: extra ``key=value`` settings of that reacher run (e.g.
            ``arm_distribution=...``).
        robots: labels of :func:`transfer_grid` to evaluate (empty: all).
        policy_depths: the policy-size sweep (hidden layers; ``policy_width`` wide).
        depth_robots: robots the sweep runs on.
        baselines: run the task-loss and iLQR baselines (False: the learned losses only; with
            the same seed, robots, goals and fresh policies are those of a full study).
        the rest: :class:`~ml3_robotics.evaluation.robots.RobotEvalSettings`, as in ``ml3r eval``.
    """

    loss_path: str | None = None
    other_losses: tuple[str, ...] = ()
    source_size: str = "demo"
    source_set: tuple[str, ...] = ()
    robots: tuple[str, ...] = ()
    policy_depths: tuple[int, ...] = (2, 3, 4, 5)
    depth_robots: tuple[str, ...] = ("reacher2",)
    baselines: bool = True  # False: only the learned losses run (e.g. to add a loss to a study)

    def __post_init__(self) -> None:
        check_choice("source_size", self.source_size, SOURCE_SIZES)
        if any(d < 1 for d in self.policy_depths):
            raise ValueError(f"policy_depths: expected integers >= 1, got {self.policy_depths}")
        grid_configs(self.robots)  # unknown labels fail now, with a suggestion
        grid_configs(self.depth_robots)
        for item in self.other_losses:
            if "=" not in item:
                raise ValueError(f"other_losses: expected 'label=path' entries, got {item!r}")
        parse_set_options(list(self.source_set))
        super().__post_init__()
        self.eval_config(DEFAULT_INNER_STEPS, DEFAULT_INNER_LR, 2, video_goals=0)


def _source_loss(config: TransferConfig, ctx: RunContext) -> tuple[str, dict[str, Any]]:
    """Meta-train the reacher's loss into ``<out>/source`` (a complete reacher run directory)."""
    source = get_experiment("reacher")
    sizes = {"smoke": dict(source.smoke), "demo": dict(source.demo), "full": {}}
    layers = [sizes[config.source_size], parse_set_options(list(config.source_set))]
    rconfig = build_config(source.config_type, *layers)
    sub = ctx.nested_run("source", smoke=config.source_size == "smoke", progress=ctx.progress)
    with ctx.phase("source_meta_train"):
        result = execute_run(sub, source.name, rconfig, source.run)
    summary = {
        name: r["mean_final_distance_mm"]
        for name, r in {"ml3": result.metrics, **result.baselines}.items()
    }
    return str(sub.out / "loss"), {"reacher_heldout_mean_mm": summary}


def run(config: TransferConfig, ctx: RunContext) -> RunResult:
    """The study; with several processes (``ml3r run transfer --nproc N``) the robots (and the
    policy-size sweep's runs) are split across ranks and the rows gathered on rank 0, which
    meta-trains the source loss (if any) first and writes every file."""
    world = ctx.world
    source_info: dict[str, Any] = {}
    if config.loss_path is None:
        source = _source_loss(config, ctx) if world.is_main else None
        loss_path, source_info = world.broadcast(source)
    else:
        loss_path = config.loss_path
    losses: dict[str, tuple[LearnedLoss, dict[str, Any], str]] = {}
    loss, sidecar = load_reach_loss(loss_path)
    losses["ml3"] = (loss, sidecar, loss_path)
    for item in config.other_losses:
        label, _, path = item.partition("=")
        other, other_sidecar = load_reach_loss(path)
        losses[f"ml3[{label.strip()}]"] = (other, other_sidecar, path)
    steps, lr = inner_settings(sidecar)
    robots = grid_configs(config.robots) if config.robots else transfer_grid()
    model_config = config.model

    per_robot: dict[str, Any] = {}
    fitted: dict[str, Any] = {}  # robot label -> (model, buffer): one fit per robot

    def model_of(label: str, arm: Any) -> Any:
        if label not in fitted:
            with ctx.phase("model_fit"):
                fitted[label] = fit_reach_model(
                    arm, ArmSim(arm, "mujoco"), model_config, config.horizon, ctx.seed
                )
        return fitted[label]

    def evaluate(label: str, arm: Any, depth: int, methods: tuple[str, ...]) -> dict[str, Any]:
        row: dict[str, Any] = {"label": label, "robot": arm.name, "n_links": arm.n_links,
                               "policy_hidden": [config.policy_width] * depth}  # fmt: skip
        detail: dict[str, Any] = {}
        for name, (lss, sc, _) in losses.items():
            k, ilr = inner_settings(sc)
            eval_config = config.eval_config(k, ilr, depth, video_goals=0)
            wanted = methods if name == "ml3" else ("ml3",)
            try:
                fit = model_of(label, arm)
                results, extra = evaluate_and_report(
                    lss, arm, eval_config, model_config, ctx,
                    n_goals=config.n_goals, n_tune_goals=config.n_tune_goals,
                    goal_min_radius=config.goal_min_radius,
                    goal_separation=config.goal_separation, methods=wanted, plots=False,
                    fitted=fit,
                )  # fmt: skip
            except (ValueError, RuntimeError, FloatingPointError, SimulationError) as e:
                # A configuration where the pipeline breaks is a result too (reported, not hidden).
                log.warning("%s (%s): %s", label, name, e)
                row[f"{name}_error"] = f"{type(e).__name__}: {e}"
                continue
            for method, r in results.items():
                key = name if method == "ml3" else method
                row[f"{key}_mm"] = r["mean_final_distance_mm"]
                row[f"{key}_max_mm"] = r["max_final_distance_mm"]
                row[f"{key}_success"] = r["success_rate_10mm"]
                detail[key] = r
            detail.setdefault("extra", extra)
        for name in losses:
            if row.get(f"{name}_mm") is not None and row.get("task_loss_mm"):
                row[f"{name}_over_task_loss"] = row[f"{name}_mm"] / row["task_loss_mm"]
        log.info("transfer %s depth %d: %s", label, depth,
                 {k: v for k, v in row.items() if k.endswith("_mm")})  # fmt: skip
        return row, (f"{label} | depth {depth}", detail)

    def collect(rows: list[tuple[dict[str, Any], tuple[str, Any]]]) -> list[dict[str, Any]]:
        per_robot.update(detail for _, detail in rows)
        return [row for row, _ in rows]

    base_depth = 2
    run_methods = METHODS if config.baselines else ("ml3",)
    table = collect(world.map_items(
        list(robots.items()), lambda item: evaluate(*item, base_depth, run_methods)
    ))  # fmt: skip
    depth_jobs = [(label, arm, depth) for label, arm in grid_configs(config.depth_robots).items()
                  for depth in config.policy_depths]  # fmt: skip
    # iLQR does not depend on the policy: only the policy-based methods rerun, and the base
    # depth's rows of robots in the table are reused.
    reused = {(r["label"], base_depth): r for r in table}
    new_rows = collect(world.map_items(
        [job for job in depth_jobs if (job[0], job[2]) not in reused],
        lambda job: evaluate(job[0], job[1], job[2], run_methods[:2]),
    ))  # fmt: skip
    fresh = iter(new_rows)
    depth_table: list[dict[str, Any]] = [
        (reused[(label, depth)] if (label, depth) in reused else next(fresh))
        | {"label": f"{label}, {depth} layers"}
        for label, _, depth in depth_jobs
    ]
    if not world.finish():  # the rows are gathered; rank 0 writes every file
        return RunResult.of_other_rank()

    methods = [*losses, *run_methods[1:]]
    plot_transfer_heatmap(ctx.path("transfer_heatmap.png"), table, methods,
                          f"mean final distance (mm) on fresh goals, K = {steps}")  # fmt: skip
    plot_transfer_heatmap(ctx.path("policy_depth_heatmap.png"), depth_table,
                          [*losses, *run_methods[1:2]], "policy size sweep (mm)")  # fmt: skip
    _bar_plot(ctx.path("transfer_bars.png"), table, methods)

    def aggregate(key: str) -> dict[str, Any]:
        values = [r[f"{key}_mm"] for r in table if r.get(f"{key}_mm") is not None]
        return {
            "mean_final_distance_mm_over_robots": float(np.mean(values)) if values else None,
            "median_final_distance_mm_over_robots": float(np.median(values)) if values else None,
            "robots_evaluated": len(values),
            "robots_failed": len(table) - len(values),
            "mean_success_rate_10mm": (
                float(np.mean([r[f"{key}_success"] for r in table if f"{key}_success" in r]))
                if values else None
            ),
        }  # fmt: skip

    metrics = aggregate("ml3")
    metrics["robots_where_ml3_beats_task_loss"] = sum(
        1 for r in table if r.get("ml3_over_task_loss", math.inf) < 1
    )
    baselines = {name: aggregate(name) for name in methods[1:]}
    return RunResult(
        metrics=metrics,
        baselines=baselines,
        extra={
            "loss_path": loss_path,
            "other_losses": {k: v[2] for k, v in losses.items() if k != "ml3"},
            "inner_steps": config.inner_steps or steps,
            "inner_lr": config.inner_lr or lr,
            "table": table,
            "policy_depth_table": depth_table,
            "per_robot": per_robot,
            **source_info,
        },
    )


def _bar_plot(path: Path, table: list[dict[str, Any]], methods: list[str]) -> None:
    fig, axes = new_figure(1, size=(max(6.0, 0.7 * len(table)), 4.0))
    ax = axes[0, 0]
    width = 0.8 / len(methods)
    x = np.arange(len(table))
    for i, m in enumerate(methods):
        v = [np.nan if r.get(f"{m}_mm") is None else r[f"{m}_mm"] for r in table]
        ax.bar(x + i * width, v, width, label=m)
    ax.axhline(SUCCESS_MM, color="gray", lw=0.8, ls=":")
    ax.set_xticks(x + 0.4 - width / 2, [r["label"] for r in table], rotation=40, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set(yscale="log", ylabel="mean final distance (mm)", title="transfer per configuration")
    ax.legend(fontsize=7)
    save(fig, path)


def check_inputs(config: TransferConfig) -> None:
    """The saved losses and the robots the config names, before the run folder is made."""
    for path in (config.loss_path, *(o.partition("=")[2] for o in config.other_losses)):
        if path is not None:
            check_fresh_start(load_reach_loss(path)[1], path)
    grid_configs(config.robots)
    grid_configs(config.depth_robots)


EXPERIMENT = Experiment(
    name="transfer",
    summary="a learned reach loss on other arm configurations and policy sizes vs task loss/iLQR",
    config_type=TransferConfig,
    run=run,
    check_inputs=check_inputs,
    data_parallel=True,
    smoke={
        "source_size": "smoke",
        "robots": ["reacher2", "reacher2 length x2", "arm3"],
        "policy_depths": [2, 3],
        "policy_width": 8,
        "n_goals": 2,
        "n_tune_goals": 2,
        "model": {
            "babble_trajectories": 4,
            "ensemble_members": 2,
            "ensemble_hidden": [16, 16],
            "fit_epochs": 2,
        },
        "lr_grid": [1e-3, 1e-2],
        "ilqr_iters": 2,
        "n_holdout_trajectories": 2,
        "curve_steps": 1,
    },
)
