"""The CLI: artefacts of a run, and a clear one-line error with exit 2 for each bad input."""

import json
import subprocess
import sys

import pytest
import yaml

from ml3_robotics.app.cli import main
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.serialization import save_learned_loss


def _smoke(out, *sets: str) -> list[str]:
    """argv of a smoke-size sine run into ``out`` with ``--set`` for each of ``sets``."""
    argv = ["run", "sine", "--smoke", "--out", str(out)]
    for item in sets:
        argv += ["--set", item]
    return argv


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml3r: error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sine"
    assert main(["run", "sine", "--smoke", "--seed", "3", "--out", str(out)]) == 0
    return out


def test_run_writes_the_artefacts(smoke_run):
    for name in (
        "config.yaml",
        "results.json",
        "metrics.csv",
        "loss.safetensors",
        "loss.json",
        "mse_vs_step.png",
        "mse_vs_step_by_depth.png",
        "checkpoints/meta_train.safetensors",
    ):
        assert (smoke_run / name).is_file(), name
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["experiment"] == "sine" and results["seed"] == 3
    assert set(results) >= {"config", "metrics", "baselines", "timing", "versions"}
    assert results["metrics"]["test_mse"] > 0 and results["baselines"]["mse"]["test_mse"] > 0
    assert results["config"]["outer_steps"] == 6  # the smoke size
    config = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert config["config"] == results["config"] and config["smoke"] is True


def test_same_seed_same_numbers(smoke_run, tmp_path):
    again = tmp_path / "again"
    assert main(["run", "sine", "--smoke", "--seed", "3", "--out", str(again)]) == 0
    a = json.loads((smoke_run / "results.json").read_text())
    b = json.loads((again / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["baselines"] == b["baselines"]


def test_list(capsys):
    assert main(["list"]) == 0
    assert "sine" in capsys.readouterr().out


def test_unknown_experiment_suggests(capsys):
    err = _error(capsys, ["run", "sinus", "--smoke"])
    assert "unknown experiment 'sinus'" in err and "did you mean 'sine'" in err


def test_unknown_set_key_suggests(capsys, tmp_path):
    err = _error(capsys, _smoke(str(tmp_path / "x"), "outer_step=3"))
    assert "unknown config key 'outer_step'" in err and "'outer_steps'" in err
    assert not (tmp_path / "x").exists()


def test_mistyped_set_value(capsys, tmp_path):
    err = _error(capsys, _smoke(str(tmp_path / "x"), "outer_steps=many"))
    assert "outer_steps: expected an integer, got 'many'" in err
    err = _error(capsys, _smoke(str(tmp_path / "x"), "inner_lr"))
    assert "expected key=value" in err
    err = _error(capsys, _smoke(str(tmp_path / "x"), "test_steps=0"))
    assert "test_steps" in err


def test_missing_and_corrupt_loss_file(capsys, tmp_path):
    err = _error(capsys, _smoke(str(tmp_path / "a"), f"loss_path={tmp_path}/no.json"))
    assert "does not exist" in err
    (tmp_path / "bad.json").write_text("]]")
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    err = _error(capsys, _smoke(str(tmp_path / "b"), f"loss_path={tmp_path}/bad"))
    assert "not valid JSON" in err


def test_loss_with_other_features_is_refused(capsys, tmp_path):
    other = LearnedLoss(LossConfig(FeatureSpec(("x", "y_pred", "y_target"))))
    save_learned_loss(other, tmp_path / "other")
    err = _error(capsys, _smoke(str(tmp_path / "c"), f"loss_path={tmp_path}/other"))
    assert "does not fit" in err and "'x'" in err


def test_saved_loss_evaluates_without_meta_training(smoke_run, tmp_path):
    out = tmp_path / "eval"
    assert (
        main(
            [
                "run",
                "sine",
                "--smoke",
                "--seed",
                "3",
                "--out",
                str(out),
                "--set",
                f"loss_path={smoke_run / 'loss.safetensors'}",
            ]
        )
        == 0
    )
    a = json.loads((smoke_run / "results.json").read_text())["metrics"]
    b = json.loads((out / "results.json").read_text())["metrics"]
    assert b["test_mse"] == pytest.approx(a["test_mse"], rel=1e-6)
    assert not (out / "checkpoints" / "meta_train.safetensors").exists()


def test_occupied_output_dir_is_refused(capsys, smoke_run):
    before = (smoke_run / "results.json").read_bytes()
    err = _error(capsys, ["run", "sine", "--smoke", "--out", str(smoke_run)])
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert (smoke_run / "results.json").read_bytes() == before


def test_resume_refuses_overrides_and_empty_dirs(capsys, smoke_run, tmp_path):
    err = _error(capsys, ["run", "sine", "--resume", "--out", str(tmp_path / "none")])
    assert "no run to resume" in err
    err = _error(
        capsys, ["run", "sine", "--resume", "--set", "outer_steps=9", "--out", str(smoke_run)]
    )
    assert "--resume takes the run's own config.yaml" in err


def test_bad_config_file(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("- a list\n")
    err = _error(
        capsys,
        [
            "run",
            "sine",
            "--smoke",
            "--config",
            str(tmp_path / "c.yaml"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert "must hold a mapping" in err


def test_console_script_exit_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ml3_robotics", "run", "nope"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.startswith("ml3r: error: unknown experiment")
