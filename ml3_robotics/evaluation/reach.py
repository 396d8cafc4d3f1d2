"""Meta-test of a learned reach loss on any planar arm, side by side with its baselines.

The evaluation half of the reacher experiment, as a library function so that ``ml3r eval``, the
transfer study and the reacher itself share one implementation:

* :func:`evaluate_reach`: fresh policies on the given goals, K inner steps under the learned loss
  only (through the learned model), executed in MuJoCo, against (a) the same policies trained
  with the task loss through the same model (its step size tuned on separate goals of the same
  robot), (b) iLQR on the learned model and (c) iLQR on the true MuJoCo dynamics, both executed
  in MuJoCo with the plan's feedback gains. Returns data and writes nothing;
  :func:`ml3_robotics.reporting.reach_figures.write_reach_figures` writes its plots and video.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np
import torch
from torch import Tensor, nn

from controllers import ILQRConfig, MujocoDynamics
from ml3_robotics.core.inner import (
    INNER_METHODS,
    InnerOptimizer,
    Params,
    StepSizeSchedule,
    init_params,
    stacked_copies,
)
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.meta_trainer import MetaTrainConfig, MetaTrainer
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.validation import check_choice, check_ints, check_positive, config_from
from ml3_robotics.mbrl.loop import babble
from ml3_robotics.models.learned_dynamics import (
    ProbabilisticEnsemble,
    prediction_error,
)
from ml3_robotics.tasks.reach import (
    GoalBoundPolicy,
    GoalConditionedPolicy,
    ReachPolicy,
    ReachTask,
    adapt_policies,
    behaviour_cloning,
    execute_goal_policy,
    execute_policies,
    meta_loss,
    meta_objective_terms,
    meta_test,
    model_rollout,
    plan_and_execute,
    steps_to_reach,
    task_loss_fn,
    trace_inner_steps,
)
from robots.arm import (
    ArmConfig,
    ArmSim,
    SimulationError,
)

log = logging.getLogger(__name__)

#: The four methods of every reach evaluation, ML3 first.
METHODS = ("ml3", "task_loss", "ilqr_learned_model", "ilqr_true_model")
SUCCESS_MM = 10.0
#: Step sizes the task-loss baseline is tuned over (on goals apart from the test goals).
REACH_TASK_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: Seed offsets of the fresh-policy draws (held-out goals, tuning goals) and of the held-out
#: babbling for the model-error figures; the reacher draws its monitoring policies the same way.
TEST_INIT_SEED = 10_000
TUNE_INIT_SEED = 20_000
HOLDOUT_BABBLE_SEED = 30_000


@dataclass(frozen=True)
class MetaLearnedBaselines:
    """The meta-learned baselines run beside ML3 (the reacher's, ``ml3r eval``'s), checked
    where they are used (:class:`ReachEvalConfig`).

    Attributes:
        step_size_updates: meta-updates of the learned step-size baseline
            (:func:`learn_step_sizes`; 0: not run). It needs ``meta_goals``.
        step_size_lr: Adam step size of those meta-updates on the log step sizes (cosine-decayed
            to a tenth).
        maml_updates: meta-updates of the MAML baseline (:func:`learn_initialisation`; 0: not
            run). It needs ``meta_goals``.
        maml_lr: Adam step size of those meta-updates.
        goals_per_iteration: meta-training goals per meta-update of those baselines.
        meta_objective, meta_distance: its meta-objective
            (:func:`~ml3_robotics.tasks.reach.meta_objective_terms`), as ML3's.
    """

    step_size_updates: int = 0
    step_size_lr: float = 0.05
    maml_updates: int = 0
    maml_lr: float = 1e-3
    goals_per_iteration: int = 16
    meta_objective: str = "last_step"
    meta_distance: str = "task_loss"


@dataclass(frozen=True)
class ReachEvalConfig(MetaLearnedBaselines):
    """Settings of :func:`evaluate_reach` (defaults: the reacher's full size).

    Attributes:
        horizon: steps per rollout (paper: 65).
        inner_steps: K, the steps every policy-based method takes.
        inner_lr: ML3's inner step size (the one it was meta-trained with).
        inner_method: "sgd" or "adam", for ML3 and the task-loss baseline alike.
        policy_hidden: equal hidden widths of the fresh policies, e.g. (64, 64).
        policy_zero_output: fresh policies start at zero torque.
        lr_grid: step sizes of the task-loss baseline, tuned on the tuning goals.
        ilqr_iters: iLQR iterations for both iLQR baselines.
        n_holdout_trajectories: held-out babbling trajectories for the model-error figures.
        babble_hold: torque hold of that babbling.
        video_goals: goals rendered in the ML3 video (0: no video).
        video_stride: render every n-th state.
        curve_steps: ML3 and the task loss go on to this many inner steps (at least K),
            executed in MuJoCo after every step: the distance-by-step curves and the steps to
            10 mm.
        budgets: inner-step budgets at which the task-loss baseline is tuned (K is added; those
            past the curve are dropped): for each budget the optimizer and step size that end
            closest on the tuning goals. The best fixed step size for one step is not the best
            for ten.
        baseline_methods: inner optimizers the baseline may pick ("sgd", "adam").
        landscape_grid: points per axis of the loss-landscape plot (0: no plot).
        bc_epochs: epochs of the behaviour-cloning baseline (run when demonstrations are given).
        the rest: :class:`MetaLearnedBaselines`.
    """

    horizon: int = 65
    inner_steps: int = 3
    inner_lr: float = 1e-3
    inner_method: str = "sgd"
    policy_hidden: tuple[int, ...] = (64, 64)
    policy_zero_output: bool = True
    lr_grid: tuple[float, ...] = REACH_TASK_LR_GRID
    ilqr_iters: int = 30
    n_holdout_trajectories: int = 20
    babble_hold: int = 8
    video_goals: int = 4
    video_stride: int = 3
    curve_steps: int = 10
    budgets: tuple[int, ...] = (1, 2, 5, 10)
    baseline_methods: tuple[str, ...] = ("sgd", "adam")
    landscape_grid: int = 21
    bc_epochs: int = 2000

    def __post_init__(self) -> None:
        budgets = tuple(self.budgets)
        object.__setattr__(self, "budgets", budgets)
        if not budgets or any(not isinstance(b, int) or b < 1 for b in budgets):
            raise ValueError(
                f"budgets: expected positive step counts like (1, 2, 5), got {budgets!r}"
            )
        methods = tuple(self.baseline_methods)
        object.__setattr__(self, "baseline_methods", methods)
        if not methods:
            raise ValueError("baseline_methods: expected at least one of ('sgd', 'adam'), got ()")
        for m in methods:
            check_choice("baseline_methods", m, INNER_METHODS)
        positive = ("horizon", "inner_steps", "ilqr_iters", "n_holdout_trajectories",
                    "babble_hold", "video_stride", "curve_steps", "bc_epochs")  # fmt: skip
        check_ints(self, positive, 1)
        check_ints(self, ("video_goals", "landscape_grid", "step_size_updates", "maml_updates"), 0)
        check_ints(self, ("goals_per_iteration",), 1)
        check_positive(self, ("inner_lr", "step_size_lr", "maml_lr"))
        meta_objective_terms(self.meta_objective, self.meta_distance, self.inner_steps)
        check_choice("inner_method", self.inner_method, INNER_METHODS)
        if not self.lr_grid or any(not lr > 0 for lr in self.lr_grid):
            raise ValueError(f"lr_grid: expected positive step sizes, got {self.lr_grid}")
        hidden = tuple(self.policy_hidden)
        if not hidden or len(set(hidden)) != 1 or hidden[0] < 1:
            raise ValueError(
                f"policy_hidden: expected equal positive widths like (64, 64), got {hidden!r}"
            )


@dataclass
class ReachEvaluation:
    """What :func:`evaluate_reach` measured.

    Attributes:
        results: per method (:data:`METHODS`), the :func:`summarize` dict.
        paths: per method, real MuJoCo states ``(G, T+1, nx)``.
        model_error: :func:`prediction_error` of the model on held-out babbling
            (``"babble_holdout"``) and on ML3's test rollouts (``"ml3_test_rollouts"``).
        test: the held-out goals' task.
        test_init: the fresh per-goal policy parameters every method started from.
        adapted: per policy-based method, its parameters after K steps.
        policy: the per-goal policy module.
    """

    results: dict[str, dict[str, Any]]
    paths: dict[str, np.ndarray] = field(default_factory=dict)
    model_error: dict[str, dict[str, Any]] = field(default_factory=dict)
    test: ReachTask | None = None
    test_init: Params = field(default_factory=dict)
    adapted: dict[str, Params] = field(default_factory=dict)
    policy: ReachPolicy | GoalBoundPolicy | None = None


def mujoco_model(sim: ArmSim, arm: ArmConfig) -> mujoco.MjModel:
    """The MuJoCo model that iLQR on the true dynamics plans with: the simulator's own, or, when
    the real system is PyBullet, MuJoCo's model of the same arm (the backends agree to 1e-12 rad
    off the joint limits, docs/arms.md)."""
    return (
        sim.mj_model if sim.backend == "mujoco" else mujoco.MjModel.from_xml_string(arm.to_mjcf())
    )


def budget_fields(dist_m: Mapping[int, np.ndarray]) -> dict[str, dict[str, float]]:
    """The held-out figures after each budget of inner steps, from per-goal final distances
    ``dist_m[b] (G,)`` in m: mean, max and the share of goals under 10 mm (the figures a method
    reports at K, at every budget)."""
    return {
        "distance_by_budget_mm": {str(b): float(1000 * d.mean()) for b, d in dist_m.items()},
        "max_distance_by_budget_mm": {str(b): float(1000 * d.max()) for b, d in dist_m.items()},
        "success_rate_10mm_by_budget": {
            str(b): float((1000 * d < SUCCESS_MM).mean()) for b, d in dist_m.items()
        },
    }


def summarize(dist_m: np.ndarray, steps: int, seconds: float, **extra: Any) -> dict[str, Any]:
    """The per-method figures of results.json from final distances ``dist_m (G,)`` in m."""
    mm = 1000.0 * np.asarray(dist_m)
    return {
        "mean_final_distance_mm": float(mm.mean()),
        "max_final_distance_mm": float(mm.max()),
        "success_rate_10mm": float((mm < SUCCESS_MM).mean()),
        "real_env_steps": int(steps),
        "wall_time_s": float(seconds),
        "final_distance_mm_per_goal": [float(v) for v in mm],
        **extra,
    }


def round_figures(d: Mapping[str, Any]) -> dict[str, Any]:
    """Floats (and lists of floats) of ``d`` rounded to 4 significant digits, for results.json."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = float(f"{v:.4g}")
        elif isinstance(v, list):
            out[k] = [float(f"{x:.4g}") for x in v]
        else:
            out[k] = v
    return out


