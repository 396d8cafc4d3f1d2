"""Replay buffer: FIFO order, sampling determinism, plain-tensor state and safetensors files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ml3_robotics.models.replay_buffer import ReplayBuffer


def traj(start: float, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A trajectory whose values encode (start + step index) so rows can be identified."""
    t = torch.arange(T + 1, dtype=torch.float64) + start
    X = torch.stack([t, -t], dim=1)
    return X, (t[:-1] * 10).unsqueeze(1)


def test_add_and_arrays_in_insertion_order() -> None:
    buf = ReplayBuffer(2, 1, capacity=100)
    buf.add_trajectory(*traj(0, 5))
    X, U = traj(100, 3)
    buf.add_trajectory(X.numpy(), U.numpy())  # numpy accepted too
    assert len(buf) == 8 and buf.n_trajectories_added == 2
    x, u, xn = buf.arrays()
    assert x[:, 0].tolist() == [0, 1, 2, 3, 4, 100, 101, 102]
    assert xn[:, 0].tolist() == [1, 2, 3, 4, 5, 101, 102, 103]
    assert u[:, 0].tolist() == [0, 10, 20, 30, 40, 1000, 1010, 1020]
    assert buf.trajectory_ids().tolist() == [0] * 5 + [1] * 3


def test_fifo_drops_oldest_when_full() -> None:
    buf = ReplayBuffer(2, 1, capacity=7)
    buf.add_trajectory(*traj(0, 4))
    buf.add_trajectory(*traj(100, 4))  # 8 transitions > 7: the very first one is dropped
    x, _, xn = buf.arrays()
    assert len(buf) == 7
    assert x[:, 0].tolist() == [1, 2, 3, 100, 101, 102, 103]
    torch.testing.assert_close(xn - x, torch.tensor([[1.0, -1.0]] * 7, dtype=torch.float64))
    buf.add_trajectory(*traj(200, 10))  # longer than capacity: keeps its newest 7
    assert buf.arrays()[0][:, 0].tolist() == [203, 204, 205, 206, 207, 208, 209]
    assert buf.n_transitions_added == 18


def test_sampling_is_deterministic_and_from_stored_data() -> None:
    buf = ReplayBuffer(2, 1, capacity=50)
    for k in range(5):
        buf.add_trajectory(*traj(100 * k, 10))
    a = buf.sample(64, torch.Generator().manual_seed(3))
    b = buf.sample(64, torch.Generator().manual_seed(3))
    c = buf.sample(64, torch.Generator().manual_seed(4))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    x, u, xn = a
    assert torch.equal(xn[:, 0], x[:, 0] + 1) and torch.equal(u[:, 0], x[:, 0] * 10)
    stored = set(buf.arrays()[0][:, 0].tolist())
    assert set(x[:, 0].tolist()) <= stored


def test_state_dict_round_trip_continues_identically() -> None:
    buf = ReplayBuffer(2, 1, capacity=9)
    buf.add_trajectory(*traj(0, 6))
    buf.add_trajectory(*traj(50, 6))  # wrapped around: the write pointer matters
    state = buf.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = ReplayBuffer(2, 1, capacity=9)
    other.load_state_dict(state)
    for b in (buf, other):
        b.add_trajectory(*traj(900, 2))
    for p, q in zip(buf.arrays(), other.arrays(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(buf.trajectory_ids(), other.trajectory_ids())
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, 1, capacity=10).load_state_dict(state)


def test_save_load_safetensors(tmp_path) -> None:
    buf = ReplayBuffer(2, 1, capacity=20, dtype=torch.float32)
    buf.add_trajectory(*traj(0, 8))
    path = tmp_path / "buffer.safetensors"
    buf.save(path)
    with safe_open(str(path), framework="pt") as f:  # a plain safetensors file, no pickle
        assert set(f.keys()) == {"x", "u", "x_next", "traj_id", "meta"}
    loaded = ReplayBuffer.load(path)
    assert (loaded.nx, loaded.nu, loaded.capacity, loaded.dtype) == (2, 1, 20, torch.float32)
    assert len(loaded) == 8
    for p, q in zip(buf.arrays(), loaded.arrays(), strict=True):
        assert torch.equal(p, q)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(buf.sample(5, g1)[0], loaded.sample(5, g2)[0])


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(2, 1, capacity=0)
    with pytest.raises(TypeError, match="nx"):
        ReplayBuffer(True, 1, capacity=5)
    buf = ReplayBuffer(2, 1, capacity=5)
    X, U = traj(0, 3)
    with pytest.raises(ValueError, match=r"U must have shape \(T, nu\) = \(3, 1\)"):
        buf.add_trajectory(X, U[:2])
    with pytest.raises(ValueError, match="X must have shape"):
        buf.add_trajectory(X[:, :1], U)
    with pytest.raises(ValueError, match="finite"):
        buf.add_trajectory(X * np.nan, U)
    with pytest.raises(TypeError, match="X must be"):
        buf.add_trajectory(X.tolist(), U)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(3, torch.Generator())
    assert len(buf) == 0  # failed adds leave nothing behind
