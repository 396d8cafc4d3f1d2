"""Fitting a dynamics model with a learned loss: objectives, inner loop, meta-gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml3_robotics.core.inner import InnerOptimizer, call
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.mbrl.arm_data import ArmData, true_reaches
from ml3_robotics.mbrl.model_loss import ModelFitSettings, ModelLossObjective
from ml3_robotics.models.learned_dynamics import gaussian_nll
from ml3_robotics.tasks.model_fitting import (
    MODEL_LOSS_FEATURES,
    Transitions,
    fit_model,
    fitted_parameters,
    fitting_objective,
    fresh_model,
    imitate_mse,
    model_loss_feature_spec,
    model_loss_features,
    rollout_error,
)
from ml3_robotics.tasks.reach import ReachTask
from robots.arm import ArmSim, load_arm_config, sample_goals


@pytest.fixture(scope="module")
def arm2():
    return load_arm_config("reacher2")


@pytest.fixture(scope="module")
def data2(arm2):
    return ArmData.collect(arm2, 3, n_fit=3, n_check=2, n_prior=2, horizon=12, hold=4)


def _model(arm, data, dtype=torch.float32, hidden=(8,), members=2, seed=0):
    tr = Transitions.of(data.fit_X, data.fit_U, dtype)
    return fresh_model(arm, tr, hidden, members, torch.Generator().manual_seed(seed)), tr


def test_arm_data_is_reproducible_and_prior_starts_are_broad(arm2, data2):
    again = ArmData.collect(arm2, 3, n_fit=3, n_check=2, n_prior=2, horizon=12, hold=4)
    np.testing.assert_array_equal(data2.fit_X, again.fit_X)
    np.testing.assert_array_equal(data2.prior_X, again.prior_X)
    assert data2.fit_X.shape == (3, 13, 4) and data2.check_U.shape == (2, 12, 2)
    assert np.all(data2.fit_X[:, 0] == 0)  # babbling starts at rest
    assert np.all(np.abs(data2.prior_X[:, 0]) > 0)  # the prior's rollouts start elsewhere
    assert not np.allclose(data2.check_X, data2.fit_X[:2])
    none = ArmData.collect(arm2, 3, n_fit=2, n_check=2, n_prior=0, horizon=5, hold=4)
    assert none.prior_X is None


def test_reaching_motions_reach_their_goals_from_rest(arm2):
    X, U = true_reaches(ArmSim(arm2, "mujoco"), 2, 65, np.random.default_rng(5))
    goals = sample_goals(arm2, 2, np.random.default_rng(5), min_radius=0.3)  # the same draw
    assert X.shape == (2, 66, 4) and U.shape == (2, 65, 2) and np.all(X[:, 0] == 0)
    assert np.all(ReachTask(arm2, goals, 65).final_distance(X) < 0.005)
    assert np.all(np.abs(U) <= np.asarray(arm2.torque_limits) + 1e-12)


def test_reaching_motions_are_drawn_after_the_babbling(arm2, data2):
    with_reaches = ArmData.collect(arm2, 3, n_fit=3, n_check=2, n_prior=2, horizon=12, hold=4,
                                   n_reach=2)  # fmt: skip
    for name in ("fit_X", "fit_U", "check_X", "prior_X", "prior_U"):
        np.testing.assert_array_equal(getattr(with_reaches, name), getattr(data2, name))
    assert data2.reach_X is None and with_reaches.reach_X.shape == (2, 13, 4)


def test_reach_term_adds_its_weighted_error_to_the_meta_objective(arm2, data2):
    loss = LearnedLoss(LossConfig(model_loss_feature_spec(), hidden=(4,), activation="elu"))
    settings = ModelFitSettings((8,), 1, InnerOptimizer("adam", lr=1e-2, steps=2), (2,))
    with pytest.raises(ValueError, match="reach_weight > 0 needs"):
        ModelLossObjective(loss, [data2], settings, arms_per_iteration=1, meta_horizon=5,
                           prior_weight=0.0, reach_weight=1.0)  # fmt: skip
    data = ArmData.collect(arm2, 3, n_fit=3, n_check=2, n_prior=0, horizon=12, hold=4,
                           n_reach=2)  # fmt: skip
    terms = {}
    for weight in (0.0, 1.0, 2.0):
        objective = ModelLossObjective(
            loss, [data], settings, arms_per_iteration=1, meta_horizon=5, prior_weight=0.0,
            reach_weight=weight,
        )  # fmt: skip
        terms[weight], metrics = objective.item_loss(0, torch.Generator().manual_seed(1))
        assert ("reach_error" in metrics) == (weight > 0)
    reach_term = terms[1.0] - terms[0.0]
    assert reach_term > 0  # log(1 + error) of a fitted model's real error
    torch.testing.assert_close(terms[2.0] - terms[0.0], 2 * reach_term)


def test_mse_and_nll_objectives_match_direct_computation(arm2, data2):
    model, tr = _model(arm2, data2)
    z = model.normalize_input(tr.x, tr.u)
    y = model.normalize_delta(tr.x_next - tr.x)
    mean, logvar = model.forward_normalized(z)
    mse = fitting_objective(model, arm2, tr, "mse")(fitted_parameters(model, "mse"))
    torch.testing.assert_close(mse, (mean - y).pow(2).mean(dim=(1, 2)).sum())
    params = fitted_parameters(model, "nll")
    nll = fitting_objective(model, arm2, tr, "nll")(params)
    bound = model.config.logvar_bound_coef * (model.max_logvar.sum() - model.min_logvar.sum())
    torch.testing.assert_close(nll, gaussian_nll(mean, logvar, y).mean(dim=(1, 2)).sum() + bound)
    assert "max_logvar" in params and "max_logvar" not in fitted_parameters(model, "mse")
    with pytest.raises(ValueError, match="loss: expected one of"):
        fitting_objective(model, arm2, tr, "mae")


def test_fit_model_equals_torch_adam_on_the_module(arm2, data2):
    model, tr = _model(arm2, data2, seed=1)
    opt = InnerOptimizer("adam", lr=1e-2, steps=5)
    fitted = fit_model(model, arm2, tr, "mse", opt)
    reference, _ = _model(arm2, data2, seed=1)
    trained = [p for k, p in reference.named_parameters() if "logvar" not in k]
    for p in trained:
        p.requires_grad_(True)
    adam = torch.optim.Adam(trained, lr=1e-2)
    objective = fitting_objective(reference, arm2, tr, "mse")
    for _ in range(5):
        adam.zero_grad()
        objective(dict(reference.named_parameters())).backward()
        adam.step()
    for k, v in reference.named_parameters():
        if k in fitted:
            torch.testing.assert_close(fitted[k], v.detach(), rtol=1e-5, atol=1e-6)
    # and the fit helps: the training MSE went down
    before = objective(fitted_parameters(_model(arm2, data2, seed=1)[0], "mse"))
    assert float(objective(fitted)) < 0.9 * float(before)


def test_features_per_dimension_and_one_loss_for_any_link_count(arm2, data2):
    model, tr = _model(arm2, data2)
    y = model.normalize_delta(tr.x_next - tr.x)
    mean, _ = model.forward_normalized(model.normalize_input(tr.x, tr.u), mean_only=True)
    f = model_loss_features(arm2, mean, tr, y)
    assert f.shape == (2, tr.x.shape[0], 4, len(MODEL_LOSS_FEATURES))
    torch.testing.assert_close(f[..., 2], f[..., 0] - f[..., 1])
    assert f[..., :2, 3].eq(0).all() and f[..., 2:, 3].eq(1).all()
    torque = tr.u / torch.tensor(arm2.torque_limits)
    torch.testing.assert_close(f[0, :, 0, 5], torque[:, 0])
    torch.testing.assert_close(f[0, :, 3, 5], torque[:, 1])  # q2dot belongs to joint 2
    loss = LearnedLoss(LossConfig(model_loss_feature_spec(), hidden=(8,)))
    arm3 = load_arm_config("arm3")
    d3 = ArmData.collect(arm3, 0, n_fit=2, n_check=1, n_prior=0, horizon=6, hold=3)
    for arm, data in ((arm2, data2), (arm3, d3)):
        m, t = _model(arm, data)
        fitted = fit_model(m, arm, t, loss, InnerOptimizer("sgd", lr=1e-2, steps=2))
        assert set(fitted) == set(fitted_parameters(m, loss))


def test_rollout_error_of_a_model_that_holds_the_state(arm2):
    model, _ = _model(arm2, ArmData.collect(arm2, 0, n_fit=2, n_check=1, n_prior=0,
                                            horizon=4, hold=2))  # fmt: skip
    params = {k: torch.zeros_like(v) for k, v in model.named_parameters()}
    model.out_mean.zero_()  # now x' = x exactly
    X = np.zeros((2, 4, 4))
    X[1, :, 2] = np.arange(4)  # the second trajectory's q1dot grows by 1 per step
    U = np.zeros((2, 3, 2))
    scale = torch.tensor([1.0, 1.0, 2.0, 1.0])
    err = rollout_error(model, params, X, U, scale)
    # errors (t / 2)^2 / 4 dims at t = 1, 2, 3, averaged over the 3 steps
    torch.testing.assert_close(err, torch.tensor([0.0, (0.25 + 1 + 2.25) / 4 / 3]))
    torch.testing.assert_close(rollout_error(model, params, X, U, scale, horizon=1)[1],
                               torch.tensor(0.25 / 4))  # fmt: skip


def test_meta_gradient_through_the_fit_gradchecks_in_float64(arm2):
    data = ArmData.collect(arm2, 1, n_fit=2, n_check=1, n_prior=0, horizon=5, hold=2)
    model, tr = _model(arm2, data, torch.float64, hidden=(4,), members=1)
    loss = LearnedLoss(LossConfig(model_loss_feature_spec(), hidden=(3,), activation="elu"))
    loss.double()
    names = [k for k, _ in loss.named_parameters()]
    for method in ("sgd", "adam"):
        opt = InnerOptimizer(method, lr=1e-2, steps=2)

        def meta(*phi, opt=opt):
            phi_params = dict(zip(names, phi, strict=True))

            def learned(features):
                return call(loss, phi_params, features)

            fitted = fit_model(model, arm2, tr, _Learned(learned), opt, differentiable=True)
            return rollout_error(model, fitted, data.check_X, data.check_U, data.state_scale).sum()

        phi = tuple(p.detach().clone().requires_grad_(True) for p in loss.parameters())
        assert torch.autograd.gradcheck(meta, phi, eps=1e-6, atol=1e-5, rtol=1e-3)


class _Learned:
    """A learned loss evaluated with substituted parameters (for gradcheck)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, features):
        return self.fn(features)


def test_imitating_the_mse_gives_a_loss_that_pulls_predictions_to_the_target(arm2, data2):
    loss = LearnedLoss(LossConfig(model_loss_feature_spec(), hidden=(16, 16), activation="elu"))
    loss.reset_parameters(torch.Generator().manual_seed(0))
    tr = Transitions.of(data2.fit_X, data2.fit_U)
    sample = [(arm2, tr)]
    before = imitate_mse(loss, sample, torch.Generator().manual_seed(1), steps=1)
    after = imitate_mse(loss, sample, torch.Generator().manual_seed(1), steps=400)
    assert after < 0.2 * before
    model, _ = _model(arm2, data2)
    y = model.normalize_delta(tr.x_next - tr.x)
    error = 0.5 * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))
    pred = (y + error).unsqueeze(0).requires_grad_(True)
    loss(model_loss_features(arm2, pred, tr, y)).sum().backward()
    # its gradient has the error's sign (a gradient step moves predictions towards the target)
    agree = (torch.sign(pred.grad[0]) == torch.sign(error)).float().mean()
    assert agree > 0.9
