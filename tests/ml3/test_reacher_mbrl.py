"""MBRL reacher pieces: joint-count-independent features, gradient paths, float64 meta-gradient."""

import dataclasses

import numpy as np
import pytest
import torch

from ml3_robotics.core.errors import FeatureSpecError
from ml3_robotics.core.inner import InnerOptimizer, init_params
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.task_losses import Demonstrations
from ml3_robotics.models.learned_dynamics import EnsembleConfig, ProbabilisticEnsemble
from ml3_robotics.tasks.reach import (
    REACH_FEATURES,
    GoalConditionedPolicy,
    ReachPolicy,
    ReachTask,
    adapt_policies,
    batched_policy,
    behaviour_cloning,
    end_effector_fn,
    learned_loss_fn,
    loss_landscape,
    meta_loss,
    meta_test,
    model_rollout,
    pretrain_goal_policy,
    ramp_weights,
    reach_feature_spec,
    reach_features,
    reach_rollout,
    rest_at_goal_prior,
    steps_to_reach,
    task_loss_fn,
    trace_inner_steps,
)
from robots.arm import forward_kinematics, load_arm_config, sample_goals


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _random_rollout(arm, B, T, gen, dtype=torch.float64):
    n = arm.n_links
    X = torch.randn(B, T + 1, 2 * n, generator=gen, dtype=dtype)
    U = (torch.rand(B, T, n, generator=gen, dtype=dtype) * 2 - 1) * torch.tensor(
        arm.torque_limits, dtype=dtype
    )
    return X, U


@pytest.mark.parametrize("name", ["reacher2", "arm3", "arm4"])
def test_features_have_the_same_size_for_any_joint_count(name):
    arm = load_arm_config(name)
    gen = torch.Generator().manual_seed(0)
    X, U = _random_rollout(arm, 3, 5, gen)
    goal = torch.as_tensor(sample_goals(arm, 3, 0))
    f = reach_features(arm, X, U, goal)
    assert f.shape == (3, 5, len(REACH_FEATURES)) == (3, 5, reach_feature_spec().size)
    n = arm.n_links
    # Each named feature is what its name says.
    ee = forward_kinematics(arm, X[:, 1:, :n])
    torch.testing.assert_close(f[..., :2], ee - goal[:, None])
    torch.testing.assert_close(f[..., 2], torch.sqrt(((ee - goal[:, None]) ** 2).sum(-1) + 1e-8))
    torch.testing.assert_close(f[0, :, 5], torch.arange(1, 6, dtype=f.dtype) / 5)
    torch.testing.assert_close(f[..., 6], (X[:, 1:, n:] ** 2).mean(-1))
    lim = torch.tensor(arm.torque_limits, dtype=f.dtype)
    torch.testing.assert_close(f[..., 7], ((U / lim) ** 2).mean(-1))
    assert f[:, -1, 8].eq(1).all() and f[:, :-1, 8].eq(0).all()


def test_pooled_joint_terms_are_symmetric_in_the_joints():
    arm = load_arm_config("arm4").replace(torque_limits=0.3)
    gen = torch.Generator().manual_seed(1)
    X, U = _random_rollout(arm, 2, 4, gen)
    goal = torch.zeros(2, 2)
    perm = torch.tensor([2, 0, 3, 1])
    Xp = X.clone()
    Xp[..., 4:] = X[..., 4:][..., perm]
    f, fp = reach_features(arm, X, U, goal), reach_features(arm, Xp, U[..., perm], goal)
    torch.testing.assert_close(f[..., 6:], fp[..., 6:])


def test_one_learned_loss_applies_to_2_3_and_4_link_arms():
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(8,)))
    gen = torch.Generator().manual_seed(2)
    for name in ("reacher2", "arm3", "arm4"):
        arm = load_arm_config(name)
        X, U = _random_rollout(arm, 2, 3, gen)
        task = ReachTask(arm, sample_goals(arm, 2, 0), 3)
        assert learned_loss_fn(loss)(X, U, task).shape == (2,)


