"""MountainCar generalisation study (issue 20, part 3): learned losses meta-trained over a region
of starts from fresh policy inits, meta-tested from fresh inits on held-out starts outside it.

Runs ``ml3r run mountain-car --set extra=E`` for each E in ``--extras`` and each seed into
``OUT/<extra>/seed<S>`` (iLQR off; settings from ``--set``), then prints, per method, the mean
and per-seed success on the held-out starts after 0, 1, 2 and 5 inner steps, and on the
training start. The tuned task loss (SGD) comes with every run; its row is averaged over runs.

    python scripts/mountain_car_generalisation.py --seeds 3 --extras both energy \\
        --set outer_steps=300 --out runs/mc_gen
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from ml3_robotics.app.cli import run_experiment

STEPS = (0, 1, 2, 5)


def run_study(seeds: list[int], extras: list[str], out: Path, smoke: bool, sets: list[str]):
    """``{method: [metrics of each run]}`` over every (extra, seed) run."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    if smoke:  # the study reports step 5: the smoke size stops at 2
        sets = ["test_steps=5", *sets]
    for extra in extras:
        for seed in seeds:
            run_out = out / extra / f"seed{seed}"
            if not (run_out / "results.json").is_file():
                run_experiment("mountain-car", seed=seed, out=run_out, smoke=smoke,
                               sets=[f"extra={extra}", "ilqr=false", *sets],
                               overwrite=run_out.exists())  # fmt: skip
            doc = json.loads((run_out / "results.json").read_text())
            for method, m in {doc["extra"]["main_method"]: doc["metrics"],
                              **doc["baselines"]}.items():  # fmt: skip
                if all(r["seed"] != seed for r in by_method[method]):  # baselines: once a seed
                    by_method[method].append({"seed": seed, **m})
    return dict(by_method)


def table(by_method: dict[str, list[dict]]) -> str:
    """Mean (per run) success per method; "-" where a method does not report that budget
    (iLQR has no step 0; "last" is its iteration limit, the last inner step for the others)."""
    keys = [f"success_heldout_k{k}" for k in STEPS] + ["success_heldout_last"]
    keys += ["success_train_k1", "success_train_k5"]
    cols = [f"held-out k{k}" for k in STEPS] + ["held-out last", "train k1", "train k5"]
    lines = ["| method | runs | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for method, runs in by_method.items():
        cells = []
        for key in keys:
            values = [r[key] for r in runs if key in r]
            if len(values) < len(runs):
                cells.append("-")
                continue
            per_seed = "/".join(f"{v:.2f}" for v in values)
            cells.append(f"{sum(values) / len(values):.2f} ({per_seed})")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--extras", nargs="+", default=["both", "energy"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    print(table(run_study(list(range(args.seeds)), args.extras, args.out, args.smoke, args.sets)))


if __name__ == "__main__":
    main()
