"""Functional inner loops equal torch.optim, and their meta-gradients are exact."""

import pytest
import torch
from torch import nn

from ml3_robotics.core.inner import (
    InnerOptimizer,
    StepSizeSchedule,
    adapt,
    call,
    module_params,
    stack_params,
)
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, generator=g, dtype=torch.float64) * 4 - 2
    return x, torch.sin(x)


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_plain_run_equals_torch_optim(method):
    x, y = _data()
    model = _model()
    opt_cfg = InnerOptimizer(method=method, lr=0.05, steps=7)
    ours = adapt(
        lambda p: ((call(model, p, x) - y) ** 2).mean(),
        module_params(model),
        opt_cfg,
        differentiable=False,
    )
    reference = _model()
    opt = (
        torch.optim.SGD(reference.parameters(), lr=0.05)
        if method == "sgd"
        else torch.optim.Adam(reference.parameters(), lr=0.05)
    )
    for _ in range(7):
        opt.zero_grad()
        ((reference(x) - y) ** 2).mean().backward()
        opt.step()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ours[name], p.detach(), rtol=0, atol=1e-12)
    # and it really moved: the check above would be vacuous for zero steps
    start = dict(_model().named_parameters())
    assert max((ours[n] - start[n]).abs().max().item() for n in ours) > 1e-3


def _meta_loss_fn(method: str, steps: int, **adapt_options):
    x, y = _data()
    xq = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(1)
    yq = torch.sin(xq)
    model = _model()
    theta0 = {k: v.detach() for k, v in module_params(model).items()}
    loss = LearnedLoss(LossConfig(FeatureSpec(("y_pred", "y")), hidden=(6,), activation="tanh"))
    loss.double()
    names = [n for n, _ in loss.named_parameters()]
    shapes = [p.shape for _, p in loss.named_parameters()]
    opt_cfg = InnerOptimizer(method=method, lr=0.1, steps=steps)

    def meta_loss(*flat):
        phi = dict(zip(names, flat, strict=True))

        def inner_objective(p):
            pred = call(model, p, x)
            return call(loss, phi, torch.cat([pred, y], dim=1)).mean()

        adapted = adapt(inner_objective, theta0, opt_cfg, **adapt_options)
        return ((call(model, adapted, xq) - yq) ** 2).mean()

    phi0 = [p.detach().clone().requires_grad_(True) for _, p in loss.named_parameters()]
    assert [p.shape for p in phi0] == shapes
    return meta_loss, phi0


