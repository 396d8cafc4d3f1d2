"""Speed of the MountainCar physics: batched torch step (batch 1 and 1024) and the Gymnasium env.

Run: ``python benchmarks/bench_mountain_car.py``. Prints one table; ratios are against the
batch-1 torch step measured in the same process. Each row runs for about ``SECONDS`` seconds
(best of ``REPEATS``), single-threaded torch so rows are comparable on a shared machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from robots.mountain_car import MountainCar, MountainCarEnv

SECONDS = 1.0
REPEATS = 3


def rate(fn: Callable[[], None], per_call: int) -> float:
    """Best-of-REPEATS state-steps per second of ``fn`` (which advances ``per_call`` states)."""
    fn()  # warm-up
    best = 0.0
    for _ in range(REPEATS):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < SECONDS:
            for _ in range(50):
                fn()
            n += 50
        best = max(best, n * per_call / elapsed)
    return best


def torch_step(batch: int, dtype: torch.dtype, validate: bool, grad: bool = False):
    mc = MountainCar()
    x = torch.tensor([mc.params.start], dtype=dtype).repeat(batch, 1)
    u = torch.full((batch, 1), 0.1, dtype=dtype)

    def fn() -> None:
        with torch.set_grad_enabled(grad):
            mc.step(x, u.requires_grad_(grad), validate=validate)

    return fn


def env_step():
    env = MountainCarEnv()
    env.reset(seed=0)
    a = np.array([0.1])
    state = {"t": 0}

    def fn() -> None:
        _, _, terminated, truncated, _ = env.step(a)
        state["t"] += 1
        if terminated or truncated:
            env.reset()

    return fn


def main() -> None:
    torch.set_num_threads(1)
    rows = [
        ("torch step, batch 1, float64", torch_step(1, torch.float64, True), 1),
        ("torch step, batch 1, float64, validate=False", torch_step(1, torch.float64, False), 1),
        ("torch step, batch 1, float32", torch_step(1, torch.float32, True), 1),
        ("torch step, batch 1024, float64", torch_step(1024, torch.float64, True), 1024),
        ("torch step, batch 1024, float32", torch_step(1024, torch.float32, True), 1024),
        (
            "torch step, batch 1024, float32, with grad",
            torch_step(1024, torch.float32, True, grad=True),
            1024,
        ),
        ("gymnasium env.step (float64, batch 1)", env_step(), 1),
    ]
    results = [(name, rate(fn, per_call), per_call) for name, fn, per_call in rows]
    base = results[0][1]
    print(
        f"MountainCar speed (torch {torch.__version__}, 1 thread, best of {REPEATS} x "
        f"{SECONDS:.0f} s)"
    )
    print(f"{'case':<46} {'calls/s':>12} {'state-steps/s':>15} {'vs batch 1':>11}")
    for name, r, per_call in results:
        print(f"{name:<46} {r / per_call:>12,.0f} {r:>15,.0f} {r / base:>10.1f}x")


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # --help: what this measures, before it runs
    main()