def test_batched_policy_equals_the_module_goal_by_goal():
    arm = load_arm_config("reacher2")
    policy = ReachPolicy(arm, (8, 8))
    params = init_params(policy, 3, torch.Generator().manual_seed(0))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    u = batched_policy(policy)(params, x)
    for g in range(3):
        single = torch.func.functional_call(policy, {k: v[g] for k, v in params.items()}, (x[g],))
        torch.testing.assert_close(u[g], single)
    assert (u.abs() <= torch.tensor(arm.torque_limits)).all()


def _tiny_problem(dtype=torch.float64, horizon=4):
    arm = load_arm_config("reacher2")
    model = ProbabilisticEnsemble(4, 2, 0.01, EnsembleConfig(n_members=2, hidden=(8,),
                                  angle_dims=(0, 1)), generator=torch.Generator().manual_seed(0),
                                  dtype=dtype)  # fmt: skip
    with torch.no_grad():  # a model whose torques matter: deltas of order one per unit input
        model.out_std.fill_(0.05)
    for p in model.parameters():
        p.requires_grad_(False)
    policy = ReachPolicy(arm, (4, 4)).to(dtype)
    task = ReachTask(arm, sample_goals(arm, 2, 0, min_radius=0.3), horizon)
    params = init_params(policy, 2, torch.Generator().manual_seed(3), dtype=dtype)
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(6,), activation="elu")).to(dtype)
    loss.reset_parameters(torch.Generator().manual_seed(4))
    return arm, model, policy, task, params, loss


def _param_grads(loss_fn, policy, params, step, task):
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    X, U = model_rollout(policy, p, step, task.x0(torch.float64), task.horizon)
    grads = torch.autograd.grad(loss_fn(X, U, task).sum(), list(p.values()))
    return torch.cat([g.flatten() for g in grads])


def test_gradients_reach_the_policy_through_actions_and_through_the_model_rollout():
    _, model, policy, task, params, loss = _tiny_problem()
    lfn = learned_loss_fn(loss)
    # Only the action path: a model that ignores the torques (and cuts the state path).
    g_actions = _param_grads(lfn, policy, params, lambda x, u: model.step(x, 0 * u).detach(), task)
    assert g_actions.abs().max() > 0
    # Only the state path: the loss cannot read the torque feature.
    with torch.no_grad():
        loss.net[0].weight[:, REACH_FEATURES.index("mean_sq_torque_fraction")] = 0.0
    g_states = _param_grads(lfn, policy, params, model.step, task)
    assert g_states.abs().max() > 0
    # And the state path really goes through the model: a torque-blind model gives nothing.
    g_none = _param_grads(lfn, policy, params, lambda x, u: model.step(x, 0 * u), task)
    assert g_none.abs().max() == 0


