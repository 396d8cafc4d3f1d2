"""The model-loss experiment (issue 14): smoke run end to end, the saved losses, exact resume
after SIGKILL, clear errors, and a meta-gradient that improves the objective it follows."""

from __future__ import annotations

import json
import math
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import KILL_RANK_1_AT_ITERATION, SIGKILL_AT_ITERATION
from safetensors.torch import load_file

import ml3_robotics.app.runs as runs
from experiments.model_loss import EXPERIMENT, ModelLossConfig
from ml3_robotics.app.cli import run_experiment
from ml3_robotics.core.errors import FeatureSpecError
from ml3_robotics.core.serialization import load_learned_loss
from ml3_robotics.tasks.model_fitting import MODEL_LOSS_FEATURES
from ml3_robotics.tasks.reach import REACH_FEATURES

ROOT = Path(__file__).resolve().parents[2]
RUNNER = (
    "import sys; import ml3_robotics.app.runs as r; "
    "from experiments.model_loss import EXPERIMENT; "
    "r.discover_experiments = lambda: {'model-loss': EXPERIMENT}; "
    "from ml3_robotics.app.cli import main; raise SystemExit(main(sys.argv[1:]))"
)
METHODS = ("ml3_no_prior", "mse", "nll")


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"model-loss": EXPERIMENT})


def test_smoke_run_writes_every_artefact(tmp_path, registry):
    out = tmp_path / "run"
    run_experiment("model-loss", seed=2, out=out, smoke=True)
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["baselines"]) == set(METHODS)
    sizes = doc["config"]["fit_sizes"]
    for figures in (doc["metrics"], *doc["baselines"].values()):
        for n in sizes:
            for key in ("error_full_median", "error_10_mean", "ilqr_mm_mean"):
                assert math.isfinite(figures[f"{key}_{n}"]) and figures[f"{key}_{n}"] >= 0
    extra = doc["extra"]
    # test arms are not meta-training arms, and include the 4-link arm the smoke asks for
    assert not set(a["name"] for a in extra["test_arms"]) & set(extra["train_arms"])
    assert 4 in {a["links"] for a in extra["test_arms"]}
    for name in ("mse", "nll"):
        for n in sizes:
            assert extra["tuning"][f"{name}_{n}"]["lr"] in doc["config"]["lr_grid"]
    for entry in extra["per_arm"]:
        assert entry["ilqr_true_model_mm"] >= 0
        assert set(entry["methods"]) == {"ml3_prior", *METHODS}
    for name in ("model_loss.png", "metrics.csv", "config.yaml"):
        assert (out / name).stat().st_size > 0
    # both variants saved with their feature spec; a consumer of other features is refused
    _, side = load_learned_loss(out / "loss_prior", expect_features=MODEL_LOSS_FEATURES)
    assert side["provenance"]["variant"] == "prior" and side["provenance"]["prior_weight"] > 0
    _, side = load_learned_loss(out / "loss_no_prior.json")
    assert side["provenance"]["prior_weight"] == 0
    with pytest.raises(FeatureSpecError):
        load_learned_loss(out / "loss", expect_features=REACH_FEATURES)
    # the study's table script reads the run: one row per method and size, the medians agree
    script = runpy.run_path(str(ROOT / "scripts" / "model_loss_table.py"))
    text = script["table"]({"smoke": doc})
    for name in ("ml3_prior", *METHODS):
        for n in sizes:
            median = doc["extra"]["summary"][name][str(n)]["error_full_median"]
            assert f"| {name} | {n} | 2 | " in text and f" | {median:.3g} | " in text
    # a second run of the same seed adds its fits once; a repeat that disagrees is reported
    twice = script["table"]({"smoke": doc, "again": doc})
    assert twice.split("\nTuned")[0] == text.split("\nTuned")[0]
    changed = json.loads(json.dumps(doc))
    changed["extra"]["per_arm"][0]["methods"]["mse"][str(sizes[0])][0]["error_full"] += 1.0
    assert "again: mse on" in script["table"]({"smoke": doc, "again": changed})
    retimed = json.loads(json.dumps(doc))
    retimed["extra"]["per_arm"][0]["methods"]["mse"][str(sizes[0])][0]["fit_seconds"] += 1.0
    assert "differ" not in script["table"]({"smoke": doc, "again": retimed})  # timings may
    # evaluating the saved losses instead of meta-training reproduces the meta-test
    again = tmp_path / "again"
    run_experiment("model-loss", seed=2, out=again, smoke=True,
                   sets=[f"loss_path={out / 'loss_prior'}",
                         f"no_prior_loss_path={out / 'loss_no_prior'}"])  # fmt: skip
    doc2 = json.loads((again / "results.json").read_text())
    assert doc2["metrics"] == doc["metrics"] and doc2["baselines"] == doc["baselines"]
    assert not (again / "checkpoints").exists()


