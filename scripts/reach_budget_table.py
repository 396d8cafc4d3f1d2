"""Per-budget table of reacher runs (issue 22): real and model-side distances by step budget.

Reads the ``results.json`` of finished ``ml3r run reacher`` runs, groups them by label and prints
a Markdown table, mean over the group's runs (seeds) of the held-out mean final distance (mm,
executed in MuJoCo; "model": the same policies in the learned model's rollout) after each budget
of inner steps, for ML3, the task loss (optimizer and step size tuned per budget on training
goals) and, where the runs have them, the task loss with meta-learned step sizes and MAML, with
step 0 (the policies before any step: the goal-conditioned policy as it is, or the
fresh per-goal policies) and iLQR on the learned and on the true model beside them.

Then one row per run: mean / median over the goals after K steps for every method.

Usage: ``python scripts/reach_budget_table.py LABEL=RUN_DIR[,RUN_DIR...] ...``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _load(dirs: list[str]) -> list[dict]:
    return [json.loads((Path(d) / "results.json").read_text()) for d in dirs]


def _mean(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    return f"{np.mean(vals):.1f}" + (f" ± {np.std(vals):.1f}" if len(vals) > 1 else "")


def table(groups: dict[str, list[dict]]) -> str:
    budgets = sorted({
        int(b) for docs in groups.values() for d in docs
        for b in d["metrics"]["distance_by_budget_mm"]
    })  # fmt: skip
    head = ["run", "method", "step 0", *(f"{b}" for b in budgets), "success@K", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, docs in groups.items():
        step0 = _mean([d["metrics"]["distance_by_inner_step_mm"][0] for d in docs])
        methods = (
            ("ML3", lambda d: d["metrics"]),
            ("task loss (tuned per budget)", lambda d: d["baselines"]["task_loss"]),
            ("task loss, learned step sizes", lambda d: d["baselines"].get("learned_step_sizes")),
            ("MAML (learned start, task loss)", lambda d: d["baselines"].get("maml")),
        )
        for name, pick in methods:
            if not all(pick(d) for d in docs):
                continue
            for side, key in (("real", "distance_by_budget_mm"),
                              ("model", "model_distance_by_budget_mm")):  # fmt: skip
                if not all(key in pick(d) for d in docs):
                    continue
                cells = [_mean([pick(d)[key].get(str(b)) for d in docs]) for b in budgets]
                success = _mean([100 * pick(d)["success_rate_10mm"] for d in docs])
                lines.append(
                    f"| {label} | {name}, {side} | {step0 if side == 'real' else '-'} | "
                    + " | ".join(cells)
                    + f" | {success if side == 'real' else '-'}% | {len(docs)} |"
                )
        for name in ("ilqr_learned_model", "ilqr_true_model"):
            real = _mean([d["baselines"][name]["mean_final_distance_mm"] for d in docs])
            planned = _mean([d["baselines"][name].get("planned_final_distance_mm") for d in docs])
            success = _mean([100 * d["baselines"][name]["success_rate_10mm"] for d in docs])
            lines.append(
                f"| {label} | {name} (planned {planned}) | {real} |"
                + " |" * len(budgets)
                + f" {success}% | {len(docs)} |"
            )
    return "\n".join(lines)


def per_run(groups: dict[str, list[dict]]) -> str:
    """Mean / median over the held-out goals after K steps (mm, real), one row per run: the
    mean of a few goals can hide what happens to the rest (one goal at 200 mm moves a mean of
    ten by 20 mm)."""
    names = {"ml3": "ML3", "task_loss": "task loss", "learned_step_sizes": "learned step sizes",
             "maml": "MAML"}  # fmt: skip
    present = [n for n in names if any(n == "ml3" or n in d["baselines"] for g in groups.values()
                                       for d in g)]  # fmt: skip
    head = ["run", "seed", "start", *(names[n] for n in present)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, docs in groups.items():
        for d in docs:
            found = {"ml3": d["metrics"], **d["baselines"]}
            cells = []
            for n in present:
                v = found[n]["final_distance_mm_per_goal"] if n in found else None
                cells.append("-" if v is None else f"{np.mean(v):.1f} / {np.median(v):.1f}")
            start = d["metrics"]["distance_by_inner_step_mm"][0]
            lines.append(f"| {label} | {d['seed']} | {start:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("groups", nargs="+", metavar="LABEL=RUN_DIR[,RUN_DIR...]")
    groups = {}
    for item in ap.parse_args(argv).groups:
        label, _, dirs = item.partition("=")
        groups[label] = _load(dirs.split(","))
    print(table(groups))
    print()
    print(per_run(groups))


if __name__ == "__main__":
    main(sys.argv[1:])
