"""The transfer study (`ml3r run transfer`) end to end at smoke size.

The registry is pointed at ``experiments.transfer`` here, so the tests do not depend on the
installed entry point (pyproject.toml).
"""

import json

import pytest
import torch

import ml3_robotics.app.runs as runs
from experiments.reacher import EXPERIMENT as REACHER
from experiments.transfer import EXPERIMENT
from ml3_robotics.app.cli import run_experiment
from ml3_robotics.app.runs import ConfigError
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.serialization import save_learned_loss
from ml3_robotics.evaluation.reach import METHODS
from ml3_robotics.tasks.reach import reach_feature_spec


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    # the study meta-trains its source loss with the registered reacher
    registry = {"transfer": EXPERIMENT, "reacher": REACHER}
    monkeypatch.setattr(runs, "discover_experiments", lambda: registry)


def test_same_loss_twice_gives_the_same_row(tmp_path):
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(8,)))
    loss.reset_parameters(torch.Generator().manual_seed(1))
    save_learned_loss(loss, tmp_path / "loss", provenance={"inner_steps": 1, "inner_lr": 1e-3})
    sets = [f"loss_path={tmp_path / 'loss'}", f"other_losses=[copy={tmp_path / 'loss'}]",
            "robots=[arm3]", "policy_depths=[2]", "baselines=false"]  # fmt: skip
    run_experiment("transfer", seed=0, out=tmp_path / "study", smoke=True, sets=sets)
    doc = json.loads((tmp_path / "study" / "results.json").read_text())
    (row,) = doc["extra"]["table"]
    # Same loss, same robot model, goals and fresh policies: identical figures.
    assert row["ml3[copy]_mm"] == row["ml3_mm"]
    assert "task_loss_mm" not in row and "ilqr_true_model_mm" not in row  # baselines=false
    assert not (tmp_path / "study" / "source").exists()


def test_unknown_robot_label_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'arm3'"):
        run_experiment("transfer", out=tmp_path / "x", smoke=True, sets=["robots=[arm33]"])


# Two robots (one per rank: 2 and 3 links) and one step size: the study and its split need no
# more (the grid's labels have a test of their own, test_transfer_eval).
SMALLER = ["--set", "robots=[reacher2, arm3]", "--set", "lr_grid=[0.001]"]


def test_smoke_study_meta_trains_then_transfers_and_two_processes_agree(tmp_path):
    """The study at smoke size: the source loss is meta-trained first and kept, then every
    robot and policy size is evaluated. ``ml3r run transfer --nproc 2``: rank 0 meta-trains the
    source loss, the robots and the policy-size runs are split across the ranks, and the
    gathered rows equal one process's."""
    out = tmp_path / "one"
    run_experiment("transfer", seed=2, out=out, smoke=True, sets=SMALLER[1::2])
    doc = json.loads((out / "results.json").read_text())
    assert (out / "source" / "loss.safetensors").is_file()  # meta-trained first, kept
    assert json.loads((out / "source" / "results.json").read_text())["experiment"] == "reacher"
    table = doc["extra"]["table"]
    assert [r["label"] for r in table] == doc["config"]["robots"]
    assert {r["n_links"] for r in table} == {2, 3}
    for row in table:
        for method in METHODS:
            assert 0 <= row[f"{method}_mm"] <= row[f"{method}_max_mm"], (row["label"], method)
        assert row["ml3_over_task_loss"] == pytest.approx(row["ml3_mm"] / row["task_loss_mm"])
    # The policy-size sweep: every depth on the depth robots, only policy-based methods rerun.
    depths = doc["extra"]["policy_depth_table"]
    assert [len(r["policy_hidden"]) for r in depths] == doc["config"]["policy_depths"]
    assert depths[0]["ml3_mm"] == table[0]["ml3_mm"]  # depth 2 on reacher2 is the grid's row
    assert "ilqr_true_model_mm" not in depths[1]
    assert doc["metrics"]["robots_evaluated"] == len(table)
    for name in ("transfer_heatmap.png", "policy_depth_heatmap.png", "transfer_bars.png"):
        assert (out / name).is_file(), name

    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    runner = (
        "import sys\nimport ml3_robotics.app.runs as r\n"
        "from experiments.transfer import EXPERIMENT\nfrom experiments.reacher import "
        "EXPERIMENT as R\nr.discover_experiments = lambda: {'transfer': EXPERIMENT, "
        "'reacher': R}\nfrom ml3_robotics.app.cli import main\nraise SystemExit(main(sys.argv[1:]))"
    )
    script = tmp_path / "worker.py"
    script.write_text(runner)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    two = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script), "run", "transfer", "--smoke", "--seed", "2", *SMALLER, "--out", str(two)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (out, two))
    assert a["metrics"] == b["metrics"] and a["baselines"] == b["baselines"]
    for key in ("table", "policy_depth_table"):
        assert a["extra"][key] == b["extra"][key], key
    assert sorted(a["extra"]["per_robot"]) == sorted(b["extra"]["per_robot"])
