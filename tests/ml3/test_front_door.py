"""The front door (issue 21): nothing a user owns is lost, every user mistake ends in one line
naming the option or file with exit 2, and nothing is written before the checks pass."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from conftest import cli_error
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from experiments.model_loss import ModelLossConfig
from experiments.mountain_car import MountainCarConfig
from experiments.reacher import ReacherConfig
from experiments.sine import SineConfig
from ml3_robotics.app.cli import _table, main, run_experiment
from ml3_robotics.app.runs import (
    ConfigError,
    RunResult,
    build_config,
    config_to_dict,
    describe_config,
    discover_experiments,
    get_experiment,
    parse_set_options,
    read_config_file,
    write_results,
)
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.run_context import RUN_MARKER, RunContext
from ml3_robotics.core.serialization import atomic_write_bytes, save_learned_loss
from ml3_robotics.mbrl.loop import ReachModelConfig
from ml3_robotics.tasks.reach import reach_feature_spec
from robots.arm import load_arm_config
from robots.yaml_io import dump_yaml, parse_yaml


def _sine(out, *extra: str) -> list[str]:
    return ["run", "sine", "--smoke", "--set", "outer_steps=2", "--out", str(out), *extra]


def _save_reach_loss(path) -> None:
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(8,), activation="elu"))
    loss.reset_parameters(torch.Generator().manual_seed(0))
    save_learned_loss(loss, path, provenance={"arm": "reacher2", "inner_steps": 1,
                                              "inner_lr": 1e-3})  # fmt: skip


def _tree(folder) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


# -- run folders -------------------------------------------------------------------------------


def test_overwrite_never_empties_a_folder_ml3r_did_not_write(capsys, tmp_path):
    project = tmp_path / "thesis"
    (project / "src").mkdir(parents=True)
    (project / "config.yaml").write_text("paper: draft 3\n")
    (project / "results.json").write_text("{}\n")
    (project / "thesis.tex").write_text("\\section{Results}\n")
    (project / "src" / "main.py").write_text("print('hi')\n")
    before = _tree(project)
    for extra in ((), ("--overwrite",)):
        err = cli_error(capsys, _sine(project, *extra))
        assert "is not an ml3r run folder" in err and str(project) in err
        assert _tree(project) == before


def test_overwrite_removes_only_what_the_run_wrote(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(_sine(out)) == 0
    capsys.readouterr()
    marker = json.loads((out / RUN_MARKER).read_text())
    assert {"config.yaml", "results.json", "metrics.csv", "loss.safetensors", "loss.json",
            "checkpoints/meta_train.safetensors"} <= set(marker["written"])  # fmt: skip
    (out / "notes.txt").write_text("mine\n")  # a user's file added after the run
    (out / ".results.json.abc.tmp").write_bytes(b"half")  # a killed write's temporary
    (out / "mse_vs_step.png").unlink()
    err = cli_error(capsys, _sine(out))
    assert "holds another run" in err and "--overwrite" in err
    capsys.readouterr()
    assert main(_sine(out, "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine\n"
    assert not (out / ".results.json.abc.tmp").exists()
    assert (out / "mse_vs_step.png").is_file() and (out / "results.json").is_file()


def test_a_damaged_marker_is_refused_and_nothing_removed(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(_sine(out)) == 0
    capsys.readouterr()
    (out / RUN_MARKER).write_text('{"format": "ml3r-run", "format_version": 2, "written": [')
    before = _tree(out)
    err = cli_error(capsys, _sine(out, "--overwrite"))
    assert "run marker" in err and "not valid JSON" in err
    assert _tree(out) == before


def test_out_under_a_regular_file(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    err = cli_error(capsys, _sine(tmp_path / "f" / "run"))
    assert "--out" in err and "is a file" in err
    err = cli_error(capsys, _sine(tmp_path / "f"))
    assert "--out" in err and "is a file" in err


def test_atomic_writes_follow_the_umask_and_clear_stale_temporaries(tmp_path):
    stale = tmp_path / ".a.json.x1y2.tmp"
    stale.write_bytes(b"half a file from a killed write")
    other = tmp_path / ".b.json.x1y2.tmp"
    other.write_bytes(b"another file's temporary")
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert not stale.exists() and other.exists()
    assert (tmp_path / "a.json").read_bytes() == b"{}"


# -- one config reader: YAML 1.2 numbers, finite values, one line per mistake -------------------


@pytest.mark.parametrize("text", ["1e-3", "1E-3", "+1e-3", "0.001", ".001", "1.0e-3"])
def test_yaml_12_floats_in_set_and_config(tmp_path, text):
    assert parse_set_options([f"inner_lr={text}"]) == {"inner_lr": 0.001}
    (tmp_path / "c.yaml").write_text(f"inner_lr: {text}\n")
    assert read_config_file(tmp_path / "c.yaml") == {"inner_lr": 0.001}


def test_a_list_without_brackets_is_refused_with_the_syntax():
    with pytest.raises(ConfigError, match=r"variants: a list is written \[a, b\]"):
        build_config(ModelLossConfig, parse_set_options(["variants=reach,no_prior"]))
    config = build_config(ModelLossConfig, parse_set_options(["variants=[reach, no_prior]"]))
    assert config.variants == ("reach", "no_prior")


def test_yaml_12_scalars():
    assert parse_yaml("[yes, on, off, true, False, 010, 0o10, 0x10, 1e3, 3]", "t") == [
        "yes", "on", "off", True, False, 10, 8, 16, 1000.0, 3]  # fmt: skip
    assert isinstance(parse_yaml("1e3", "t"), float) and isinstance(parse_yaml("3", "t"), int)


def test_set_1e_minus_3_runs(tmp_path):
    out = tmp_path / "run"
    assert main(_sine(out, "--set", "inner_lr=1e-3", "--set", "outer_lr=2E-3")) == 0
    config = parse_yaml((out / "config.yaml").read_text(), "config.yaml")["config"]
    assert config["inner_lr"] == 0.001 and config["outer_lr"] == 0.002


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused_before_anything_is_written(capsys, tmp_path, value):
    out = tmp_path / "run"
    err = cli_error(capsys, _sine(out, "--set", f"inner_lr={value}"))
    assert "inner_lr" in err and "finite" in err
    assert not out.exists()


def test_malformed_yaml_names_file_and_line(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("inner_lr: 0.1\nouter: [1, 2\n")
    err = cli_error(capsys, ["run", "sine", "--config", str(tmp_path / "c.yaml"),
                          "--out", str(tmp_path / "o")])  # fmt: skip
    assert "c.yaml" in err and "line" in err
    err = cli_error(capsys, _sine(tmp_path / "o", "--set", "hidden=[1, 2"))
    assert "--set hidden" in err


@pytest.mark.parametrize(
    "content, expected",
    [("- 1\n- 2\n", "mapping"), ("links: [1, 2\n", "line"), ("link_lenghts: [0.1]\n", "did you")],
)
def test_bad_robot_files(capsys, tmp_path, content, expected):
    robot = tmp_path / "a.yaml"
    robot.write_text(content)
    err = cli_error(
        capsys, ["render", "arm", "--robot", str(robot), "--out", str(tmp_path / "v.gif")]
    )
    assert "a.yaml" in err and expected in err.lower()
    loss = tmp_path / "loss"
    _save_reach_loss(loss)
    err = cli_error(capsys, ["eval", "--loss", str(loss), "--robot", str(robot), "--smoke",
                          "--out", str(tmp_path / "e")])  # fmt: skip
    assert "a.yaml" in err and expected in err.lower()
    assert not (tmp_path / "e").exists() and not (tmp_path / "v.gif").exists()


def test_robot_file_takes_yaml_12_floats(tmp_path):
    (tmp_path / "a.yaml").write_text("dt: 1e-2\n")
    assert load_arm_config(tmp_path / "a.yaml").dt == 0.01


def test_resume_on_a_damaged_config(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(_sine(out)) == 0
    capsys.readouterr()
    (out / "config.yaml").write_text("experiment: sine\nconfig: {inner_lr: [\n")
    err = cli_error(capsys, ["run", "sine", "--resume", "--out", str(out)])
    assert "config.yaml" in err and "line" in err
    (out / "config.yaml").write_text("experiment: sine\nseed: 0\nconfig: {inner_lrr: 0.1}\n")
    err = cli_error(capsys, ["run", "sine", "--resume", "--out", str(out)])
    assert "config.yaml" in err and "inner_lrr" in err and "did you mean" in err
    (out / "config.yaml").write_text("[1, 2]\n")
    err = cli_error(capsys, ["run", "sine", "--resume", "--out", str(out)])
    assert "config.yaml" in err and "not a run config" in err


# -- loss files and checkpoints are checked on load --------------------------------------------


def _edit_sidecar(path, edit) -> None:
    sidecar = path.with_suffix(".json")
    doc = json.loads(sidecar.read_text())
    edit(doc)
    sidecar.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d["config"].update(hidden="88"), "hidden"),
        (lambda d: d["config"].update(hidden=[8, True]), "hidden"),
        (lambda d: d["config"].update(hidden=[4_000_000, 4_000_000]), "hidden"),
        (lambda d: d["config"].update(hidden=[60_000, 60_000]), "needs"),  # 14 GB: not allocated
        (lambda d: d["config"]["features"].update(shift=[float("nan")] * 7), "shift"),
        (lambda d: d["config"]["features"].update(scale=[float("inf")] * 7), "scale"),
    ],
)
def test_damaged_sidecars_are_refused(capsys, tmp_path, edit, expected):
    path = tmp_path / "loss"
    _save_reach_loss(path)
    _edit_sidecar(path, edit)
    err = cli_error(capsys, ["eval", "--loss", str(path), "--smoke", "--out", str(tmp_path / "e")])
    assert "loss.json" in err or "loss.safetensors" in err
    assert expected in err
    assert not (tmp_path / "e").exists()


def test_non_finite_loss_weights_are_refused(capsys, tmp_path):
    path = tmp_path / "loss"
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(8,), activation="elu"))
    with torch.no_grad():
        loss.net[0].weight[0, 0] = float("nan")
    save_learned_loss(loss, path, provenance={"arm": "reacher2", "inner_steps": 1})
    err = cli_error(capsys, ["eval", "--loss", str(path), "--smoke", "--out", str(tmp_path / "e")])
    assert "non-finite" in err and "net.0.weight" in err


def test_resume_from_a_non_finite_checkpoint_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(_sine(out)) == 0
    capsys.readouterr()
    ckpt = out / "checkpoints" / "meta_train.safetensors"
    with safe_open(ckpt, framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(ckpt)
    name = next(k for k in tensors if k.startswith("loss."))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, ckpt, metadata=meta)
    err = cli_error(capsys, ["run", "sine", "--resume", "--out", str(out)])
    assert "non-finite" in err and name in err and "last good" not in err


# -- checks before work ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["hidden", "loss_hidden"])
def test_zero_width_layers_are_refused_before_anything_is_written(capsys, tmp_path, key):
    out = tmp_path / "run"
    err = cli_error(capsys, _sine(out, "--set", f"{key}=[0]"))
    assert key in err and "layer widths" in err
    assert not out.exists()


@pytest.mark.parametrize("argv", [["run", "sine"], ["demo"], ["render", "arm", "--out", "x.gif"]])
def test_negative_seed_is_refused_before_anything_is_written(capsys, tmp_path, argv):
    out = tmp_path / "run"
    argv = [*argv, "--seed", "-1"] + ([] if "--out" in argv else ["--out", str(out)])
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml3r: error: ") and "\n" not in err, err
    assert "--seed" in err and "-1" in err
    assert not out.exists()


def test_argparse_mistakes_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("ml3r: error: ") and "\n" not in err, err


def test_negative_seed_through_the_python_api(tmp_path):
    with pytest.raises(ConfigError, match="seed"):
        run_experiment("sine", seed=-1, out=tmp_path / "run", smoke=True)
    assert not (tmp_path / "run").exists()


# -- progress ----------------------------------------------------------------------------------


def test_progress_lines_when_stderr_is_not_a_terminal(capsys, tmp_path):
    assert main(_sine(tmp_path / "a", "--set", "outer_steps=20")) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[ml3r ")]
    assert any(line.endswith("meta_train ...") for line in lines)
    assert any("meta-train: 20/20" in line and "meta_loss=" in line for line in lines)
    assert sum("meta-train: " in line for line in lines) <= 12  # a line per tenth, not per step
    assert any("meta_test done (" in line for line in lines)
    assert main(["-q", *_sine(tmp_path / "b")]) == 0
    assert "[ml3r " not in capsys.readouterr().err


def test_results_json_is_valid_json_when_a_figure_is_not_finite(tmp_path):
    ctx = RunContext(tmp_path, 0)
    result = RunResult(metrics={"a": float("nan"), "b": [1.0, float("inf")]})
    write_results(ctx, "sine", SineConfig(), result)
    doc = json.loads((tmp_path / "results.json").read_text(), parse_constant=_refuse)
    assert doc["metrics"] == {"a": None, "b": [1.0, None]}


def _refuse(name):
    raise ValueError(f"bare {name} in results.json")


# -- the printed table -------------------------------------------------------------------------


def test_table_shows_the_distance_by_step_in_100_columns():
    curve = [260.0, 57.0, 145.0, 160.0, 170.0, 180.0, 190.0, 200.0, 205.0, 207.0, 209.0]
    ml3 = {
        "mean_final_distance_mm": 57.0,
        "success_rate_10mm": 0.1,
        "inner_lr": 1e-3,
        "distance_by_inner_step_mm": curve,
        "final_distance_mm_per_goal": [57.0] * 10,
    }
    baselines = {
        "task_loss": {"mean_final_distance_mm": 200.6, "distance_by_inner_step_mm": curve[:3]},
        "ilqr_learned_model": {"mean_final_distance_mm": 2.257, "ilqr_iterations_mean": 5.0},
        "ilqr_true_model": {"mean_final_distance_mm": 0.3309},
        "behaviour_cloning": {"mean_final_distance_mm": 40.0},
    }
    table = _table(RunResult(ml3, baselines))
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["distance_at_inner_step_1_mm"] == ["57", "57", "-", "-", "-"]
    assert rows["distance_at_inner_step_10_mm"] == ["209", "-", "-", "-", "-"]
    assert rows["distance_at_inner_step_2_mm"][:2] == ["145", "145"]
    assert rows["ilqr_iterations_mean"] == ["-", "-", "5", "-", "-"]
    assert "final_distance_mm_per_goal" not in rows  # lists stay in results.json


# -- help that lists what can be set -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(discover_experiments()))
def test_every_config_field_is_documented(name):
    fields = describe_config(get_experiment(name).config_type)
    assert fields and all(f.doc for f in fields), [f.name for f in fields if not f.doc]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "reacher", "--help"],
        ["show", "reacher"],
        ["run", "--set", "inner_lr=0.1", "--out", "x", "reacher", "-h"],
    ],
)
def test_run_experiment_help_lists_its_fields(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for f in describe_config(get_experiment("reacher").config_type):
        assert f"  {f.name} (" in out, f.name
    assert "  inner_lr (float, default 0.001)" in out
    assert "  loss_hidden (tuple[int, ...], default [400, 400])" in out


def test_eval_help_names_its_own_output_folder_and_fields(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "runs/eval/<timestamp>" in out
    assert "  n_goals (int, default 10)" in out and "  lr_grid (" in out


# -- goals and starts on the command line ------------------------------------------------------

REACH_FAST = ["video_goals=0", "lr_grid=[0.001]", "ilqr_iters=1", "n_holdout_trajectories=1",
              "landscape_grid=0", "outer_steps=2"]  # fmt: skip


def _sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_reacher_goals_from_the_command_line(capsys, tmp_path):
    goals = [[0.12, 0.05], [-0.05, -0.15]]
    out = tmp_path / "run"
    argv = ["-q", "run", "reacher", "--smoke", "--out", str(out),
            *_sets(*REACH_FAST, f"goals={goals}")]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["extra"]["test_goals"] == goals and doc["config"]["n_test_goals"] == 2
    assert len(doc["metrics"]["final_distance_mm_per_goal"]) == 2


@pytest.mark.parametrize(
    "goals, expected",
    [("[[0.5, 0.0]]", "goals[0]"), ("[[0.1, 0.0], [0.0, 0.3]]", "goals[1]"), ("[0.1]", "goals")],
)
def test_unreachable_or_malformed_goals(capsys, tmp_path, goals, expected):
    out = tmp_path / "run"
    err = cli_error(
        capsys, ["run", "reacher", "--smoke", "--out", str(out), "--set", f"goals={goals}"]
    )
    assert expected in err
    assert not out.exists()


def test_eval_goals_from_the_command_line(tmp_path):
    loss = tmp_path / "loss"
    _save_reach_loss(loss)
    goals = [[0.0, 0.15], [0.1, -0.1]]
    out = tmp_path / "eval"
    argv = ["-q", "eval", "--loss", str(loss), "--smoke", "--out", str(out),
            *_sets(f"goals={goals}", "video_goals=0", "landscape_grid=0")]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["extra"]["test_goals"] == goals
    assert min(np.linalg.norm(np.subtract(t, g)) for t in doc["extra"]["tune_goals"]
               for g in goals) >= doc["config"]["goal_separation"]  # fmt: skip


def test_mountain_car_starts_from_the_command_line(tmp_path):
    starts = [[-0.9, 0.0], [-0.3, 0.02], [0.1, -0.5]]
    out = tmp_path / "run"
    argv = ["-q", "run", "mountain-car", "--smoke", "--out", str(out),
            "--set", f"starts={starts}"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    assert np.allclose(doc["extra"]["heldout_starts"], starts)
    first = doc["extra"]["first_success_step_per_heldout_start"]
    assert set(first) >= {"ml3_goal", "task_loss_sgd"}
    for steps in first.values():
        assert len(steps) == 3 and all(k is None or 0 <= k <= 10 for k in steps)


@pytest.mark.parametrize("starts", ["[[0.5, 0.0]]", "[[-0.5, 2.0]]", "[[-1.3, 0.0]]"])
def test_mountain_car_starts_outside_the_car_are_refused(capsys, tmp_path, starts):
    out = tmp_path / "run"
    argv = ["run", "mountain-car", "--smoke", "--out", str(out), "--set", f"starts={starts}"]
    err = cli_error(capsys, argv)
    assert "starts[0]" in err
    assert not out.exists()


@pytest.mark.parametrize("text", ["1e-3", "010", "0x1F", "true", "yes", "", "null", "a: b"])
def test_config_yaml_round_trips_strings_that_look_like_numbers(text):
    doc = {"config": {"loss_path": text, "lr": 1e-5, "n": 10, "flag": True, "none": None}}
    assert parse_yaml(dump_yaml(doc), "config.yaml") == doc


@pytest.mark.parametrize(
    ("config_type", "field", "value", "message"),
    [
        ("reacher", "inner_steps", True, r"^inner_steps: expected an integer >= 1, got True"),
        ("reacher", "outer_steps", -1, r"^outer_steps: expected an integer >= 0, got -1"),
        ("reacher", "outer_lr", float("inf"), r"^outer_lr: expected a positive number, got inf"),
        ("mountain", "meta_batch", 0, r"^meta_batch: expected an integer >= 1, got 0"),
        ("mountain", "inner_lr", float("nan"), r"^inner_lr: expected a positive number, got nan"),
        ("model", "fit_epochs", 2.5, r"^fit_epochs: expected an integer >= 1, got 2.5"),
        ("reacher", "pretrain_split", 1.0, r"^pretrain_split: expected a fraction in \[0, 1\)"),
        ("reacher", "policy_class", "goal", r"^policy_class: got 'goal'.*'goal_conditioned'"),
        ("reacher", "meta_objective", "ramps", r"^meta_objective: got 'ramps'.*did you mean"),
    ],
)
def test_config_fields_share_one_validation_with_one_message(config_type, field, value, message):
    kind = {"reacher": ReacherConfig, "mountain": MountainCarConfig, "model": ReachModelConfig}
    with pytest.raises(ValueError, match=message):
        kind[config_type](**{field: value})


# -- nested config groups (--set model.fit_epochs=...) -------------------------------------------


def test_config_group_takes_dotted_keys_and_mappings_layer_by_layer():
    config = build_config(
        ReacherConfig,
        {"model": {"fit_epochs": 3, "ensemble_members": 2}},  # e.g. the smoke size
        parse_set_options(["model.fit_epochs=7", "horizon=20"]),  # a later layer wins per key
    )
    assert config.model == ReachModelConfig(fit_epochs=7, ensemble_members=2)
    assert config.horizon == 20
    # config.yaml holds the group as a mapping and reads back to the same config
    assert config_to_dict(config)["model"]["fit_epochs"] == 7
    assert build_config(ReacherConfig, config_to_dict(config)) == config


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"fit_epochs": 3}, r"unknown config key 'fit_epochs'; did you mean 'model.fit_epochs'"),
        ({"model.fit_epoch": 3}, r"unknown config key 'model.fit_epoch'; did you mean"),
        ({"model": {"fit_epoch": 3}}, r"unknown config key 'model.fit_epoch'"),
        ({"model": 3}, r"^model: expected a mapping of its fields, got 3"),
        ({"horizon.x": 3}, r"unknown config key 'horizon.x'"),
        ({"model.fit_epochs": 2.5}, r"^model.fit_epochs: expected an integer, got 2.5"),
        ({"model.babble_trajectories": 1}, r"^model.babble_trajectories: expected an integer >= 2"),
    ],
)
def test_config_group_errors_name_the_full_key(layer, message):
    with pytest.raises(ConfigError, match=message):
        build_config(ReacherConfig, layer)


def test_show_lists_group_fields_with_their_docs():
    fields = {f.name: f for f in describe_config(ReacherConfig)}
    assert "model" not in fields and "fit_epochs" not in fields
    assert fields["model.fit_epochs"].default == 100
    assert "first model fit" in fields["model.fit_epochs"].doc
