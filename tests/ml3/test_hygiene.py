"""Hygiene (issue 30): nothing written outside --out or over a user's file, one run per folder at
a time, every check before the folder is made, and one line for every malformed input."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import cli_error
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ml3_robotics.app.cli import main
from ml3_robotics.app.runs import RunFolderLock
from ml3_robotics.core.run_context import RUN_MARKER
from ml3_robotics.core.serialization import atomic_save_tensors
from ml3_robotics.models.replay_buffer import ReplayBuffer


def _sine(out, *extra: str) -> list[str]:
    return ["-q", "run", "sine", "--smoke", "--set", "outer_steps=2", "--out", str(out), *extra]


def _tree(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _marker(out) -> dict:
    return json.loads((out / RUN_MARKER).read_text())


@pytest.fixture
def sine_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_sine(out)) == 0
    capsys.readouterr()
    return out


# -- nothing outside --out, nothing of the user's ---------------------------------------------


@pytest.mark.parametrize("mode", ["--resume", "--overwrite"])
def test_a_metrics_csv_that_is_a_link_is_never_written_through(capsys, tmp_path, sine_run, mode):
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file outside --out\n")
    (sine_run / "metrics.csv").unlink()
    (sine_run / "metrics.csv").symlink_to(victim)
    argv = ["-q", "run", "sine", "--out", str(sine_run), "--resume"]
    if mode == "--resume":
        err = cli_error(capsys, argv)
        assert "symbolic link" in err and "metrics.csv" in err
    else:  # the listed name is removed (the link itself, not what it points to), then written
        assert main(_sine(sine_run, "--overwrite")) == 0
        assert not (sine_run / "metrics.csv").is_symlink()
    assert victim.read_text() == "a user's file outside --out\n"


def test_a_users_metrics_csv_in_a_marked_folder_is_not_replaced(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text('{"format": "ml3r-run", "format_version": 2, "written": []}')
    (out / "metrics.csv").write_text("my,own\n1,2\n")
    before = _tree(out)
    err = cli_error(capsys, _sine(out, "--overwrite"))
    assert "metrics.csv" in err and "does not list it" in err
    assert _tree(out) == before


def test_overwrite_keeps_a_users_file_inside_a_folder_the_run_wrote(sine_run):
    notes = sine_run / "checkpoints" / "my_notes.txt"
    notes.write_text("keep me\n")
    assert main(_sine(sine_run, "--overwrite")) == 0
    assert notes.read_text() == "keep me\n"
    assert (sine_run / "checkpoints" / "meta_train.safetensors").is_file()


def test_a_run_never_writes_over_a_file_it_did_not_make(capsys, sine_run):
    # A user's file where the run will write its checkpoint (not a name checked up front).
    (sine_run / "checkpoints" / "meta_train.safetensors").unlink()
    marker = _marker(sine_run)
    marker["written"].remove("checkpoints/meta_train.safetensors")
    (sine_run / RUN_MARKER).write_text(json.dumps(marker))
    (sine_run / "checkpoints" / "meta_train.safetensors").write_text("mine")
    err = cli_error(capsys, _sine(sine_run, "--overwrite"))
    assert "meta_train.safetensors" in err and "did not write" in err
    assert (sine_run / "checkpoints" / "meta_train.safetensors").read_text() == "mine"


@pytest.mark.parametrize("bad", ["../escape.txt", 7, "/etc/passwd", "", "a/../../b"])
def test_every_marker_entry_is_checked_before_anything_is_removed(capsys, sine_run, bad):
    marker = _marker(sine_run)
    marker["written"].append(bad)  # after names that would be removed first
    (sine_run / RUN_MARKER).write_text(json.dumps(marker))
    before = _tree(sine_run)
    err = cli_error(capsys, _sine(sine_run, "--overwrite"))
    assert "run marker" in err and repr(bad) in err
    assert _tree(sine_run) == before


def test_an_older_marker_that_lists_folders_is_not_emptied(capsys, sine_run):
    (sine_run / RUN_MARKER).write_text(json.dumps(
        {"format": "ml3r-run", "format_version": 1, "written": ["config.yaml", "checkpoints"]}
    ))  # fmt: skip
    before = _tree(sine_run)
    err = cli_error(capsys, _sine(sine_run, "--overwrite"))
    assert "older ml3r" in err and "checkpoints" in err
    assert _tree(sine_run) == before


# -- one run per folder ---------------------------------------------------------------------


def test_a_second_run_on_a_locked_folder_is_refused(capsys, sine_run):
    lock = RunFolderLock(sine_run)
    try:
        before = _tree(sine_run)
        for extra in (("--overwrite",),):
            err = cli_error(capsys, _sine(sine_run, *extra))
            assert "another ml3r run is using this folder" in err
        err = cli_error(capsys, ["-q", "run", "sine", "--out", str(sine_run), "--resume"])
        assert "another ml3r run is using this folder" in err
        assert _tree(sine_run) == before
    finally:
        lock.release()
    assert main(_sine(sine_run, "--overwrite")) == 0  # the lock goes with its holder


def test_two_processes_on_one_folder_one_runs_one_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ml3_robotics", "-q", "run", "sine", "--smoke", "--out", str(out)]
    first = subprocess.Popen([*cmd, "--set", "outer_steps=400"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (out / "config.yaml").exists():  # the first run holds the folder
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    second = subprocess.run([*cmd, "--overwrite"], capture_output=True, text=True)
    still_running = first.poll() is None
    first.kill()
    first.wait()
    assert still_running, "the first run ended before the second started: make it longer"
    assert second.returncode == 2
    assert second.stderr.strip().endswith("one run per folder at a time); wait for it or "
                                          "choose another --out")  # fmt: skip
    assert len(second.stderr.strip().splitlines()) == 1


# -- checkpoints ------------------------------------------------------------------------------


def _edit_checkpoint(out, edit) -> None:
    path = out / "checkpoints" / "meta_train.safetensors"
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    edit(tensors, meta)
    save_file(tensors, path, metadata=meta)


def _drop(key):
    return lambda t, m: m.pop(key)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t, m: m.update(iteration="1000000"), "claims iteration 1000000"),
        (_drop("param_groups"), "metadata is incomplete"),
        (lambda t, m: m.update(iteration="x"), "metadata is incomplete"),
        (lambda t, m: m.update(history="[1, 2]"), "history"),
        (lambda t, m: m.update(param_groups='{"a": 1}'), "optimizer groups"),
        (lambda t, m: t.update(extra=torch.zeros(3)), "extra"),
        (
            lambda t, m: t.update({k: torch.zeros(2, 2) for k in t if k.startswith("loss.")}),
            "do not match",
        ),
    ],
)
def test_resume_checks_the_whole_checkpoint_first(capsys, sine_run, edit, expected):
    _edit_checkpoint(sine_run, edit)
    err = cli_error(capsys, ["-q", "run", "sine", "--out", str(sine_run), "--resume"])
    assert expected in err and "meta_train.safetensors" in err


def test_a_checkpoint_that_is_not_a_file_of_tensors_names_the_file(capsys, sine_run):
    (sine_run / "checkpoints" / "meta_train.safetensors").write_text("not tensors")
    err = cli_error(capsys, ["-q", "run", "sine", "--out", str(sine_run), "--resume"])
    assert "checkpoint" in err and "meta_train.safetensors" in err


def test_weights_and_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_save_tensors({"a": torch.zeros(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left


def test_the_buffer_state_holds_only_its_transitions_and_resumes_exactly():
    def filled(n_traj: int) -> ReplayBuffer:
        buf = ReplayBuffer(2, 1, capacity=10)
        g = torch.Generator().manual_seed(0)
        for _ in range(n_traj):
            buf.add_trajectory(torch.randn(5, 2, generator=g), torch.randn(4, 1, generator=g))
        return buf

    for n_traj in (2, 4):  # 8 transitions, then 16 in a ring of 10 (wrapped)
        buf = filled(n_traj)
        state = buf.state_dict()
        assert state["x"].shape == (len(buf), 2)
        copy = ReplayBuffer(2, 1, capacity=10)
        copy.load_state_dict(state)
        for a, b in zip(buf.arrays(), copy.arrays(), strict=True):
            assert torch.equal(a, b)
        assert torch.equal(buf.trajectory_ids(), copy.trajectory_ids())
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for a, b in zip(buf.sample(6, g1), copy.sample(6, g2), strict=True):
            assert torch.equal(a, b)
        more = torch.ones(4, 2), torch.ones(3, 1)
        buf.add_trajectory(*more)
        copy.add_trajectory(*more)
        for a, b in zip(buf.arrays(), copy.arrays(), strict=True):
            assert torch.equal(a, b)
    state = filled(2).state_dict()
    state["x"] = state["x"][:3]
    with pytest.raises(ValueError, match="shapes"):
        ReplayBuffer(2, 1, capacity=10).load_state_dict(state)


# -- the YAML reader: bounded, no silent choices ----------------------------------------------

ALIAS_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True)
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("inner_lr: 0.1\ninner_lr: 0.2\n", "duplicate key 'inner_lr'"),
        (ALIAS_BOMB, "expands to more than"),
        ("hidden: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested deeper than"),
        ("outer_steps: 1" + "0" * 400 + "\n", "out of range"),
        ("a: &x [*x]\n", "refers to itself"),
    ],
)
def test_malformed_yaml_is_one_line_everywhere(capsys, tmp_path, text, expected):
    (tmp_path / "c.yaml").write_text(text)
    out = tmp_path / "o"
    err = cli_error(
        capsys, ["run", "sine", "--config", str(tmp_path / "c.yaml"), "--out", str(out)]
    )
    assert expected in err and "c.yaml" in err
    first, _, value = text.partition(": ")
    if "\n" not in value.rstrip("\n"):  # one key: the same through --set
        err = cli_error(capsys, _sine(out, "--set", f"{first}={value.strip()}"))
        assert expected in err
    robot = tmp_path / "arm.yaml"
    robot.write_text(text)
    err = cli_error(
        capsys, ["render", "arm", "--robot", str(robot), "--out", str(tmp_path / "v.gif")]
    )
    assert expected in err and "arm.yaml" in err
    assert not out.exists() and not (tmp_path / "v.gif").exists()


def test_a_date_is_read_as_the_text_it_is(capsys, tmp_path):
    err = cli_error(capsys, _sine(tmp_path / "o", "--set", "inner_lr=2024-01-01"))
    assert "inner_lr" in err and "'2024-01-01'" in err


def test_huge_integers_are_refused_before_anything_is_written(capsys, tmp_path):
    from experiments.sine import SineConfig
    from ml3_robotics.app.runs import ConfigError, build_config

    err = cli_error(capsys, _sine(tmp_path / "o", "--set", f"outer_steps={10**18}"))
    assert "outer_steps" in err and "at most" in err
    err = cli_error(capsys, _sine(tmp_path / "o", "--set", "outer_steps=2000000"))
    assert "outer_steps: expected an integer <= 1000000" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="inner_lr: expected a finite number"):
        build_config(SineConfig, {"inner_lr": 10**400})  # through the Python API


# -- every check before the folder is made ----------------------------------------------------


def _write_loss(path, provenance=None, features=None):
    from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
    from ml3_robotics.core.serialization import save_learned_loss
    from ml3_robotics.tasks.reach import reach_feature_spec

    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(8,), activation="elu"))
    save_learned_loss(loss, path, provenance=provenance or {"inner_steps": 1, "inner_lr": 1e-3})
    return path


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--set", "loss_path=/nonexistent/loss"], "does not exist"),
        (["--set", "arm=reacher9"], "reacher9"),
        (["--set", "loss_path=SINE_LOSS"], "does not fit"),
    ],
)
def test_reacher_inputs_are_checked_before_the_folder_is_made(capsys, tmp_path, argv, expected):
    out = tmp_path / "o"
    if "loss_path=SINE_LOSS" in argv:
        assert main(["-q", "run", "sine", "--smoke", "--set", "outer_steps=1", "--out",
                     str(tmp_path / "sine")]) == 0  # fmt: skip
        argv = ["--set", f"loss_path={tmp_path / 'sine' / 'loss'}"]
    err = cli_error(capsys, ["-q", "run", "reacher", "--smoke", "--out", str(out), *argv])
    assert expected in err
    assert not out.exists()


@pytest.mark.parametrize(
    "provenance, expected",
    [
        ({"inner_steps": 1, "inner_lr": float("nan")}, "provenance.inner_lr"),
        ({"inner_steps": 10**6, "inner_lr": 1e-3}, "provenance.inner_steps"),
        ({"inner_steps": "3", "inner_lr": 1e-3}, "provenance.inner_steps"),
    ],
)
def test_a_sidecars_provenance_is_checked_and_named(capsys, tmp_path, provenance, expected):
    loss = _write_loss(tmp_path / "loss", provenance)
    out = tmp_path / "o"
    err = cli_error(capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(out)])
    assert expected in err and "loss.json" in err
    assert not out.exists()


def test_a_sidecar_whose_provenance_is_a_list(capsys, tmp_path):
    loss = _write_loss(tmp_path / "loss")
    doc = json.loads((tmp_path / "loss.json").read_text())
    doc["provenance"] = [1, 2]
    (tmp_path / "loss.json").write_text(json.dumps(doc))
    err = cli_error(
        capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(tmp_path / "o")]
    )
    assert "provenance: expected a mapping" in err


@pytest.mark.parametrize("field", ["shift", "scale"])
def test_a_sidecars_normalisation_must_be_numbers(capsys, tmp_path, field):
    loss = _write_loss(tmp_path / "loss")
    doc = json.loads((tmp_path / "loss.json").read_text())
    n = len(doc["config"]["features"]["names"])
    doc["config"]["features"][field] = "1" * n  # a string of the right length
    (tmp_path / "loss.json").write_text(json.dumps(doc))
    err = cli_error(
        capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(tmp_path / "o")]
    )
    assert f"features.{field}: expected a list of numbers" in err


def test_weights_stored_as_integers_are_refused(capsys, tmp_path):
    loss = _write_loss(tmp_path / "loss")
    weights = tmp_path / "loss.safetensors"
    save_file({k: v.to(torch.int32) for k, v in load_file(weights).items()}, weights)
    err = cli_error(
        capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(tmp_path / "o")]
    )
    assert "not floating point" in err


def test_a_robot_file_that_names_a_folder_dot_dot_is_refused(capsys, tmp_path):
    loss = _write_loss(tmp_path / "loss")
    robot = tmp_path / "...yaml"
    robot.write_text("n_links: 2\n")
    out = tmp_path / "o"
    err = cli_error(capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--robot", "reacher2",
                          "--robot", str(robot), "--out", str(out)])  # fmt: skip
    assert "folder name" in err
    assert not out.exists()


# -- several processes ------------------------------------------------------------------------


def test_nproc_beyond_the_cpus_is_refused(capsys, tmp_path):
    err = cli_error(capsys, ["run", "model-loss", "--smoke", "--nproc", "1000", "--out",
                          str(tmp_path / "o")])  # fmt: skip
    assert "--nproc" in err and "1000" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--set", "horizon=0"], "horizon"),
        ([], "needs --out"),
    ],
)
def test_nproc_config_mistakes_are_one_line_before_any_process(capsys, tmp_path, argv, expected):
    out = ["--out", str(tmp_path / "o")] if argv else []
    err = cli_error(capsys, ["run", "model-loss", "--smoke", "--nproc", "2", *out, *argv])
    assert expected in err
    assert not (tmp_path / "o").exists()


def test_nproc_into_a_folder_holding_a_run_is_refused_before_any_process(capsys, sine_run):
    err = cli_error(
        capsys, ["run", "model-loss", "--smoke", "--nproc", "2", "--out", str(sine_run)]
    )
    assert "holds another run" in err


# -- the edges: --help, rendering, plug-ins ---------------------------------------------------

HELP_RUNNER = """
import pathlib, runpy, sys
failed = []
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
        failed.append(script + ": ran without --help stopping it")
    except SystemExit as e:
        if e.code not in (0, None):
            failed.append(f"{script}: exit {e.code}")
