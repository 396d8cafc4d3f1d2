"""Model-based RL with a meta-learned loss on the 2-link reacher (ML3 paper, section IV.A.2).

Random babbling in MuJoCo fills a replay buffer; a probabilistic ensemble learns the dynamics.
ML3 meta-trains a learned loss M_phi over a set of training goals: fresh per-goal policies take K
SGD steps on M_phi through differentiable model rollouts, and the meta-loss is the paper's task
loss of the adapted policies' model rollouts. Every ``collect_every`` iterations the adapted
policies run in the real simulator and their transitions join the buffer; the model refits every
``refit_every`` iterations. Meta-test on held-out goals: fresh policies, K steps on M_phi only,
executed in MuJoCo, against (a) the same policy trained with the task loss through the same model
(step size tuned on the training goals), (b) iLQR on the learned model and (c) iLQR on the true
MuJoCo dynamics, both executed in MuJoCo with the plan's feedback gains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from controllers import ILQRConfig, MujocoDynamics
from ml3_robotics.app.runs import Experiment, RunResult
from ml3_robotics.core.inner import INNER_METHODS, InnerOptimizer, Params, init_params
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import (
    MetaTrainConfig,
    MetaTrainer,
    iteration_generator,
)
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import (
    atomic_save_tensors,
    load_learned_loss,
    save_learned_loss,
)
from ml3_robotics.core.task_losses import Demonstrations, ExtraTerm
from ml3_robotics.core.validation import (
    MAX_OUTER_STEPS,
    check_choice,
    check_ints,
    check_positive,
    check_widths,
)
from ml3_robotics.evaluation.reach import (
    REACH_TASK_LR_GRID,
    TEST_INIT_SEED,
    eval_config_from,
    evaluate_reach,
    fresh_policy_params,
    mujoco_model,
    round_figures,
)
from ml3_robotics.mbrl.arm_distribution import ArmDistribution, arm_cycle_from
from ml3_robotics.mbrl.loop import DynamicsLearner, ReachModelConfig, babble
from ml3_robotics.reporting.reach_figures import write_reach_figures
from ml3_robotics.tasks.reach import (
    REACH_FEATURES,
    GoalConditionedPolicy,
    ReachPolicy,
    ReachTask,
    execute_policies,
    learned_loss_fn,
    meta_loss,
    meta_objective_terms,
    meta_test,
    plan_and_execute,
    pretrain_goal_policy,
    reach_feature_spec,
    rest_at_goal_prior,
)
from robots.arm import (
    BACKENDS,
    ArmSim,
    check_goals,
    load_arm_config,
    sample_goals,
)

log = logging.getLogger(__name__)

EXTRAS = ("none", "demos", "physics")
POLICY_CLASSES = ("per_goal", "goal_conditioned")


class _RunState:
    """What a checkpoint holds besides M_phi: the MBRL loop's data and model, and the
    pre-trained goal-conditioned policy when there is one (it was trained on the first model,
    which later refits replace, so it cannot be retrained on resume)."""

    def __init__(self, learner: DynamicsLearner) -> None:
        self.learner = learner
        self.start_policy: GoalConditionedPolicy | None = None

    def state_dict(self) -> dict[str, Tensor]:
        state = self.learner.state_dict()
        if self.start_policy is not None:
            state |= {f"start_policy.{k}": v for k, v in self.start_policy.state_dict().items()}
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.learner.load_state_dict({k: v for k, v in state.items()
                                      if not k.startswith("start_policy.")})  # fmt: skip
        if self.start_policy is not None:
            self.start_policy.load_state_dict(
                {k[len("start_policy.") :]: v for k, v in state.items()
                 if k.startswith("start_policy.")}
            )  # fmt: skip


@dataclass(frozen=True)
class ReacherConfig:
    """Sizes and constants. Defaults: the full run (`ml3r run reacher`).

    Paper constants: 2 links of 0.1 m, dt 0.01 s, horizon 65, start at zero, learned loss ELU
    400-400 + softplus, meta lr 1e-2, policy tanh 64-64. Fields not listed here are explained
    beside them in the source.

    Attributes:
        arm: shipped arm configuration name or a robot YAML path.
        horizon: steps per rollout (dt 0.01 s each).
        goals_per_iteration: training goals per meta-update (drawn from the pool).
        n_test_goals: held-out goals of the final evaluation (sampled apart from training).
        inner_lr: step size of the policy's inner steps on the learned loss (and ML3's default
            at meta-test).
        outer_steps: meta-updates of M_phi.
        outer_lr: Adam step size of the meta-updates (cosine-decayed to outer_lr_final).
        loss_hidden: hidden widths of M_phi (ELU, softplus output).
        loss_init_scale: starting value of the learned output scale.
        policy_hidden: hidden widths of the tanh policy MLP.
        policy_zero_output: start fresh policies with a zero output layer (zero torques).
        collect_every: meta-updates between on-policy data collections in the real simulator.
        refit_every: meta-updates between model refits on the replay buffer.
        model: the learned model's babbling and ensemble (the ``model`` group,
            :class:`~ml3_robotics.mbrl.loop.ReachModelConfig`; ``--set model.fit_epochs=30``).
        refit_epochs: epochs of each later refit.
        eval_every: meta-updates between held-out evaluations logged to metrics.csv.
        checkpoint_every: meta-updates between checkpoints (resume starts from the last).
        lr_grid: task-loss step sizes tried on the training goals (the baseline's tuning).
        ilqr_iters: iterations of the iLQR baselines.
        n_holdout_trajectories: held-out babbling trajectories for the model-error figures.
        video_goals: held-out goals rendered in the ML3 video (0: no video).
        torch_threads: torch CPU threads of the run.
        loss_path: a saved loss to evaluate instead of meta-training one (skips meta-training).
    """

    arm: str = "reacher2"
    backend: str = "mujoco"  # the real system: "mujoco" or "pybullet" (iLQR plans on MuJoCo)
    horizon: int = 65
    # Meta-training draws goals_per_iteration goals from a pool of n_train_goals each outer
    # iteration: a fixed set of 16 was learned by heart (48 mm on it, 116 mm held out; measured).
    n_train_goals: int = 256
    goals_per_iteration: int = 16
    # The iteration's goals are split into items of this many (0: one item of all of them);
    # ``--nproc N`` spreads the items over N processes, so the same items give the same loss.
    goals_per_item: int = 0
    n_test_goals: int = 10
    # Held-out goals [[x, z], ...] in m to evaluate on instead of n_test_goals sampled ones
    # (n_test_goals becomes their number; training goals are kept goal_separation away).
    goals: tuple[tuple[float, float], ...] = ()
    goal_min_radius: float = 0.3  # fraction of the reach; goals at the base are degenerate
    goal_separation: float = 0.02  # m between any two goals (held-out vs training too)
    # K = 1: the learned loss beat the tuned task loss after one step and lost after three
    # (demo size, seeds 0-1: 57 vs 201 and 124 vs 128 mm at K = 1; 115 vs 83 and 158 vs 93 mm at
    # K = 3; docs/mbrl.md).
    inner_steps: int = 1
    inner_lr: float = 1e-3
    inner_method: str = "sgd"  # "sgd" or "adam", for ML3 and the task-loss baseline alike
    # The meta-gradient flows through the last this many inner steps only (0: all K). A
    # truncated meta-gradient makes large K cheaper (benchmarks/bench_reacher.py).
    meta_gradient_steps: int = 0
    # "last_step": the meta-objective scores the rollout after the K-th step (the paper's);
    # "ramp": sum_k k / sum(1..K) times the score after step k, so no step may undo the policy.
    meta_objective: str = "last_step"
    # What the meta-objective scores: "task_loss" (the paper's joint-space loss) or
    # "end_effector" (final end-effector distance in cm: no IK branch cut can mislead it).
    meta_distance: str = "task_loss"
    # "per_goal": a fresh policy per goal (the paper's); "goal_conditioned": one policy over the
    # training goals (pre-trained through the learned model) whose per-goal copies every method
    # fine-tunes (issue 22).
    policy_class: str = "per_goal"
    pretrain_steps: int = 1500  # Adam steps of the goal-conditioned policy's pre-training
    pretrain_lr: float = 1e-3  # Adam step size of that pre-training
    # Fraction of the training pool the goal-conditioned policy is pre-trained on; meta-training
    # batches and the task loss's step-size tuning then use the rest, so the fine-tuning starts
    # from errors like those on held-out goals (0: the whole pool for both).
    pretrain_split: float = 0.0
    budgets: tuple[int, ...] = (1, 2, 5, 10)  # step budgets the baselines are tuned for
    # The learned-optimizer baseline (issue 22): the task loss with its K step sizes
    # meta-learned by ML3's meta-objective on the same goals; this many meta-updates (0: off).
    step_size_updates: int = 0
    step_size_lr: float = 0.05  # Adam on the log step sizes, cosine-decayed to a tenth
    # MAML (issue 22): the starting policy's parameters meta-learned for K steps of the task loss
    # (tuned for K) by the same meta-objective on the same goals; this many meta-updates (0: off).
    maml_updates: int = 0
    maml_lr: float = 1e-3  # Adam on the policy's parameters, cosine-decayed to a tenth
    outer_steps: int = 300
    outer_lr: float = 1e-2
    outer_lr_final: float = 1e-3  # cosine decay of the meta lr to this (the end point is stable)
    grad_clip: float = 1.0  # 10 let single spikes undo progress at meta lr 1e-2 (measured)
    loss_hidden: tuple[int, ...] = (400, 400)
    loss_learn_scale: bool = True  # meta-learn the loss's output scale (the inner step size)
    loss_init_scale: float = 1.0
    policy_hidden: tuple[int, ...] = (64, 64)
    policy_zero_output: bool = True
    # Extra information at meta-train time only (issue 6): "none", "demos" (imitate iLQR expert
    # trajectories on the training goals) or "physics" (arrive at rest: kinetic-energy law).
    extra: str = "none"
    demo_weight: float = 10.0  # on mean_t ||q_t - q*_t||^2 (rad^2)
    physics_weight: float = 1.0  # on the final 20% of steps' kinetic energy / E_ref
    curve_steps: int = 10  # meta-test curves: real distance after each of this many inner steps
    landscape_grid: int = 21  # loss_landscape.png resolution (0: none)
    bc_epochs: int = 2000  # behaviour-cloning baseline (extra=demos)
    collect_every: int = 20
    refit_every: int = 40
    model: ReachModelConfig = field(default_factory=ReachModelConfig)
    refit_epochs: int = 30
    eval_every: int = 20
    checkpoint_every: int = 10
    lr_grid: tuple[float, ...] = REACH_TASK_LR_GRID
    ilqr_iters: int = 30
    n_holdout_trajectories: int = 20
    video_goals: int = 4
    video_stride: int = 3  # render every n-th state (CPU rendering: ~0.1-0.3 s per frame)
    torch_threads: int = 1
    loss_path: str | None = None
    # "" = the single arm; else ArmDistribution.parse spec, e.g. "links=2,3,4 length=0.7:1.4
    # mass=0.5:2 n=6": meta-train over those arms too (ml3_robotics.mbrl.arm_distribution).
    arm_distribution: str = ""

    @property
    def n_pretrain_goals(self) -> int:
        """Training goals the goal-conditioned policy is pre-trained on (the first ones of the
        pool; 0 for per-goal policies or without a split)."""
        if self.policy_class != "goal_conditioned":
            return 0
        return round(self.pretrain_split * self.n_train_goals)

    def __post_init__(self) -> None:
        check_widths("loss_hidden", self.loss_hidden)
        check_widths("policy_hidden", self.policy_hidden)
        positive = (
            "horizon", "n_train_goals", "goals_per_iteration", "n_test_goals", "inner_steps",
            "collect_every", "refit_every", "refit_epochs",
            "eval_every", "checkpoint_every", "ilqr_iters", "n_holdout_trajectories",
            "torch_threads", "video_stride",
        )  # fmt: skip
        check_ints(self, positive, 1)
        check_ints(self, ("video_goals", "meta_gradient_steps", "goals_per_item"), 0)
        check_ints(self, ("outer_steps",), 0, MAX_OUTER_STEPS)
        if self.goals_per_item and self.goals_per_iteration % self.goals_per_item:
            raise ValueError(
                f"goals_per_item: expected a divisor of goals_per_iteration="
                f"{self.goals_per_iteration} (items of equal size), got {self.goals_per_item}"
            )
        check_ints(self, ("pretrain_steps",), 1)
        meta_objective_terms(self.meta_objective, self.meta_distance, self.inner_steps)
        check_choice("policy_class", self.policy_class, POLICY_CLASSES)
        check_positive(self, ("pretrain_lr",))
        if not 0 <= self.pretrain_split < 1:
            raise ValueError(
                f"pretrain_split: expected a fraction in [0, 1), got {self.pretrain_split}"
            )
        n_meta = self.n_train_goals - self.n_pretrain_goals
        if self.pretrain_split and n_meta < self.goals_per_iteration:
            raise ValueError(
                f"pretrain_split: leaves {n_meta} training goals for meta-training, fewer than "
                f"goals_per_iteration={self.goals_per_iteration}"
            )
        if self.policy_class == "goal_conditioned" and self.arm_distribution:
            raise ValueError(
                "policy_class: goal_conditioned does not combine with arm_distribution"
            )
        check_choice("extra", self.extra, EXTRAS)
        check_choice("backend", self.backend, BACKENDS)
        if self.goals_per_iteration > self.n_train_goals:
            raise ValueError(
                f"goals_per_iteration: expected at most n_train_goals={self.n_train_goals}, got "
                f"{self.goals_per_iteration}"
            )
        for name in ("demo_weight", "physics_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        check_positive(self, ("inner_lr", "outer_lr", "outer_lr_final", "grad_clip"))
        if not 0 <= self.goal_min_radius < 1:
            raise ValueError(f"goal_min_radius: expected a fraction in [0, 1), got "
                             f"{self.goal_min_radius}")  # fmt: skip
        check_choice("inner_method", self.inner_method, INNER_METHODS)
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid: expected positive step sizes, got {self.lr_grid}")
        ArmDistribution.parse(self.arm_distribution)  # a malformed spec fails here
        if self.goals:
            check_goals(self.arm, self.goals)
            object.__setattr__(self, "n_test_goals", len(self.goals))
        # The evaluation's settings (budgets, ...) are checked now, not after meta-training.
        eval_config_from(self, babble_hold=self.model.babble_hold)


def run(config: ReacherConfig, ctx: RunContext) -> RunResult:
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        return _run(config, ctx)
    finally:
        torch.set_num_threads(threads)


def _run(config: ReacherConfig, ctx: RunContext) -> RunResult:
    seed = ctx.seed
    arm = load_arm_config(config.arm)
    sim = ArmSim(arm, config.backend)
    T = config.horizon
    reach_kw = {"min_radius": config.goal_min_radius, "min_distance": config.goal_separation}
    # Held-out goals first, then a dense training pool kept goal_separation away from them.
    test_goals = (
        np.asarray(config.goals, dtype=np.float64)  # checked in ReacherConfig.__post_init__
        if config.goals
        else sample_goals(arm, config.n_test_goals, seed + 7919, **reach_kw)
    )
    train_goals = sample_goals(
        arm, config.n_train_goals, seed, exclude=test_goals, min_spacing=0.0, **reach_kw
    )
    train = ReachTask(arm, train_goals, T)
    test = ReachTask(arm, test_goals, T)
    policy = ReachPolicy(arm, config.policy_hidden)
    inner = InnerOptimizer(config.inner_method, lr=config.inner_lr, steps=config.inner_steps)
    # Fresh policies for the held-out goals: one draw shared by every policy-based method.
    zero = {"zero_output_layer": config.policy_zero_output}
    test_init = fresh_policy_params(
        policy, test.n, TEST_INIT_SEED + seed, zero_output_layer=config.policy_zero_output
    )

    learner = DynamicsLearner(arm, config.model.ensemble(arm), seed)
    model, buffer, model_step = learner.model, learner.buffer, learner.step

    def refit(epochs: int, generator: torch.Generator) -> None:
        with ctx.phase("model_fit"):
            learner.refit(epochs, generator)

    # -- the learned loss: meta-train, or load ------------------------------------------------
    history: list[dict[str, float]] = []
    if config.loss_path is not None:
        loss, _ = load_learned_loss(config.loss_path, expect_features=REACH_FEATURES)
    else:
        loss = LearnedLoss(
            LossConfig(
                reach_feature_spec(),
                hidden=config.loss_hidden,
                activation="elu",
                output_activation="softplus",
                learn_scale=config.loss_learn_scale,
                init_scale=config.loss_init_scale,
            )
        )
        loss.reset_parameters(torch.Generator().manual_seed(seed))
    learned = learned_loss_fn(loss)
    extras: tuple[ExtraTerm, ...] = ()
    demo_steps = 0
    demonstrations = None  # (states, actions, goals) for the behaviour-cloning baseline
    if config.extra == "demos" and config.loss_path is None:
        # ML3's extra information at meta-train time only: expert trajectories for the TRAINING
        # goals from iLQR on the true simulator, executed in MuJoCo; meta-test never sees them.
        with ctx.phase("expert_demos"):
            dyn = MujocoDynamics(mujoco_model(sim, arm))
            _, Xd, Ud = plan_and_execute(sim, dyn, train, ILQRConfig(max_iters=config.ilqr_iters))
        demo_steps = train.n * T
        demo_q = torch.as_tensor(Xd[..., : arm.n_links], dtype=torch.float32)
        demonstrations = (Xd, Ud, train_goals)
    elif config.extra == "physics":
        extras = (rest_at_goal_prior(arm, config.physics_weight),)

    def batch_extras(index: Tensor) -> tuple[ExtraTerm, ...]:
        if config.extra == "demos" and config.loss_path is None:
            return (Demonstrations(weight=config.demo_weight, states=demo_q[index], output="q"),)
        return extras

    # The goal-conditioned policy's pre-training goals and the meta-training pool (issue 22).
    n_pretrain = config.n_pretrain_goals
    pretrain_goals = train.subset(range(n_pretrain)) if n_pretrain else train
    meta_pool = torch.arange(n_pretrain, train.n)
    task_term, step_weights = meta_objective_terms(
        config.meta_objective, config.meta_distance, config.inner_steps
    )
    state = _RunState(learner)

    def start_of(task: ReachTask, fresh: Callable[[], Params]) -> tuple[Any, Params]:
        """The policies every inner run on ``task`` starts from: fresh per-goal ones
        (``fresh()``), or copies of the pre-trained goal-conditioned policy."""
        if state.start_policy is None:
            return policy, fresh()
        return state.start_policy.for_goals(task.goals), state.start_policy.stacked(task.n)

    distribution_steps = 0
    cycle = None
    if config.arm_distribution and config.loss_path is None:
        with ctx.phase("arm_distribution"):  # one babbling-fitted model per sampled arm
            cycle = arm_cycle_from(config, seed)
        distribution_steps = cycle.env_steps

    class ReacherObjective:
        """ML3's meta-objective on the reacher as a mean of items (split across ranks under
        ``--nproc``): an outer iteration's training goals in chunks of ``goals_per_item``, and,
        with an arm distribution, one sampled arm's meta-loss, weighted so the objective is
        half the goals' mean and half the arm's (the base arm keeps its draws either way).
        The data collection, the refit and the held-out monitoring happen once per iteration
        in ``finish_iteration``, on every rank (monitoring on rank 0 alone), so every rank
        keeps the same buffer and model."""

        def items(self, iteration: int, g: torch.Generator) -> list[tuple[Any, ...]]:
            draw = torch.randperm(len(meta_pool), generator=g)[: config.goals_per_iteration]
            index = meta_pool[draw]
            self.batch = batch = train.subset(index)
            self.batch_policy, params = start_of(
                batch, lambda: init_params(policy, batch.n, g, **zero)
            )
            self.collecting = (iteration + 1) % config.collect_every == 0
            size = config.goals_per_item or batch.n
            items: list[tuple[Any, ...]] = [
                ("goals", index[i : i + size], {k: v[i : i + size] for k, v in params.items()})
                for i in range(0, batch.n, size)
            ]
            if cycle is not None:
                # The sampled arm's policies come from its own generator, derived from the
                # iteration's, so the base arm's draws are the same as without the distribution.
                arm = iteration % len(cycle.arms)
                items.append(("arm", arm, int(g.initial_seed()) + 1 + arm))
            # The trainer takes the items' mean (sum / n): the c goal items scaled by n / (2c)
            # and the arm item by n / 2 make it half the goals' mean and half the arm's.
            self.weights = (1.0, 1.0) if cycle is None else (
                len(items) / (2 * (len(items) - 1)), len(items) / 2)  # fmt: skip
            return items

        def item_loss(
            self, item: tuple[Any, ...], _g: torch.Generator
        ) -> tuple[Tensor, dict[str, float], Params | None]:
            if item[0] == "arm":
                out = cycle.meta_step(item[1], torch.Generator().manual_seed(item[2]),
                                      learned, inner)  # fmt: skip
                metrics = {"arm_meta_loss": float(out.loss.detach()), "arm_index": float(item[1])}
                return self.weights[1] * out.loss, metrics, None
            _, index, params = item
            chunk = train.subset(index)
            chunk_policy, _ = start_of(chunk, lambda: params)
            value, adapted = meta_loss(
                chunk_policy, params, model_step, chunk, learned, inner, batch_extras(index),
                differentiable_steps=config.meta_gradient_steps or None,
                task_term=task_term, step_weights=step_weights,
            )  # fmt: skip
            metrics = {} if cycle is None else {"base_meta_loss": float(value.detach())}
            output = {k: v.detach() for k, v in adapted.items()} if self.collecting else None
            return self.weights[0] * value, metrics, output

        def finish_iteration(self, iteration: int, outputs: list[Any]) -> dict[str, float]:
            metrics: dict[str, float] = {}
            if iteration % config.eval_every == 0 and ctx.world.is_main:
                # Visible progress in the real simulator: fresh policies on the held-out goals,
                # K steps on the current M_phi (not yet updated), executed in MuJoCo
                # (monitoring only, never selection).
                test_policy, init = start_of(test, lambda: test_init)
                X, _ = execute_policies(sim, test_policy,
                                        meta_test(loss, test_policy, init, model_step, test, inner),
                                        test)  # fmt: skip
                learner.monitor_steps += test.n * T
                metrics["heldout_real_distance_mm"] = float(1000 * test.final_distance(X).mean())
            if self.collecting:
                chunks = [o for o in outputs if o is not None]
                adapted = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
                with ctx.phase("collect"):
                    X, _ = learner.collect(sim, self.batch_policy, adapted, self.batch)
                metrics["train_real_distance_mm"] = float(
                    1000 * self.batch.final_distance(X).mean()
                )
            metrics["buffer_transitions"] = float(buffer.n_transitions_added)
            if (iteration + 1) % config.refit_every == 0:
                # Before the checkpoint, which then holds the refitted model.
                refit(config.refit_epochs, iteration_generator(seed + 1, iteration))
            return metrics

    trainer = MetaTrainer(
        loss,
        ReacherObjective(),
        MetaTrainConfig(
            config.outer_steps,
            lr=config.outer_lr,
            seed=seed,
            checkpoint_every=config.checkpoint_every,
            grad_clip=config.grad_clip,
            lr_final=config.outer_lr_final,
        ),
        checkpoint_path=ctx.checkpoint_path,
        callbacks=[lambda i, row: ctx.metrics_log.append(row)],
        state=state,
        progress=ctx.progress,
        world=ctx.world,
    )
    if config.policy_class == "goal_conditioned":  # its place in the checkpoint's state
        state.start_policy = GoalConditionedPolicy(arm, config.policy_hidden)
    resumed = ctx.resume and trainer.load_checkpoint()
    if resumed:
        ctx.metrics_log.restart(trainer.history)
    else:
        with ctx.phase("babble"):
            learner.add(*babble(
                sim, config.model.babble_trajectories, T, config.model.babble_hold,
                np.random.default_rng(seed),
            ))  # fmt: skip
        refit(config.model.fit_epochs, torch.Generator().manual_seed(seed))
        if config.policy_class == "goal_conditioned":
            with ctx.phase("pretrain_policy"):  # on the training goals, through the model
                state.start_policy = pretrain_goal_policy(
                    arm, model_step, pretrain_goals, hidden=config.policy_hidden,
                    steps=config.pretrain_steps, lr=config.pretrain_lr,
                    generator=torch.Generator().manual_seed(seed + 3), progress=ctx.progress,
                )  # fmt: skip
        trainer.save_checkpoint()  # babbling and the first fit survive a kill too
    babble_steps = config.model.babble_trajectories * T
    if config.loss_path is None:
        with ctx.phase("meta_train"):
            trainer.run()
        if not ctx.world.finish():  # data-parallel meta-training done; rank 0 goes on
            return RunResult.of_other_rank()
        history = trainer.history
        start_file: dict[str, str] = {}
        if state.start_policy is not None:  # the start the loss adapts: ml3r eval rebuilds it
            start_file["start_policy"] = START_POLICY_FILE
            atomic_save_tensors(state.start_policy.state_dict(), ctx.path(START_POLICY_FILE))
        save_learned_loss(
            loss,
            ctx.loss_stem("loss"),
            provenance={
                **start_file,
                "experiment": "reacher",
                "seed": seed,
                "arm": config.arm,
                "outer_steps": trainer.iteration,
                # how the loss is meant to be applied: from which start, K steps of which
                # optimizer with which step size (ml3r eval reads these)
                "policy_class": config.policy_class,
                "policy_hidden": list(config.policy_hidden),
                "inner_method": config.inner_method,
                "inner_steps": config.inner_steps,
                "inner_lr": config.inner_lr,
                "features": "per time step, joint-count independent (ml3_robotics.tasks.reach)",
                "extra_information": config.extra,
                "arm_distribution": config.arm_distribution,
            },
        )
    model_steps = buffer.n_transitions_added  # real transitions the model was trained on
    meta_seconds = ctx.timing.get("meta_train", 0.0)

    # -- meta-test (ml3_robotics.evaluation.reach): ML3, task loss, iLQR on both models ---------
    eval_config = eval_config_from(config, babble_hold=config.model.babble_hold)
    # the task loss's step sizes are tuned on training goals the meta-training could use too
    tune_goals = train_goals[n_pretrain : n_pretrain + config.goals_per_iteration]
    evaluation = evaluate_reach(
        loss, arm, model, test_goals, tune_goals, eval_config, ctx,
        model_env_steps=model_steps, sim=sim,
        ml3_extra_env_steps=demo_steps + distribution_steps, ml3_extra_seconds=meta_seconds,
        ml3_fields={"monitoring_env_steps": learner.monitor_steps, "inner_lr": config.inner_lr,
                    "expert_demo_env_steps": demo_steps,
                    **({"arm_distribution_env_steps": distribution_steps}
                       if distribution_steps else {})},
        demonstrations=demonstrations, start_policy=state.start_policy,
        meta_goals=train_goals[n_pretrain:],
    )  # fmt: skip
    results = evaluation.results
    video = write_reach_figures(ctx, evaluation, loss, model, sim, eval_config, history=history)

    def short(r: dict[str, Any]) -> dict[str, Any]:
        keys = ("mean_final_distance_mm", "max_final_distance_mm", "success_rate_10mm",
                "real_env_steps", "wall_time_s")  # fmt: skip
        return {k: r[k] for k in keys} | {k: v for k, v in r.items() if k not in keys}

    return RunResult(
        metrics=short(results["ml3"]),
        baselines={name: short(r) for name, r in results.items() if name != "ml3"},
        extra={
            "train_goals": train_goals.tolist(),
            "test_goals": test_goals.tolist(),
            "tune_goals": tune_goals.tolist(),
            "babble_env_steps": babble_steps,
            "model_train_env_steps": model_steps,
            "model_refits": learner.refits,
            "prediction_error_babble_holdout": round_figures(
                evaluation.model_error["babble_holdout"]
            ),
            "prediction_error_ml3_test_rollouts": round_figures(
                evaluation.model_error["ml3_test_rollouts"]
            ),
            "meta_train_seconds_per_iteration": (
                float(np.mean([r["seconds"] for r in history])) if history else None
            ),
            "heldout_distance_during_meta_training_mm": [
                [r["iteration"], r["heldout_real_distance_mm"]]
                for r in history
                if "heldout_real_distance_mm" in r
            ],
            "video": video,
            "resumed": bool(resumed),
        },
    )


# The goal-conditioned start policy a loss was meta-trained to adapt, beside ``loss.json``.
START_POLICY_FILE = "loss.start_policy.safetensors"


def check_inputs(config: ReacherConfig) -> None:
    """The arm and the saved loss the config names, before the run folder is made."""
    load_arm_config(config.arm)
    if config.loss_path is not None:
        load_learned_loss(config.loss_path, expect_features=REACH_FEATURES)


EXPERIMENT = Experiment(
    name="reacher",
    summary="MBRL on the 2-link reacher: ML3 learned loss vs task loss vs iLQR (learned, true)",
    config_type=ReacherConfig,
    run=run,
    check_inputs=check_inputs,
    data_parallel=True,
    smoke={
        "n_train_goals": 3,
        "goals_per_iteration": 2,
        "n_test_goals": 2,
        "inner_steps": 1,
        "outer_steps": 3,
        "loss_hidden": [16, 16],
        "policy_hidden": [8, 8],
        "model": {
            "babble_trajectories": 4,
            "ensemble_members": 2,
            "ensemble_hidden": [16, 16],
            "fit_epochs": 2,
        },
        "collect_every": 2,
        "refit_every": 2,
        "refit_epochs": 1,
        "eval_every": 2,
        "checkpoint_every": 1,
        "lr_grid": [1e-3, 1e-2],
        "ilqr_iters": 2,
        "n_holdout_trajectories": 2,
        "video_goals": 1,
        "video_stride": 16,
        "curve_steps": 2,
        "landscape_grid": 3,
        "bc_epochs": 5,
    },
    # `ml3r demo`: a couple of minutes on 2 CPU cores
    demo={
        "outer_steps": 200,
        "n_train_goals": 256,
        "goals_per_iteration": 16,
        "n_test_goals": 10,
        "inner_steps": 1,
        "model.fit_epochs": 30,
        "refit_epochs": 10,
        "eval_every": 25,
        "ilqr_iters": 20,
        "video_goals": 3,
    },
)