def fresh_policy_params(
    policy: ReachPolicy, n: int, seed: int, *, zero_output_layer: bool
) -> Params:
    """``n`` fresh per-goal parameter sets drawn from ``seed`` (same seed, same draw)."""
    return init_params(
        policy, n, torch.Generator().manual_seed(seed), zero_output_layer=zero_output_layer
    )


def per_goal_copies(
    module: nn.Module, task: ReachTask, *, differentiable: bool = False
) -> tuple[Any, Params]:
    """One policy module copied for each of ``task``'s goals: the policy that runs the copies (a
    :class:`GoalConditionedPolicy` feeds copy g goal g; a :class:`ReachPolicy` is already one
    policy per parameter set) and the stacked parameters (:func:`stacked_copies`)."""
    policy = module.for_goals(task.goals) if isinstance(module, GoalConditionedPolicy) else module
    return policy, stacked_copies(module, task.n, differentiable=differentiable)


def _meta_learn_task_loss_run(
    module: nn.Module,
    inner_run: Callable[[ReachTask, torch.Generator], tuple[Any, Params, InnerOptimizer]],
    model_step: Callable[[Tensor, Tensor], Tensor],
    goals: ReachTask,
    config: ReachEvalConfig,
    *,
    steps: int,
    updates: int,
    lr: float,
    seed: int,
    label: str,
    progress: bool,
) -> None:
    """Meta-train ``module`` (in place) so that K steps of the task loss do best by ML3's
    meta-objective (``config.meta_objective`` / ``meta_distance``) on batches of ``goals``
    through the learned model: ``inner_run(batch, generator) -> (policy, params, optimizer)``
    builds each batch's inner run from ``module``. Adam at ``lr``, cosine-decayed to a tenth,
    the meta-gradient clipped to 1 (as ML3's)."""
    task_term, step_weights = meta_objective_terms(
        config.meta_objective, config.meta_distance, steps
    )
    n_batch = min(config.goals_per_iteration, goals.n)

    def objective(_iteration: int, g: torch.Generator) -> Tensor:
        batch = goals.subset(torch.randperm(goals.n, generator=g)[:n_batch])
        policy, params, optimizer = inner_run(batch, g)
        value, _ = meta_loss(
            policy, params, model_step, batch, task_loss_fn, optimizer,
            task_term=task_term, step_weights=step_weights,
        )  # fmt: skip
        return value

    MetaTrainer(
        module, objective,
        MetaTrainConfig(updates, lr=lr, seed=seed, grad_clip=1.0, lr_final=lr / 10),
        progress=progress, label=label,
    ).run()  # fmt: skip