def test_meta_gradient_float64_gradcheck_through_a_model_rollout():
    _, model, policy, task, params, _ = _tiny_problem(horizon=3)
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(3,), activation="elu"))
    loss = loss.to(torch.float64)
    loss.reset_parameters(torch.Generator().manual_seed(5))
    names = [n for n, _ in loss.named_parameters()]
    opt = InnerOptimizer("sgd", lr=0.5, steps=1)

    def f(*phi):
        lfn = learned_loss_fn(loss, dict(zip(names, phi, strict=True)))
        value, _ = meta_loss(policy, params, model.step, task, lfn, opt)
        return value

    phi = tuple(p.detach().clone().requires_grad_(True) for p in loss.parameters())
    # The meta-gradient is not trivially zero: the inner step changes the task loss.
    grads = torch.autograd.grad(f(*phi), phi)
    assert max(float(g.abs().max()) for g in grads) > 1e-6
    assert torch.autograd.gradcheck(f, phi, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_adapted_goals_are_independent():
    """Batching goals changes nothing: goal 0 adapted alone equals goal 0 adapted in a batch."""
    _, model, policy, task, params, loss = _tiny_problem()
    opt = InnerOptimizer("sgd", lr=0.1, steps=2)
    both = adapt_policies(policy, params, model.step, task, learned_loss_fn(loss), opt,
                          differentiable=False)  # fmt: skip
    alone = adapt_policies(
        policy,
        {k: v[:1] for k, v in params.items()},
        model.step,
        task.subset([0]),
        learned_loss_fn(loss),
        opt,
        differentiable=False,
    )
    for k in both:
        torch.testing.assert_close(both[k][:1], alone[k])
        assert not torch.equal(both[k], params[k]) or k.endswith("bias")


def test_task_loss_is_the_papers_loss():
    arm = load_arm_config("reacher2")
    task = ReachTask(arm, sample_goals(arm, 2, 0, min_radius=0.3), 5)
    X, U = _random_rollout(arm, 2, 5, torch.Generator().manual_seed(6))
    q, qd, qg = X[..., :2], X[..., 2:], task.q_goal[:, None]

    def rho(r):
        return torch.sqrt((r**2).sum(-1) + 1e-6) - 1e-3

    expected = (10 * rho(q[:, -1] - qg[:, 0]) + rho(q[:, 1:] - qg).mean(1)
                + 1e-4 * rho(qd[:, 1:]).mean(1) + 1e-6 / 5 * (U**2).sum((1, 2)))  # fmt: skip
    torch.testing.assert_close(task.task_loss(X, U), expected)
    # The joint-space goal is where the end effector meets the task-space goal.
    torch.testing.assert_close(forward_kinematics(arm, task.q_goal), task.goals)


def test_extra_terms_read_the_reach_rollout_and_add_exactly_to_the_meta_loss():
    arm, model, policy, task, params, loss = _tiny_problem()
    X, U = model_rollout(policy, params, model.step, task.x0(torch.float64), task.horizon)
    rollout = reach_rollout(X, U, task)
    torch.testing.assert_close(rollout.outputs["ee"], forward_kinematics(arm, X[..., :2]))
    demos = Demonstrations(weight=2.0, states=X[..., :2].detach(), output="q")
    torch.testing.assert_close(demos(rollout), torch.zeros(task.n, dtype=X.dtype))
    shifted = X.clone()
    shifted[:, 1:, 0] += 0.5  # 0.25 rad^2 on T of the T+1 states
    expected = torch.full((task.n,), 2.0 * 0.25 * task.horizon / (task.horizon + 1), dtype=X.dtype)
    torch.testing.assert_close(demos(reach_rollout(shifted, U, task)), expected)

    # The extra terms change the meta-loss by their value on the adapted rollouts, nothing else.
    opt = InnerOptimizer("sgd", lr=0.1, steps=1)
    prior = rest_at_goal_prior(arm, weight=3.0)
    plain, adapted = meta_loss(policy, params, model.step, task, learned_loss_fn(loss), opt)
    both, adapted2 = meta_loss(
        policy, params, model.step, task, learned_loss_fn(loss), opt, (demos, prior)
    )
    for k in adapted:
        torch.testing.assert_close(adapted2[k], adapted[k], rtol=0, atol=0)
    Xa, Ua = model_rollout(policy, adapted, model.step, task.x0(torch.float64), task.horizon)
    ra = reach_rollout(Xa, Ua, task)
    torch.testing.assert_close(both - plain, (demos(ra) + prior(ra)).mean())
    with pytest.raises(TypeError, match="ExtraTerm"):
        meta_loss(policy, params, model.step, task, learned_loss_fn(loss), opt, (task_loss_fn,))


def test_rest_at_goal_prior_is_the_normalised_final_kinetic_energy():
    arm = load_arm_config("reacher2")
    task = ReachTask(arm, sample_goals(arm, 2, 0, min_radius=0.3), 10)
    X = torch.zeros(2, 11, 4, dtype=torch.float64)
    U = torch.zeros(2, 10, 2, dtype=torch.float64)
    X[0, -2:, 2:] = 1.0  # goal 0 still turns at 1 rad/s in the last two steps; goal 1 rests
    value = rest_at_goal_prior(arm, weight=1.0, final_fraction=0.2)(reach_rollout(X, U, task))
    # The last 2 of 10 steps at exactly the reference energy (stretched posture, 1 rad/s).
    torch.testing.assert_close(value, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="final_fraction"):
        rest_at_goal_prior(arm, final_fraction=0.0)


def test_meta_test_cannot_receive_extra_information():
    import inspect

    # The meta-test API: a learned loss, a policy, its initialisation, a system, the task and
    # the inner optimizer (plus a progress callback). No parameter can carry an extra term.
    params = list(inspect.signature(meta_test).parameters)
    assert params == ["loss", "policy", "init", "step", "task", "optimizer", "on_step"]
    # The task carries only what any user knows: arm, goals, horizon, joint goals, task loss.
    fields = [f.name for f in dataclasses.fields(ReachTask)]
    assert fields == ["config", "goals", "horizon", "q_goal", "cost"]
    # A loss trained on anything but the rollout's own features is refused.
    _, model, policy, task, init, loss = _tiny_problem()
    cheat = LearnedLoss(LossConfig(FeatureSpec((*REACH_FEATURES, "demo_q_error_rad")), hidden=(4,)))
    with pytest.raises(FeatureSpecError, match="demo_q_error_rad"):
        meta_test(cheat, policy, init, model.step, task, InnerOptimizer("sgd", lr=0.1, steps=1))
    # And it is the plain K-step adaptation on the learned loss.
    opt = InnerOptimizer("sgd", lr=0.1, steps=2)
    ours = meta_test(loss, policy, init, model.step, task, opt)
    ref = adapt_policies(policy, init, model.step, task, learned_loss_fn(loss), opt,
                         differentiable=False)  # fmt: skip
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=0)


