"""Figures and videos of a reach evaluation, and the transfer study's heatmap (the reporting
layer): they take what :func:`ml3_robotics.evaluation.reach.evaluate_reach` measured and write
files into the run folder."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml3_robotics.core.inner import Params
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.policy_search import StepFn
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.evaluation.reach import SUCCESS_MM, ReachEvalConfig, ReachEvaluation
from ml3_robotics.models.learned_dynamics import ProbabilisticEnsemble
from ml3_robotics.reporting.plotting import new_figure, save
from ml3_robotics.tasks.reach import (
    ReachPolicy,
    ReachTask,
    learned_loss_fn,
    loss_landscape,
    task_loss_fn,
)
from robots.arm import (
    ArmConfig,
    ArmSim,
    RenderingUnavailableError,
    forward_kinematics,
    render_rollout,
)
from robots.video import write_video

log = logging.getLogger(__name__)


def write_reach_figures(
    ctx: RunContext,
    evaluation: ReachEvaluation,
    loss: LearnedLoss,
    model: ProbabilisticEnsemble,
    sim: ArmSim,
    config: ReachEvalConfig,
    *,
    history: list[dict[str, float]] | None = None,
    plots: bool = True,
) -> str | None:
    """Write an evaluation's figures into the run folder: the per-goal and path plots (and
    ``meta_training.png`` from ``history``), the loss landscape, and ML3's video.

    Returns:
        The video's file name in the run folder, or None.
    """
    test = evaluation.test
    if plots:
        with ctx.phase("plots"):
            plot_reach(ctx, evaluation.results, evaluation.paths, test, test.config, history or [])
            if config.landscape_grid > 0 and "task_loss" in evaluation.adapted:
                plot_landscape(ctx, loss, evaluation.policy, model.step, test,
                               evaluation.test_init, evaluation.adapted,
                               config.landscape_grid)  # fmt: skip
    video = None
    if config.video_goals > 0:
        with ctx.phase("video"):
            video = reach_video(ctx, sim, evaluation.paths["ml3"], test, config.video_goals,
                                config.video_stride)  # fmt: skip
    return video


def plot_reach(
    ctx: RunContext,
    results: Mapping[str, Mapping[str, Any]],
    paths: Mapping[str, np.ndarray],
    test: ReachTask,
    arm: ArmConfig,
    history: list[dict[str, float]],
) -> None:
    """Write ``meta_training.png`` (when ``history``), ``final_distance_per_goal.png`` and
    ``ee_paths.png``."""
    if history:
        fig, axes = new_figure(2)
        it = [r["iteration"] for r in history]
        axes[0, 0].plot(it, [r["meta_loss"] for r in history])
        axes[0, 0].set(title="meta-loss (task loss through the model)", xlabel="outer iteration",
                       yscale="log")  # fmt: skip
        ev = [(r["iteration"], r["heldout_real_distance_mm"]) for r in history
              if "heldout_real_distance_mm" in r]  # fmt: skip
        tr = [(r["iteration"], r["train_real_distance_mm"]) for r in history
              if "train_real_distance_mm" in r]  # fmt: skip
        if ev:
            axes[0, 1].plot(*zip(*ev, strict=True), "o-", label="held-out goals (fresh policies)")
        if tr:
            axes[0, 1].plot(*zip(*tr, strict=True), "s--", label="training goals (collected)")
        axes[0, 1].axhline(SUCCESS_MM, color="gray", lw=0.8, ls=":")
        axes[0, 1].set(title="real MuJoCo final distance after K steps", xlabel="outer iteration",
                       ylabel="mm", yscale="log")  # fmt: skip
        axes[0, 1].legend()
        for ax in axes[0]:
            ax.grid(alpha=0.3)
        save(fig, ctx.path("meta_training.png"))

    fig, axes = new_figure(1, size=(8.0, 3.6))
    ax = axes[0, 0]
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        v = r["final_distance_mm_per_goal"]
        ax.bar(np.arange(len(v)) + i * width, v, width, label=name)
    ax.axhline(SUCCESS_MM, color="gray", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="held-out goal", ylabel="final distance (mm)",
           title=f"final end-effector distance per held-out goal ({arm.name})")  # fmt: skip
    ax.legend(fontsize=8)
    save(fig, ctx.path("final_distance_per_goal.png"))

    curves = {k: r["distance_by_inner_step_mm"] for k, r in results.items()
              if "distance_by_inner_step_mm" in r}  # fmt: skip
    if curves:
        fig, axes = new_figure(1, size=(5.0, 3.6))
        ax = axes[0, 0]
        for name, v in curves.items():
            ax.plot(range(len(v)), v, "o-", ms=3, label=name)
        for name, r in results.items():
            if name not in curves:
                ax.axhline(r["mean_final_distance_mm"], ls="--", lw=1, label=name,
                           color=f"C{list(results).index(name)}")  # fmt: skip
        ax.axhline(SUCCESS_MM, color="gray", lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="inner steps", ylabel="mean final distance (mm)",
               title="held-out goals, executed in MuJoCo after each step")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, ctx.path("distance_by_inner_step.png"))

    fig, axes = new_figure(len(paths), size=(3.6, 3.6))
    n = arm.n_links
    for ax, (name, X) in zip(axes[0], paths.items(), strict=True):
        ee = forward_kinematics(arm, torch.as_tensor(X[..., :n])).numpy()
        for g in range(ee.shape[0]):
            (line,) = ax.plot(ee[g, :, 0], ee[g, :, 1], lw=1)
            ax.plot(*test.goals[g].numpy(), "x", color=line.get_color())
        ax.plot(0, 0, "ko", ms=3)
        ax.set(title=name, aspect="equal", xlabel="x (m)", ylabel="z (m)")
        ax.grid(alpha=0.3)
    save(fig, ctx.path("ee_paths.png"))


def plot_landscape(
    ctx: RunContext,
    loss: LearnedLoss,
    policy: ReachPolicy,
    step: StepFn,
    test: ReachTask,
    init: Params,
    adapted: Mapping[str, Params],
    points: int,
) -> None:
    """``loss_landscape.png``: the learned and the task loss of held-out goal 0's policy on the
    plane through its fresh parameters spanned by ML3's and the task loss's K-step updates.

    ``(0, 0)`` is the fresh policy, ``(1, 0)`` where K steps on the learned loss took it, ``(0, 1)``
    where K steps on the task loss took it; both losses are evaluated on model rollouts.
    """
    center = {k: v[0] for k, v in init.items()}
    d_ml3 = {k: adapted["ml3"][k][0] - center[k] for k in center}
    d_task = {k: adapted["task_loss"][k][0] - center[k] for k in center}
    axis = torch.linspace(-0.5, 1.5, points, dtype=next(iter(center.values())).dtype)
    grids = loss_landscape(policy, center, (d_ml3, d_task), axis, axis, step, test.subset([0]),
                           {"learned loss M_phi": learned_loss_fn(loss),
                            "task loss": task_loss_fn})  # fmt: skip
    fig, axes = new_figure(len(grids), size=(4.2, 3.6))
    for ax, (name, values) in zip(axes[0], grids.items(), strict=True):
        v = values.numpy()
        # Log of the shifted loss: both losses span orders of magnitude over the plane.
        c = ax.contourf(axis, axis, np.log10(v - v.min() + 1e-3 * np.ptp(v) + 1e-12).T, 20)
        fig.colorbar(c, ax=ax, label="log10(loss - min)")
        ax.plot(0, 0, "wo", ms=6, label="fresh policy")
        ax.plot(1, 0, "r*", ms=10, label="K steps on M_phi")
        ax.plot(0, 1, "c^", ms=7, label="K steps on the task loss")
        ax.set(title=name, xlabel="along the ML3 update", ylabel="along the task-loss update")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    save(fig, ctx.path("loss_landscape.png"))


def reach_video(
    ctx: RunContext, sim: ArmSim, X: np.ndarray, test: ReachTask, n: int, stride: int
) -> str | None:
    """``meta_test_ml3.gif`` of the first ``n`` rollouts in ``X``; None when no renderer."""
    frames = []
    try:
        for g in range(min(n, test.n)):
            goal = test.goals[g].numpy()
            frames.append(render_rollout(sim, X[g], 200, 150, goal=goal, stride=stride))
    except RenderingUnavailableError as e:
        log.warning("no video: %s", e)
        return None
    fps = max(1, round(1.0 / (sim.dt * stride)))  # real time
    path = write_video(np.concatenate(frames), ctx.path("meta_test_ml3.gif"), fps=fps)
    return path.name


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