def learn_step_sizes(
    start: Callable[[ReachTask, torch.Generator], tuple[Any, Params]],
    model_step: Callable[[Tensor, Tensor], Tensor],
    goals: ReachTask,
    base: InnerOptimizer,
    config: ReachEvalConfig,
    seed: int,
    *,
    progress: bool = False,
) -> StepSizeSchedule:
    """The learned-optimizer baseline of a learned loss: the task loss keeps its place in the
    inner loop, and the K steps' sizes (multipliers of ``base.lr``) are meta-learned instead,
    ``config.step_size_updates`` Adam updates at ``config.step_size_lr`` on the log multipliers.

    Args:
        start: ``start(batch, generator) -> (policy, params)``, the policies every inner run
            starts from (as ML3's).
        base: the task loss's optimizer and step size (e.g. the one tuned for K steps).
    """
    schedule = StepSizeSchedule(base.steps)
    _meta_learn_task_loss_run(
        schedule, lambda batch, g: (*start(batch, g), schedule.optimizer(base)), model_step,
        goals, config, steps=base.steps, updates=config.step_size_updates,
        lr=config.step_size_lr, seed=seed, label="learn step sizes", progress=progress,
    )  # fmt: skip
    return schedule


def learn_initialisation(
    start: nn.Module,
    model_step: Callable[[Tensor, Tensor], Tensor],
    goals: ReachTask,
    base: InnerOptimizer,
    config: ReachEvalConfig,
    seed: int,
    *,
    progress: bool = False,
) -> nn.Module:
    """MAML (Finn et al. 2017), the learned-initialisation baseline of a learned loss: a copy of
    ``start`` (a :class:`GoalConditionedPolicy`, or a :class:`ReachPolicy` shared by every goal)
    whose parameters are meta-learned so that K steps of the task loss with ``base`` from them
    do best (second order: the meta-gradient flows through every step),
    ``config.maml_updates`` Adam updates at ``config.maml_lr``."""
    init = copy.deepcopy(start).requires_grad_(True)  # a pre-trained policy comes frozen

    def inner_run(batch: ReachTask, _g: torch.Generator) -> tuple[Any, Params, InnerOptimizer]:
        # every goal's copy starts from the shared, differentiable initialisation
        return (*per_goal_copies(init, batch, differentiable=True), base)

    _meta_learn_task_loss_run(
        init, inner_run, model_step, goals, config, steps=base.steps,
        updates=config.maml_updates, lr=config.maml_lr, seed=seed, label="MAML",
        progress=progress,
    )  # fmt: skip
    return init


