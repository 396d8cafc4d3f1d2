"""The MountainCar experiment runs end to end at smoke size and reports every method."""

import json

import pytest
import torch

from experiments.mountain_car import (
    EXPERIMENT,
    TASK_LR_GRID,
    MountainCarConfig,
    heldout_starts,
    train_starts,
)
from ml3_robotics.app.runs import ConfigError, build_config, parse_set_options, write_results
from ml3_robotics.core.errors import FeatureSpecError
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.task_losses import IntermediateGoal
from ml3_robotics.tasks.mountain_car import objective_for
from robots.mountain_car import MountainCarParams


def _run(tmp_path, sets=(), seed=0):
    config = build_config(
        EXPERIMENT.config_type, dict(EXPERIMENT.smoke), parse_set_options(list(sets))
    )
    ctx = RunContext(tmp_path, seed, smoke=True)
    result = EXPERIMENT.run(config, ctx)
    write_results(ctx, EXPERIMENT.name, config, result)
    return config, result


def test_smoke_run_both_variants_writes_every_artefact(tmp_path):
    _run(tmp_path, ["extra=both"])
    for name in (
        "results.json",
        "metrics.csv",
        "success_vs_step.png",
        "loss_landscape.png",
        "rollout.gif",
        "loss_goal.safetensors",
        "loss_goal.json",
        "loss_none.safetensors",
        "loss_none.json",
    ):
        assert (tmp_path / name).is_file(), name
        assert (tmp_path / name).stat().st_size > 0, name
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["extra"]["main_method"] == "ml3_goal"
    # with and without the intermediate goal, and the task-loss baseline, same metric names
    assert {"ml3_none", "task_loss_sgd"} <= set(doc["baselines"])
    keys = {"success_train_k1", "success_train_k2", "success_heldout_k1", "success_heldout_k2"}
    keys |= {"success_train_k0", "success_heldout_k0"}
    for metrics in (
        doc["metrics"],
        doc["baselines"]["ml3_none"],
        doc["baselines"]["task_loss_sgd"],
    ):
        assert keys <= set(metrics)
        assert all(0.0 <= metrics[k] <= 1.0 for k in keys)
    # every method starts from the same fresh policies: identical success before any step
    methods = (doc["metrics"], doc["baselines"]["ml3_none"], doc["baselines"]["task_loss_sgd"])
    assert len({m["success_heldout_k0"] for m in methods}) == 1
    assert doc["baselines"]["task_loss_sgd"]["lr"] in TASK_LR_GRID
    # box-constrained iLQR from every warm start, success after 1, 2 and the last iteration
    for init in ("zeros", "plus", "minus", "random"):
        entry = doc["baselines"][f"ilqr_{init}"]
        assert {"success_train_k1", "success_train_k2", "success_train_last"} <= set(entry)
        assert {"success_heldout_k1", "success_heldout_last", "converged_heldout"} <= set(entry)
    assert set(doc["extra"]["success_curves"]["ilqr_zeros"]) == {"train", "heldout"}
    # iLQR's first success per held-out start, beside the gradient methods': the first reported
    # iteration count at which the start reaches the flag, matching the success rates
    first = doc["extra"]["first_success_step_per_heldout_start"]
    curves = doc["extra"]["success_curves"]
    for init in ("zeros", "plus", "minus", "random"):
        per_start = first[f"ilqr_{init}"]
        assert len(per_start) == len(doc["extra"]["heldout_starts"])
        for k, rate in curves[f"ilqr_{init}"]["heldout"].items():
            reached_by_k = sum(f is not None and f <= int(k) for f in per_start) / len(per_start)
            assert rate <= reached_by_k + 1e-12  # a start that succeeds at k counts as first <= k
            if k == "1":
                assert rate == reached_by_k
    assert len(first["ml3_goal"]) == len(doc["extra"]["heldout_starts"])
    # the meta-train log has rows for both objectives, with the extra term only for "goal"
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert "IntermediateGoal_term" in header
    variants = {r.split(",")[0] for r in rows[1:]}
    assert variants == {"goal", "none"}


@pytest.mark.parametrize("extra", ["goal", "none"])
def test_set_extra_selects_one_objective(tmp_path, extra):
    config = build_config(MountainCarConfig, parse_set_options([f"extra={extra}"]))
    assert config.extra == extra
    terms = objective_for(extra, 1.0, config.task_loss).extras
    assert [type(t) for t in terms] == ([IntermediateGoal] if extra == "goal" else [])


