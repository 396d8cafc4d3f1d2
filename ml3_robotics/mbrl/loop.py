"""The model-based RL loop's data and model (issue 12: the loop lives in the library).

* :func:`babble`: random held-torque trajectories on a real simulator, the first data.
* :class:`ReachModelConfig`, :func:`fit_reach_model`: babbling and an ensemble fitted to it,
  the learned model of one robot (the reacher's first fit, ``ml3r eval``, the transfer study).
* :class:`DynamicsLearner`: the replay buffer, the probabilistic ensemble fitted to it and the
  loop's counters; it adds trajectories (babbling, executed policies), refits the model, and is
  ``Stateful`` so a meta-training checkpoint holds all of it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ml3_robotics.core.serialization import tensors_with_prefix
from ml3_robotics.core.validation import check_ints, check_widths
from ml3_robotics.models.learned_dynamics import EnsembleConfig, ProbabilisticEnsemble, fit
from ml3_robotics.models.replay_buffer import ReplayBuffer
from ml3_robotics.tasks.reach import ReachTask, execute_policies
from robots.arm import ArmConfig, ArmSim, SimulationError

log = logging.getLogger(__name__)

MAX_BABBLE_REDRAWS = 10


def babble(
    sim: ArmSim, n: int, horizon: int, hold: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random babbling from the zero state: uniform torques held for ``hold`` steps.

    Held torques (rather than white noise, which barely moves the arm at dt = 0.01 s) spread the
    data over the speeds and angles that reaching visits. Trajectories that blow up are redrawn
    (up to :data:`MAX_BABBLE_REDRAWS` times).

    Returns:
        ``X (n, horizon+1, nx)`` and ``U (n, horizon, nu)``, float64.
    """
    limits = np.asarray(sim.config.torque_limits)
    n_seg = -(-horizon // hold)

    def draw(k: int) -> np.ndarray:
        seg = rng.uniform(-1, 1, size=(k, n_seg, sim.nu)) * limits
        return np.repeat(seg, hold, axis=1)[:, :horizon]

    U = draw(n)
    try:
        return sim.rollout(np.zeros((n, sim.nx)), U), U
    except SimulationError as e:
        # Long chains with light tip links (arm7_planar) can blow up under some random torque
        # sequences: keep the trajectories that stay finite and redraw the others.
        log.warning("babbling: %s; redrawing those trajectories", e)
    X = np.empty((n, horizon + 1, sim.nx))
    todo = list(range(n))
    for _ in range(MAX_BABBLE_REDRAWS):
        failed = []
        for i in todo:
            try:
                X[i] = sim.rollout(np.zeros((1, sim.nx)), U[i : i + 1])[0]
            except SimulationError:
                failed.append(i)
        if not failed:
            return X, U
        U[failed] = draw(len(failed))
        todo = failed
    raise SimulationError(
        f"babbling: {len(todo)} of {n} random-torque rollouts of {sim.config.name!r} still blew up "
        f"after {MAX_BABBLE_REDRAWS} redraws"
    )


class DynamicsLearner:
    """The replay buffer, the ensemble fitted to it, and the MBRL loop's counters.

    The model's weights are frozen (``requires_grad=False``) except while it is refitted: the
    meta-gradient and every evaluation only need gradients through its inputs.

    Args:
        arm: the robot (its state and action sizes).
        ensemble: the ensemble's settings (``epochs`` is the first fit's length).
        seed: seeds the model's initialisation.
        capacity: the replay buffer's size in transitions.
    """

    def __init__(
        self, arm: ArmConfig, ensemble: EnsembleConfig, seed: int, capacity: int = 1_000_000
    ) -> None:
        self.ensemble_config = ensemble
        self.buffer = ReplayBuffer(arm.nx, arm.nu, capacity=capacity)
        self.model = ProbabilisticEnsemble(
            arm.nx, arm.nu, arm.dt, ensemble, generator=torch.Generator().manual_seed(seed)
        )
        self._freeze(True)
        self.refits = 0
        self.monitor_steps = 0  # real steps spent on monitoring evaluations (not on learning)

    def _freeze(self, frozen: bool) -> None:
        for p in self.model.parameters():
            p.requires_grad_(not frozen)

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        """The model's one-step prediction (the ensemble's mean)."""
        return self.model.step(x, u)

    def add(self, X: np.ndarray, U: np.ndarray) -> None:
        """Add trajectories ``X (N, T+1, nx)``, ``U (N, T, nu)`` to the buffer."""
        for x, u in zip(X, U, strict=True):
            self.buffer.add_trajectory(x, u)

    def collect(
        self, sim: ArmSim, policy: nn.Module, params: Mapping[str, Tensor], task: ReachTask
    ) -> tuple[np.ndarray, np.ndarray]:
        """Execute per-goal policies on the real simulator and keep what they did."""
        X, U = execute_policies(sim, policy, params, task)
        self.add(X, U)
        return X, U

    def refit(self, epochs: int, generator: torch.Generator) -> None:
        """Fit the ensemble to the whole buffer for ``epochs`` epochs."""
        self._freeze(False)
        config = dataclasses.replace(self.ensemble_config, epochs=epochs)
        fit(self.model, self.buffer, config, generator=generator, progress=False)
        self._freeze(True)
        self.refits += 1

    def state_dict(self) -> dict[str, Tensor]:
        out = {f"buffer.{k}": v for k, v in self.buffer.state_dict().items()}
        out.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        out["refits"] = torch.tensor(self.refits)
        out["monitor_steps"] = torch.tensor(self.monitor_steps)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.buffer.load_state_dict({k[7:]: v for k, v in state.items() if k.startswith("buffer.")})
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        self.refits = int(state["refits"])
        self.monitor_steps = int(state["monitor_steps"])


@dataclass(frozen=True)
class ReachModelConfig:
    """One robot's learned model: babbling and ensemble settings (the reacher's defaults); the
    ``model`` group of the reacher, ``ml3r eval`` and the transfer study (``--set model.X=...``).

    Attributes:
        babble_trajectories: random-torque trajectories that seed the replay buffer (>= 2).
        babble_hold: babbling torques are held for this many steps (coloured noise: white noise
            at dt = 0.01 s barely moves the arm).
        ensemble_members: members of the probabilistic dynamics ensemble.
        ensemble_hidden: hidden widths of each ensemble member.
        fit_epochs: epochs of the first model fit (after babbling).
    """

    babble_trajectories: int = 100
    babble_hold: int = 8
    ensemble_members: int = 5
    ensemble_hidden: tuple[int, ...] = (128, 128)
    fit_epochs: int = 100

    def __post_init__(self) -> None:
        check_ints(self, ("babble_hold", "ensemble_members", "fit_epochs"), 1)
        check_ints(self, ("babble_trajectories",), 2)  # a model needs data to fit
        check_widths("ensemble_hidden", self.ensemble_hidden)

    def ensemble(self, arm: ArmConfig) -> EnsembleConfig:
        """The ensemble's config for ``arm`` (its joint angles are periodic inputs)."""
        return EnsembleConfig(
            n_members=self.ensemble_members,
            hidden=tuple(self.ensemble_hidden),
            epochs=self.fit_epochs,
            angle_dims=tuple(range(arm.n_links)),
        )


def fit_reach_model(
    arm: ArmConfig, sim: ArmSim, config: ReachModelConfig, horizon: int, seed: int
) -> tuple[ProbabilisticEnsemble, ReplayBuffer]:
    """Babble on ``sim`` (trajectories of ``horizon`` steps) and fit a fresh ensemble: the
    learned model of one robot.

    Same draws as the reacher's first fit for the same seed (model init, babbling, fit).

    Returns:
        The fitted model (weights frozen: ``requires_grad=False``) and the buffer it saw.
    """
    learner = DynamicsLearner(arm, config.ensemble(arm), seed)
    learner.add(*babble(
        sim, config.babble_trajectories, horizon, config.babble_hold,
        np.random.default_rng(seed),
    ))  # fmt: skip
    learner.refit(config.fit_epochs, torch.Generator().manual_seed(seed))
    return learner.model, learner.buffer


def load_reach_model(
    arm: ArmConfig, config: ReachModelConfig, checkpoint: str | Path, seed: int
) -> tuple[ProbabilisticEnsemble, ReplayBuffer]:
    """A reacher run's learned model and replay buffer from its checkpoint (the ``state.``
    tensors ``DynamicsLearner`` wrote): after the run, the model its meta-test used, refits
    included. ``config`` must describe the same ensemble.

    Raises:
        ValueError: one line naming the file, when it is unreadable or does not fit.
    """
    learner = DynamicsLearner(arm, config.ensemble(arm), seed)
    try:
        tensors = load_file(Path(checkpoint))
        learner.load_state_dict(tensors_with_prefix(tensors, "state."))
    except (SafetensorError, OSError, RuntimeError, KeyError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"model_checkpoint: {checkpoint} holds no learned model of this arm and model "
            f"group ({reason})"
        ) from e
    return learner.model, learner.buffer
