"""The ML3 outer loop: Adam on M_phi's parameters, checkpoints, resume, non-finite guards.

Determinism across a kill and resume comes from two choices: every outer iteration draws its
randomness from a generator seeded by ``(seed, iteration)`` alone, and a checkpoint holds
everything else that changes (M_phi, Adam's state, the history, and the problem's own state).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from ml3_robotics.core.distributed import SINGLE, ItemObjective, World, item_mean
from ml3_robotics.core.errors import CheckpointError, NonFiniteError
from ml3_robotics.core.progress import progress_bar
from ml3_robotics.core.serialization import atomic_save_tensors, tensors_with_prefix
from ml3_robotics.core.validation import MAX_OUTER_STEPS, check_ints

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """Problem state carried across iterations (e.g. a replay buffer and a dynamics model)."""

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: Mapping[str, Tensor]) -> Any: ...


@dataclass(frozen=True)
class MetaTrainConfig:
    """Outer-loop settings.

    Attributes:
        outer_steps: number of meta-updates.
        lr: Adam step size on phi.
        seed: base seed; iteration ``i`` uses a generator seeded from ``(seed, i)``.
        checkpoint_every: write a checkpoint every this many iterations (and at the end).
        grad_clip: optional max-norm clip of the meta-gradient.
        lr_final: if given, the step size follows a cosine from ``lr`` at the first iteration
            to ``lr_final`` at ``outer_steps``; a function of the iteration alone, so a resumed
            run follows the same schedule.
    """

    outer_steps: int
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 50
    grad_clip: float | None = None
    lr_final: float | None = None

    def lr_at(self, iteration: int) -> float:
        """The step size of outer iteration ``iteration``."""
        if self.lr_final is None:
            return self.lr
        progress = min(1.0, iteration / max(1, self.outer_steps))
        return self.lr_final + 0.5 * (self.lr - self.lr_final) * (1 + math.cos(math.pi * progress))

    def __post_init__(self) -> None:
        check_ints(self, ("outer_steps",), 0, MAX_OUTER_STEPS)
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive number, got {self.lr}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise ValueError(
                f"checkpoint_every: expected an int >= 1, got {self.checkpoint_every!r}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected a positive number or None, got {self.grad_clip}")
        if self.lr_final is not None and not self.lr_final > 0:
            raise ValueError(f"lr_final: expected a positive number or None, got {self.lr_final}")


@dataclass
class OuterStep:
    """What the meta-objective returns for one outer iteration."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


MetaObjective = Callable[[int, torch.Generator], "OuterStep | Tensor"]
Callback = Callable[[int, dict[str, float]], None]


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    """A generator that depends only on ``(seed, iteration)``, so a resumed run repeats it."""
    state = np.random.SeedSequence([int(seed), int(iteration)]).generate_state(2, dtype=np.uint64)
    return torch.Generator().manual_seed(int(state[0] % (2**63)))