def test_single_variant_run_and_reload_of_its_loss(tmp_path):
    _, result = _run(tmp_path / "a", ["extra=none", "ilqr=false"])
    assert result.extra["main_method"] == "ml3_none"
    assert "ml3_goal" not in result.baselines
    # a saved loss is re-evaluated without meta-training, giving the same meta-test figures
    loss_path = str(tmp_path / "a" / "loss_none")
    _, again = _run(tmp_path / "b", ["extra=none", "ilqr=false", f"loss_path={loss_path}"])
    assert not (tmp_path / "b" / "checkpoints" / "meta_train_none.safetensors").exists()
    assert again.metrics == result.metrics


def test_power_feature_loss_reads_p_u_and_v_u_and_reloads_only_with_the_same_features(tmp_path):
    _, result = _run(tmp_path / "a", ["extra=none", "ilqr=false", "power_feature=true"])
    spec = json.loads((tmp_path / "a" / "loss_none.json").read_text())
    assert "next_state_action.1" in json.dumps(spec)
    loss_path = str(tmp_path / "a" / "loss_none")
    _, again = _run(
        tmp_path / "b",
        ["extra=none", "ilqr=false", "power_feature=true", f"loss_path={loss_path}"],
    )
    assert again.metrics == result.metrics
    with pytest.raises(FeatureSpecError, match="next_state_action"):
        _run(tmp_path / "c", ["extra=none", "ilqr=false", f"loss_path={loss_path}"])


def test_bad_extra_is_refused_with_a_hint():
    with pytest.raises(ConfigError, match="goal"):
        build_config(MountainCarConfig, parse_set_options(["extra=gaol"]))
    with pytest.raises(ValueError, match="loss_path"):
        MountainCarConfig(extra="both", loss_path="x")


def test_heldout_starts_are_seeded_and_apart_from_training():
    config = MountainCarConfig()
    starts = heldout_starts(config, seed=0)
    assert starts.shape == (config.heldout, 2) and config.heldout >= 20
    torch.testing.assert_close(starts, heldout_starts(config, seed=0), rtol=0, atol=0)
    assert not torch.equal(starts, heldout_starts(config, seed=1))
    p0 = MountainCarParams().start[0]
    train = train_starts(config, 1000, torch.Generator().manual_seed(0))
    lo, hi = train[:, 0].min().item(), train[:, 0].max().item()
    assert p0 - config.train_spread[0] <= lo and hi <= p0 + config.train_spread[0]
    # every held-out position lies outside the training range, by at least the gap
    p = starts[:, 0]
    assert bool(((p < lo - config.heldout_gap) | (p > hi + config.heldout_gap)).all())
    assert bool((p >= config.heldout_p[0]).all() and (p <= config.heldout_p[1]).all())


def _heldout_success_after_one_step(tmp_path, seed, outer_steps):
    config = build_config(
        MountainCarConfig,
        parse_set_options(
            ["extra=energy", "ilqr=false", f"outer_steps={outer_steps}", "landscape_grid=5"]
        ),
    )
    result = EXPERIMENT.run(config, RunContext(tmp_path / f"s{seed}n{outer_steps}", seed))
    return result.metrics["success_heldout_k1"], result.baselines["task_loss_sgd"]


@pytest.mark.slow
def test_meta_training_lifts_heldout_success_above_the_untrained_loss_and_the_task_loss(tmp_path):
    # Issue 20's generalisation check at a small size (200 meta-updates, 3 seeds, 24 held-out
    # starts outside the training region, one fresh policy each). Measured: the meta-trained
    # energy-shaped loss 0.33/0.29/0.33 after one step, the same M_phi before meta-training
    # 0.38/0.04/0.08, the tuned task loss 0.12/0.08/0.33. The margins (3 of 24 starts per seed
    # over the untrained loss, 2.4 over the task loss) fail when meta-training stops carrying
    # over to starts it never saw.
    trained, untrained, task = [], [], []
    for seed in range(3):
        rate, baseline = _heldout_success_after_one_step(tmp_path, seed, 200)
        trained.append(rate)
        task.append(baseline["success_heldout_k1"])
        untrained.append(_heldout_success_after_one_step(tmp_path, seed, 0)[0])
    mean = sum(trained) / 3
    assert mean >= sum(untrained) / 3 + 3 / 24, (trained, untrained)
    assert mean >= sum(task) / 3 + 2.4 / 24, (trained, task)