print("FAILED", failed)
"""


def test_every_script_and_benchmark_answers_help_without_running(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    scripts = sorted(
        os.path.join(root, folder, f)
        for folder in ("benchmarks", "scripts")
        for f in os.listdir(os.path.join(root, folder))
        if f.endswith(".py")
    )
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, *scripts], capture_output=True,
                          text=True, timeout=300, cwd=root, env=env)  # fmt: skip
    assert "FAILED []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("usage:") == len(scripts)


def test_render_without_a_display_or_mujoco_gl_is_headless(tmp_path):
    unset = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run([sys.executable, "-m", "ml3_robotics", "render", "arm", "--steps", "3",
                           "--out", str(tmp_path / "a.gif")], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.gif").stat().st_size > 0


def test_a_broken_plugin_is_one_line_and_the_others_are_listed(capsys, monkeypatch):
    from importlib import metadata

    from ml3_robotics.app import runs

    real = metadata.entry_points
    broken = metadata.EntryPoint("broken", "no_such_module_xyz:EXPERIMENT", runs.ENTRY_POINT_GROUP)

    def entry_points(**kw):
        found = list(real(**kw))
        return [*found, broken] if kw.get("group") == runs.ENTRY_POINT_GROUP else found

    monkeypatch.setattr(runs.metadata, "entry_points", entry_points)
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert "sine" in out and "reacher" in out
    assert err.count("\n") == 1 and "'broken'" in err and "no_such_module_xyz" in err
    err = cli_error(capsys, ["run", "broken", "--smoke"])
    assert "cannot be loaded" in err


def test_a_smoke_preset_gives_way_to_a_protocol_the_user_chose(tmp_path, capsys):
    """protocol=paper fixes meta_batch to 1; the smoke size's meta_batch=2 is a preset, not a
    conflict the user made. An explicit --set meta_batch=2 still is."""
    out = tmp_path / "o"
    assert main(["-q", "run", "mountain-car", "--smoke", "--set", "protocol=paper",
                 "--set", "ilqr=false", "--out", str(out)]) == 0  # fmt: skip
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["meta_batch"] == 1 and config["protocol"] == "paper"
    assert config["test_steps"] == 2  # the rest of the smoke size still applies
    err = cli_error(capsys, ["-q", "run", "mountain-car", "--smoke", "--set", "protocol=paper",
                          "--set", "meta_batch=2", "--out", str(tmp_path / "p")])  # fmt: skip
    assert "meta_batch: protocol=paper fixes it to 1, got 2" in err


def test_eval_refuses_a_loss_meant_for_another_start(capsys, tmp_path):
    """A loss meta-trained to adapt a goal-conditioned start is not silently applied to fresh
    policies (it left them barely moving); start=fresh applies it anyway, on the user's word."""
    loss = _write_loss(tmp_path / "loss", {"inner_steps": 1, "inner_lr": 1e-3,
                                           "policy_class": "goal_conditioned"})  # fmt: skip
    out = tmp_path / "o"
    err = cli_error(capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(out)])
    assert "provenance.start_policy" in err and "start=fresh" in err
    assert not out.exists()
    fresh = ["--set", "start=fresh", "--set", "video_goals=0", "--set", "landscape_grid=0"]
    assert main(["-q", "eval", "--loss", str(loss), "--smoke", *fresh, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["start"] == "fresh"


# What the ML3 figures do not need, at its smallest (one step size, one iLQR iteration).
FAST = ["video_goals=0", "landscape_grid=0", "lr_grid=[0.001]", "ilqr_iters=1",
        "n_holdout_trajectories=1"]  # fmt: skip


def test_eval_rebuilds_the_goal_conditioned_start_a_loss_was_trained_from(capsys, tmp_path):
    """The reacher saves the goal-conditioned start beside its loss; ml3r eval adapts that start
    (not fresh policies) with the loss's K and step size. On the run's own goals and seed, with
    the run's model (its checkpoint: after the on-policy refits), eval reproduces the run's
    held-out ML3 figures to 1e-6; on another arm it refuses in one line."""
    from experiments.reacher import START_POLICY_FILE

    run = tmp_path / "run"
    goal_conditioned = ["policy_class=goal_conditioned", "pretrain_steps=5",
                        "meta_objective=ramp", "inner_steps=2", "meta_distance=end_effector",
                        *FAST]  # fmt: skip
    assert main(["-q", "run", "reacher", "--smoke", "--out", str(run),
                 *(a for s in goal_conditioned for a in ("--set", s))]) == 0  # fmt: skip
    capsys.readouterr()
    assert (run / START_POLICY_FILE).is_file()
    assert json.loads((run / "loss.json").read_text())["provenance"]["start_policy"] == (
        START_POLICY_FILE
    )
    doc = json.loads((run / "results.json").read_text())
    goals = doc["extra"]["test_goals"]
    out = tmp_path / "eval"
    assert doc["extra"]["model_refits"] >= 1  # the model eval would fit alone is not the run's
    checkpoint = run / "checkpoints" / "meta_train.safetensors"
    assert main(["-q", "eval", "--loss", str(run / "loss"), "--smoke", "--set",
                 f"goals={goals}", *(a for s in FAST for a in ("--set", s)),
                 "--set", f"model_checkpoint={checkpoint}", "--out", str(out)]) == 0  # fmt: skip
    ev = json.loads((out / "results.json").read_text())
    assert ev["extra"]["start"] == "the loss's start policy"
    assert ev["extra"]["inner_steps"] == 2
    assert ev["metrics"]["mean_final_distance_mm"] == pytest.approx(
        doc["metrics"]["mean_final_distance_mm"], abs=1e-6
    )
    ran = doc["metrics"]["distance_by_inner_step_mm"]
    for a, b in zip(ev["metrics"]["distance_by_inner_step_mm"], ran, strict=False):
        assert a == pytest.approx(b, abs=1e-6)
    ran = ran[0]
    # eval's own fit (not the run's refit model): the same start before any step, other
    # figures after it, so the equality above needs the run's model
    own = tmp_path / "own_fit"
    assert main(["-q", "eval", "--loss", str(run / "loss"), "--smoke", "--set",
                 f"goals={goals}", *(a for s in FAST for a in ("--set", s)),
                 "--out", str(own)]) == 0  # fmt: skip
    other = json.loads((own / "results.json").read_text())["metrics"]
    assert other["distance_by_inner_step_mm"][0] == pytest.approx(ran, abs=1e-6)
    assert abs(other["mean_final_distance_mm"] - doc["metrics"]["mean_final_distance_mm"]) > 1e-3
    capsys.readouterr()
    err = cli_error(capsys, ["-q", "eval", "--loss", str(run / "loss"), "--smoke",
                             "--robot", "arm3", "--out", str(tmp_path / "arm3")])  # fmt: skip
    assert "trained on 'reacher2'" in err and "start=fresh" in err
    assert not (tmp_path / "arm3").exists()


def test_eval_refuses_a_model_checkpoint_that_holds_no_model_of_the_arm(capsys, tmp_path, sine_run):
    loss = _write_loss(tmp_path / "loss")
    out = tmp_path / "o"
    for checkpoint in (tmp_path / "missing.safetensors",
                       sine_run / "checkpoints" / "meta_train.safetensors"):  # fmt: skip
        err = cli_error(capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--set",
                                 f"model_checkpoint={checkpoint}", "--out", str(out)])  # fmt: skip
        assert "model_checkpoint" in err and str(checkpoint) in err
    err = cli_error(capsys, ["-q", "eval", "--loss", str(loss), "--smoke", "--robot", "reacher2",
                             "--robot", "arm3", "--set", f"model_checkpoint={tmp_path}",
                             "--out", str(out)])  # fmt: skip
    assert "one robot" in err
    assert not out.exists()


def test_eval_offers_the_runs_meta_learned_baselines(tmp_path):
    """ml3r eval runs the learned step sizes and MAML beside ML3 (the reacher's baselines), on
    goals of the robot apart from the evaluation goals, and reports every budget's figures."""
    loss = _write_loss(tmp_path / "loss")
    out = tmp_path / "o"
    sets = ["step_size_updates=2", "maml_updates=2", "n_meta_goals=4", "goals_per_iteration=2",
            "video_goals=0", "landscape_grid=0"]  # fmt: skip
    assert main(["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(out),
                 *(a for s in sets for a in ("--set", s))]) == 0  # fmt: skip
    doc = json.loads((out / "results.json").read_text())
    assert {"learned_step_sizes", "maml", "task_loss"} <= set(doc["baselines"])
    for name in ("learned_step_sizes", "maml"):
        figures = doc["baselines"][name]
        assert figures["mean_final_distance_mm"] > 0
        assert set(figures["max_distance_by_budget_mm"]) == set(figures["distance_by_budget_mm"])
