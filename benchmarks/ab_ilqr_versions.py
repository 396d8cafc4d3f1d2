"""A/B of the iLQR between a git revision and this checkout, side by side in one process.

Run: ``PYTHONPATH=. python benchmarks/ab_ilqr_versions.py [REV] [ROUNDS]`` (REV defaults to
0f73c9b, the controllers before the second speed round; d9b9d76 is before the first). The
``controllers`` package of REV is exported
with ``git archive`` into a temporary directory and imported as ``controllers_ab``; the solves of
both versions (and Crocoddyl's, if installed) run round-robin so that a noisy, shared machine
affects them alike. Prints median wall and CPU times, ratios to Crocoddyl, and whether both
versions return bitwise identical plans (Jacobian reuse within a radius, added in the second
round, changes the last digits; the largest relative cost difference is printed too). Not part
of ``make bench`` (needs git history).
"""

from __future__ import annotations

import argparse
import importlib
import io
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import mujoco
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "controllers"))

from ctrl_models import TWO_LINK_MJCF  # noqa: E402

import controllers as new  # noqa: E402

T, DT, CW, N_GOALS = 100, 0.01, 1e-3, 64
FIELDS = ("states", "controls", "K", "k", "cost", "cost_history", "iterations", "converged", "mu")


def load_revision(rev: str, into: pathlib.Path):
    """Import ``controllers`` of git revision ``rev`` as the package ``controllers_ab``."""
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "controllers"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    pkg = into / "controllers_ab"
    (into / "controllers").rename(pkg)
    for f in pkg.glob("*.py"):
        f.write_text(f.read_text().replace("from controllers.", "from controllers_ab."))
    sys.path.insert(0, str(into))
    return importlib.import_module("controllers_ab")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("rev", nargs="?", default="0f73c9b", help="the git revision to compare")
    ap.add_argument("rounds", nargs="?", type=int, default=5, help="round-robin rounds")
    args = ap.parse_args()
    rev, rounds = args.rev, args.rounds
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    old = load_revision(rev, pathlib.Path(tmp.name))
    goals = np.random.default_rng(0).uniform(-1.5, 1.5, (N_GOALS, 2))
    model = mujoco.MjModel.from_xml_string(TWO_LINK_MJCF)
    x1 = torch.zeros(1, 4, dtype=torch.float64)
    xb = torch.zeros(N_GOALS, 4, dtype=torch.float64)
    solvers = {}
    for name, pkg in ((rev, old), ("this", new)):
        dyn = pkg.MujocoDynamics(model)
        solvers[name] = (
            pkg.ILQR(dyn, pkg.ReachCost(goals[:1], T, control_weight=CW), T),
            pkg.ILQR(dyn, pkg.ReachCost(goals, T, control_weight=CW), T),
        )
    tasks = {}
    for name, (one, many) in solvers.items():
        tasks[(name, "single")] = (lambda one=one: one.solve(x1), 10)
        tasks[(name, "batch")] = (lambda many=many: many.solve(xb), 1)
    try:
        from ctrl_crocoddyl import reach_problem, solve_fddp

        prob = reach_problem(goals[0], T, DT, control_weight=CW)
        tasks[("crocoddyl", "single")] = (lambda: solve_fddp(prob, T), 100)
        tasks[("crocoddyl", "batch")] = (
            lambda: [solve_fddp(reach_problem(g, T, DT, control_weight=CW), T) for g in goals],
            1,
        )
    except ImportError:
        pass
    for fn, _ in tasks.values():
        fn()  # warm-up
    wall: dict = {k: [] for k in tasks}
    cpu: dict = {k: [] for k in tasks}
    for _ in range(rounds):
        for key, (fn, reps) in tasks.items():
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    names = [n for n in (rev, "this", "crocoddyl") if (n, "single") in tasks]
    print(f"2-link reach, T={T}: {rev} vs this checkout, round-robin x{rounds}; median ms")
    for kind, div in (("single", 1), ("batch", N_GOALS)):
        label = "single goal" if kind == "single" else f"{N_GOALS} goals, per goal"
        ref = ("crocoddyl", kind) if ("crocoddyl", kind) in tasks else None
        for name in names:
            w = statistics.median(wall[(name, kind)]) / div * 1e3
            c = statistics.median(cpu[(name, kind)]) / div * 1e3
            line = f"  {label:18s} {name:10s} wall {w:8.2f}  cpu {c:8.2f}"
            if ref is not None:
                wr = statistics.median(wall[ref]) / div * 1e3
                cr = statistics.median(cpu[ref]) / div * 1e3
                line += f"  | vs crocoddyl: wall {w / wr:5.1f}x  cpu {c / cr:5.1f}x"
            print(line)
    for kind, i, x in (("single", 0, x1), ("batch", 1, xb)):
        a, b = solvers[rev][i].solve(x), solvers["this"][i].solve(x)
        same = all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)
        rel = ((a.cost - b.cost).abs() / a.cost.abs()).max().item()
        print(
            f"  {kind}: plans of both versions bitwise identical: {same}; max relative cost "
            f"difference {rel:.1e}; iterations {int(a.iterations.sum())} vs "
            f"{int(b.iterations.sum())}"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