def evaluate_reach(
    loss: LearnedLoss,
    arm: ArmConfig,
    model: ProbabilisticEnsemble,
    test_goals: np.ndarray | Tensor,
    tune_goals: np.ndarray | Tensor,
    config: ReachEvalConfig,
    ctx: RunContext,
    *,
    model_env_steps: int,
    sim: ArmSim | None = None,
    ml3_extra_env_steps: int = 0,
    ml3_extra_seconds: float = 0.0,
    ml3_fields: Mapping[str, Any] | None = None,
    methods: Sequence[str] = METHODS,
    demonstrations: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    start_policy: GoalConditionedPolicy | None = None,
    meta_goals: np.ndarray | Tensor | None = None,
) -> ReachEvaluation:
    """Meta-test ``loss`` on ``arm`` against the task loss and iLQR, all executed in MuJoCo.

    Every policy-based method starts from the same fresh policies (drawn from
    ``ctx.seed + TEST_INIT_SEED``) and takes ``config.inner_steps`` steps through ``model``; ML3
    uses ``loss`` only, the task-loss baseline the paper's task loss with the step size from
    ``config.lr_grid`` that ends closest in MuJoCo on ``tune_goals``.

    Args:
        loss: the learned loss (reads :data:`ml3_robotics.tasks.reach.REACH_FEATURES`).
        arm: the robot.
        model: its learned dynamics (frozen), e.g. from :func:`fit_reach_model`.
        test_goals: ``(G, 2)`` goals (m) every method is scored on.
        tune_goals: ``(G', 2)`` other goals of the same robot for the baseline's step size.
        config: sizes.
        ctx: the run (seed and timing phases; nothing is written: the caller writes the figures
            with :func:`ml3_robotics.reporting.reach_figures.write_reach_figures`).
        model_env_steps: real transitions the model was trained on (counted for the methods
            that use the model).
        sim: the real simulator of ``arm`` (built when None).
        ml3_extra_env_steps, ml3_extra_seconds: added to ML3's real steps and wall time (the
            meta-training that produced ``loss``, when this run did it).
        ml3_fields: more entries for ML3's summary.
        methods: the subset of :data:`METHODS` to run ("ml3" is always run: the model-error
            figures and the video use its rollouts).
        demonstrations: optional expert ``(states (G', T+1, nx), actions (G', T, nu), goals
            (G', 2))`` of OTHER goals (the meta-training goals): adds the ``behaviour_cloning``
            baseline, a goal-conditioned policy fitted to them. ML3 never sees them here.
        start_policy: a goal-conditioned policy (trained on other goals) whose per-goal copies
            every policy-based method fine-tunes, instead of fresh per-goal policies; its
            distance as it is shows as step 0 of the distance-by-step curves.
        meta_goals: ``(G'', 2)`` the goals the loss was meta-trained on (other than the test
            goals): the learned step-size and MAML baselines (``config.step_size_updates``,
            ``config.maml_updates``) meta-train on them.

    Returns:
        The :class:`ReachEvaluation`.
    """
    for name in methods:
        check_choice("methods", name, METHODS)
    if (config.step_size_updates or config.maml_updates) and meta_goals is None:
        raise ValueError(
            "meta_goals: the learned step-size and MAML baselines (step_size_updates="
            f"{config.step_size_updates}, maml_updates={config.maml_updates}) meta-train on "
            "them; got None"
        )
    sim = ArmSim(arm, "mujoco") if sim is None else sim
    seed = ctx.seed
    T = config.horizon
    test = ReachTask(arm, torch.as_tensor(np.asarray(test_goals)), T)
    tune = ReachTask(arm, torch.as_tensor(np.asarray(tune_goals)), T)
    if start_policy is None:
        policy = ReachPolicy(arm, config.policy_hidden)
        test_policy = tune_policy = policy
        zero = config.policy_zero_output
        test_init = fresh_policy_params(policy, test.n, TEST_INIT_SEED + seed,
                                        zero_output_layer=zero)  # fmt: skip
        tune_init = fresh_policy_params(policy, tune.n, TUNE_INIT_SEED + seed,
                                        zero_output_layer=zero)  # fmt: skip
    else:
        test_policy = start_policy.for_goals(test.goals)
        tune_policy = start_policy.for_goals(tune.goals)
        test_init, tune_init = start_policy.stacked(test.n), start_policy.stacked(tune.n)
    inner = InnerOptimizer(config.inner_method, lr=config.inner_lr, steps=config.inner_steps)

    def start_of(task: ReachTask, g: torch.Generator) -> tuple[Any, Params]:
        """The policies an inner run on other goals starts from (as ML3's meta-training)."""
        if start_policy is None:
            return test_policy, init_params(
                test_policy, task.n, g, zero_output_layer=config.policy_zero_output
            )
        return per_goal_copies(start_policy, task)

    def model_step(x: Tensor, u: Tensor) -> Tensor:
        return model.step(x, u)

    # Budgets past the curve are dropped (a smoke-sized curve_steps keeps the tuning small).
    curve = max(config.curve_steps, config.inner_steps)
    budgets = sorted({*(b for b in config.budgets if b <= curve), config.inner_steps})

    def tune_trace(choice: tuple[str, float]) -> dict[int, float]:
        """Mean real final distance (m) on the tuning goals after each budget, for one
        ``(optimizer, lr)`` of the task loss (inf where the rollout blows up)."""
        out = dict.fromkeys(budgets, float("inf"))
        opt = InnerOptimizer(choice[0], lr=choice[1], steps=budgets[-1])
        try:
            trace = trace_inner_steps(
                lambda on_step: adapt_policies(
                    tune_policy, tune_init, model_step, tune, task_loss_fn, opt,
                    differentiable=False, on_step=on_step,
                )
            )  # fmt: skip
        except (ValueError, RuntimeError) as e:  # a step size that blows the rollout up
            log.info("task loss %s lr %g failed on the tuning goals: %s", *choice, e)
            return out
        for b in budgets:
            try:
                out[b] = float(execute(trace[b], tune, tune_policy)[0].mean())
            except (ValueError, RuntimeError, SimulationError) as e:
                log.info("task loss %s lr %g: step %d failed in MuJoCo: %s", *choice, b, e)
        return out

    def execute(
        params: Params, task: ReachTask, policy: Any = test_policy
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, U = execute_policies(sim, policy, params, task)
        return task.final_distance(X), X, U

    def model_distance_mm(params: Params, policy: Any = test_policy) -> float:
        """Mean final distance (mm) of the held-out policies in the learned model's rollout:
        the model side of a real distance (the gap between the two is the model's error)."""
        with torch.no_grad():
            X, _ = model_rollout(policy, params, model_step, test.x0(), T)
        return float(1000 * test.final_distance(X).mean())

    def by_step(
        run: Any, task: ReachTask, policy: Any = test_policy
    ) -> tuple[list[Params], np.ndarray]:
        """Parameters after 0..curve steps and their real final distances ``(curve+1, G)``."""
        trace = trace_inner_steps(run)
        return trace, np.stack([execute(p, task, policy)[0] for p in trace])

    def curve_fields(dist: np.ndarray) -> dict[str, Any]:
        return {
            "distance_by_inner_step_mm": [float(v) for v in 1000 * dist.mean(1)],
            "steps_to_10mm_per_goal": steps_to_reach(1000 * dist, SUCCESS_MM),
        }

    paths: dict[str, np.ndarray] = {}
    results: dict[str, dict[str, Any]] = {}
    adapted: dict[str, Params] = {}
    K = config.inner_steps

    # -- ML3: K steps on the learned loss only (mbrl.meta_test: no way to pass extra information)
    t0 = time.perf_counter()
    with ctx.phase("meta_test"):
        long = dataclasses.replace(inner, steps=curve)
        trace, dist = by_step(
            lambda on_step: meta_test(
                loss, test_policy, test_init, model_step, test, long, on_step
            ),
            test,
        )
        d, X, U_ml3 = execute(trace[K], test)
    adapted["ml3"] = trace[K]
    paths["ml3"] = X
    results["ml3"] = summarize(
        d, model_env_steps + ml3_extra_env_steps + test.n * T,
        ml3_extra_seconds + time.perf_counter() - t0, **dict(ml3_fields or {}),
        **budget_fields({b: dist[b] for b in budgets}),
        model_distance_by_budget_mm={str(b): model_distance_mm(trace[b]) for b in budgets},
        **curve_fields(dist),
    )  # fmt: skip
    results["ml3"].setdefault("inner_lr", config.inner_lr)

    # -- (a) task loss through the same model: optimizer and step size tuned on the tuning goals
    # separately for every budget (the best fixed step size for 1 step is not the best for 50).
    if "task_loss" in methods:
        t0 = time.perf_counter()
        with ctx.phase("baseline_task_loss"):
            grid = [(m, lr) for m in config.baseline_methods for lr in config.lr_grid]
            tuned = {choice: tune_trace(choice) for choice in grid}
            best = {b: min(grid, key=lambda c: tuned[c][b]) for b in budgets}

            def task_trace(choice: tuple[str, float]) -> tuple[list[Params], np.ndarray]:
                opt = InnerOptimizer(choice[0], lr=choice[1], steps=curve)
                return by_step(
                    lambda on_step: adapt_policies(
                        test_policy, test_init, model_step, test, task_loss_fn, opt,
                        differentiable=False, on_step=on_step,
                    ),
                    test,
                )  # fmt: skip

            test_dist = {c: task_trace(c) for c in dict.fromkeys(best.values())}
            by_budget = {b: test_dist[best[b]][1][b] for b in budgets}  # (G,) m per budget
            trace, _ = test_dist[best[K]]
            d, X, _ = execute(trace[K], test)
            # The per-step curve and steps-to-10-mm: the choice tuned for the largest budget.
            dist = test_dist[best[budgets[-1]]][1]
        adapted["task_loss"] = trace[K]
        paths["task_loss"] = X
        results["task_loss"] = summarize(
            d, model_env_steps + (len(grid) * len(budgets) * tune.n + test.n) * T,
            time.perf_counter() - t0, optimizer=best[K][0], lr=best[K][1],
            **budget_fields(by_budget),
            model_distance_by_budget_mm={
                str(b): model_distance_mm(test_dist[best[b]][0][b]) for b in budgets
            },
            tuned_by_budget={str(b): f"{m} lr={lr:g}" for b, (m, lr) in best.items()},
            tuning_distance_mm={
                f"{m} lr={lr:g}": [1000 * tuned[(m, lr)][b] for b in budgets] for m, lr in grid
            },
            **curve_fields(dist),
        )  # fmt: skip

    def task_loss_from(
        name: str, policy: Any, init: Params, opt: InnerOptimizer, t0: float, **fields: Any
    ) -> None:
        """The held-out figures of a meta-learned task-loss baseline: ``curve`` steps of the task
        loss with ``opt`` from ``init``, executed after every step."""
        trace, dist = by_step(
            lambda on_step: adapt_policies(
                policy, init, model_step, test, task_loss_fn, dataclasses.replace(opt, steps=curve),
                differentiable=False, on_step=on_step,
            ),
            test, policy,
        )  # fmt: skip
        d, X, _ = execute(trace[K], test, policy)
        adapted[name] = trace[K]
        paths[name] = X
        results[name] = summarize(
            d, model_env_steps + test.n * T, time.perf_counter() - t0, **fields,
            **budget_fields({b: dist[b] for b in budgets}),
            model_distance_by_budget_mm={str(b): model_distance_mm(trace[b], policy)
                                         for b in budgets},
            **curve_fields(dist),
        )  # fmt: skip

    if config.step_size_updates or config.maml_updates:
        # They start from the task loss's optimizer and step size tuned for K.
        method, base_lr = best[K] if "task_loss" in methods else (inner.method, inner.lr)
        base = InnerOptimizer(method, lr=base_lr, steps=K)
        assert meta_goals is not None  # checked on entry
        meta_task = ReachTask(arm, torch.as_tensor(np.asarray(meta_goals)), T)

    # -- (a') the task loss with meta-learned per-step step sizes (a learned optimizer) --------
    if config.step_size_updates:
        t0 = time.perf_counter()
        with ctx.phase("baseline_learned_step_sizes"):
            schedule = learn_step_sizes(
                start_of, model_step, meta_task, base, config, seed, progress=ctx.progress
            )
            with torch.no_grad():
                task_loss_from(
                    "learned_step_sizes", test_policy, test_init, schedule.optimizer(base), t0,
                    optimizer=method, base_lr=base_lr, meta_updates=config.step_size_updates,
                    step_sizes=[float(base_lr * v) for v in schedule.scales()],
                )  # fmt: skip

    # -- (a'') MAML: a meta-learned policy initialisation, then the task loss -----------------
    if config.maml_updates:
        t0 = time.perf_counter()
        with ctx.phase("baseline_maml"):
            if start_policy is None:
                fresh = ReachPolicy(arm, config.policy_hidden)
                draw = fresh_policy_params(fresh, 1, TUNE_INIT_SEED + seed + 1,
                                           zero_output_layer=config.policy_zero_output)  # fmt: skip
                with torch.no_grad():
                    for k, v in fresh.named_parameters():
                        v.copy_(draw[k][0])
                start: torch.nn.Module = fresh
            else:
                start = start_policy
            maml = learn_initialisation(
                start, model_step, meta_task, base, config, seed, progress=ctx.progress
            )
            policy, init = per_goal_copies(maml, test)
            task_loss_from(
                "maml", policy, init, base, t0, optimizer=method, lr=base_lr,
                meta_updates=config.maml_updates,
            )  # fmt: skip

    # -- behaviour cloning of the expert demonstrations of other goals -------------------------
    if demonstrations is not None:
        t0 = time.perf_counter()
        with ctx.phase("baseline_behaviour_cloning"):
            demo_x, demo_u, demo_goals = (torch.as_tensor(np.asarray(a)) for a in demonstrations)
            bc = behaviour_cloning(
                arm, demo_x, demo_u, demo_goals, hidden=config.policy_hidden,
                epochs=config.bc_epochs, generator=torch.Generator().manual_seed(seed),
            )  # fmt: skip
            X, _ = execute_goal_policy(sim, bc, test)
        paths["behaviour_cloning"] = X
        results["behaviour_cloning"] = summarize(
            test.final_distance(X), demo_u.shape[0] * demo_u.shape[1] + test.n * T,
            time.perf_counter() - t0, demonstrations=int(demo_u.shape[0]),
            epochs=config.bc_epochs,
        )  # fmt: skip

    # -- (b, c) iLQR on the learned and on the true model ---------------------------------------
    ilqr_runs = (
        ("ilqr_learned_model", model, ILQRConfig(max_iters=config.ilqr_iters, dtype=torch.float32)),
        ("ilqr_true_model", MujocoDynamics(mujoco_model(sim, arm)),
         ILQRConfig(max_iters=config.ilqr_iters)),
    )  # fmt: skip
    for name, dyn, icfg in ilqr_runs:
        if name not in methods:
            continue
        t0 = time.perf_counter()
        with ctx.phase(f"baseline_{name}"):
            plan, X, _ = plan_and_execute(sim, dyn, test, icfg)
        paths[name] = X
        d = test.final_distance(X)
        extra: dict[str, Any] = {
            "ilqr_iterations_mean": float(plan.iterations.float().mean()),
            # Goals whose solve met iLQR's tolerances, and goals stopped by the iteration limit
            # (a plan can reach the goal well before its cost stops falling: docs/mbrl.md).
            "ilqr_converged": int(plan.converged.sum()),
            "ilqr_stopped_at_iteration_limit": int(
                ((plan.iterations >= icfg.max_iters) & ~plan.converged).sum()
            ),
            "planned_final_distance_mm": float(1000 * test.final_distance(plan.states).mean()),
        }
        steps = test.n * T + (model_env_steps if name == "ilqr_learned_model" else 0)
        results[name] = summarize(d, steps, time.perf_counter() - t0, **extra)

    # -- model quality on held-out real trajectories -------------------------------------------
    with ctx.phase("model_eval"):
        Xh, Uh = babble(
            sim, config.n_holdout_trajectories, T, config.babble_hold,
            np.random.default_rng(HOLDOUT_BABBLE_SEED + seed),
        )  # fmt: skip
        model_error = {
            "babble_holdout": prediction_error(model, Xh, Uh, horizon=T),
            "ml3_test_rollouts": prediction_error(model, paths["ml3"], U_ml3, horizon=T),
        }

    return ReachEvaluation(
        results,
        paths,
        model_error,
        test=test,
        test_init=test_init,
        adapted=adapted,
        policy=test_policy,
    )


def eval_config_from(source: Any, **changes: Any) -> ReachEvalConfig:
    """A :class:`ReachEvalConfig` from the same-named fields of ``source`` (e.g. a reacher
    config), then ``changes``."""
    return config_from(ReachEvalConfig, source, changes)