@pytest.mark.parametrize("gradients", ["func", "autograd"])
@pytest.mark.parametrize("method", ["sgd", "adam"])
@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_gradcheck(method, steps, gradients):
    meta_loss, phi0 = _meta_loss_fn(method, steps, gradients=gradients)
    assert torch.autograd.gradcheck(meta_loss, tuple(phi0), eps=1e-6, atol=1e-7, rtol=1e-5)
    # the meta-gradient is not trivially zero
    grads = torch.autograd.grad(meta_loss(*phi0), phi0)
    assert sum(g.abs().sum() for g in grads) > 1e-6


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_autograd_gradients_give_the_same_meta_loss_and_meta_gradient_as_torch_func(method):
    values, grads = {}, {}
    for gradients in ("func", "autograd"):
        meta_loss, phi0 = _meta_loss_fn(method, 3, gradients=gradients)
        values[gradients] = meta_loss(*phi0)
        grads[gradients] = torch.autograd.grad(values[gradients], phi0)
    torch.testing.assert_close(values["autograd"], values["func"], rtol=1e-12, atol=0)
    for a, b in zip(grads["autograd"], grads["func"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("gradients", ["func", "autograd"])
@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_truncated_meta_gradient_flows_through_the_last_steps_only(method, gradients):
    """K = 4 with the meta-gradient through the last 2 steps equals: 2 plain steps, then a
    2-step differentiable run from their (constant) result; and it differs from the full one."""
    x, y = _data()
    model = _model()
    theta0 = {k: v.detach() for k, v in module_params(model).items()}
    loss = LearnedLoss(LossConfig(FeatureSpec(("y_pred", "y")), hidden=(6,), activation="tanh"))
    loss.double()
    opt = InnerOptimizer(method=method, lr=0.1, steps=4)

    def inner_objective(p):
        return loss(torch.cat([call(model, p, x), y], dim=1)).mean()

    def meta_gradient(adapted):
        value = ((call(model, adapted, x) - y) ** 2).mean()
        return torch.autograd.grad(value, list(loss.parameters()))

    adapted = adapt(inner_objective, theta0, opt, differentiable_steps=2, gradients=gradients)
    # truncation changes the meta-gradient only: the adapted parameters are the same numbers
    for k, v in adapt(inner_objective, theta0, opt, differentiable=False).items():
        torch.testing.assert_close(adapted[k].detach(), v, rtol=1e-13, atol=1e-15)
    truncated = meta_gradient(adapted)
    if method == "sgd":  # SGD keeps no state across steps: the two-stage run is the same run
        midway = adapt(inner_objective, theta0, opt, steps=2, differentiable=False)
        two_stage = meta_gradient(adapt(inner_objective, midway, opt, steps=2))
        for a, b in zip(truncated, two_stage, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    full = meta_gradient(adapt(inner_objective, theta0, opt, gradients=gradients))
    assert max(float((a - b).abs().max()) for a, b in zip(truncated, full, strict=True)) > 1e-8
    # all steps tracked: the same as no truncation
    same = meta_gradient(
        adapt(inner_objective, theta0, opt, differentiable_steps=4, gradients=gradients)
    )
    for a, b in zip(same, full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_vmap_over_tasks_equals_loop():
    x, y = _data()
    model = _model()
    inits = []
    for s in range(4):
        torch.manual_seed(s)
        inits.append({k: v.detach() for k, v in module_params(_model_fresh()).items()})
    amps = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    opt_cfg = InnerOptimizer(method="adam", lr=0.05, steps=3)

    def task(theta, amp):
        target = amp * y
        adapted = adapt(lambda p: ((call(model, p, x) - target) ** 2).mean(), theta, opt_cfg)
        return ((call(model, adapted, x) - target) ** 2).mean()

    looped = torch.stack([task(t, a) for t, a in zip(inits, amps, strict=True)])
    batched = torch.func.vmap(task)(stack_params(inits), amps)
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)


def _model_fresh() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()


def test_bad_inner_config():
    with pytest.raises(ValueError, match=r"method: got 'adm'.*did you mean 'adam'"):
        InnerOptimizer(method="adm")
    with pytest.raises(ValueError, match="steps"):
        InnerOptimizer(steps=0)
    with pytest.raises(ValueError, match="lr"):
        InnerOptimizer(lr=-1.0)
    theta = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"gradients: got 'autgrad'.*did you mean 'autograd'"):
        adapt(lambda p: p["w"].sum(), theta, InnerOptimizer(), gradients="autgrad")
    with pytest.raises(ValueError, match=r"differentiable_steps: expected an int >= 1, got 0"):
        adapt(lambda p: p["w"].sum(), theta, InnerOptimizer(), differentiable_steps=0)


def _sine_objective():
    x, y = _data()
    model = _model()
    return (lambda p: ((call(model, p, x) - y) ** 2).mean()), {
        k: v.detach() for k, v in module_params(model).items()
    }


@pytest.mark.parametrize("method", ["sgd", "adam"])
def test_unit_step_scales_change_nothing(method):
    objective, theta = _sine_objective()
    plain = adapt(objective, theta, InnerOptimizer(method, lr=0.05, steps=4), differentiable=False)
    ones = InnerOptimizer(method, lr=0.05, steps=4, step_scales=torch.ones(4, dtype=torch.float64))
    scaled = adapt(objective, theta, ones, differentiable=False)
    for n in plain:
        torch.testing.assert_close(scaled[n], plain[n], rtol=0, atol=0)


def test_step_scales_set_each_sgd_step_and_the_last_holds_past_the_end():
    objective, theta = _sine_objective()
    scales = torch.tensor([2.0, 0.5], dtype=torch.float64)
    scaled = adapt(
        objective, theta, InnerOptimizer("sgd", lr=0.05, steps=3, step_scales=scales),
        differentiable=False,
    )  # fmt: skip
    # by hand: one plain step each of 0.1, 0.025, 0.025
    by_hand = theta
    for lr in (0.1, 0.025, 0.025):
        by_hand = adapt(objective, by_hand, InnerOptimizer("sgd", lr=lr), differentiable=False)
    for n in theta:
        torch.testing.assert_close(scaled[n], by_hand[n], rtol=0, atol=1e-15)
    assert max((scaled[n] - theta[n]).abs().max().item() for n in theta) > 1e-3


@pytest.mark.parametrize("method", ["sgd", "adam"])
@pytest.mark.parametrize("gradients", ["func", "autograd"])
def test_step_size_schedule_meta_gradient_gradcheck(method, gradients):
    objective, theta = _sine_objective()
    xq = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(1)
    model = _model()

    def meta_loss(log_scales):
        opt = InnerOptimizer(method, lr=0.05, steps=3, step_scales=log_scales.exp())
        adapted = adapt(objective, theta, opt, gradients=gradients)
        return ((call(model, adapted, xq) - torch.sin(xq)) ** 2).mean()

    log_scales = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(meta_loss, (log_scales,))
    (g,) = torch.autograd.grad(meta_loss(log_scales), log_scales)
    assert (g.abs() > 1e-8).all()  # every step's size matters


def test_step_size_schedule_module_and_untracked_runs():
    schedule = StepSizeSchedule(3).double()
    opt = schedule.optimizer(InnerOptimizer("sgd", lr=0.05, steps=3))
    torch.testing.assert_close(opt.step_scales, torch.ones(3, dtype=torch.float64))
    assert opt.step_scales.requires_grad
    objective, theta = _sine_objective()
    # a plain run does not build a graph to the schedule
    plain = adapt(objective, theta, opt, differentiable=False)
    assert not any(v.requires_grad for v in plain.values())
    with pytest.raises(ValueError, match="steps"):
        StepSizeSchedule(0)
    with pytest.raises(ValueError, match="step_scales"):
        InnerOptimizer(step_scales=torch.ones(2, 2))
    with pytest.raises(ValueError, match="step_scales"):
        InnerOptimizer(step_scales=[1.0, 2.0])


@pytest.mark.parametrize("method", ["sgd", "adam"])
@pytest.mark.parametrize("gradients", ["func", "autograd"])
def test_meta_gradient_with_respect_to_the_initialisation_gradcheck(method, gradients):
    """MAML's meta-gradient: through K steps back to the starting parameters."""
    x, y = _data()
    xq = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(1)
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]

    def meta_loss(*flat):
        theta = dict(zip(names, flat, strict=True))
        adapted = adapt(
            lambda p: ((call(model, p, x) - y) ** 2).mean(), theta,
            InnerOptimizer(method, lr=0.05, steps=3), gradients=gradients,
        )  # fmt: skip
        return ((call(model, adapted, xq) - torch.sin(xq)) ** 2).mean()

    start = tuple(p.detach().clone().requires_grad_(True) for _, p in model.named_parameters())
    assert [s.shape for s in start] == shapes
    assert torch.autograd.gradcheck(meta_loss, start)
