"""The docs table of ``ml3r run model-loss`` over seeds: per method and fitting-set size, the
open-loop errors and the iLQR distance, pooled over seeds, test arms and repeats.

    python scripts/model_loss_table.py runs/model_loss_s0 runs/model_loss_s1 runs/model_loss_s2

Prints a Markdown table (mean and median of each figure over every fit, and per link count the
median error over the horizon), plus the baselines' tuned step sizes per run. Runs of the same
seed that add variants (``--set variants=[reach]``) may be listed too: a method's fits on an
arm of a seed are counted once, and a repeat that disagrees with the first is reported.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _figures(sizes: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """A method's fits without their timings (which differ between runs of the same fits)."""
    return {n: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in runs]
            for n, runs in sizes.items()}  # fmt: skip


def table(docs: dict[str, dict]) -> str:
    """The Markdown table and notes for results documents by run name."""
    fits: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    by_links: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    true_ilqr: list[float] = []
    tuned: list[str] = []
    seen: dict[tuple[int, str, str], list] = {}  # (seed, arm, method) -> its fits
    mismatches: list[str] = []
    arms_seen: set[tuple[int, str]] = set()
    for name, doc in docs.items():
        extra = doc["extra"]
        tuned.append(
            f"{name} (seed {doc['seed']}): "
            + ", ".join(f"{k} lr {v['lr']:g}" for k, v in extra["tuning"].items())
        )
        for entry in extra["per_arm"]:
            arm_key = (doc["seed"], entry["arm"])
            if "ilqr_true_model_mm" in entry and arm_key not in arms_seen:
                true_ilqr.append(entry["ilqr_true_model_mm"])
            arms_seen.add(arm_key)
            for method, sizes in entry["methods"].items():
                key = (doc["seed"], entry["arm"], method)
                if key in seen:
                    if _figures(seen[key]) != _figures(sizes):
                        mismatches.append(f"{name}: {method} on {entry['arm']}")
                    continue
                seen[key] = sizes
                for n, runs in sizes.items():
                    fits[(method, n)].extend(runs)
                    by_links[(method, n, entry["links"])].extend(r["error_full"] for r in runs)
    links = sorted({k[2] for k in by_links})
    head = ["method", "trajectories", "fits", "error 65 mean", "error 65 median",
            "error 10 mean", "error 10 median", "iLQR mm mean", "iLQR mm median"]  # fmt: skip
    head += [f"error 65 median, {n} links" for n in links]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (method, n), runs in sorted(fits.items(), key=lambda kv: (int(kv[0][1]), kv[0][0])):
        row = [method, n, str(len(runs))]
        for key in ("error_full", "error_10", "ilqr_mm"):
            values = [r[key] for r in runs if key in r]
            fmt = "{:.1f}" if key == "ilqr_mm" else "{:.3g}"
            row += [fmt.format(np.mean(values)), fmt.format(np.median(values))] if values else [
                "-", "-"]  # fmt: skip
        row += [f"{np.median(by_links[(method, n, k)]):.3g}" for k in links]
        lines.append("| " + " | ".join(row) + " |")
    if true_ilqr:
        lines.append(f"\niLQR on the true model (MuJoCo), same goals: {np.mean(true_ilqr):.1f} mm")
    lines.append("\nTuned step sizes:\n" + "\n".join(f"- {t}" for t in tuned))
    if mismatches:
        lines.append("\nRepeated fits that differ from the first run's (not counted):\n"
                     + "\n".join(f"- {m}" for m in mismatches))  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (results.json in each)")
    args = parser.parse_args()
    print(table({run.name: json.loads((run / "results.json").read_text()) for run in args.runs}))


if __name__ == "__main__":
    main()
