"""The shaped-sine experiment: smoke run end to end, the meta-test seeing no prior, sanity of the
landscape, resume, and (slow) the paper's claim that the shaped loss recovers theta* more often."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch

from experiments import shaped_sine
from ml3_robotics.app.runs import (
    ConfigError,
    build_config,
    config_to_dict,
    parse_set_options,
    write_results,
)
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import MetaTrainConfig
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss
from ml3_robotics.tasks.sine import (
    SHAPED_SINE_FEATURES,
    ShapedSineStepper,
    ShapedSineTasks,
    recovery_rate,
    shaped_mse,
    shaped_sine_landscape,
    shaped_sine_train,
)


def _smoke_config(**overrides):
    return build_config(shaped_sine.ShapedSineConfig, shaped_sine.EXPERIMENT.smoke, overrides)


def test_smoke_run_writes_metrics_plots_and_losses(tmp_path):
    config = _smoke_config()
    ctx = RunContext(tmp_path, seed=0, smoke=True)
    result = shaped_sine.run(config, ctx)
    write_results(ctx, "shaped-sine", config, result)
    doc = json.loads((tmp_path / "results.json").read_text())
    for section in (
        doc["metrics"],
        doc["baselines"]["unshaped_ml3"],
        doc["baselines"]["mse"],
        doc["baselines"]["mse_tuned_lr"],
    ):
        assert 0.0 <= section["recovery_rate"] <= 1.0
        assert math.isfinite(section["mean_abs_error"])
    assert doc["baselines"]["mse_tuned_lr"]["lr"] in shaped_sine.LR_GRID
    for name in ("loss_landscape.png", "recovery_vs_step.png", "metrics.csv"):
        assert (tmp_path / name).stat().st_size > 0
    # the shaped loss is the run's main loss, and loads back with the right features
    main, _ = load_learned_loss(tmp_path / "loss", expect_features=SHAPED_SINE_FEATURES)
    shaped, _ = load_learned_loss(tmp_path / "loss_shaped.safetensors")
    unshaped, side = load_learned_loss(tmp_path / "loss_unshaped.json")
    assert side["provenance"]["variant"] == "unshaped"
    for k, v in main.state_dict().items():
        assert torch.equal(v, shaped.state_dict()[k])
    assert any(not torch.equal(v, unshaped.state_dict()[k]) for k, v in main.state_dict().items())
    expected_updates = config.outer_steps * config.inner_steps
    for variant in ("shaped", "unshaped"):
        assert (tmp_path / "checkpoints" / f"{variant}.safetensors").is_file()
    assert len(doc["extra"]["recovery_vs_step"]["mse"]) == config.test_steps + 1
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * expected_updates // config.inner_steps


def test_resume_matches_uninterrupted(tmp_path):
    config = _smoke_config()
    full = shaped_sine.run(config, RunContext(tmp_path / "a", seed=3))
    # Stop the shaped trainer part-way (mid-episode) and the unshaped one before it starts.
    ctx_b = RunContext(tmp_path / "b", seed=3)
    tasks = ShapedSineTasks(theta0_range=config.theta0_range)
    _, trainer = shaped_sine._meta_train("shaped", config, tasks, ctx_b)
    trainer.config = MetaTrainConfig(
        4, lr=config.outer_lr, seed=3, checkpoint_every=config.checkpoint_every
    )
    trainer.run()
    assert trainer.iteration % config.inner_steps != 0  # resumes inside an episode
    resumed = shaped_sine.run(config, RunContext(tmp_path / "b", seed=3, resume=True))
    assert resumed.metrics == full.metrics
    assert resumed.baselines == full.baselines
    a, _ = load_learned_loss(tmp_path / "a" / "loss_shaped")
    b, _ = load_learned_loss(tmp_path / "b" / "loss_shaped")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])


def test_meta_test_takes_no_prior():
    params = inspect.signature(shaped_sine_train).parameters
    assert list(params) == ["loss_fn", "theta0", "x", "y", "inner"]
    assert not any(
        "star" in p or "prior" in p for p in inspect.signature(shaped_sine_landscape).parameters
    )


def test_mse_landscape_minimum_at_theta_star():
    theta_star = 0.7
    thetas = torch.linspace(-7.0, 7.0, 1401, dtype=torch.float64)  # step 0.01, holds 0.7
    x = torch.linspace(-5.0, 5.0, 101, dtype=torch.float64)
    values = shaped_sine_landscape(shaped_mse, thetas, x, torch.sin(theta_star * x))
    best = thetas[values.argmin()]
    assert abs(float(best) - theta_star) < 1e-9
    assert float(values.min()) < 1e-20
    # the landscape is not convex: MSE has local minima away from theta* (the paper's point)
    interior = values[1:-1]
    local_minima = (interior < values[:-2]) & (interior < values[2:])
    assert int(local_minima.sum()) > 1


def test_sgd_on_mse_equals_closed_form_step():
    # one meta-test step on MSE: theta - lr * mean(2 (sin(theta x) - y) x cos(theta x))
    g = torch.Generator().manual_seed(0)
    theta_star, theta0, x, y = ShapedSineTasks().sample(5, 8, g, torch.float64)
    trace = shaped_sine_train(shaped_mse, theta0, x, y, InnerOptimizer("sgd", lr=0.3, steps=1))
    t = theta0[:, None]
    grad = (2 * (torch.sin(t * x) - y) * x * torch.cos(t * x)).mean(dim=1)
    torch.testing.assert_close(trace[:, 1], theta0 - 0.3 * grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(trace[:, 0], theta0)
    # starting at theta* is recovered at step 0
    exact = shaped_sine_train(shaped_mse, theta_star, x, y, InnerOptimizer("sgd", lr=0.3, steps=2))
    assert torch.equal(recovery_rate(exact, theta_star), torch.ones(3, dtype=torch.float64))


def test_stepper_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    loss = LearnedLoss(
        LossConfig(
            FeatureSpec(SHAPED_SINE_FEATURES),
            hidden=(4,),
            activation="elu",
            output_activation="none",
            bias_init=0.01,
        )
    ).double()
    inner = InnerOptimizer("sgd", lr=1.0, steps=3)
    for shaped in (True, False):
        stepper = ShapedSineStepper(
            loss, ShapedSineTasks(), inner, batch=2, n_points=5, shaped=shaped
        )
        stepper(0, torch.Generator().manual_seed(1))  # a first step, so the state is mid-episode
        state = stepper.state_dict()

        def meta(stepper=stepper, state=state):
            stepper.load_state_dict(state)
            return stepper(1, torch.Generator()).loss

        w = loss.net[0].weight
        (grad,) = torch.autograd.grad(meta(), w)
        eps = 1e-6
        with torch.no_grad():
            w[0, 1] += eps
            up = meta()
            w[0, 1] -= 2 * eps
            down = meta()
            w[0, 1] += eps
        assert abs(float((up - down) / (2 * eps)) - float(grad[0, 1])) < 1e-6


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~6 min alone; the shared machine has needed 11
def test_full_size_shaped_loss_beats_mse(tmp_path):
    config = shaped_sine.ShapedSineConfig()
    result = shaped_sine.run(config, RunContext(tmp_path, seed=0))
    best_mse = max(
        result.baselines["mse"]["recovery_rate"], result.baselines["mse_tuned_lr"]["recovery_rate"]
    )
    # 200 pairs: one standard error of a rate is at most 0.035; 0.2 is far beyond noise.
    assert result.metrics["recovery_rate"] >= best_mse + 0.2


def test_config_round_trips_through_config_yaml_and_validates():
    config = _smoke_config(**parse_set_options(["theta0_range=[-5, 5]", "feature_scale=[5, 1, 1]"]))
    assert config.theta0_range == (-5.0, 5.0)
    assert build_config(shaped_sine.ShapedSineConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match="theta0_range"):
        _smoke_config(theta0_range=[1.0, -1.0])
    with pytest.raises(ConfigError, match="tolerance"):
        _smoke_config(tolerance=0.0)
