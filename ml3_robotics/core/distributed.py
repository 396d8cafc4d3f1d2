"""Data-parallel meta-training on torch.distributed (issue 15).

An outer iteration whose meta-objective is a mean over independent items (goals, arms) is split
across processes: every rank draws the same item list from the iteration's generator, computes
the terms of the items at positions ``rank, rank + size, ...`` (each from its own generator,
seeded by the iteration and the item's position, so an item's numbers do not depend on the rank
that computes it), and the per-item gradients are gathered and summed in item order. Every rank then
takes the same Adam step; rank 0 alone writes checkpoints and artefacts.

Launch with ``ml3r run --nproc N ...`` (which starts ``torch.distributed.run``) or with
``torchrun --nproc-per-node N -m ml3_robotics run ...``; gloo on CPU, NCCL where CUDA is
available. Across machines: ``torchrun --nnodes M --node-rank R --rdzv-endpoint HOST:PORT ...``
with the output folder on a shared filesystem (see ``docs/distributed.md``).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

#: How long a collective waits for the other ranks before raising (a dead rank stops the run).
COLLECTIVE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run.

    Attributes:
        rank: this process's index, ``0 <= rank < size``.
        size: number of processes.
    """

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size: expected an int >= 1, got {self.size!r}")
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.size:
            raise ValueError(f"rank: expected an int in [0, {self.size}), got {self.rank!r}")

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and artefacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def positions(self, n: int) -> list[int]:
        """The positions of ``n`` items this rank computes (strided: balanced, deterministic)."""
        return list(range(self.rank, n, self.size))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), indexed by rank, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def map_items(self, items: Sequence[Any], fn: Any) -> list[Any]:
        """``[fn(item) for item in items]`` with the items split across ranks (by position)
        and the results gathered, in order, on every rank."""
        mine = {p: fn(items[p]) for p in self.positions(len(items))}
        merged: dict[int, Any] = {}
        for part in self.gather(mine):
            merged.update(part)
        return [merged[p] for p in range(len(items))]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def finish(self) -> bool:
        """Leave the process group together once the ranks' shared work is done, so a rank
        that exits early does not tear the group down under the others. Returns whether this
        rank goes on alone (rank 0: evaluation, reports); the others stop there."""
        if self.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return self.is_main


SINGLE = World()


def world_from_env(environ: Mapping[str, str] | None = None) -> World:
    """The :class:`World` of a process started by ``torch.distributed.run`` (its ``RANK`` and
    ``WORLD_SIZE``), joining the process group on first use; a single process otherwise."""
    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    rank = int(env.get("RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        log.info("rank %d of %d joined (%s)", rank, size, backend)
    return World(rank, size)


def item_generator(generator: torch.Generator, position: int) -> torch.Generator:
    """The generator of the item at ``position`` of an outer iteration (whose own generator
    is ``generator``): the same on whichever rank computes it."""
    return torch.Generator().manual_seed(int(generator.initial_seed()) + 1 + position)


class ItemObjective(Protocol):
    """A meta-objective that is the mean of independent per-item terms (it can be split
    across ranks by :class:`~ml3_robotics.core.meta_trainer.MetaTrainer`).

    ``item_loss`` may return a third element, the item's output (anything picklable, e.g. its
    adapted policies); the outputs are gathered in item order and, if the objective has a
    ``finish_iteration(iteration, outputs) -> metrics`` method, handed to it on every rank
    before the meta-update, so state the iteration changes (data collected with every item's
    policies, a model refit) stays the same on every rank.
    """

    def items(self, iteration: int, generator: torch.Generator) -> list[Any]:
        """Outer iteration ``iteration``'s items, drawn from its generator (the same on every
        rank)."""
        ...

    def item_loss(
        self, item: Any, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]] | tuple[Tensor, dict[str, float], Any]:
        """One item's differentiable term, its metrics (and optionally its output)."""
        ...


@dataclass
class ItemMean:
    """An item objective's mean over one outer iteration, the same on every rank.

    Attributes:
        value: the mean term.
        grads: the mean gradient per parameter (the parameters' dtypes).
        metrics: each item metric's mean over the items that report it.
        outputs: the items' outputs in item order (None for an item that returned none).
    """

    value: float
    grads: list[Tensor]
    metrics: dict[str, float]
    outputs: list[Any]


def item_mean(
    objective: ItemObjective,
    params: Sequence[Tensor],
    iteration: int,
    generator: torch.Generator,
    world: World = SINGLE,
) -> ItemMean:
    """The mean of an item objective's terms and of their gradients with respect to
    ``params`` at outer iteration ``iteration`` (whose generator is ``generator``), each rank
    computing the items at its positions.

    Each item's term and gradient are taken on their own (the graph freed at once) as one
    float64 row; the rows are gathered in item order on every rank (:meth:`World.map_items`)
    and summed in that order. One process and any number of them therefore compute
    bit-identical means, however sensitive the meta-training is to rounding.
    """
    items = objective.items(iteration, generator)
    n = len(items)
    if n == 0:
        raise ValueError("items: the meta-objective drew no items for this iteration")
    sizes = [p.numel() for p in params]

    def row_of(entry: tuple[int, Any]) -> tuple[Tensor, dict[str, float], Any]:
        position, item = entry
        term, metrics, *output = objective.item_loss(item, item_generator(generator, position))
        grads = torch.autograd.grad(term, list(params), allow_unused=True)
        flat = [
            torch.zeros(size, dtype=torch.float64) if g is None else g.reshape(-1).double()
            for g, size in zip(grads, sizes, strict=True)
        ]
        row = torch.cat([term.detach().reshape(1).double(), *flat])
        return row, {k: float(v) for k, v in metrics.items()}, output[0] if output else None

    rows = world.map_items(list(enumerate(items)), row_of)
    mean = torch.stack([row for row, _, _ in rows]).sum(dim=0) / n
    grads, offset = [], 1
    for p, size in zip(params, sizes, strict=True):
        grads.append(mean[offset : offset + size].view_as(p).to(p.dtype))
        offset += size
    reported: dict[str, list[float]] = {}
    for _, item_metrics, _ in rows:
        for key, value in item_metrics.items():
            reported.setdefault(key, []).append(value)
    metrics = {k: sum(values) / len(values) for k, values in reported.items()}
    return ItemMean(float(mean[0]), grads, metrics, [output for _, _, output in rows])
