"""The reacher split across processes (issue 15): an iteration's goals in items, 2 processes
bit-identical to 1, a killed rank resumed exactly, and items that leave the objective alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILL_RANK_1_AT_ITERATION
from safetensors.torch import load_file

from experiments.reacher import ReacherConfig
from ml3_robotics.app.cli import run_experiment

ROOT = Path(__file__).resolve().parents[2]
# Rank 1 is killed as iteration 3 starts; checkpoints come every 2 meta-updates (with the
# collections and refits), so the resume redoes what came after the last one.
SETS = ["outer_steps=4", "checkpoint_every=2", "collect_every=2", "refit_every=2",
        "eval_every=2", "video_goals=0", "landscape_grid=0"]  # fmt: skip
KILL_RANK_1 = KILL_RANK_1_AT_ITERATION + (
    "from ml3_robotics.app.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"
)


def _meta_losses(out: Path) -> list[float]:
    rows = (out / "metrics.csv").read_text().splitlines()
    column = rows[0].split(",").index("meta_loss")
    return [float(r.split(",")[column]) for r in rows[1:]]


def test_two_processes_equal_one_and_a_killed_rank_resumes_exactly(tmp_path):
    reference = tmp_path / "reference"
    run_experiment("reacher", seed=0, out=reference, smoke=True, sets=[*SETS, "goals_per_item=1"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env |= {"OMP_NUM_THREADS": "1", "KILL_AT": "3"}
    script = tmp_path / "worker.py"
    script.write_text(KILL_RANK_1)
    set_args = [a for s in [*SETS, "goals_per_item=1"] for a in ("--set", s)]
    killed = tmp_path / "killed"

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node=2", str(script), "run", "reacher", *args, "--out", str(killed)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip

    done = torchrun("--smoke", *set_args)
    assert done.returncode != 0 and "SIGKILL" in done.stderr, done.stderr[-2000:]
    assert not (killed / "loss.safetensors").exists()
    assert (killed / "checkpoints" / "meta_train.safetensors").is_file()
    env["KILL_AT"] = "-1"
    done = torchrun("--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    # the learned loss, every meta-update and the meta-test are the single process's, bit for
    # bit: the buffer and model each rank collects into and refits stay the same on both
    a, b = load_file(reference / "loss.safetensors"), load_file(killed / "loss.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _meta_losses(killed) == _meta_losses(reference)
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert ra["metrics"]["mean_final_distance_mm"] == rb["metrics"]["mean_final_distance_mm"]
    header = (killed / "metrics.csv").read_text().splitlines()[0]
    assert "heldout_real_distance_mm" in header and "train_real_distance_mm" in header


def test_items_leave_the_meta_objective_unchanged(tmp_path):
    """One item per goal is the same objective as one item of all goals, to rounding."""
    runs = {}
    for per_item in (0, 1):
        out = tmp_path / str(per_item)
        run_experiment("reacher", seed=0, out=out, smoke=True,
                       sets=[*SETS, "outer_steps=2", f"goals_per_item={per_item}"])  # fmt: skip
        runs[per_item] = _meta_losses(out)
    assert runs[1] == pytest.approx(runs[0], rel=1e-6)


def test_goals_per_item_must_divide_the_iterations_goals():
    with pytest.raises(ValueError, match="goals_per_item: expected a divisor"):
        ReacherConfig(goals_per_iteration=16, goals_per_item=5)
    with pytest.raises(ValueError, match="goals_per_item"):
        ReacherConfig(goals_per_item=-1)


def test_an_experiment_that_is_not_an_item_mean_refuses_several_processes(
    monkeypatch, capsys, tmp_path
):
    from ml3_robotics.app import cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "sine"
    assert cli.main(["run", "sine", "--nproc", "2", "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'sine' runs in one process" in err
    for name in ("model-loss", "reacher", "transfer"):  # the ones that split their work
        assert name in err
    assert not out.exists()