def test_trace_inner_steps_gives_the_parameters_after_each_step():
    _, model, policy, task, init, loss = _tiny_problem()
    opt = InnerOptimizer("sgd", lr=0.1, steps=3)
    trace = trace_inner_steps(
        lambda on_step: meta_test(loss, policy, init, model.step, task, opt, on_step)
    )
    assert len(trace) == 4
    for k in (1, 2, 3):
        ref = adapt_policies(policy, init, model.step, task, learned_loss_fn(loss), opt,
                             differentiable=False, steps=k)  # fmt: skip
        for n in ref:
            torch.testing.assert_close(trace[k][n], ref[n], rtol=0, atol=0)
    for n in init:
        torch.testing.assert_close(trace[0][n], init[n], rtol=0, atol=0)
    d = np.array([[0.05, 0.02, 0.3], [0.009, 0.02, 0.2], [0.001, 0.005, 0.2]])
    assert steps_to_reach(d, 0.01) == [1, 2, None]


def test_behaviour_cloning_recovers_a_teacher_policy():
    arm = load_arm_config("reacher2")
    gen = torch.Generator().manual_seed(5)
    teacher = GoalConditionedPolicy(arm, (16, 16))
    goals = torch.as_tensor(sample_goals(arm, 6, 0, min_radius=0.3), dtype=torch.float32)
    X = torch.randn(6, 9, 4, generator=gen)
    with torch.no_grad():
        U = torch.stack([teacher(X[:, t], goals) for t in range(8)], 1)
    student = behaviour_cloning(arm, X, U, goals, hidden=(32, 32), epochs=400, generator=gen)
    lim = torch.tensor(arm.torque_limits)
    fit = torch.stack([student(X[:, t], goals) for t in range(8)], 1)
    before = (U / lim).pow(2).mean()
    assert ((fit - U) / lim).pow(2).mean() < 0.01 * before  # 99% of the variance explained
    with pytest.raises(ValueError, match="states/actions"):
        behaviour_cloning(arm, X[:, :-1], U, goals)


