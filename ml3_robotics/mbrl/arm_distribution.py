"""Meta-training a reach loss over a distribution of robot configurations.

:class:`ArmDistribution` describes random planar arms (joint counts, per-link length and mass
scale ranges); :func:`sample_arm_configs` draws them reproducibly. :class:`ArmCycle` holds, per
sampled arm, its own learned model (babbling on that arm, then an ensemble fit), training goals
and policy, and turns the single-arm ML3 meta-objective into one that cycles over the base arm
averaged with one sampled arm per outer iteration, cycling through them.

The sampled arms' models are fitted once on babbling and never refitted (the base arm keeps its
on-policy collection and refits): they are then a deterministic function of the seed, rebuilt
identically when a meta-training run resumes, so the checkpoint does not need to hold them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ml3_robotics.core.inner import InnerOptimizer, init_params
from ml3_robotics.core.meta_trainer import OuterStep
from ml3_robotics.mbrl.loop import ReachModelConfig, fit_reach_model
from ml3_robotics.tasks.reach import LossFn, ReachPolicy, ReachTask, meta_loss
from robots.arm import ArmConfig, ArmSim, load_arm_config, sample_goals

log = logging.getLogger(__name__)

#: Shipped arm per joint count whose link proportions, damping and torque limits the sampled arms
#: scale (a 3-link arm with the 2-link arm's torque limits could not lift itself off the base).
BASE_ARMS = {2: "reacher2", 3: "arm3", 4: "arm4", 7: "arm7_planar"}
ARM_SEED = 52_361  # seed offset of the configuration draw
GOAL_SEED = 6_007  # seed offset of the sampled arms' training goals (per arm: + index)


def _range(name: str, text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError as e:
        raise ValueError(
            f"arm_distribution: {name}: expected LOW:HIGH like 0.5:2, got {text!r}"
        ) from e
    if not 0 < lo <= hi:
        raise ValueError(f"arm_distribution: {name}: expected 0 < LOW <= HIGH, got {text!r}")
    return lo, hi


@dataclass(frozen=True)
class ArmDistribution:
    """Random planar arms around the shipped ones.

    Each sampled arm picks a joint count from ``link_counts`` (uniformly), starts from the shipped
    arm with that count (:data:`BASE_ARMS`) and multiplies every link's length and mass by its
    own log-uniform factor from ``length_scale`` and ``mass_scale``.

    Attributes:
        link_counts: joint counts to draw from (each must be in :data:`BASE_ARMS`).
        length_scale: ``(low, high)`` per-link length factor.
        mass_scale: ``(low, high)`` per-link mass factor.
        n_configs: arms to sample.
    """

    link_counts: tuple[int, ...] = (2, 3, 4)
    length_scale: tuple[float, float] = (0.7, 1.4)
    mass_scale: tuple[float, float] = (0.5, 2.0)
    n_configs: int = 6

    def __post_init__(self) -> None:
        if not self.link_counts or any(n not in BASE_ARMS for n in self.link_counts):
            raise ValueError(
                f"link_counts: expected joint counts among {sorted(BASE_ARMS)}, "
                f"got {self.link_counts!r}"
            )
        for name in ("length_scale", "mass_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}: expected 0 < low <= high, got {(lo, hi)!r}")
        if not isinstance(self.n_configs, int) or self.n_configs < 1:
            raise ValueError(f"n_configs: expected an integer >= 1, got {self.n_configs!r}")

    @classmethod
    def parse(cls, spec: str) -> ArmDistribution:
        """From ``"links=2,3,4 length=0.7:1.4 mass=0.5:2 n=6"`` (any subset, any order;
        ``"default"`` is the defaults).

        Raises:
            ValueError: unknown keys or malformed values, naming them.
        """
        text = spec.strip()
        if text in ("", "default"):
            return cls()
        values: dict[str, object] = {}
        keys = ("links", "length", "mass", "n")
        for item in text.replace(";", " ").split():
            key, sep, raw = item.partition("=")
            if not sep or key not in keys:
                raise ValueError(
                    f"arm_distribution: expected key=value items with keys {list(keys)} "
                    f"(e.g. 'links=2,3 length=0.7:1.4 mass=0.5:2 n=6'), got {item!r}"
                )
            try:
                if key == "links":
                    values["link_counts"] = tuple(int(v) for v in raw.split(","))
                elif key == "n":
                    values["n_configs"] = int(raw)
                else:
                    values[f"{key}_scale"] = _range(key, raw)
            except ValueError as e:
                if "arm_distribution" in str(e):
                    raise
                raise ValueError(f"arm_distribution: {key}: cannot parse {raw!r}") from e
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as e:
            raise ValueError(f"arm_distribution: {e}") from e


def sample_arm_configs(dist: ArmDistribution, seed: int) -> list[ArmConfig]:
    """``dist.n_configs`` arms drawn reproducibly from ``dist`` (same seed, same arms)."""
    rng = np.random.default_rng(seed + ARM_SEED)
    arms = []
    for i in range(dist.n_configs):
        n = int(rng.choice(dist.link_counts))
        base = load_arm_config(BASE_ARMS[n])
        lengths = np.exp(rng.uniform(*np.log(dist.length_scale), size=n))
        masses = np.exp(rng.uniform(*np.log(dist.mass_scale), size=n))
        arms.append(
            base.replace(
                link_lengths=[float(v) for v in np.asarray(base.link_lengths) * lengths],
                link_masses=[float(v) for v in np.asarray(base.link_masses) * masses],
                name=f"sampled{i}_{n}link",
            )
        )
    return arms


class ArmCycle:
    """Per sampled arm: simulator, fitted model, training goals and policy; and the cycling
    meta-objective.

    Args:
        arms: the sampled arms.
        seed: the run's seed (models, babbling and goals are drawn from it).
        horizon: steps per rollout.
        n_goals: training goals per arm (a pool, sampled densely: no spacing between them).
        goal_min_radius, goal_separation: goal sampling (as the reacher's).
        goals_per_iteration: goals of the pool one meta-step uses (drawn afresh each time);
            None: all of them.
        policy_hidden: hidden widths of the per-goal policies.
        zero_output_layer: fresh policies start at zero torque.
        model_config: babbling and ensemble sizes per arm.
    """

    def __init__(
        self,
        arms: Sequence[ArmConfig],
        seed: int,
        *,
        horizon: int,
        n_goals: int,
        goal_min_radius: float,
        goal_separation: float,
        policy_hidden: Sequence[int],
        zero_output_layer: bool,
        model_config: ReachModelConfig,
        goals_per_iteration: int | None = None,
    ) -> None:
        self.arms = list(arms)
        self.zero_output_layer = zero_output_layer
        self.goals_per_iteration = goals_per_iteration
        self.models = []
        self.tasks = []
        self.policies = []
        self.env_steps = 0
        for i, arm in enumerate(self.arms):
            sim = ArmSim(arm, "mujoco")
            model, buffer = fit_reach_model(arm, sim, model_config, horizon, seed + 1 + i)
            self.models.append(model)
            self.env_steps += buffer.n_transitions_added
            goals = sample_goals(arm, n_goals, seed + GOAL_SEED + i, min_radius=goal_min_radius,
                                 min_distance=goal_separation, min_spacing=0.0)  # fmt: skip
            self.tasks.append(ReachTask(arm, goals, horizon))
            self.policies.append(ReachPolicy(arm, policy_hidden))
        log.info("arm distribution: %s", [a.name for a in self.arms])

    def meta_step(
        self, index: int, generator: torch.Generator, learned: LossFn, inner: InnerOptimizer
    ) -> OuterStep:
        """ML3's meta-loss on sampled arm ``index`` (fresh policies from ``generator``)."""
        model, task, policy = self.models[index], self.tasks[index], self.policies[index]
        if self.goals_per_iteration is not None and self.goals_per_iteration < task.n:
            task = task.subset(torch.randperm(task.n, generator=generator)[
                : self.goals_per_iteration])  # fmt: skip

        def step(x: Tensor, u: Tensor) -> Tensor:
            return model.step(x, u)

        params = init_params(policy, task.n, generator,
                                    zero_output_layer=self.zero_output_layer)  # fmt: skip
        value, _ = meta_loss(policy, params, step, task, learned, inner)
        return OuterStep(value, {"arm_index": float(index)})


def arm_cycle_from(config: Any, seed: int) -> ArmCycle:
    """The :class:`ArmCycle` of a reacher-like config (fields read by name: ``arm_distribution``,
    ``horizon``, ``n_train_goals``, ``goals_per_iteration`` (optional), ``goal_min_radius``,
    ``goal_separation``, ``policy_hidden``, ``policy_zero_output``, ``model``)."""
    return ArmCycle(
        sample_arm_configs(ArmDistribution.parse(config.arm_distribution), seed),
        seed,
        horizon=config.horizon,
        n_goals=config.n_train_goals,
        goal_min_radius=config.goal_min_radius,
        goal_separation=config.goal_separation,
        policy_hidden=config.policy_hidden,
        zero_output_layer=config.policy_zero_output,
        model_config=config.model,
        goals_per_iteration=getattr(config, "goals_per_iteration", None),
    )
