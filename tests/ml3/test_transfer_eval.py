"""``ml3r eval``: a saved 2-link reach loss applied to a 3-link arm end to end, and refusals."""

import json

import numpy as np
import pytest
import torch

from ml3_robotics.app.cli import main
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss, save_learned_loss
from ml3_robotics.evaluation.reach import METHODS, ReachEvalConfig, evaluate_reach
from ml3_robotics.evaluation.robots import transfer_grid
from ml3_robotics.mbrl.loop import ReachModelConfig, babble, fit_reach_model
from ml3_robotics.reporting.reach_figures import write_reach_figures
from ml3_robotics.tasks.reach import reach_feature_spec
from robots.arm import ArmSim, SimulationError, load_arm_config, sample_goals


@pytest.fixture(scope="module")
def two_link_loss(tmp_path_factory):
    """A reach loss as the reacher saves it (meta-training itself is the reacher's test)."""
    loss = LearnedLoss(
        LossConfig(
            reach_feature_spec(), hidden=(16, 16), activation="elu", output_activation="softplus"
        )
    )
    loss.reset_parameters(torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("loss") / "loss"
    save_learned_loss(
        loss, path, provenance={"arm": "reacher2", "inner_steps": 2, "inner_lr": 1e-3}
    )
    return path


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml3r: error: ") and "\n" not in err, err
    return err


def test_eval_two_link_loss_on_three_link_arm(two_link_loss, tmp_path):
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--loss",
        str(two_link_loss),
        "--robot",
        "arm3",
        "--smoke",
        "--goals",
        "3",
        "--policy-depth",
        "3",
        "--policy-width",
        "4",
        "--seed",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["experiment"] == "eval" and doc["seed"] == 1
    methods = {"ml3": doc["metrics"], **doc["baselines"]}
    assert set(methods) == set(METHODS)
    arm = load_arm_config("arm3")
    goals = np.asarray(doc["extra"]["test_goals"])
    assert goals.shape == (3, 2)
    # Goals of the 3-link arm, within its reach (0.24 m) and apart from the tuning goals.
    assert (np.linalg.norm(goals, axis=1) <= arm.reach + 1e-9).all()
    tune = np.asarray(doc["extra"]["tune_goals"])
    assert np.linalg.norm(goals[:, None] - tune[None], axis=-1).min() >= 0.02
    assert doc["extra"]["robot"]["n_links"] == 3
    for name, m in methods.items():
        per_goal = m["final_distance_mm_per_goal"]
        assert len(per_goal) == 3, name
        # The arm starts stretched along +x, so no method ends farther than 2 * reach away.
        assert 0 <= m["mean_final_distance_mm"] <= m["max_final_distance_mm"] <= 2000 * arm.reach
        assert m["real_env_steps"] >= 3 * doc["config"]["horizon"]
    # K and the inner lr come from the loss's sidecar; the policy has the asked architecture.
    assert doc["extra"]["inner_steps"] == 2 and doc["extra"]["inner_lr"] == 1e-3
    assert doc["extra"]["policy_hidden"] == [4, 4, 4]
    assert doc["extra"]["loss_provenance"]["arm"] == "reacher2"
    for name in ("config.yaml", "final_distance_per_goal.png", "ee_paths.png"):
        assert (out / name).is_file(), name


def test_loss_with_other_features_is_refused(capsys, tmp_path):
    other = LearnedLoss(LossConfig(FeatureSpec(("x", "y_pred", "y_target"))))
    save_learned_loss(other, tmp_path / "sine_loss")
    out = tmp_path / "never"
    err = _error(
        capsys,
        [
            "eval",
            "--loss",
            str(tmp_path / "sine_loss"),
            "--robot",
            "arm3",
            "--smoke",
            "--out",
            str(out),
        ],
    )
    assert "learned loss does not fit" in err and "'ee_error_x_m'" in err
    assert not out.exists()  # refused before anything was written


def test_unknown_robot_and_missing_loss_are_refused(capsys, two_link_loss, tmp_path):
    err = _error(
        capsys,
        [
            "eval",
            "--loss",
            str(two_link_loss),
            "--robot",
            "arm33",
            "--smoke",
            "--out",
            str(tmp_path / "a"),
        ],
    )
    assert "unknown arm configuration 'arm33'" in err and "'arm3'" in err
    err = _error(
        capsys, ["eval", "--loss", str(tmp_path / "none"), "--smoke", "--out", str(tmp_path / "b")]
    )
    assert "does not exist" in err
    err = _error(
        capsys,
        [
            "eval",
            "--loss",
            str(two_link_loss),
            "--policy-depth",
            "0",
            "--smoke",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert "policy_depth: expected an integer >= 1, got 0" in err


def test_transfer_grid_covers_the_study():
    grid = transfer_grid()
    assert len(grid) >= 12
    links = {arm.n_links for arm in grid.values()}
    assert {2, 3, 4} <= links
    base = grid["reacher2"]
    assert grid["reacher2 length x2"].link_lengths == tuple(2 * v for v in base.link_lengths)
    assert grid["reacher2 mass x0.5"].link_masses == tuple(0.5 * v for v in base.link_masses)
    assert grid["reacher2 torque x2"].torque_limits == tuple(2 * v for v in base.torque_limits)


class _FragileSim:
    """A stand-in simulator whose rollouts blow up when the first torque exceeds 0.1 N*m."""

    def __init__(self, threshold=0.1):
        self.config = load_arm_config("reacher2")
        self.nu, self.nx, self.threshold = 2, 4, threshold

    def rollout(self, x0, U):
        bad = U[:, 0, 0] > self.threshold
        if bad.any():
            raise SimulationError(f"blew up in batch entries {np.flatnonzero(bad).tolist()}")
        return np.zeros((U.shape[0], U.shape[1] + 1, self.nx))


def test_babbling_redraws_trajectories_that_blow_up():
    X, U = babble(_FragileSim(), 6, 10, 4, np.random.default_rng(0))
    assert X.shape == (6, 11, 4) and U.shape == (6, 10, 2)
    assert (U[:, 0, 0] <= 0.1).all()  # every kept trajectory is one that stayed finite
    assert np.abs(U).max() <= 0.2  # still within the torque limits
    with pytest.raises(SimulationError, match="still blew up"):
        babble(_FragileSim(threshold=-1.0), 3, 10, 4, np.random.default_rng(0))


def test_evaluate_reach_writes_nothing_and_the_figure_writer_writes_the_figures(
    two_link_loss, tmp_path
):
    arm = load_arm_config("reacher2")
    sim = ArmSim(arm, "mujoco")
    model_config = ReachModelConfig(
        babble_trajectories=3, ensemble_members=2, ensemble_hidden=(8,), fit_epochs=1
    )
    model, buffer = fit_reach_model(arm, sim, model_config, horizon=10, seed=0)
    config = ReachEvalConfig(
        horizon=10, inner_steps=1, policy_hidden=(8,), lr_grid=(1e-3,), ilqr_iters=1,
        n_holdout_trajectories=2, video_goals=0, curve_steps=1, landscape_grid=3,
        baseline_methods=("sgd",),
    )  # fmt: skip
    loss, _ = load_learned_loss(two_link_loss)
    goals = sample_goals(arm, 4, 0, min_radius=0.3)
    ctx = RunContext(tmp_path, 0)
    evaluation = evaluate_reach(
        loss, arm, model, goals[:2], goals[2:], config, ctx,
        model_env_steps=buffer.n_transitions_added, sim=sim,
    )  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # data only
    assert set(evaluation.results) == set(METHODS)
    assert evaluation.paths["ml3"].shape == (2, 11, arm.nx)
    write_reach_figures(ctx, evaluation, loss, model, sim, config)
    written = {p.name for p in tmp_path.iterdir()}
    assert {"final_distance_per_goal.png", "ee_paths.png", "loss_landscape.png"} <= written
