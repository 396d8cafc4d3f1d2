"""Data-parallel meta-training speed: the same meta-training on 1 and on N processes.

Runs ``ml3r run model-loss`` (meta-training only: no meta-test) or ``ml3r run reacher`` (a
minimal meta-test) side by side in this script: once in one process and once with
``--nproc N`` (torch.distributed, gloo), the same config, seed and items per iteration (arms;
for the reacher, goals in N items); compares the seconds per meta-update that each run logged
in ``metrics.csv`` (rank 0's wall time per update, so the one-off start-up, data collection and
process launch are excluded, and reported separately as total wall time), and checks that both
learned the same losses. For the reacher a third run, one process with all goals in one item
(the default, batched), gives the price of splitting the goals into items.

Usage: ``python benchmarks/bench_distributed.py [--experiment model-loss|reacher] [--nproc 2]
[--outer-steps 12] [--arms-per-iteration 4] [--goals-per-iteration 16]
[--out runs/bench_distributed]``.
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


def run(experiment: str, nproc: int, out: Path, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "ml3_robotics", "-q", "run", experiment, "--out", str(out),
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


def model_loss_sets(args: argparse.Namespace) -> list[str]:
    # Meta-training of both variants at the default sizes; no meta-test (n_goals=0, one size,
    # one repeat, no baselines' tuning beyond one step size) so the timing is the meta-training.
    return [
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


def reacher_sets(args: argparse.Namespace) -> list[str]:
    # Default meta-training (400-400 loss, 64-64 policies, collection every 20 and a refit
    # every 40 updates), the meta-test cut to a minimum.
    return [
        f"outer_steps={args.outer_steps}",
        f"goals_per_iteration={args.goals_per_iteration}",
        f"checkpoint_every={args.outer_steps}",
        "n_test_goals=2", "budgets=[1]", "lr_grid=[0.001]", "ilqr_iters=2", "curve_steps=1",
        "video_goals=0", "landscape_grid=0", "n_holdout_trajectories=2",
    ]  # fmt: skip


STEMS = {"model-loss": ("loss_prior", "loss_no_prior"), "reacher": ("loss",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", choices=sorted(STEMS), default="model-loss")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--outer-steps", type=int, default=12)
    parser.add_argument("--arms-per-iteration", type=int, default=4)
    parser.add_argument("--goals-per-iteration", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_distributed"))
    args = parser.parse_args()
    out = args.out / args.experiment
    if args.experiment == "reacher":
        split = f"goals_per_item={args.goals_per_iteration // args.nproc}"
        runs = {"1 process": (1, [*reacher_sets(args), split]),
                f"{args.nproc} processes": (args.nproc, [*reacher_sets(args), split]),
                "1 process, one item": (1, reacher_sets(args))}  # fmt: skip
    else:
        runs = {"1 process": (1, model_loss_sets(args)),
                f"{args.nproc} processes": (args.nproc, model_loss_sets(args))}  # fmt: skip
    walls, per_update = {}, {}
    for name, (nproc, sets) in runs.items():
        folder = out / name.replace(" ", "_").replace(",", "")
        walls[name] = run(args.experiment, nproc, folder, sets)
        per_update[name] = seconds_per_update(folder)
    one, many = "1 process", f"{args.nproc} processes"
    for stem in STEMS[args.experiment]:
        a = load_file(out / one.replace(" ", "_") / f"{stem}.safetensors")
        b = load_file(out / many.replace(" ", "_") / f"{stem}.safetensors")
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        print(f"{stem}: max |1 process - {args.nproc} processes| = {diff:.2e}")
    print(f"{args.experiment}: {len(per_update[one])} meta-updates per run")
    for name, seconds in per_update.items():
        print(f"  {name}: {np.median(seconds):.3f} s per meta-update (median), "
              f"{seconds.sum():.1f} s in all; whole command {walls[name]:.1f} s")  # fmt: skip
    for name in per_update:
        if name != many:
            print(f"speed-up of {many} over {name}: "
                  f"{np.median(per_update[name]) / np.median(per_update[many]):.2f}x per update "
                  f"(median), {per_update[name].sum() / per_update[many].sum():.2f}x (total), "
                  f"{walls[name] / walls[many]:.2f}x whole command")  # fmt: skip


if __name__ == "__main__":
    main()
