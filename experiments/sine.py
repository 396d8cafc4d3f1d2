"""Sine regression (ML3 paper, section IV.A.1).

Meta-train M_phi on one sine task (A=1, f=1, phase=pi, x in [-2, 2]); meta-test on 10 tasks out of
that distribution (A in [0.2, 5], phase in [-pi, pi], x in [-5, 5]): fresh optimizees take 100 SGD
steps with the learned loss and with MSE, scored on held-out points of each task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ml3_robotics.app.runs import Experiment, RunResult
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import MetaTrainConfig, MetaTrainer, OuterStep
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss, save_learned_loss
from ml3_robotics.core.validation import MAX_OUTER_STEPS, check_ints, check_widths
from ml3_robotics.reporting.plotting import band, new_figure, save
from ml3_robotics.tasks.sine import (
    SINE_FEATURES,
    SineTasks,
    evaluate_sine,
    learned_regression_loss,
    mse,
    regressor,
    sine_meta_loss,
)

TRAIN_TASKS = SineTasks(amplitude=(1.0, 1.0), phase=(math.pi, math.pi), x_range=(-2.0, 2.0))
TEST_TASKS = SineTasks(amplitude=(0.2, 5.0), phase=(-math.pi, math.pi), x_range=(-5.0, 5.0))
# Wide enough that the chosen step size is not on the edge (a diverging lr scores inf).
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


@dataclass(frozen=True)
class SineConfig:
    """Sizes and constants (defaults: the paper's code).

    Attributes:
        outer_steps: meta-updates of M_phi.
        outer_lr: Adam step size of the meta-updates.
        inner_lr: SGD step size of the regressor's steps on the learned loss.
        inner_steps: K, the inner steps each meta-update differentiates through.
        meta_batch: training tasks per meta-update.
        n_points: sample points per task (x drawn from the task's range).
        test_steps: inner steps at meta-test (the MSE-by-step curve).
        n_test_tasks: held-out test tasks (amplitude, phase and x range wider than training).
        hidden: hidden widths of the regressor MLP (paper: 1-100-10-1).
        loss_hidden: hidden widths of M_phi (paper: 50-50, ReLU, softplus output).
        depths: regressor depths (hidden layers) of the depth-transfer figure.
        eval_every: meta-updates between held-out evaluations logged to metrics.csv.
        checkpoint_every: meta-updates between checkpoints (resume starts from the last).
        loss_path: a saved loss to evaluate instead of meta-training one.
    """

    outer_steps: int = 500
    outer_lr: float = 1e-3
    inner_lr: float = 1e-3
    inner_steps: int = 1
    meta_batch: int = 1
    n_points: int = 100
    test_steps: int = 100
    n_test_tasks: int = 10
    hidden: tuple[int, ...] = (100, 10)
    loss_hidden: tuple[int, ...] = (50, 50)
    depths: tuple[int, ...] = (2, 3, 4)
    eval_every: int = 50
    checkpoint_every: int = 50
    loss_path: str | None = None

    def __post_init__(self) -> None:
        check_widths("hidden", self.hidden)
        check_widths("loss_hidden", self.loss_hidden)
        check_ints(self, ("inner_steps", "meta_batch", "n_points", "test_steps", "n_test_tasks",
                          "eval_every", "checkpoint_every"), 1)  # fmt: skip
        check_ints(self, ("outer_steps",), 0, MAX_OUTER_STEPS)
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths: expected hidden-layer counts >= 1, got {self.depths}")


def _depth_hidden(depth: int, base: tuple[int, ...]) -> tuple[int, ...]:
    """Optimizee widths for ``depth`` hidden layers: the paper's (100, 10) widened with 100s."""
    if depth == len(base):
        return base
    return (*((base[0],) * (depth - 1)), base[-1]) if depth > 1 else (base[-1],)


def run(config: SineConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(ctx.seed)
    model = regressor(config.hidden)
    inner = InnerOptimizer("sgd", lr=config.inner_lr, steps=config.inner_steps)
    test_inner = InnerOptimizer("sgd", lr=config.inner_lr, steps=config.test_steps)
    eval_seed = 10_000 + ctx.seed  # the test tasks of this seed; shared by every method

    def test_mse(loss_fn, hidden=config.hidden, tasks=TEST_TASKS, opt=test_inner) -> np.ndarray:
        return evaluate_sine(
            regressor(hidden),
            loss_fn,
            tasks,
            opt,
            n_tasks=config.n_test_tasks,
            n_points=config.n_points,
            seed=eval_seed,
        ).numpy()

    if config.loss_path is not None:
        loss, _ = load_learned_loss(config.loss_path, expect_features=SINE_FEATURES)
    else:
        loss = LearnedLoss(
            LossConfig(
                FeatureSpec(SINE_FEATURES),
                hidden=config.loss_hidden,
                activation="relu",
                output_activation="softplus",
                bias=False,
            )
        )
        loss.reset_parameters(torch.Generator().manual_seed(ctx.seed))

        def objective(iteration: int, g: torch.Generator) -> OuterStep:
            value = sine_meta_loss(
                model,
                loss,
                TRAIN_TASKS,
                inner,
                batch=config.meta_batch,
                n_points=config.n_points,
                generator=g,
            )
            metrics = {}
            if (iteration + 1) % config.eval_every == 0:
                metrics["test_mse"] = float(test_mse(learned_regression_loss(loss))[:, -1].mean())
            return OuterStep(value, metrics)

        trainer = MetaTrainer(
            loss,
            objective,
            MetaTrainConfig(
                config.outer_steps,
                lr=config.outer_lr,
                seed=ctx.seed,
                checkpoint_every=config.checkpoint_every,
            ),
            checkpoint_path=ctx.checkpoint_path,
            callbacks=[lambda i, row: ctx.metrics_log.append(row)],
            progress=ctx.progress,
        )
        with ctx.phase("meta_train"):
            if ctx.resume and trainer.load_checkpoint():
                ctx.metrics_log.restart(trainer.history)
            trainer.run()
        save_learned_loss(
            loss,
            ctx.loss_stem("loss"),
            provenance={
                "experiment": "sine",
                "seed": ctx.seed,
                "outer_steps": trainer.iteration,
                "features": "per point: optimizee prediction and target",
            },
        )

    learned = learned_regression_loss(loss)
    with ctx.phase("meta_test"):
        traces = {"ml3": test_mse(learned), "mse": test_mse(mse)}
        train_traces = {
            name: test_mse(fn, tasks=TRAIN_TASKS) for name, fn in (("ml3", learned), ("mse", mse))
        }
        # The baseline's step size tuned on the training task, so MSE gets the same care.
        tuned = {
            lr: test_mse(
                mse, tasks=TRAIN_TASKS, opt=InnerOptimizer("sgd", lr=lr, steps=config.test_steps)
            )[:, -1].mean()
            for lr in LR_GRID
        }
        best_lr = min(tuned, key=lambda lr: (not np.isfinite(tuned[lr]), tuned[lr]))
        traces["mse_tuned_lr"] = test_mse(
            mse, opt=InnerOptimizer("sgd", lr=best_lr, steps=config.test_steps)
        )
        depth_traces = {
            d: {
                "ml3": test_mse(learned, hidden=_depth_hidden(d, config.hidden)),
                "mse": test_mse(mse, hidden=_depth_hidden(d, config.hidden)),
            }
            for d in config.depths
        }

    with ctx.phase("plots"):
        fig, axes = new_figure(2)
        band(axes[0, 0], {k: v for k, v in train_traces.items()}, logy=True)
        axes[0, 0].set(title="train task (A=1, phase=pi)", xlabel="SGD step", ylabel="held-out MSE")
        band(axes[0, 1], traces, logy=True)
        axes[0, 1].set(title=f"{config.n_test_tasks} test tasks", xlabel="SGD step")
        save(fig, ctx.path("mse_vs_step.png"))
        fig, axes = new_figure(len(depth_traces))
        for ax, (d, tr) in zip(axes[0], depth_traces.items(), strict=True):
            band(ax, tr, logy=True)
            ax.set(
                title=f"optimizee {_depth_hidden(d, config.hidden)}",
                xlabel="SGD step",
                ylabel="held-out test MSE",
            )
        save(fig, ctx.path("mse_vs_step_by_depth.png"))

    def summary(name: str) -> dict[str, float]:
        out = {
            "test_mse": float(traces[name][:, -1].mean()),
            "test_mse_std": float(traces[name][:, -1].std()),
        }
        if name in train_traces:
            out["train_mse"] = float(train_traces[name][:, -1].mean())
        for d, tr in depth_traces.items():
            if name in tr:
                out[f"test_mse_depth{d}"] = float(tr[name][:, -1].mean())
        return out

    return RunResult(
        metrics=summary("ml3"),
        baselines={
            "mse": summary("mse"),
            "mse_tuned_lr": {**summary("mse_tuned_lr"), "lr": best_lr},
        },
        extra={"test_mse_per_task": {k: v[:, -1].tolist() for k, v in traces.items()}},
    )


def check_inputs(config: SineConfig) -> None:
    """The saved loss the config names, before the run folder is made."""
    if config.loss_path is not None:
        load_learned_loss(config.loss_path, expect_features=SINE_FEATURES)


EXPERIMENT = Experiment(
    name="sine",
    summary="ML3 sine regression: learned loss vs MSE on out-of-distribution sine tasks",
    config_type=SineConfig,
    run=run,
    check_inputs=check_inputs,
    smoke={
        "outer_steps": 6,
        "test_steps": 5,
        "n_test_tasks": 2,
        "n_points": 20,
        "depths": [2, 3],
        "eval_every": 3,
        "checkpoint_every": 2,
    },
)