def test_sigkill_mid_meta_training_then_resume_is_exact(tmp_path, registry):
    sets = ["outer_steps=6", "checkpoint_every=2"]
    reference = tmp_path / "reference"
    run_experiment("model-loss", seed=0, out=reference, smoke=True, sets=sets)
    killed = tmp_path / "killed"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    set_args = [a for s in sets for a in ("--set", s)]
    done = subprocess.run(
        [sys.executable, "-c", SIGKILL_AT_ITERATION + RUNNER, "3",
         "run", "model-loss", "--smoke", *set_args, "--out", str(killed)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (killed / "loss.safetensors").exists()
    assert (killed / "checkpoints" / "prior.safetensors").is_file()
    run_experiment("model-loss", out=killed, resume=True)
    for stem in ("loss_prior", "loss_no_prior"):
        a = load_file(reference / f"{stem}.safetensors")
        b = load_file(killed / f"{stem}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stem, k)
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert ra["metrics"] == rb["metrics"] and ra["baselines"] == rb["baselines"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fit_sizes": (5, 50)}, "fit_sizes: expected sizes in 1..fit_pool=40"),
        ({"train_arms": "links=2,9"}, "link_counts"),
        ({"inner_method": "rmsprop"}, "method"),
        ({"prior_weight": -1.0}, "prior_weight"),
        ({"lr_grid": ()}, "lr_grid"),
        ({"variants": ()}, "variants: expected distinct names"),
        ({"variants": ("reach", "reach")}, "variants: expected distinct names"),
        ({"variants": ("best",)}, "variants"),
        ({"variants": ("reach",), "reach_trajectories": 0}, "'reach' needs reach_trajectories"),
        ({"reach_weight": -1.0}, "reach_weight"),
    ],
)
def test_bad_config_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        ModelLossConfig(**change)


def test_reach_variant_is_the_headline_when_named_first(tmp_path, registry):
    out = tmp_path / "run"
    run_experiment("model-loss", seed=0, out=out, smoke=True,
                   sets=["variants=[reach, no_prior]", "outer_steps=2"])  # fmt: skip
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["baselines"]) == {"ml3_no_prior", "mse", "nll"}
    assert set(doc["extra"]["per_arm"][0]["methods"]) == {"ml3_reach", "ml3_no_prior", "mse", "nll"}
    _, side = load_learned_loss(out / "loss", expect_features=MODEL_LOSS_FEATURES)
    assert side["provenance"]["variant"] == "reach"
    _, side = load_learned_loss(out / "loss_reach")
    assert side["provenance"]["reach_weight"] > 0 and side["provenance"]["prior_weight"] == 0
    assert not (out / "loss_prior.json").exists()
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "reach_error" in header and "prior_error" not in header


def _saved_model_loss(path):
    from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
    from ml3_robotics.core.serialization import save_learned_loss
    from ml3_robotics.tasks.model_fitting import model_loss_feature_spec

    loss = LearnedLoss(LossConfig(model_loss_feature_spec(), hidden=(4,), activation="elu"))
    provenance = {"inner_method": "adam", "inner_lr": 0.01, "inner_steps": 2,
                  "model_hidden": [8], "model_members": 1}  # fmt: skip
    save_learned_loss(loss, path, provenance=provenance)
    return path


def test_ml3r_eval_applies_a_model_loss_to_a_new_robot(tmp_path):
    from ml3_robotics.app.cli import eval_loss, main

    loss = _saved_model_loss(tmp_path / "model_loss")
    out = tmp_path / "eval"
    eval_loss(loss, robot="arm4", seed=1, out=out, smoke=True)
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["baselines"]) == {"mse", "nll"}
    assert doc["config"]["robot"] == ["arm4"] and doc["extra"]["inner_steps"] == 3  # smoke's K
    for figures in (doc["metrics"], *doc["baselines"].values()):
        for n in doc["config"]["fit_sizes"]:
            assert math.isfinite(figures[f"error_full_mean_{n}"])
            assert figures[f"ilqr_mm_mean_{n}"] >= 0
    assert doc["extra"]["tuning"]["mse_1"]["lr"] in doc["config"]["lr_grid"]
    # a policy option makes no sense for a model loss: refused before anything is written
    assert main(["eval", "--loss", str(loss), "--policy-depth", "3",
                 "--out", str(tmp_path / "nothing")]) == 2  # fmt: skip
    assert not (tmp_path / "nothing").exists()