def test_loss_landscape_is_the_loss_at_each_grid_point():
    _, model, policy, task, init, loss = _tiny_problem()
    one = task.subset([1])
    center = {k: v[1] for k, v in init.items()}
    d1 = {k: torch.ones_like(v) * 0.1 for k, v in center.items()}
    d2 = {k: -torch.ones_like(v) * 0.05 for k, v in center.items()}
    alphas = torch.tensor([0.0, 1.0], dtype=torch.float64)
    betas = torch.tensor([0.0, 2.0], dtype=torch.float64)
    fns = {"learned": learned_loss_fn(loss), "task": task_loss_fn}
    grid = loss_landscape(policy, center, (d1, d2), alphas, betas, model.step, one, fns)
    assert grid["task"].shape == (2, 2)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            p = {k: (center[k] + a * d1[k] + b * d2[k])[None] for k in center}
            X, U = model_rollout(policy, p, model.step, one.x0(torch.float64), one.horizon)
            for name, fn in fns.items():
                torch.testing.assert_close(grid[name][i, j], fn(X, U, one)[0])


# -- issue 22: per-step meta-objectives and the goal-conditioned route ----------------------------


def test_ramp_weighted_meta_loss_scores_the_rollout_after_every_step():
    _, model, policy, task, params, loss = _tiny_problem()
    opt = InnerOptimizer("sgd", lr=0.5, steps=3)
    lfn = learned_loss_fn(loss)
    last, _ = meta_loss(policy, params, model.step, task, lfn, opt)
    only_last, _ = meta_loss(policy, params, model.step, task, lfn, opt, step_weights=[0, 0, 1])
    torch.testing.assert_close(only_last, last, rtol=1e-12, atol=0)
    # the weighted objective is the weighted mean task loss of the rollouts after steps 1..3
    trace = trace_inner_steps(
        lambda on_step: adapt_policies(
            policy, params, model.step, task, lfn, opt, differentiable=False, on_step=on_step
        )
    )
    per_step = []
    for p in trace[1:]:
        X, U = model_rollout(policy, p, model.step, task.x0(torch.float64), task.horizon)
        per_step.append(task_loss_fn(X, U, task).mean())
    weights = ramp_weights(3)
    assert weights == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    ramp, _ = meta_loss(policy, params, model.step, task, lfn, opt, step_weights=weights)
    expected = sum(w * v for w, v in zip(weights, per_step, strict=True))
    torch.testing.assert_close(ramp, expected, rtol=1e-10, atol=0)
    assert abs(float((ramp - last).detach())) > 1e-6  # the steps before the last count
    with pytest.raises(ValueError, match="step_weights: expected 3 weights"):
        meta_loss(policy, params, model.step, task, lfn, opt, step_weights=[1.0])


