"""The reacher experiment end to end at smoke size, and exact resume after SIGKILL.

The experiment registers through the ``ml3r.experiments`` entry point (pyproject.toml); these
tests do not depend on the installed entry point: they run the real CLI code path with the
registry pointed at ``experiments.reacher``.
"""

import json
import logging
import math
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SIGKILL_AT_ITERATION
from safetensors.torch import load_file

import ml3_robotics.app.runs as runs
from experiments.reacher import EXPERIMENT
from ml3_robotics.app.cli import run_experiment
from ml3_robotics.evaluation.reach import METHODS

ROOT = Path(__file__).resolve().parents[2]
RUNNER = (
    "import sys; import ml3_robotics.app.runs as r; from experiments.reacher import EXPERIMENT; "
    "r.discover_experiments = lambda: {'reacher': EXPERIMENT}; "
    "from ml3_robotics.app.cli import main; raise SystemExit(main(sys.argv[1:]))"
)
FAST = ["video_goals=0", "lr_grid=[0.001]", "ilqr_iters=1", "n_holdout_trajectories=1"]


def _ml3r(*args):
    return [sys.executable, "-c", RUNNER, *args]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def test_smoke_run_writes_every_artefact(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    out = tmp_path / "run"
    run_experiment("reacher", seed=3, out=out, smoke=True)
    doc = json.loads((out / "results.json").read_text())
    methods = {"ml3": doc["metrics"], **doc["baselines"]}
    assert set(methods) == set(METHODS)
    # the checkpoint holds the buffer's transitions, not its million-row capacity (88 MB before)
    checkpoint = out / "checkpoints" / "meta_train.safetensors"
    assert checkpoint.stat().st_size < 1_000_000
    # the sidecar says how the loss is meant to be applied: start, optimizer, K, step size
    provenance = json.loads((out / "loss.json").read_text())["provenance"]
    config = doc["config"]
    assert provenance["policy_class"] == config["policy_class"] == "per_goal"
    assert provenance["inner_method"] == config["inner_method"]
    assert (provenance["inner_steps"], provenance["inner_lr"]) == (
        config["inner_steps"], config["inner_lr"])  # fmt: skip
    assert provenance["policy_hidden"] == list(config["policy_hidden"])
    for name, m in methods.items():
        for key in ("mean_final_distance_mm", "max_final_distance_mm", "success_rate_10mm",
                    "real_env_steps", "wall_time_s"):  # fmt: skip
            assert key in m, (name, key)
        assert 0 <= m["mean_final_distance_mm"] <= m["max_final_distance_mm"] <= 500
        assert len(m["final_distance_mm_per_goal"]) == doc["config"]["n_test_goals"]
        assert m["real_env_steps"] >= doc["config"]["n_test_goals"] * doc["config"]["horizon"]
    # Every method ran on the same held-out goals, apart from the training goals.
    assert len(doc["extra"]["test_goals"]) == doc["config"]["n_test_goals"]
    for key in ("prediction_error_babble_holdout", "prediction_error_ml3_test_rollouts"):
        err = doc["extra"][key]
        assert err["horizon"] == 65 and err["one_step_rmse"] > 0 and err["open_loop_rmse"] > 0
    # ML3 and the task loss go on for curve_steps inner steps; step K is the reported result.
    K, curve = doc["config"]["inner_steps"], doc["config"]["curve_steps"]
    for name in ("ml3", "task_loss"):
        by_step = methods[name]["distance_by_inner_step_mm"]
        assert len(by_step) == max(K, curve) + 1
        assert len(methods[name]["steps_to_10mm_per_goal"]) == doc["config"]["n_test_goals"]
        by_budget = methods[name]["distance_by_budget_mm"]
        assert set(by_budget) == {"1", "2"}  # the default budgets (1, 2, 5, 10) up to the curve
        assert by_budget[str(K)] == pytest.approx(methods[name]["mean_final_distance_mm"])
        # max and success at every budget too, the figures at K matching the headline's
        worst = methods[name]["max_distance_by_budget_mm"]
        success = methods[name]["success_rate_10mm_by_budget"]
        assert set(worst) == set(success) == set(by_budget)
        assert all(worst[b] >= by_budget[b] and 0 <= success[b] <= 1 for b in by_budget)
        assert worst[str(K)] == pytest.approx(methods[name]["max_final_distance_mm"])
        assert success[str(K)] == methods[name]["success_rate_10mm"]
        # the same policies in the learned model's rollout: the model side of each figure
        model_side = methods[name]["model_distance_by_budget_mm"]
        assert set(model_side) == set(by_budget)
        assert all(0 < v < 1000 for v in model_side.values())
    assert methods["ml3"]["distance_by_inner_step_mm"][K] == pytest.approx(
        methods["ml3"]["mean_final_distance_mm"], rel=1e-12
    )
    # The task loss: SGD and Adam over the step-size grid, the best choice per budget on the
    # tuning goals; the test figure at K comes from the choice tuned for K.
    task = methods["task_loss"]
    tuning = task["tuning_distance_mm"]
    assert len(tuning) == 2 * len(doc["config"]["lr_grid"])
    for i, b in enumerate(sorted(int(b) for b in task["tuned_by_budget"])):
        # (a step size that blew up is written as null, i.e. infinitely far)
        best = min(tuning, key=lambda c: math.inf if tuning[c][i] is None else tuning[c][i])
        assert task["tuned_by_budget"][str(b)] == best
    assert task["optimizer"] in ("sgd", "adam")
    assert task["tuned_by_budget"][str(K)] == f"{task['optimizer']} lr={task['lr']:g}"
    # iLQR says how each solve ended: tolerances met, or stopped by the iteration limit (a
    # solve cut at ilqr_iters iterations cannot have converged in fewer)
    n_goals = doc["config"]["n_test_goals"]
    for name in ("ilqr_learned_model", "ilqr_true_model"):
        ilqr = methods[name]
        assert ilqr["ilqr_converged"] + ilqr["ilqr_stopped_at_iteration_limit"] <= n_goals
        if ilqr["ilqr_iterations_mean"] == doc["config"]["ilqr_iters"]:
            assert ilqr["ilqr_stopped_at_iteration_limit"] + ilqr["ilqr_converged"] == n_goals
    for name in ("meta_training.png", "final_distance_per_goal.png", "ee_paths.png",
                 "distance_by_inner_step.png", "loss_landscape.png",
                 "loss.safetensors", "loss.json", "metrics.csv", "config.yaml"):  # fmt: skip
        assert (out / name).is_file(), name
    if os.environ.get("MUJOCO_GL"):
        assert (out / "meta_test_ml3.gif").is_file()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + doc["config"]["outer_steps"]
    assert "heldout_real_distance_mm" in rows[0]


@pytest.mark.parametrize("extra", ["demos", "physics"])
def test_smoke_run_with_extra_information(tmp_path, monkeypatch, extra):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    out = tmp_path / "run"
    run_experiment("reacher", seed=3, out=out, smoke=True, sets=[f"extra={extra}"])
    doc = json.loads((out / "results.json").read_text())
    sidecar = json.loads((out / "loss.json").read_text())
    assert sidecar["provenance"]["extra_information"] == extra
    # Demonstrations add the behaviour-cloning baseline (and cost real steps); physics does not.
    assert ("behaviour_cloning" in doc["baselines"]) == (extra == "demos")
    demo_steps = doc["metrics"]["expert_demo_env_steps"]
    T = doc["config"]["horizon"]
    assert demo_steps == (doc["config"]["n_train_goals"] * T if extra == "demos" else 0)


def test_pybullet_as_the_real_system(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    docs = {}
    for backend in ("mujoco", "pybullet"):
        out = tmp_path / backend
        run_experiment("reacher", seed=3, out=out, smoke=True, sets=[f"backend={backend}"])
        docs[backend] = json.loads((out / "results.json").read_text())
    assert docs["pybullet"]["config"]["backend"] == "pybullet"
    # The same iLQR plan (on MuJoCo's model) executed in either simulator ends at the same place:
    # the backends agree to ~1e-12 rad off the joint limits.
    mj, pb = (docs[b]["baselines"]["ilqr_true_model"]["final_distance_mm_per_goal"]
              for b in ("mujoco", "pybullet"))  # fmt: skip
    assert pb == pytest.approx(mj, rel=1e-6, abs=1e-6)


def _sets(*items):
    return [a for item in items for a in ("--set", item)]


GOAL_CONDITIONED = ("policy_class=goal_conditioned", "pretrain_steps=5", "meta_objective=ramp",
                    "inner_steps=2", "meta_distance=end_effector")  # fmt: skip


# The goal-conditioned variant resumes everything the per-goal one does and the pre-trained
# start policy besides; the per-goal one is the slow suite's.
@pytest.mark.parametrize(
    "variant",
    [pytest.param((), marks=pytest.mark.slow), GOAL_CONDITIONED],
    ids=["per_goal", "goal_conditioned"],
)
def test_sigkill_mid_meta_training_then_resume_loses_nothing(tmp_path, monkeypatch, variant):
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    sets = _sets("outer_steps=6", "checkpoint_every=2", "eval_every=3", *FAST, *variant)
    reference = tmp_path / "reference"
    run_experiment("reacher", seed=0, out=reference, smoke=True, sets=sets[1::2])

    killed = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, "-c", SIGKILL_AT_ITERATION + RUNNER, "3",
         "run", "reacher", "--smoke", *sets, "--out", str(killed)],
        capture_output=True, text=True, env=_env(),
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (killed / "loss.safetensors").exists()
    # Killed at the start of iteration 3: rows 0-2 written, the checkpoint is at 2.
    assert len((killed / "metrics.csv").read_text().splitlines()) == 4

    run_experiment("reacher", out=killed, resume=True)
    a, b = load_file(reference / "loss.safetensors"), load_file(killed / "loss.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The checkpoint's problem state (replay buffer, model, counters) ends identical too.
    ca = load_file(reference / "checkpoints" / "meta_train.safetensors")
    cb = load_file(killed / "checkpoints" / "meta_train.safetensors")
    state_keys = [k for k in ca if k.startswith("state.")]
    assert any(k.startswith("state.buffer.") for k in state_keys)
    assert any(k.startswith("state.model.") for k in state_keys)
    assert any(k.startswith("optim.") for k in ca)
    # the pre-trained goal-conditioned policy is in it (refits change the model it came from)
    assert any(k.startswith("state.start_policy.") for k in ca) == bool(variant)
    assert ca.keys() == cb.keys()
    for name in ca:
        assert torch.equal(ca[name], cb[name]), name
    ra = json.loads((reference / "results.json").read_text())
    rb = json.loads((killed / "results.json").read_text())
    assert rb["extra"]["resumed"] and not ra["extra"]["resumed"]
    for method in METHODS[1:]:
        assert ra["baselines"][method]["final_distance_mm_per_goal"] == \
            rb["baselines"][method]["final_distance_mm_per_goal"]  # fmt: skip
    rows = (killed / "metrics.csv").read_text().splitlines()
    assert len(rows) == 7  # header + one row per outer iteration, none lost or repeated


def test_pretrain_split_keeps_meta_training_and_tuning_off_the_pretraining_goals(
    tmp_path, monkeypatch
):
    """With pretrain_split the goal-conditioned policy is pre-trained on the first part of the
    pool; the task loss's tuning goals come from the rest (as the meta-training batches do)."""
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    out = tmp_path / "run"
    sets = ["policy_class=goal_conditioned", "pretrain_steps=2", "pretrain_split=0.5",
            "n_train_goals=6", "goals_per_iteration=2"]  # fmt: skip
    run_experiment("reacher", seed=3, out=out, smoke=True, sets=sets)
    doc = json.loads((out / "results.json").read_text())
    train = doc["extra"]["train_goals"]
    assert len(train) == 6
    # the evaluation's tuning goals are training goals 3 and 4 (after the 3 pre-training goals)
    assert doc["extra"]["tune_goals"] == train[3:5]


# ml3r eval runs the same baselines from fresh per-goal policies (test_hygiene), so the per-goal
# variant here is the slow suite's.
@pytest.mark.parametrize(
    "variant",
    [pytest.param((), marks=pytest.mark.slow), GOAL_CONDITIONED],
    ids=["per_goal", "goal_conditioned"],
)
def test_meta_learned_baselines_learned_step_sizes_and_maml(tmp_path, monkeypatch, caplog, variant):
    """The learned-optimizer baseline (the task loss with its K step sizes meta-learned from the
    step size tuned for K) and MAML (the starting policy meta-learned for K steps of that tuned
    task loss), evaluated like the others, at every budget."""
    monkeypatch.setattr(runs, "discover_experiments", lambda: {"reacher": EXPERIMENT})
    caplog.set_level(logging.INFO, logger="ml3r.progress")
    out = tmp_path / "run"
    sets = [*variant, "step_size_updates=3", "step_size_lr=0.1", "maml_updates=3",
            "maml_lr=0.01", "curve_steps=3", "budgets=[1,2,3]", *FAST]  # fmt: skip
    run_experiment("reacher", seed=3, out=out, smoke=True, sets=sets)
    doc = json.loads((out / "results.json").read_text())
    learned, tuned = doc["baselines"]["learned_step_sizes"], doc["baselines"]["task_loss"]
    maml = doc["baselines"]["maml"]
    # each meta-training reports its progress under its own name
    progress = [r.getMessage() for r in caplog.records if r.name == "ml3r.progress"]
    for label in ("meta-train", "learn step sizes", "MAML"):
        assert any(m.startswith(f"{label}: 3/3") for m in progress), (label, progress)
    assert (maml["optimizer"], maml["lr"]) == (tuned["optimizer"], tuned["lr"])
    assert set(maml["distance_by_budget_mm"]) == {"1", "2", "3"}
    K = doc["config"]["inner_steps"]
    assert maml["distance_by_inner_step_mm"][K] == pytest.approx(
        maml["mean_final_distance_mm"], rel=1e-9
    )
    # its own starting point: the learned initialisation (not the start every other method has)
    assert maml["distance_by_inner_step_mm"][0] != doc["metrics"]["distance_by_inner_step_mm"][0]
    assert (learned["optimizer"], learned["base_lr"]) == (tuned["optimizer"], tuned["lr"])
    assert len(learned["step_sizes"]) == K
    # three Adam steps of 0.1 on the log step sizes moved every one of them off the base
    ratios = [s / learned["base_lr"] for s in learned["step_sizes"]]
    assert all(abs(math.log(r)) > 0.05 for r in ratios), ratios
    assert set(learned["distance_by_budget_mm"]) == {"1", "2", "3"}
    assert len(learned["distance_by_inner_step_mm"]) == doc["config"]["curve_steps"] + 1
    # step K of the curve is the reported result; step 0 is the policy as it is, as for ML3
    assert learned["distance_by_inner_step_mm"][K] == pytest.approx(
        learned["mean_final_distance_mm"], rel=1e-9
    )
    assert learned["distance_by_inner_step_mm"][0] == pytest.approx(
        doc["metrics"]["distance_by_inner_step_mm"][0], rel=1e-9
    )
    # the study's table script reads the run: every method, real and model side, and per run
    script = runpy.run_path(str(ROOT / "scripts" / "reach_budget_table.py"))
    table, rows = script["table"]({"smoke": [doc]}), script["per_run"]({"smoke": [doc]})
    for name in ("ML3, real", "task loss (tuned", "task loss, learned step sizes", "MAML"):
        assert f"| smoke | {name}" in table, name
    assert "| ML3 | task loss | learned step sizes | MAML |" in rows
    ml3_mm = doc["metrics"]["final_distance_mm_per_goal"]
    assert f"| {sum(ml3_mm) / len(ml3_mm):.1f} / " in rows


def test_meta_learned_baselines_need_their_goals():
    from ml3_robotics.evaluation.reach import ReachEvalConfig, evaluate_reach

    with pytest.raises(ValueError, match="meta_goals"):
        evaluate_reach(None, None, None, [], [], ReachEvalConfig(step_size_updates=2), None,
                       model_env_steps=0)  # fmt: skip
    with pytest.raises(ValueError, match="meta_goals"):
        evaluate_reach(None, None, None, [], [], ReachEvalConfig(maml_updates=2), None,
                       model_env_steps=0)  # fmt: skip
    with pytest.raises(ValueError, match="meta_objective"):
        ReachEvalConfig(meta_objective="ramps")
