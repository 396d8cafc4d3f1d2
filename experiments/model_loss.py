"""Model loss (issue 14): a meta-learned loss that fits a new robot's dynamics model from a few
trajectories, shaped by a physics prior at meta-train time.

Learned losses are meta-trained the same way on random 2- and 3-link arms except for the
meta-objective: ``prior`` adds the true simulator's rollouts from broad starts to the held-out
error, ``reach`` adds the arm's reaching motions (iLQR on the true model), ``no_prior`` scores
the held-out error alone (``variants`` picks which are run; the first is the headline).
Meta-test: arms drawn apart (including 4-link arms), 5 and 20 babbling trajectories, the same
model, data and K steps for every loss; the MSE and the Gaussian NLL at step sizes tuned on the
meta-training arms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ml3_robotics.app.runs import Experiment, RunResult, load_or_meta_train
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import MetaTrainConfig, MetaTrainer
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss, save_learned_loss
from ml3_robotics.core.validation import (
    MAX_OUTER_STEPS,
    check_choice,
    check_ints,
    check_widths,
)
from ml3_robotics.evaluation.model_loss import (
    ModelStudySettings,
    evaluate_model_losses,
    tune_baselines,
)
from ml3_robotics.mbrl.arm_data import ArmData
from ml3_robotics.mbrl.arm_distribution import ArmDistribution, sample_arm_configs
from ml3_robotics.mbrl.model_loss import ModelFitSettings, ModelLossObjective
from ml3_robotics.reporting.plotting import new_figure, save
from ml3_robotics.tasks.model_fitting import (
    MODEL_LOSS_FEATURES,
    Transitions,
    imitate_mse,
    model_loss_feature_spec,
)

VARIANTS = ("prior", "reach", "no_prior")
LOSS_INITS = ("mse", "random")
#: Seed offsets of the test arms' draw and of the arms' data (train arm i: + i).
TEST_ARM_SEED = 40_009
TRAIN_DATA_SEED = 1_000
TEST_DATA_SEED = 2_000


@dataclass(frozen=True)
class ModelLossConfig(ModelStudySettings):
    """Sizes and settings.

    Attributes:
        train_arms, test_arms: arm distributions (``ArmDistribution.parse`` syntax); the test
            arms are drawn from their own seed, so none of them is a meta-training arm.
        variants: the learned losses to meta-train and test (of ``VARIANTS``; the first is
            the headline, saved also as ``loss``).
        prior_trajectories: true-simulator rollouts from broad starts per meta-training arm.
        reach_trajectories: reaching motions per meta-training arm (variant ``reach``).
        model_hidden, model_members: the fitted model.
        inner_method, inner_lr, inner_steps: the K-step fit.
        differentiable_steps: meta-gradient through the last this many steps (0: all).
        loss_hidden: M_psi's hidden widths.
        loss_init: ``"mse"``: M_psi starts as an imitation of the squared error
            (:func:`~ml3_robotics.tasks.model_fitting.imitate_mse`, on the meta-training arms'
            fitting pools); ``"random"``: a random network.
        outer_steps, outer_lr, grad_clip: meta-training.
        arms_per_iteration: meta-training arms per outer iteration.
        meta_horizon: open-loop steps scored by the meta-objective.
        prior_weight: weight of the broad-start term (variant ``prior``).
        reach_weight: weight of the reaching-motion term (variant ``reach``).
        checkpoint_every: meta-updates between checkpoints.
        loss_path, reach_loss_path, no_prior_loss_path: evaluate these saved losses (of the
            variants ``prior``, ``reach``, ``no_prior``) instead of meta-training.
        the rest: :class:`~ml3_robotics.evaluation.model_loss.ModelStudySettings` (the data,
            the baselines' step-size grid, tuned on the meta-training arms, and the meta-test).
    """

    train_arms: str = "links=2,3 length=0.7:1.4 mass=0.5:2 n=6"
    test_arms: str = "links=2,3,4 length=0.7:1.4 mass=0.5:2 n=4"
    variants: tuple[str, ...] = ("prior", "no_prior")
    prior_trajectories: int = 10
    reach_trajectories: int = 10
    model_hidden: tuple[int, ...] = (64, 64)
    model_members: int = 1
    inner_method: str = "adam"
    inner_lr: float = 1e-2
    inner_steps: int = 100
    differentiable_steps: int = 0
    loss_hidden: tuple[int, ...] = (32, 32)
    loss_init: str = "mse"
    outer_steps: int = 150
    outer_lr: float = 1e-3
    grad_clip: float = 10.0
    arms_per_iteration: int = 2
    meta_horizon: int = 65
    prior_weight: float = 1.0
    reach_weight: float = 1.0
    checkpoint_every: int = 10
    loss_path: str | None = None
    reach_loss_path: str | None = None
    no_prior_loss_path: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for spec in ("train_arms", "test_arms"):
            ArmDistribution.parse(getattr(self, spec))  # raises naming the field's problem
        check_ints(self, ("model_members", "inner_steps", "arms_per_iteration", "meta_horizon",
                          "checkpoint_every"), 1)  # fmt: skip
        check_ints(self, ("prior_trajectories", "reach_trajectories", "differentiable_steps"), 0)
        check_ints(self, ("outer_steps",), 0, MAX_OUTER_STEPS)
        check_widths("model_hidden", self.model_hidden)
        check_widths("loss_hidden", self.loss_hidden)
        for name in ("inner_lr", "outer_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)}")
        for name in ("prior_weight", "reach_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        if not self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants: expected distinct names, got {self.variants}")
        for variant in self.variants:
            check_choice("variants", variant, VARIANTS)
        if "reach" in self.variants and self.reach_trajectories == 0:
            raise ValueError("variants: 'reach' needs reach_trajectories > 0")
        if "prior" in self.variants and self.prior_trajectories == 0:
            raise ValueError("variants: 'prior' needs prior_trajectories > 0")
        InnerOptimizer(self.inner_method, lr=self.inner_lr, steps=self.inner_steps)
        check_choice("loss_init", self.loss_init, LOSS_INITS)

    def fit_settings(self) -> ModelFitSettings:
        return ModelFitSettings(
            tuple(self.model_hidden),
            self.model_members,
            InnerOptimizer(self.inner_method, lr=self.inner_lr, steps=self.inner_steps),
            tuple(self.fit_sizes),
        )


def _arm_data(
    config: ModelLossConfig, spec: str, seed: int, data_seed: int, *, train: bool
) -> list[ArmData]:
    """Every arm's data; the priors' true-simulator data only for meta-training arms whose
    variants use it."""
    arms = sample_arm_configs(ArmDistribution.parse(spec), seed)
    return [
        ArmData.collect(
            arm,
            data_seed + i,
            n_fit=config.fit_pool,
            n_check=config.check_trajectories,
            n_prior=config.prior_trajectories,
            horizon=config.horizon,
            hold=config.babble_hold,
            n_reach=config.reach_trajectories if train and _meta_trains_reach(config) else 0,
        )
        for i, arm in enumerate(arms)
    ]


def _meta_trains_reach(config: ModelLossConfig) -> bool:
    """Whether the run meta-trains the ``reach`` variant (and so needs the reaching motions)."""
    return "reach" in config.variants and config.reach_loss_path is None


def _new_loss(config: ModelLossConfig, arms: list[ArmData], seed: int) -> LearnedLoss:
    loss = LearnedLoss(
        LossConfig(model_loss_feature_spec(), hidden=config.loss_hidden, activation="elu")
    )
    # All variants start from the same psi: they differ only in the meta-objective.
    generator = torch.Generator().manual_seed(seed)
    loss.reset_parameters(generator)
    if config.loss_init == "mse":
        imitate_mse(loss, [(d.arm, Transitions.of(d.fit_X, d.fit_U)) for d in arms], generator)
    return loss


def _meta_train(
    variant: str, config: ModelLossConfig, arms: list[ArmData], ctx: RunContext
) -> tuple[LearnedLoss, MetaTrainer]:
    loss = _new_loss(config, arms, ctx.seed)
    objective = ModelLossObjective(
        loss, arms, config.fit_settings(),
        arms_per_iteration=config.arms_per_iteration, meta_horizon=config.meta_horizon,
        prior_weight=config.prior_weight if variant == "prior" else 0.0,
        reach_weight=config.reach_weight if variant == "reach" else 0.0,
        differentiable_steps=config.differentiable_steps or None,
    )  # fmt: skip
    trainer = MetaTrainer(
        loss,
        objective,
        MetaTrainConfig(
            config.outer_steps,
            lr=config.outer_lr,
            seed=ctx.seed,
            checkpoint_every=config.checkpoint_every,
            grad_clip=config.grad_clip,
        ),
        checkpoint_path=ctx.path(f"checkpoints/{variant}.safetensors"),
        callbacks=[lambda _i, row: ctx.metrics_log.append({"variant": variant, **row})],
        progress=ctx.progress,
        label=f"meta-train ({variant})",
        world=ctx.world,
    )
    return loss, trainer


def run(config: ModelLossConfig, ctx: RunContext) -> RunResult:
    torch.manual_seed(ctx.seed)
    with ctx.phase("arm_data"):
        train = _arm_data(
            config, config.train_arms, ctx.seed, ctx.seed + TRAIN_DATA_SEED, train=True
        )
        test = _arm_data(
            config, config.test_arms, ctx.seed + TEST_ARM_SEED, ctx.seed + TEST_DATA_SEED,
            train=False,
        )  # fmt: skip
    for data in test:
        data.arm = data.arm.replace(name=data.arm.name.replace("sampled", "test"))

    losses, trainers = load_or_meta_train(
        config.variants,
        {
            "prior": config.loss_path,
            "reach": config.reach_loss_path,
            "no_prior": config.no_prior_loss_path,
        },
        MODEL_LOSS_FEATURES,
        lambda variant: _meta_train(variant, config, train, ctx),
        ctx,
    )
    for variant, trainer in trainers.items():
        with ctx.phase(f"meta_train_{variant}"):
            trainer.run()
    if not ctx.world.finish():  # data-parallel meta-training done; rank 0 goes on
        return RunResult.of_other_rank()
    for variant, trainer in trainers.items():
        save_learned_loss(
            losses[variant],
            ctx.loss_stem(f"loss_{variant}"),
            provenance={
                "experiment": "model-loss",
                "variant": variant,
                "seed": ctx.seed,
                "meta_updates": trainer.iteration,
                "train_arms": config.train_arms,
                "inner_method": config.inner_method,
                "inner_lr": config.inner_lr,
                "inner_steps": config.inner_steps,
                "model_hidden": list(config.model_hidden),
                "model_members": config.model_members,
                "prior_weight": config.prior_weight if variant == "prior" else 0.0,
                "reach_weight": config.reach_weight if variant == "reach" else 0.0,
            },
        )
    headline_variant = config.variants[0]
    save_learned_loss(
        losses[headline_variant],
        ctx.loss_stem("loss"),
        provenance={"experiment": "model-loss", "variant": headline_variant, "seed": ctx.seed},
    )

    settings = config.fit_settings()
    methods: dict[str, tuple[Any, dict[int, float]]] = {
        f"ml3_{v}": (losses[v], dict.fromkeys(config.fit_sizes, config.inner_lr))
        for v in config.variants
    }
    with ctx.phase("tune_baselines"):
        # The baselines' step size per fitting-set size, tuned on the meta-training arms.
        tuning = tune_baselines(methods, train, settings, config, ctx.seed)
    with ctx.phase("meta_test"):
        result = evaluate_model_losses(methods, test, settings, config, ctx)
    summary = result["summary"]

    with ctx.phase("plots"):
        _plot(summary, config, ctx)
    headline = {
        f"{key}_{n}": value
        for n, figures in summary[f"ml3_{headline_variant}"].items()
        for key, value in figures.items()
    }
    return RunResult(
        metrics=headline,
        baselines={
            name: {f"{k}_{n}": v for n, figs in by_size.items() for k, v in figs.items()}
            for name, by_size in summary.items()
            if name != f"ml3_{headline_variant}"
        },
        extra={
            "summary": summary,
            "tuning": tuning,
            "per_arm": result["per_arm"],
            "train_arms": [d.arm.name for d in train],
            "test_arms": [{"name": d.arm.name, "links": d.arm.n_links} for d in test],
        },
    )


def _plot(summary: dict[str, Any], config: ModelLossConfig, ctx: RunContext) -> None:
    names = list(summary)
    sizes = [str(n) for n in config.fit_sizes]
    keys = [("error_full_median", f"open-loop error over {config.horizon} steps (median)"),
            ("ilqr_mm_median", "iLQR on the fitted model, in MuJoCo: mm (median)")]  # fmt: skip
    keys = [(k, t) for k, t in keys if all(k in summary[m][n] for m in names for n in sizes)]
    fig, axes = new_figure(len(keys))
    width = 0.8 / len(names)
    for ax, (key, title) in zip(axes[0], keys, strict=True):
        for j, name in enumerate(names):
            values = [summary[name][n][key] for n in sizes]
            ax.bar(np.arange(len(sizes)) + j * width, values, width, label=name)
        ax.set(title=title, xticks=np.arange(len(sizes)) + 0.4 - width / 2,
               xticklabels=[f"{n} trajectories" for n in sizes])  # fmt: skip
        if all(summary[m][n][key] > 0 for m in names for n in sizes):
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].legend()
    save(fig, ctx.path("model_loss.png"))


def check_inputs(config: ModelLossConfig) -> None:
    """The saved losses the config names, before the run folder is made."""
    for path in (config.loss_path, config.reach_loss_path, config.no_prior_loss_path):
        if path is not None:
            load_learned_loss(path, expect_features=MODEL_LOSS_FEATURES)


EXPERIMENT = Experiment(
    name="model-loss",
    summary="a meta-learned loss fits a new arm's dynamics from few trajectories (vs MSE, NLL)",
    config_type=ModelLossConfig,
    run=run,
    check_inputs=check_inputs,
    data_parallel=True,
    smoke={
        "train_arms": "links=2,3 n=2",
        "test_arms": "links=2,4 n=2",
        "fit_pool": 3,
        "check_trajectories": 2,
        "prior_trajectories": 2,
        "horizon": 12,
        "fit_sizes": (1, 2),
        "model_hidden": (8,),
        "inner_steps": 3,
        "loss_hidden": (4,),
        "outer_steps": 3,
        "meta_horizon": 6,
        "lr_grid": (1e-2, 3e-2),
        "repeats": 1,
        "n_goals": 2,
        "ilqr_iters": 2,
        "checkpoint_every": 2,
    },
)