def test_ramp_meta_gradient_float64_gradcheck():
    _, model, policy, task, params, _ = _tiny_problem(horizon=3)
    loss = LearnedLoss(LossConfig(reach_feature_spec(), hidden=(3,), activation="elu"))
    loss = loss.to(torch.float64)
    loss.reset_parameters(torch.Generator().manual_seed(5))
    names = [n for n, _ in loss.named_parameters()]
    opt = InnerOptimizer("sgd", lr=0.5, steps=2)

    def f(*phi):
        lfn = learned_loss_fn(loss, dict(zip(names, phi, strict=True)))
        value, _ = meta_loss(policy, params, model.step, task, lfn, opt,
                             task_term=end_effector_fn, step_weights=ramp_weights(2))  # fmt: skip
        return value

    phi = tuple(p.detach().clone().requires_grad_(True) for p in loss.parameters())
    assert max(float(g.abs().max()) for g in torch.autograd.grad(f(*phi), phi)) > 1e-8
    assert torch.autograd.gradcheck(f, phi, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_end_effector_error_is_the_final_distance_in_cm_with_a_finite_gradient_at_the_goal():
    arm = load_arm_config("reacher2")
    task = ReachTask(arm, sample_goals(arm, 3, 0, min_radius=0.3), 4)
    X, U = _random_rollout(arm, 3, 4, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(
        task.end_effector_error(X, U).numpy(), 100 * task.final_distance(X.numpy()), atol=1e-2
    )
    X_at_goal = X.clone()
    X_at_goal[:, -1, :2] = task.q_goal
    X_at_goal.requires_grad_(True)
    value = end_effector_fn(X_at_goal, U, task)
    assert float(value.detach().max()) < 1e-6
    (grad,) = torch.autograd.grad(value.sum(), X_at_goal)
    assert torch.isfinite(grad).all()


def test_goal_bound_policy_is_the_goal_conditioned_module_copy_by_copy():
    arm = load_arm_config("reacher2")
    gc = GoalConditionedPolicy(arm, (8, 8)).double()
    goals = torch.as_tensor(sample_goals(arm, 3, 0, min_radius=0.3))
    bound = gc.for_goals(goals)
    params = gc.stacked(3)
    # copies differ so that a mix-up of goals or copies would show
    params = {k: v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1),
                                       dtype=v.dtype) for k, v in params.items()}  # fmt: skip
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u = bound(params, x)
    for g in range(3):
        single = torch.func.functional_call(
            gc, {k: v[g] for k, v in params.items()}, (x[g : g + 1], goals[g : g + 1])
        )
        torch.testing.assert_close(u[g : g + 1], single, rtol=1e-12, atol=1e-12)
    # the stacked copies start as the module itself
    for k, v in gc.stacked(2).items():
        assert torch.equal(v[1], dict(gc.named_parameters())[k].detach())


def test_pretrained_goal_policy_lowers_the_task_loss_on_its_goals():
    arm = load_arm_config("reacher2")
    task = ReachTask(arm, sample_goals(arm, 8, 0, min_radius=0.3), 10)

    def step(x, u):  # a damped double integrator per joint: torques move the arm in a few steps
        qd = 0.8 * x[:, 2:] + 20.0 * u
        return torch.cat([x[:, :2] + 0.05 * qd, qd], -1)

    def task_loss_of(policy):
        X, U = model_rollout(policy.for_goals(task.goals), policy.stacked(task.n), step,
                             task.x0(), task.horizon)  # fmt: skip
        return float(task.task_loss(X, U).mean())

    untrained = pretrain_goal_policy(arm, step, task, hidden=(8, 8), steps=1, lr=1e-9)
    trained = pretrain_goal_policy(arm, step, task, hidden=(8, 8), steps=60, lr=1e-2, batch=4)
    # measured: 19.3 -> 7.1
    assert task_loss_of(trained) < 0.5 * task_loss_of(untrained)
    with pytest.raises(ValueError, match="steps: expected an integer >= 1, got 0"):
        pretrain_goal_policy(arm, step, task, steps=0)


def test_ramp_meta_loss_with_a_truncated_meta_gradient():
    """The early steps' rollouts count in the ramp objective's value but carry no meta-gradient
    (their parameters are constants): the value equals the untruncated one, and the backward
    pass runs (it used to reach the early steps' freed graphs)."""
    _, model, policy, task, params, loss = _tiny_problem()
    opt = InnerOptimizer("sgd", lr=0.5, steps=3)
    lfn = learned_loss_fn(loss)
    full, _ = meta_loss(policy, params, model.step, task, lfn, opt, step_weights=ramp_weights(3))
    cut, _ = meta_loss(policy, params, model.step, task, lfn, opt, step_weights=ramp_weights(3),
                       differentiable_steps=1)  # fmt: skip
    torch.testing.assert_close(cut, full, rtol=1e-12, atol=0)
    loss.zero_grad(set_to_none=True)
    cut.backward()  # as the meta-trainer does: a backward over every leaf, not only M_phi's
    grads = [p.grad for p in loss.parameters()]
    assert all(torch.isfinite(g).all() for g in grads)
    assert max(float(g.abs().max()) for g in grads) > 0
