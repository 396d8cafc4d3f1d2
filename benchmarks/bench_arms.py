"""Arm simulation speed: steps per second per backend, and mujoco.rollout vs a Python mj_step loop.

Run: ``MUJOCO_GL=egl python benchmarks/bench_arms.py``. Timings are best-of-3 wall clock on
whatever else the machine is doing; the ratios (measured side by side in this process) are the
meaningful numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from robots.arm import ArmSim
from robots.arm.spatial import SpatialArmSim


def best_of(fn: Callable[[], None], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def steps_per_second(sim, n_steps: int) -> float:
    U = np.random.default_rng(0).uniform(-1, 1, size=(n_steps, sim.nu)) * sim._limits * 0.05

    def run() -> None:
        sim.reset()
        for u in U:
            sim.step(u)

    return n_steps / best_of(run)


def raw_mj_step_per_second(model: mujoco.MjModel, n_steps: int) -> float:
    data = mujoco.MjData(model)

    def run() -> None:
        mujoco.mj_resetData(model, data)
        for _ in range(n_steps):
            mujoco.mj_step(model, data)

    return n_steps / best_of(run)


def rollout_vs_loop(model: mujoco.MjModel, B: int = 64, T: int = 100) -> tuple[float, float]:
    nu = model.nu
    rng = np.random.default_rng(0)
    U = rng.uniform(-1, 1, size=(B, T, nu)) * model.actuator_ctrlrange[:, 1] * 0.05
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    d0 = mujoco.MjData(model)
    state0 = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, d0, state0, spec)
    init = np.tile(state0, (B, 1))
    datas = [mujoco.MjData(model) for _ in range(2)]
    out = np.empty((B, T, state0.size))

    def threaded() -> None:
        mj_rollout.rollout(model, datas, init, U, state=out)

    def loop() -> None:
        d = datas[0]
        for b in range(B):
            mujoco.mj_setState(model, d, init[b], spec)
            for t in range(T):
                d.ctrl[:] = U[b, t]
                mujoco.mj_step(model, d)
                mujoco.mj_getState(model, d, out[b, t], spec)

    return best_of(threaded), best_of(loop)


def main() -> None:
    rows = []
    for label, make, n in [
        ("2-link reacher", lambda b: ArmSim("reacher2", b), 2000),
        ("7-DoF KUKA iiwa", lambda b: SpatialArmSim(b), 1000),
    ]:
        sims = {b: make(b) for b in ("mujoco", "pybullet")}
        mj = steps_per_second(sims["mujoco"], n)
        pb = steps_per_second(sims["pybullet"], n)
        raw = raw_mj_step_per_second(sims["mujoco"].mj_model, n)
        rows.append((label, raw, mj, pb))
        for s in sims.values():
            s.close()
    print(
        f"{'system':18s} {'raw mj_step/s':>14s} {'ArmSim mujoco/s':>16s} "
        f"{'ArmSim pybullet/s':>18s} {'mujoco/pybullet':>16s}"
    )
    for label, raw, mj, pb in rows:
        print(f"{label:18s} {raw:14,.0f} {mj:16,.0f} {pb:18,.0f} {mj / pb:15.1f}x")

    print()
    print("64 rollouts x 100 steps (state recorded every step)")
    print(f"{'system':18s} {'mujoco.rollout s':>17s} {'mj_step loop s':>15s} {'speed-up':>9s}")
    for label, sim in [
        ("2-link reacher", ArmSim("reacher2")),
        ("7-DoF KUKA iiwa", SpatialArmSim()),
    ]:
        fast, slow = rollout_vs_loop(sim.mj_model)
        print(f"{label:18s} {fast:17.4f} {slow:15.4f} {slow / fast:8.1f}x")
        sim.close()
    sim = ArmSim("reacher2")
    U = np.zeros((64, 100, 2))
    x0 = np.zeros((64, 4))
    t = best_of(lambda: sim.rollout(x0, U))
    print(f"ArmSim.rollout (2-link, 64x100, incl. checks): {t:.4f} s")


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # --help: what this measures, before it runs
    main()