class MetaTrainer:
    """Runs the ML3 outer loop on a learned loss.

    Args:
        loss: M_phi; its parameters are updated in place.
        objective: ``objective(iteration, generator)`` returns the meta-loss (a scalar tensor
            differentiable with respect to ``loss``'s parameters) or an :class:`OuterStep`.
        config: outer-loop settings.
        checkpoint_path: file for checkpoints (``.safetensors``); None disables them.
        callbacks: called as ``callback(iteration, metrics)`` after every meta-update.
        state: optional problem state saved in and restored from checkpoints.
        progress: draw a tqdm bar (the CLI passes True only on a TTY); otherwise progress goes
            to the ``ml3r.progress`` logger as a line every tenth of the run.
        label: what the bar and the progress lines call the run.
        world: this process's rank among several (data-parallel meta-training,
            :mod:`ml3_robotics.core.distributed`): the objective must then be an
            :class:`~ml3_robotics.core.distributed.ItemObjective`; its items are split across
            ranks, the meta-gradients summed, and only rank 0 writes checkpoints and calls the
            callbacks. An item objective is evaluated through its items in one process too, so
            one process and several compute the same mean.
    """

    def __init__(
        self,
        loss: nn.Module,
        objective: MetaObjective | ItemObjective,
        config: MetaTrainConfig,
        *,
        checkpoint_path: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        state: Stateful | None = None,
        progress: bool = False,
        label: str = "meta-train",
        world: World = SINGLE,
    ) -> None:
        self.item_objective = callable(getattr(objective, "item_loss", None)) and callable(
            getattr(objective, "items", None)
        )
        if world.distributed and not self.item_objective:
            raise ValueError(
                f"objective: meta-training on {world.size} processes needs a mean of items "
                "(an ItemObjective with items() and item_loss()), got "
                f"{type(objective).__name__}"
            )
        self.world = world
        self.loss = loss
        self.label = label
        self.objective = objective
        self.config = config
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.callbacks = list(callbacks)
        self.state = state
        self.progress = progress
        self.optimizer = torch.optim.Adam(loss.parameters(), lr=config.lr)
        self.iteration = 0  # number of completed meta-updates
        self.history: list[dict[str, float]] = []

    # -- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Write the full outer-loop state atomically (a crash leaves the previous file); rank 0
        only (every rank holds the same state)."""
        if self.checkpoint_path is None or not self.world.is_main:
            return
        tensors: dict[str, Tensor] = {f"loss.{k}": v for k, v in self.loss.state_dict().items()}
        opt = self.optimizer.state_dict()
        for idx, slots in opt["state"].items():
            for name, value in slots.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value)
        if self.state is not None:
            tensors.update({f"state.{k}": v for k, v in self.state.state_dict().items()})
        meta = {
            "iteration": str(self.iteration),
            "seed": str(self.config.seed),
            "param_groups": json.dumps(opt["param_groups"]),
            "history": json.dumps(self.history),
        }
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(tensors, self.checkpoint_path, metadata=meta)

    def load_checkpoint(self) -> bool:
        """Restore from ``checkpoint_path``; returns False when there is no checkpoint yet.

        The whole file is checked first (its tensors' names and shapes against this trainer's
        loss, optimizer and problem state, its metadata's types and ranges): a checkpoint that
        does not fit raises :class:`CheckpointError` naming the file and what is wrong, before
        anything is restored.
        """
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        try:
            tensors = load_file(path)
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"checkpoint {path} is unreadable ({e})") from e
        iteration, param_groups, history = self._check_checkpoint(tensors, meta)
        if self.state is not None:
            try:  # first: the problem state checks its own tensors before it changes
                self.state.load_state_dict(tensors_with_prefix(tensors, "state."))
            except (ValueError, KeyError, RuntimeError, TypeError) as e:
                raise CheckpointError(
                    f"checkpoint {path}: its problem state does not fit this run ({e})"
                ) from e
        self.loss.load_state_dict(tensors_with_prefix(tensors, "loss."))
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors_with_prefix(tensors, "optim.").items():
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = value
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": param_groups})
        self.iteration = iteration
        self.history = history
        log.info("resumed from %s at iteration %d", path, self.iteration)
        return True

    def _check_checkpoint(
        self, tensors: Mapping[str, Tensor], meta: Mapping[str, str]
    ) -> tuple[int, list[dict[str, Any]], list[dict[str, float]]]:
        """The checkpoint's iteration, optimizer groups and history, once every part of it is
        known to fit this trainer (raises :class:`CheckpointError` otherwise)."""
        path = self.checkpoint_path

        def refuse(what: str) -> CheckpointError:
            return CheckpointError(
                f"checkpoint {path}: {what}; it is not a checkpoint of this run (restore the "
                "file or start a new run)"
            )

        bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
        if bad:
            raise NonFiniteError(
                f"checkpoint {path} holds non-finite values in {bad[:3]}; it is not a usable "
                "checkpoint (start a new run)"
            )
        if meta.get("seed") != str(self.config.seed):
            raise refuse(
                f"it was written with seed {meta.get('seed')}, this run has seed {self.config.seed}"
            )
        loss_shapes = {f"loss.{k}": tuple(v.shape) for k, v in self.loss.state_dict().items()}
        # Adam keeps state only for parameters that have had a gradient: those may be absent.
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        optim_shapes = {
            f"optim.{i}.{name}": () if name == "step" else tuple(p.shape)
            for i, p in enumerate(params)
            for name in ("step", "exp_avg", "exp_avg_sq")
        }
        found = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("state.")}
        expected = {**loss_shapes, **optim_shapes}
        wrong = sorted(
            k
            for k in loss_shapes.keys() | found.keys()
            if found.get(k) != expected.get(k) and not (k in optim_shapes and k not in found)
        )
        if wrong:
            shown = ", ".join(
                f"{k} {found.get(k, 'absent')} (expected {expected.get(k, 'no such tensor')})"
                for k in wrong[:3]
            )
            raise refuse(f"its tensors do not match this run's: {shown}")
        try:
            iteration = int(meta["iteration"])
            param_groups = json.loads(meta["param_groups"])
            history = json.loads(meta["history"])
        except (KeyError, ValueError) as e:
            raise refuse(
                f"its metadata is incomplete or unreadable ({type(e).__name__}: {e})"
            ) from e
        if not 0 <= iteration <= self.config.outer_steps:
            raise refuse(
                f"it claims iteration {iteration}, this run has outer_steps="
                f"{self.config.outer_steps}"
            )
        own_groups = self.optimizer.state_dict()["param_groups"]
        if (
            not isinstance(param_groups, list)
            or len(param_groups) != len(own_groups)
            or any(
                not isinstance(g, dict) or g.get("params") != o["params"]
                for g, o in zip(param_groups, own_groups, strict=False)
            )
        ):
            raise refuse("its optimizer groups do not match this run's")
        if (
            not isinstance(history, list)
            or len(history) != iteration
            or any(not isinstance(row, dict) for row in history)
        ):
            raise refuse(f"its history is not a list of {iteration} rows")
        return iteration, param_groups, history

    # -- the loop ----------------------------------------------------------------------------

    def step(self) -> dict[str, float]:
        """One meta-update. Raises :class:`NonFiniteError` without touching phi on NaN/inf."""
        i = self.iteration
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        generator = iteration_generator(self.config.seed, i)
        if self.item_objective:
            value, grads, metrics = self._item_step(i, generator)
        else:
            out = self.objective(i, generator)
            result = out if isinstance(out, OuterStep) else OuterStep(loss=out)
            value, metrics = float(result.loss.detach()), dict(result.metrics)
            result.loss.backward()
            grads = [p.grad for p in self.loss.parameters() if p.grad is not None]
        # Checked after the (all-reduced) values are known, so every rank stops alike; phi is
        # untouched until the optimizer step below.
        if not math.isfinite(value):
            raise NonFiniteError(
                f"meta-loss is {value} at outer iteration {i}; {self._last_good()}"
            )
        grad_norm = (
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if grads
            else 0.0
        )
        if not math.isfinite(grad_norm):
            raise NonFiniteError(
                f"meta-gradient norm is {grad_norm} at outer iteration {i}; {self._last_good()}"
            )
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.loss.parameters(), self.config.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(i)
        self.optimizer.step()
        self.iteration = i + 1
        row = {
            "iteration": float(i),
            "meta_loss": value,
            "meta_grad_norm": grad_norm,
            "seconds": time.perf_counter() - start,
            **{k: float(v) for k, v in metrics.items()},
        }
        self.history.append(row)
        return row

    def _item_step(
        self, iteration: int, generator: torch.Generator
    ) -> tuple[float, list[Tensor], dict]:
        """The mean term, gradient and metrics of the items (split across ranks, the same on
        every rank: :func:`~ml3_robotics.core.distributed.item_mean`), then the objective's
        ``finish_iteration`` on their outputs, if it has one; sets ``p.grad``."""
        params = list(self.loss.parameters())
        mean = item_mean(self.objective, params, iteration, generator, self.world)  # type: ignore[arg-type]
        for p, g in zip(params, mean.grads, strict=True):
            p.grad = g
        metrics = dict(mean.metrics)
        finish = getattr(self.objective, "finish_iteration", None)
        if finish is not None:
            metrics.update(finish(iteration, mean.outputs))
        return mean.value, mean.grads, metrics

    def _last_good(self) -> str:
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            return f"the last good checkpoint {self.checkpoint_path} is left intact"
        return "no checkpoint was written"

    def run(self, resume: bool = False) -> list[dict[str, float]]:
        """Run until ``config.outer_steps`` meta-updates are done; returns the history."""
        if resume:
            self.load_checkpoint()
        total = self.config.outer_steps
        bar = progress_bar(
            total, self.label, tty=self.progress and self.world.is_main, initial=self.iteration
        )
        try:
            while self.iteration < total:
                row = self.step()
                bar.set_postfix(meta_loss=f"{row['meta_loss']:.4g}", refresh=False)
                bar.update(1)
                for callback in self.callbacks if self.world.is_main else ():
                    callback(self.iteration - 1, row)
                if self.iteration % self.config.checkpoint_every == 0 or self.iteration == total:
                    self.save_checkpoint()
        finally:
            bar.close()
        return self.history