def test_ml3r_eval_on_several_robots_one_folder_each_and_two_processes_agree(tmp_path):
    """Several --robot: each robot's complete evaluation in robots/NAME, the summary the mean
    over them; ``--nproc 2`` splits the robots and writes the same files and figures."""
    from ml3_robotics.app.cli import main

    loss = _saved_model_loss(tmp_path / "model_loss")
    args = ["eval", "--loss", str(loss), "--robot", "reacher2", "--robot", "arm3", "--smoke"]
    one = tmp_path / "one"
    assert main(["-q", *args, "--out", str(one)]) == 0
    doc = json.loads((one / "results.json").read_text())
    assert doc["config"]["robot"] == ["reacher2", "arm3"]
    per_robot = [json.loads((one / "robots" / r / "results.json").read_text())
                 for r in ("reacher2", "arm3")]  # fmt: skip
    assert [d["config"]["robot"] for d in per_robot] == [["reacher2"], ["arm3"]]
    for key, value in doc["metrics"].items():
        assert value == pytest.approx(sum(d["metrics"][key] for d in per_robot) / 2), key
    assert doc["baselines"]["mse"]["error_full_mean_1"] == pytest.approx(
        sum(d["baselines"]["mse"]["error_full_mean_1"] for d in per_robot) / 2
    )
    assert doc["extra"]["robots"]["arm3"]["metrics"] == per_robot[1]["metrics"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    two = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, "-m", "ml3_robotics", "-q", *args, "--nproc", "2", "--out", str(two)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    doc2 = json.loads((two / "results.json").read_text())
    assert doc2["metrics"] == doc["metrics"] and doc2["baselines"] == doc["baselines"]
    for robot in ("reacher2", "arm3"):  # each written by the rank that evaluated it
        assert (two / "robots" / robot / "results.json").is_file()
    # bad requests are refused before anything is written
    for bad in (["--robot", "arm3", "--nproc", "2"], ["--robot", "arm3", "--robot", "arm3"]):
        nothing = tmp_path / "nothing"
        assert main(["eval", "--loss", str(loss), *bad, "--smoke", "--out", str(nothing)]) == 2
        assert not nothing.exists()


@pytest.mark.parametrize(
    "uninterrupted", [pytest.param(True, marks=pytest.mark.slow), False], ids=["whole", "killed"]
)
def test_two_processes_learn_the_same_losses_and_a_killed_rank_resumes_exactly(
    tmp_path, registry, uninterrupted
):
    """``--nproc 2`` equals one process; SIGKILL of rank 1 mid-run stops the whole run with the
    last checkpoint intact, and ``--resume`` on 2 processes ends where the reference does (every
    meta-update of it on 2 processes, so the default suite runs this half only)."""
    sets = ["--set", "outer_steps=6", "--set", "checkpoint_every=2"]
    reference = tmp_path / "reference"
    run_experiment("model-loss", seed=0, out=reference, smoke=True, sets=sets[1::2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    script = tmp_path / "worker.py"
    script.write_text(KILL_RANK_1_AT_ITERATION + RUNNER.replace("; ", "\n"))

    def torchrun(out, *extra, kill_at=None):
        run_env = env | ({"KILL_AT": str(kill_at)} if kill_at is not None else {"KILL_AT": "-1"})
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node=2", str(script), "run", "model-loss", *extra, "--out", str(out)],
            capture_output=True, text=True, env=run_env,
        )  # fmt: skip

    out = tmp_path / "two"
    if uninterrupted:
        done = torchrun(out, "--smoke", *sets)
        assert done.returncode == 0, done.stderr[-2000:]
    else:
        done = torchrun(out, "--smoke", *sets, kill_at=3)
        assert done.returncode != 0
        assert "Signals.SIGKILL" in done.stderr or "SIGKILL" in done.stderr, done.stderr[-2000:]
        assert not (out / "loss.safetensors").exists()
        assert (out / "checkpoints" / "prior.safetensors").is_file()
        done = torchrun(out, "--resume")
        assert done.returncode == 0, done.stderr[-2000:]
    for stem in ("loss_prior", "loss_no_prior"):
        a = load_file(reference / f"{stem}.safetensors")
        b = load_file(out / f"{stem}.safetensors")
        for k in a:
            assert torch.equal(a[k], b[k]), (stem, k)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 6  # one row per meta-update of each variant, rank 0's


def test_nproc_launch_failure_names_the_resume_command(monkeypatch, capsys, tmp_path):
    from ml3_robotics.app import cli

    calls = []

    def fake_run(cmd, check):  # a run that fails after (or before) its first checkpoint
        calls.append(cmd)
        if len(calls) == 1:
            (out / "checkpoints").mkdir(parents=True)
            (out / "checkpoints" / "prior.safetensors").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "x"
    code = cli.main(["run", "model-loss", "--nproc", "2", "--smoke", "--out", str(out)])
    assert code == 1
    assert calls[0][1:5] == ["-m", "ml3_robotics.app.launch", "--standalone",
                             "--nproc-per-node=2"]  # fmt: skip
    assert "--nproc" not in calls[0][5:]
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"ml3r run model-loss --nproc 2 --resume --out {out}")
    assert len(err.splitlines()) == 1
    out = tmp_path / "y"  # no checkpoint: nothing to resume, so no hint
    assert cli.main(["run", "model-loss", "--nproc", "2", "--smoke", "--out", str(out)]) == 1
    assert "--resume" not in capsys.readouterr().err
    assert cli.main(["run", "model-loss", "--nproc", "0"]) == 2


def test_without_goals_there_is_no_ilqr_and_the_plot_shows_the_errors(tmp_path, registry):
    out = tmp_path / "run"
    run_experiment("model-loss", seed=1, out=out, smoke=True, sets=["n_goals=0"])
    doc = json.loads((out / "results.json").read_text())
    assert not any(k.startswith("ilqr") for k in doc["metrics"])
    assert "error_full_median_1" in doc["metrics"]
    assert (out / "model_loss.png").stat().st_size > 0
