"""Data-parallel meta-training speed: the same model-loss meta-training on 1 and on N processes.

Runs ``ml3r run model-loss`` (meta-training only: no meta-test) twice, side by side in this
script: once in one process and once with ``--nproc N`` (torch.distributed, gloo), the same
config, seed and total arms per iteration; compares the seconds per meta-update that each run
logged in ``metrics.csv`` (rank 0's wall time per update, so the one-off start-up, data
collection and process launch are excluded, and reported separately as total wall time), and
checks that both learned the same losses.

Usage: ``python benchmarks/bench_distributed.py [--nproc 2] [--outer-steps 12]
[--arms-per-iteration 4] [--out runs/bench_distributed]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file


def run(nproc: int, out: Path, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "ml3_robotics", "-q", "run", "model-loss", "--out", str(out),
           "--overwrite", "--nproc", str(nproc)]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def seconds_per_update(out: Path) -> np.ndarray:
    with (out / "metrics.csv").open() as f:
        return np.array([float(r["seconds"]) for r in csv.DictReader(f)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--outer-steps", type=int, default=12)
    parser.add_argument("--arms-per-iteration", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_distributed"))
    args = parser.parse_args()
    # Meta-training of both variants at the default sizes; no meta-test (n_goals=0, one size,
    # one repeat, no baselines' tuning beyond one step size) so the timing is the meta-training.
    sets = [
        f"outer_steps={args.outer_steps}",
        f"arms_per_iteration={args.arms_per_iteration}",
        "train_arms=links=2,3 length=0.7:1.4 mass=0.5:2 n=6",
        "test_arms=links=2 n=1",
        "fit_sizes=[5]",
        "repeats=1",
        "n_goals=0",
        "lr_grid=[0.01]",
        f"checkpoint_every={args.outer_steps}",
    ]
    walls, per_update = {}, {}
    for n in (1, args.nproc):
        out = args.out / f"nproc{n}"
        walls[n] = run(n, out, sets)
        per_update[n] = seconds_per_update(out)
    for stem in ("loss_prior", "loss_no_prior"):
        a = load_file(args.out / "nproc1" / f"{stem}.safetensors")
        b = load_file(args.out / f"nproc{args.nproc}" / f"{stem}.safetensors")
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{stem}: max |1 process - {args.nproc} processes| = {diff:.2e}")
    one, many = per_update[1], per_update[args.nproc]
    print(f"arms per iteration {args.arms_per_iteration}, {len(one)} meta-updates per run")
    print(f"seconds per meta-update: 1 process {np.median(one):.3f} (median), "
          f"{args.nproc} processes {np.median(many):.3f}")  # fmt: skip
    print(f"speed-up per meta-update ({args.nproc} over 1): "
          f"{np.median(one) / np.median(many):.2f}x (median), "
          f"{one.sum() / many.sum():.2f}x (total)")  # fmt: skip
    print(f"whole run wall time: 1 process {walls[1]:.1f} s, {args.nproc} processes "
          f"{walls[args.nproc]:.1f} s ({walls[1] / walls[args.nproc]:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
