"""FIFO replay buffer of real transitions ``(x, u, x')`` for fitting learned dynamics.

Storage is a set of preallocated tensors used as a ring buffer, so adding data never reallocates
and the oldest transitions are dropped first once ``capacity`` is reached. The whole state is a
dict of plain tensors: it saves with safetensors (no pickle) and can be embedded in a checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ml3_robotics.core.serialization import atomic_save_tensors

__all__ = ["ReplayBuffer"]

# Layout version of ``state_dict``; bump when the keys or their meaning change.
_FORMAT_VERSION = 2  # 2: only the stored transitions, oldest first
_KEYS = ("x", "u", "x_next", "traj_id", "meta")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def _as_tensor(name: str, value: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=dtype)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.asarray(value)).to(dtype)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


class ReplayBuffer:
    """Ring buffer of transitions, filled one trajectory at a time.

    Args:
        nx: state dimension.
        nu: control dimension.
        capacity: maximum number of transitions kept; the oldest are dropped first.
        dtype: storage dtype (float64 by default so simulator data is not rounded on the way in;
            ``fit`` casts to the model's dtype).

    Attributes:
        nx, nu, capacity, dtype: as given.
    """

    def __init__(self, nx: int, nu: int, capacity: int, *, dtype: torch.dtype = torch.float64):
        self.nx = _positive_int("nx", nx)
        self.nu = _positive_int("nu", nu)
        self.capacity = _positive_int("capacity", capacity)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._x = torch.zeros(self.capacity, self.nx, dtype=dtype)
        self._u = torch.zeros(self.capacity, self.nu, dtype=dtype)
        self._xn = torch.zeros(self.capacity, self.nx, dtype=dtype)
        # Trajectory index of each transition, so held-out trajectories can be told apart later.
        self._traj = torch.full((self.capacity,), -1, dtype=torch.int64)
        self._size = 0
        self._ptr = 0  # next slot to write
        self._next_traj = 0
        self._n_added = 0  # transitions ever added (real environment steps seen)

    def __len__(self) -> int:
        return self._size

    @property
    def n_trajectories_added(self) -> int:
        """Number of trajectories ever added (including ones already dropped)."""
        return self._next_traj

    @property
    def n_transitions_added(self) -> int:
        """Number of transitions ever added (including ones already dropped)."""
        return self._n_added

    def add_trajectory(self, X: Tensor | np.ndarray, U: Tensor | np.ndarray) -> None:
        """Append the ``T`` transitions of one trajectory.

        Args:
            X: states ``(T+1, nx)``.
            U: controls ``(T, nu)``; ``U[t]`` takes ``X[t]`` to ``X[t+1]``.

        Raises:
            ValueError: on shape mismatch or non-finite values (a blown-up simulation must not
                poison the model fit).
        """
        X = _as_tensor("X", X, self.dtype)
        U = _as_tensor("U", U, self.dtype)
        if X.ndim != 2 or X.shape[1] != self.nx or X.shape[0] < 2:
            raise ValueError(
                f"X must have shape (T+1, {self.nx}) with T >= 1, got {tuple(X.shape)}"
            )
        T = X.shape[0] - 1
        if tuple(U.shape) != (T, self.nu):
            raise ValueError(
                f"U must have shape (T, nu) = ({T}, {self.nu}) to match X, got {tuple(U.shape)}"
            )
        if not (torch.isfinite(X).all() and torch.isfinite(U).all()):
            raise ValueError("X and U must be finite; got NaN or inf in the trajectory")
        traj = self._next_traj
        self._next_traj += 1
        self._n_added += T
        x, u, xn = X[:-1], U, X[1:]
        if T > self.capacity:  # only the newest ``capacity`` transitions would survive anyway
            x, u, xn = x[-self.capacity :], u[-self.capacity :], xn[-self.capacity :]
        n = x.shape[0]
        idx = (self._ptr + torch.arange(n)) % self.capacity
        self._x[idx] = x
        self._u[idx] = u
        self._xn[idx] = xn
        self._traj[idx] = traj
        self._ptr = (self._ptr + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def _order(self) -> Tensor:
        """Slot indices from oldest to newest."""
        if self._size < self.capacity:
            return torch.arange(self._size)
        return (self._ptr + torch.arange(self.capacity)) % self.capacity

    def arrays(self) -> tuple[Tensor, Tensor, Tensor]:
        """All stored transitions, oldest first.

        Returns:
            ``(x (N, nx), u (N, nu), x_next (N, nx))`` copies, ``N = len(self)``.
        """
        o = self._order()
        return self._x[o].clone(), self._u[o].clone(), self._xn[o].clone()

    def trajectory_ids(self) -> Tensor:
        """Trajectory index ``(N,)`` (int64) of each transition, in the order of ``arrays``."""
        return self._traj[self._order()].clone()

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Uniform sample with replacement.

        Args:
            batch_size: number of transitions.
            generator: CPU torch generator; the same generator state gives the same sample.

        Returns:
            ``(x (B, nx), u (B, nu), x_next (B, nx))``.
        """
        batch_size = _positive_int("batch_size", batch_size)
        if self._size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        i = torch.randint(self._size, (batch_size,), generator=generator)
        slots = self._order()[i]
        return self._x[slots], self._u[slots], self._xn[slots]

    def state_dict(self) -> dict[str, Tensor]:
        """Plain-tensor state (safetensors-compatible, no pickle): the stored transitions only,
        oldest first (a checkpoint of a run holding 400 transitions in a buffer of a million is
        kilobytes, not the whole preallocated ring)."""
        meta = torch.tensor(
            [
                _FORMAT_VERSION,
                self.nx,
                self.nu,
                self.capacity,
                self._size,
                self._next_traj,
                self._n_added,
            ],
            dtype=torch.int64,
        )
        o = self._order()
        return {
            "x": self._x[o].clone(),
            "u": self._u[o].clone(),
            "x_next": self._xn[o].clone(),
            "traj_id": self._traj[o].clone(),
            "meta": meta,
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore from ``state_dict()``; the dimensions and capacity must match this buffer.
        Everything is checked before this buffer changes (raises ``ValueError``)."""
        missing = [k for k in _KEYS if k not in state]
        if missing:
            raise ValueError(f"state is missing keys {missing}; expected {list(_KEYS)}")
        meta = [int(v) for v in state["meta"].reshape(-1).tolist()]
        if len(meta) != 7 or meta[0] != _FORMAT_VERSION:
            raise ValueError(f"unsupported ReplayBuffer state format {meta[:1]}")
        _, nx, nu, capacity, size, next_traj, n_added = meta
        if (nx, nu, capacity) != (self.nx, self.nu, self.capacity):
            raise ValueError(
                f"state has (nx, nu, capacity) = {(nx, nu, capacity)}, this buffer has "
                f"{(self.nx, self.nu, self.capacity)}"
            )
        if not (0 <= size <= capacity and 0 <= next_traj and size <= n_added):
            raise ValueError(f"corrupt ReplayBuffer state: size={size}, added={n_added}")
        shapes = {"x": (size, nx), "u": (size, nu), "x_next": (size, nx), "traj_id": (size,)}
        wrong = {k: tuple(state[k].shape) for k, v in shapes.items() if state[k].shape != v}
        if wrong:
            raise ValueError(f"ReplayBuffer state of {size} transitions has shapes {wrong}")
        # Oldest first in slots 0..size-1: the next write goes after the newest, and the order
        # sampling sees is the one saved, so a resumed run draws the same batches.
        for key, slots in (("x", self._x), ("u", self._u), ("x_next", self._xn)):
            slots[:size] = state[key].to(self.dtype)
        self._traj[:size] = state["traj_id"].to(torch.int64)
        self._traj[size:] = -1
        self._size, self._ptr = size, size % capacity
        self._next_traj, self._n_added = next_traj, n_added

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the buffer to ``path`` as safetensors (the caller chooses the location)."""
        atomic_save_tensors(self.state_dict(), Path(path), metadata={"format": "ml3r.ReplayBuffer"})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReplayBuffer:
        """Read a buffer written by ``save``; keeps the stored dtype."""
        state = load_file(os.fspath(path))
        if "meta" not in state or "x" not in state:
            raise ValueError(f"{os.fspath(path)!r} is not a saved ReplayBuffer (no 'meta'/'x')")
        meta = state["meta"].tolist()
        buf = cls(int(meta[1]), int(meta[2]), int(meta[3]), dtype=state["x"].dtype)
        buf.load_state_dict(state)
        return buf
