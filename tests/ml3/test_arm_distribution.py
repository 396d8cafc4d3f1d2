"""Meta-training over a distribution of arms: the spec, the draws, and the reacher option."""

import csv
import json

import numpy as np
import pytest

import ml3_robotics.app.runs as runs
from experiments.reacher import EXPERIMENT
from ml3_robotics.app.cli import run_experiment
from ml3_robotics.app.runs import ConfigError
from ml3_robotics.mbrl.arm_distribution import BASE_ARMS, ArmDistribution, sample_arm_configs
from robots.arm import load_arm_config


def test_parse_spec():
    d = ArmDistribution.parse("links=2,4 length=0.5:2 mass=1:3 n=5")
    assert d == ArmDistribution((2, 4), (0.5, 2.0), (1.0, 3.0), 5)
    assert ArmDistribution.parse("default") == ArmDistribution()
    assert ArmDistribution.parse("n=2").link_counts == ArmDistribution().link_counts
    with pytest.raises(ValueError, match=r"'lenght=0\.5:2'"):
        ArmDistribution.parse("lenght=0.5:2")
    with pytest.raises(ValueError, match="length: expected LOW:HIGH"):
        ArmDistribution.parse("length=0.5")
    with pytest.raises(ValueError, match="arm_distribution: link_counts"):
        ArmDistribution.parse("links=5")


def test_samples_are_reproducible_and_in_range():
    d = ArmDistribution((2, 3, 4), (0.7, 1.4), (0.5, 2.0), 12)
    arms = sample_arm_configs(d, seed=4)
    assert arms == sample_arm_configs(d, seed=4)
    assert arms != sample_arm_configs(d, seed=5)
    assert {a.n_links for a in arms} <= {2, 3, 4} and len({a.n_links for a in arms}) > 1
    for arm in arms:
        base = load_arm_config(BASE_ARMS[arm.n_links])
        length = np.asarray(arm.link_lengths) / np.asarray(base.link_lengths)
        mass = np.asarray(arm.link_masses) / np.asarray(base.link_masses)
        assert ((length >= 0.7 - 1e-12) & (length <= 1.4 + 1e-12)).all()
        assert ((mass >= 0.5 - 1e-12) & (mass <= 2.0 + 1e-12)).all()
        assert arm.torque_limits == base.torque_limits


def test_reacher_meta_trains_over_a_distribution(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    out = tmp_path / "run"
    sets = [
        "arm_distribution=links=2,3 n=2",
        "outer_steps=4",
        "video_goals=0",
        "lr_grid=[0.001]",
        "ilqr_iters=1",
    ]
    run_experiment("reacher", seed=1, out=out, smoke=True, sets=sets)
    sidecar = json.loads((out / "loss.json").read_text())
    assert sidecar["provenance"]["arm_distribution"] == "links=2,3 n=2"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 4
    # Every iteration adds one sampled arm's meta-loss to the base arm's, cycling over both.
    assert [float(r["arm_index"]) for r in rows] == [0, 1, 0, 1]
    for r in rows:
        total = 0.5 * (float(r["base_meta_loss"]) + float(r["arm_meta_loss"]))
        assert float(r["meta_loss"]) == pytest.approx(total, rel=1e-5)
    doc = json.loads((out / "results.json").read_text())
    # The sampled arms' babbling counts as real steps of ML3 (2 arms x 4 trajectories x 65).
    assert doc["metrics"]["arm_distribution_env_steps"] == 2 * 4 * 65


def test_malformed_distribution_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    with pytest.raises(ConfigError, match="arm_distribution"):
        run_experiment("reacher", out=tmp_path / "x", smoke=True, sets=["arm_distribution=links=9"])
