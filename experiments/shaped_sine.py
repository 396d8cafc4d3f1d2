"""Shaped sine (ML3 paper, section IV.B): shaping a learned loss with a physics prior.

The optimizee is ``sin(theta x)`` with one scalar frequency theta; a task is a target frequency
theta* in [-5, 5] seen through 64 points ``(x, sin(theta* x))``, x in [-5, 5]. The MSE landscape
over theta has many local minima, so plain gradient descent rarely finds theta*. Two learned
losses reading per point (x, y_pred, y_target) are meta-trained the same way except for the task
loss: the shaped one is scored with the physics prior ``(theta_new - theta*)^2`` (the true
frequency, known at meta-train time only), the unshaped one with the MSE of the adapted sine.

Meta-test uses no prior and no theta*: for random (theta_0, theta*) pairs drawn apart from the
training draws, theta takes ``test_steps`` plain SGD steps on each loss; the metric is the
fraction of pairs ending within ``tolerance`` of theta*.

Choices (see docs/shaped-sine.md): truncated meta-updates as in the paper's code (one Adam step
on phi after every inner step, theta detached in between), random theta_0 ~ U[-5, 5] at
meta-train time, and a fixed input normalisation of the features (``feature_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ml3_robotics.app.runs import Experiment, RunResult, load_or_meta_train
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import MetaTrainConfig, MetaTrainer
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss, save_learned_loss
from ml3_robotics.core.validation import MAX_OUTER_STEPS, check_ints, check_widths
from ml3_robotics.reporting.plotting import new_figure, save
from ml3_robotics.tasks.sine import (
    SHAPED_SINE_FEATURES,
    ShapedLossFn,
    ShapedSineStepper,
    ShapedSineTasks,
    learned_shaped_loss,
    recovery_rate,
    shaped_mse,
    shaped_sine_landscape,
    shaped_sine_train,
)

LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
VARIANTS = ("shaped", "unshaped")
# Seeds of the evaluation draws, offset from the run seed. Meta-training draws come from
# SeedSequence((seed, update)) generators, a different stream; the tuning draws (MSE's step
# size) and the test draws are disjoint from each other and from the training draws.
TUNE_SEED_OFFSET = 20_000
TEST_SEED_OFFSET = 30_000


@dataclass(frozen=True)
class ShapedSineConfig:
    """Sizes and constants (defaults: the paper's code where it has one).

    Attributes:
        outer_steps: the paper's outer iterations; each takes ``meta_batch`` tasks through
            ``inner_steps`` steps and makes ``inner_steps`` meta-updates (truncated scheme).
        outer_lr: Adam step size on phi (paper: 3e-3).
        inner_lr, inner_steps: SGD on theta at meta-train time (paper: 1.0, 10).
        meta_batch: tasks per meta-update (paper: 4, vmapped here).
        n_points: points per task (paper: 64).
        theta0_range: starting frequencies at meta-train time (random, like the test pairs).
        loss_hidden: M_phi's hidden widths (paper: three layers of 10, ELU, no output activation,
            biases initialised to 0.01).
        feature_scale: divisors of the features (x, y_pred, y_target) before M_phi.
        n_test: random (theta_0, theta*) pairs at meta-test.
        test_steps: SGD steps at meta-test (each loss at ``inner_lr``; MSE also at a tuned lr).
        tolerance: a pair is recovered when ``|theta - theta*| < tolerance``.
        landscape_theta: the fixed theta* of the landscape figure (paper's figure: 0.5).
        checkpoint_every: meta-updates between checkpoints.
        loss_path, unshaped_loss_path: load these learned losses instead of meta-training them.
    """

    outer_steps: int = 1000
    outer_lr: float = 3e-3
    inner_lr: float = 1.0
    inner_steps: int = 10
    meta_batch: int = 4
    n_points: int = 64
    theta0_range: tuple[float, float] = (0.1, 0.1)
    loss_hidden: tuple[int, ...] = (10, 10, 10)
    feature_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    n_test: int = 200
    test_steps: int = 10
    tolerance: float = 0.1
    landscape_theta: float = 0.5
    checkpoint_every: int = 500
    loss_path: str | None = None
    unshaped_loss_path: str | None = None

    def __post_init__(self) -> None:
        check_widths("loss_hidden", self.loss_hidden)
        for name in (
            "inner_steps",
            "meta_batch",
            "n_points",
            "n_test",
            "test_steps",
            "checkpoint_every",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value}")
        check_ints(self, ("outer_steps",), 0, MAX_OUTER_STEPS)
        for name in ("outer_lr", "inner_lr", "tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")
        if any(not s > 0 for s in self.feature_scale):
            raise ValueError(f"feature_scale: expected positive values, got {self.feature_scale}")
        lo, hi = self.theta0_range
        if lo > hi:
            raise ValueError(f"theta0_range: expected low <= high, got ({lo}, {hi})")


def _new_loss(config: ShapedSineConfig, seed: int) -> LearnedLoss:
    loss = LearnedLoss(
        LossConfig(
            FeatureSpec(SHAPED_SINE_FEATURES, scale=config.feature_scale),
            hidden=config.loss_hidden,
            activation="elu",
            output_activation="none",
            bias=True,
            bias_init=0.01,
        )
    )
    # Both variants start from the same phi: "same everything" but the task loss.
    loss.reset_parameters(torch.Generator().manual_seed(seed))
    return loss


def _meta_train(
    variant: str, config: ShapedSineConfig, tasks: ShapedSineTasks, ctx: RunContext
) -> tuple[LearnedLoss, MetaTrainer]:
    loss = _new_loss(config, ctx.seed)
    inner = InnerOptimizer("sgd", lr=config.inner_lr, steps=config.inner_steps)
    stepper = ShapedSineStepper(
        loss,
        tasks,
        inner,
        batch=config.meta_batch,
        n_points=config.n_points,
        shaped=variant == "shaped",
    )
    last_step = config.inner_steps - 1

    def log_episode(_i: int, row: dict[str, float]) -> None:
        # One row per episode (its last inner step) keeps metrics.csv readable.
        if row["inner_step"] == last_step:
            ctx.metrics_log.append({"variant": variant, **row})

    trainer = MetaTrainer(
        loss,
        stepper,
        MetaTrainConfig(
            config.outer_steps * config.inner_steps,
            lr=config.outer_lr,
            seed=ctx.seed,
            checkpoint_every=config.checkpoint_every,
        ),
        checkpoint_path=ctx.path(f"checkpoints/{variant}.safetensors"),
        callbacks=[log_episode],
        state=stepper,
        progress=ctx.progress,
    )
    return loss, trainer


def run(config: ShapedSineConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(ctx.seed)
    tasks = ShapedSineTasks(theta0_range=config.theta0_range)
    losses, trainers = load_or_meta_train(
        VARIANTS,
        {"shaped": config.loss_path, "unshaped": config.unshaped_loss_path},
        SHAPED_SINE_FEATURES,
        lambda variant: _meta_train(variant, config, tasks, ctx),
        ctx,
        keep_row=lambda row: row["inner_step"] == config.inner_steps - 1,
    )
    for variant, trainer in trainers.items():
        with ctx.phase(f"meta_train_{variant}"):
            trainer.run()
        save_learned_loss(
            losses[variant],
            ctx.loss_stem(f"loss_{variant}"),
            provenance={
                "experiment": "shaped-sine",
                "variant": variant,
                "seed": ctx.seed,
                "meta_updates": trainer.iteration,
                "task_loss": "(theta - theta*)^2" if variant == "shaped" else "MSE",
                "features": "per point: x, sin(theta x), target",
            },
        )
    save_learned_loss(
        losses["shaped"],
        ctx.loss_stem("loss"),
        provenance={"experiment": "shaped-sine", "variant": "shaped", "seed": ctx.seed},
    )

    methods: dict[str, tuple[ShapedLossFn, float]] = {
        "shaped_ml3": (learned_shaped_loss(losses["shaped"]), config.inner_lr),
        "unshaped_ml3": (learned_shaped_loss(losses["unshaped"]), config.inner_lr),
        "mse": (shaped_mse, config.inner_lr),
    }

    def draws(offset: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(offset + ctx.seed)
        return tasks.sample(config.n_test, config.n_points, g, torch.float32)

    def trajectories(fn: ShapedLossFn, lr: float, data: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, theta0, x, y = data
        opt = InnerOptimizer("sgd", lr=lr, steps=config.test_steps)
        return shaped_sine_train(fn, theta0, x, y, opt)

    with ctx.phase("meta_test"):
        # The baseline's step size, tuned on draws from the training distribution (not the
        # test pairs) by the same recovery criterion.
        tune = draws(TUNE_SEED_OFFSET)
        tuned: dict[float, tuple[float, float]] = {}
        for lr in LR_GRID:
            tr = trajectories(shaped_mse, lr, tune)
            err = (tr[:, -1] - tune[0]).abs()
            rate = float(recovery_rate(tr, tune[0], config.tolerance)[-1])
            tuned[lr] = (rate, float(err.nan_to_num(float("inf")).mean()))
        best_lr = max(LR_GRID, key=lambda lr: (tuned[lr][0], -tuned[lr][1]))
        methods["mse_tuned_lr"] = (shaped_mse, best_lr)

        test = draws(TEST_SEED_OFFSET)
        theta_star = test[0]
        curves: dict[str, np.ndarray] = {}
        summary: dict[str, dict[str, float]] = {}
        for name, (fn, lr) in methods.items():
            tr = trajectories(fn, lr, test)
            curve = recovery_rate(tr, theta_star, config.tolerance)
            err = (tr[:, -1] - theta_star).abs()
            curves[name] = curve.numpy()
            summary[name] = {
                "recovery_rate": float(curve[-1]),
                "mean_abs_error": float(err.mean()),
                "median_abs_error": float(err.median()),
                "lr": lr,
            }

    with ctx.phase("plots"):
        thetas = torch.linspace(-7.0, 7.0, 561)
        x = torch.linspace(-5.0, 5.0, 101)
        y = torch.sin(config.landscape_theta * x)
        fig, axes = new_figure(1)
        ax = axes[0, 0]
        for name in ("shaped_ml3", "unshaped_ml3", "mse"):
            values = shaped_sine_landscape(methods[name][0], thetas, x, y).numpy()
            span = values.max() - values.min()
            ax.plot(
                thetas.numpy(), (values - values.min()) / (span if span > 0 else 1.0), label=name
            )
        ax.axvline(config.landscape_theta, color="k", ls="--", lw=0.8, label="theta*")
        ax.set(
            title=f"loss landscapes, theta* = {config.landscape_theta} (each scaled to [0, 1])",
            xlabel="theta",
            ylabel="normalised loss",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, ctx.path("loss_landscape.png"))

        fig, axes = new_figure(1)
        ax = axes[0, 0]
        for name, curve in curves.items():
            ax.plot(
                np.arange(len(curve)),
                curve,
                marker="o",
                ms=3,
                label=f"{name} (lr {methods[name][1]:g})",
            )
        ax.set(
            title=f"{config.n_test} random (theta_0, theta*) pairs",
            xlabel="SGD step",
            ylabel=f"fraction with |theta - theta*| < {config.tolerance:g}",
            ylim=(0.0, 1.0),
        )
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, ctx.path("recovery_vs_step.png"))

    return RunResult(
        metrics={k: v for k, v in summary["shaped_ml3"].items() if k != "lr"},
        baselines={
            "unshaped_ml3": {k: v for k, v in summary["unshaped_ml3"].items() if k != "lr"},
            "mse": summary["mse"],
            "mse_tuned_lr": summary["mse_tuned_lr"],
        },
        extra={
            "recovery_vs_step": {k: v.tolist() for k, v in curves.items()},
            "mse_lr_grid": {
                str(lr): {"recovery_rate": r, "mean_abs_error": e} for lr, (r, e) in tuned.items()
            },
            "test_pairs": config.n_test,
            "test_steps": config.test_steps,
        },
    )


def check_inputs(config: ShapedSineConfig) -> None:
    """The saved losses the config names, before the run folder is made."""
    for path in (config.loss_path, config.unshaped_loss_path):
        if path is not None:
            load_learned_loss(path, expect_features=SHAPED_SINE_FEATURES)


EXPERIMENT = Experiment(
    name="shaped-sine",
    summary="ML3 shaped sine: a physics prior at meta-train time vs unshaped ML3 and MSE",
    config_type=ShapedSineConfig,
    run=run,
    check_inputs=check_inputs,
    smoke={
        "outer_steps": 3,
        "inner_steps": 3,
        "n_test": 16,
        "test_steps": 3,
        "n_points": 16,
        "checkpoint_every": 4,
    },
)
