"""Task terms compose with weights; extra-information terms cannot reach meta-test."""

import ast
import dataclasses
import inspect
import pathlib
import typing
from collections.abc import Mapping

import pytest
import torch

import ml3_robotics.core.policy_search as policy_search
from ml3_robotics.core.errors import FeatureSpecError
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.policy_search import (
    BatchedMLP,
    ControlFeatures,
    ModulePolicy,
    learned_control_loss,
    meta_test,
    meta_train_loss,
    policy_rollout,
)
from ml3_robotics.core.serialization import load_learned_loss, save_learned_loss
from ml3_robotics.core.task_losses import (
    ControlEffort,
    ControlTask,
    Demonstrations,
    ExtraTerm,
    FinalDistance,
    IntermediateGoal,
    MetaTrainObjective,
    PhysicsPrior,
    Rollout,
    RunningDistance,
    TermSum,
    TrajectoryDistance,
)
from robots.mountain_car import MountainCar

D = torch.float64


def _rollout() -> tuple[Rollout, ControlTask]:
    """Two hand-made rollouts of 3 steps in 2-D with known distances to the goal (0, 0)."""
    states = torch.tensor(
        [
            [[1.0, 1.0], [3.0, 4.0], [0.0, 2.0], [3.0, 4.0]],
            [[0.0, 0.0], [0.0, 1.0], [6.0, 8.0], [0.0, 0.0]],
        ],
        dtype=D,
    )
    actions = torch.tensor([[[1.0], [2.0], [2.0]], [[0.0], [0.0], [3.0]]], dtype=D)
    task = ControlTask(states[:, 0], torch.zeros(2, dtype=D), horizon=3)
    return Rollout(states, actions), task


def test_task_terms_exact_values_and_weights():
    r, task = _rollout()
    final = FinalDistance()(r, task)
    torch.testing.assert_close(final, torch.tensor([5.0, 0.0], dtype=D), atol=1e-5, rtol=0)
    running = RunningDistance()(r, task)
    torch.testing.assert_close(running, torch.tensor([12 / 3, 11 / 3], dtype=D))
    effort = ControlEffort()(r, task)
    torch.testing.assert_close(effort, torch.tensor([9 / 3, 9 / 3], dtype=D))
    # weights multiply, `+` adds, sums flatten
    combo = FinalDistance(weight=2.0) + RunningDistance(weight=0.5) + ControlEffort(weight=3.0)
    assert isinstance(combo, TermSum) and len(combo.terms) == 3
    torch.testing.assert_close(combo(r, task), 2 * final + 0.5 * running + 3 * effort)
    # whole-trajectory norm: rollout 0 steps 1..3 distances 5, 2, 5 -> sqrt(54)
    trajectory = TrajectoryDistance(weight=2.0)(r, task)
    torch.testing.assert_close(trajectory, 2 * torch.tensor([54**0.5, 101**0.5], dtype=D))
    weighted = FinalDistance(state_weights=(0.0, 1.0))(r, task)
    torch.testing.assert_close(weighted, torch.tensor([4.0, 0.0], dtype=D), atol=1e-5, rtol=0)


def test_extra_terms_exact_values():
    r, task = _rollout()
    ig = IntermediateGoal(state=(0.0, 2.0), steps=2, weight=3.0)
    # distances of steps 1..2 to (0, 2): rollout 0: |(3,2)|, 0; rollout 1: 1, |(6,6)|
    expected = 3.0 * torch.tensor([(13**0.5 + 0.0) / 2, (1.0 + 72**0.5) / 2], dtype=D)
    torch.testing.assert_close(ig(r), expected, atol=1e-5, rtol=0)
    ig_norm = IntermediateGoal(state=(0.0, 2.0), steps=2, reduction="norm")
    torch.testing.assert_close(ig_norm(r), torch.tensor([13**0.5, 73**0.5], dtype=D))
    demo = Demonstrations(states=r.states.clone(), actions=r.actions + 1.0, weight=2.0)
    torch.testing.assert_close(demo(r), torch.tensor([2.0, 2.0], dtype=D))  # only actions differ
    prior = PhysicsPrior(fn=lambda ro: ro.actions[..., 0].abs().sum(-1), weight=0.5, label="l1")
    torch.testing.assert_close(prior(r), torch.tensor([2.5, 1.5], dtype=D))
    objective = MetaTrainObjective(FinalDistance(), extras=(ig, demo, prior))
    terms = objective.terms(r, task)
    assert list(terms) == ["task", "IntermediateGoal", "Demonstrations", "l1"]
    torch.testing.assert_close(
        objective(r, task), FinalDistance()(r, task) + ig(r) + demo(r) + prior(r)
    )
    torch.testing.assert_close(objective.without_extras()(r, task), FinalDistance()(r, task))


def test_terms_reject_misuse():
    with pytest.raises(TypeError, match="extra information"):
        FinalDistance() + IntermediateGoal(state=(0.0, 0.0), steps=1)
    with pytest.raises(TypeError, match="task_term"):
        MetaTrainObjective(IntermediateGoal(state=(0.0, 0.0), steps=1))
    with pytest.raises(TypeError, match="extras"):
        MetaTrainObjective(FinalDistance(), extras=(RunningDistance(),))
    with pytest.raises(ValueError, match="weight"):
        FinalDistance(weight=-1.0)
    with pytest.raises(ValueError, match="steps"):
        IntermediateGoal(state=(0.0, 0.0), steps=9)(_rollout()[0])
    with pytest.raises(ValueError, match="states/actions"):
        Demonstrations()
    with pytest.raises(TypeError, match="fn"):
        PhysicsPrior(fn=None)


# -- extra information never reaches meta-test -----------------------------------------------

EXTRA_TYPES = (ExtraTerm, IntermediateGoal, Demonstrations, PhysicsPrior, MetaTrainObjective)


def _types_in(annotation) -> list:
    """Every class an annotation can name (unions, generics, callables unpacked)."""
    args = typing.get_args(annotation)
    if args:
        out = [typing.get_origin(annotation)]
        for a in args:
            out += _types_in(a) if not isinstance(a, list) else [t for x in a for t in _types_in(x)]
        return out
    return [annotation]


def test_meta_test_signature_has_no_way_in_for_extra_information():
    sig = inspect.signature(meta_test)
    assert list(sig.parameters) == ["loss", "policy", "policy_init", "system", "task", "optimizer"]
    hints = typing.get_type_hints(meta_test)
    for name in sig.parameters:
        for t in _types_in(hints[name]):
            # No parameter is typed to accept an extra term or a meta-train objective, nor as a
            # catch-all (Any/object) that would.
            assert t not in (typing.Any, object), f"{name} is a catch-all {t}"
            # (runtime-checkable protocols such as System and Policy answer issubclass
            # structurally: an extra term has no `step` and no `init`)
            if isinstance(t, type):
                for extra in EXTRA_TYPES:
                    assert not issubclass(extra, t), f"{name}: {t} accepts {extra.__name__}"
    # The test task has exactly start, goal, horizon: no field can carry extra information.
    assert [f.name for f in dataclasses.fields(ControlTask)] == ["start", "goal", "horizon"]
    start = torch.zeros(1, 2)
    with pytest.raises(TypeError):
        ControlTask(start, start[0], 3, intermediate_goal=(0.0, 0.0))  # type: ignore[call-arg]


def test_policy_search_module_does_not_import_extra_terms():
    tree = ast.parse(pathlib.Path(policy_search.__file__).read_text())
    imported = {
        a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "ml3_robotics.core.task_losses"
        for a in node.names
    }
    assert imported == {"ControlTask", "Rollout"}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {t.__name__ for t in EXTRA_TYPES}


@pytest.mark.parametrize(
    "group", ["intermediate_goal", "demonstrations", "demo_state", "physics_prior", "waypoint"]
)
def test_feature_builder_refuses_extra_information(group):
    with pytest.raises(FeatureSpecError, match="not a per-step control feature"):
        ControlFeatures(("next_state", group), nx=2, nu=1)


def test_next_state_action_feature_is_each_next_state_value_times_each_action_value():
    g = torch.Generator().manual_seed(0)
    states, actions = torch.randn(3, 5, 4, generator=g), torch.randn(3, 4, 2, generator=g)
    task = ControlTask(states[:, 0], torch.zeros(4), 4)
    features = ControlFeatures(("action", "next_state_action"), nx=4, nu=2)
    assert features.names()[2:] == tuple(f"next_state_action.{i}" for i in range(8))
    f = features(Rollout(states, actions, {}), task)
    assert f.shape == (3, 4, 2 + 8)
    for i in range(4):
        for j in range(2):
            torch.testing.assert_close(f[..., 2 + 2 * i + j], states[:, 1:, i] * actions[..., j])


def test_meta_test_refuses_a_loss_that_reads_extra_information():
    # A loss built by hand (bypassing ControlFeatures) whose spec names an extra input.
    spec = FeatureSpec(("next_state.0", "next_state.1", "intermediate_goal.0"))
    loss = LearnedLoss(LossConfig(spec, hidden=(4,)))
    policy = BatchedMLP((2, 3, 1), bound=0.25)
    task = ControlTask(torch.tensor([[-0.55, 0.0]]), torch.tensor([0.5, 1.0375]), 3)
    init = policy.init(1, torch.Generator().manual_seed(0))
    with pytest.raises(FeatureSpecError, match=r"intermediate_goal\.0"):
        meta_test(loss, policy, init, MountainCar(), task, InnerOptimizer(steps=1))


def _small_problem(dtype=torch.float32, horizon=8, hidden=(16,)):
    features = ControlFeatures(("next_state", "action", "goal_error", "time"), nx=2, nu=1)
    loss = LearnedLoss(
        LossConfig(features.spec(), hidden=hidden, activation="elu", output_activation="none")
    )
    loss.reset_parameters(torch.Generator().manual_seed(3))
    loss.to(dtype)
    policy = BatchedMLP((2, 6, 1), bias=False, activation="none", bound=0.25)
    starts = torch.tensor([[-0.55, 0.0], [-0.5, 0.01]], dtype=dtype)
    task = ControlTask(starts, torch.tensor([0.5, 1.0375], dtype=dtype), horizon)
    init = policy.init(2, torch.Generator().manual_seed(4), dtype=dtype)
    return features, loss, policy, task, init


def test_extras_shape_meta_training_but_meta_test_depends_on_the_loss_alone(tmp_path):
    features, loss, policy, task, init = _small_problem()
    car = MountainCar()
    inner = InnerOptimizer("sgd", lr=0.5, steps=1)
    ig = IntermediateGoal(state=(-0.947, -0.0055), steps=4)
    grads = {}
    for name, objective in (
        ("goal", MetaTrainObjective(FinalDistance(), extras=(ig,))),
        ("none", MetaTrainObjective(FinalDistance())),
    ):
        loss.zero_grad()
        value, _ = meta_train_loss(loss, features, policy, init, car, task, objective, inner)
        value.backward()
        # (the output bias shifts M_phi by a constant: no gradient reaches it, grad is None)
        grads[name] = torch.cat([p.grad.flatten() for p in loss.parameters() if p.grad is not None])
    # The intermediate goal changes the meta-gradient: it does shape M_phi ...
    assert (grads["goal"] - grads["none"]).abs().max() > 1e-6
    # ... but meta-test reads only the loss's weights and feature spec: a copy rebuilt from the
    # saved file (which holds no objective) gives bit-identical results.
    opt = InnerOptimizer("sgd", lr=0.5, steps=3)
    direct = meta_test(loss, policy, init, car, task, opt)
    save_learned_loss(loss, tmp_path / "loss")
    reloaded, sidecar = load_learned_loss(tmp_path / "loss")
    assert "intermediate" not in str(sidecar).lower()
    again = meta_test(reloaded, policy, init, car, task, opt)
    torch.testing.assert_close(again.states, direct.states, rtol=0, atol=0)
    assert direct.states.shape == (4, 2, 9, 2)
    # and the policies did move
    assert (direct.states[-1] - direct.states[0]).abs().max() > 1e-4


def test_meta_gradient_gradcheck_through_mountain_car():
    """float64 gradcheck of d(task loss after K=1 step)/d(phi) through a 6-step rollout."""
    features, loss, policy, task, init = _small_problem(torch.float64, horizon=6, hidden=(5,))
    car = MountainCar()
    objective = MetaTrainObjective(
        FinalDistance(), extras=(IntermediateGoal(state=(-0.947, -0.0055), steps=3),)
    )
    inner = InnerOptimizer("sgd", lr=0.3, steps=1)
    # The output bias adds a constant to M_phi, so no gradient reaches it: keep it fixed.
    params = dict(loss.named_parameters())
    last_bias = [n for n in params if n.endswith("bias")][-1]
    names = [n for n in params if n != last_bias]
    fixed = {last_bias: params[last_bias].detach()}

    def meta(*flat):
        phi = {**dict(zip(names, flat, strict=True)), **fixed}
        return meta_train_loss(loss, features, policy, init, car, task, objective, inner, phi=phi)[
            0
        ]

    phi0 = tuple(params[n].detach().clone().requires_grad_(True) for n in names)
    # the rollout stays inside every limit, where the dynamics are smooth
    with torch.no_grad():
        states = policy_rollout(policy, init, car, task).states
    assert states[..., 0].min() > -1.2 and states[..., 1].abs().max() < 1.5
    assert torch.autograd.gradcheck(meta, phi0, eps=1e-6, atol=1e-7, rtol=1e-5)
    grads = torch.autograd.grad(meta(*phi0), phi0)
    assert sum(g.abs().sum() for g in grads) > 1e-8


def test_batched_mlp_equals_module_policy():
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)
    ).double()
    fast = BatchedMLP((2, 5, 1), bias=True, activation="tanh", bound=None)
    params = fast.init(3, torch.Generator().manual_seed(1), dtype=D)
    as_module = {
        "0.weight": params["w0"],
        "0.bias": params["b0"],
        "2.weight": params["w1"],
        "2.bias": params["b1"],
    }
    x = torch.randn(3, 2, dtype=D)
    torch.testing.assert_close(fast(params, x), ModulePolicy(module)(as_module, x))
    scaled = BatchedMLP((2, 5, 1), activation="tanh", input_scale=(2.0, 0.5))
    torch.testing.assert_close(
        scaled(params, x), fast(params, x / torch.tensor([2.0, 0.5], dtype=D))
    )
    with pytest.raises(ValueError, match="input_scale"):
        BatchedMLP((2, 5, 1), input_scale=(1.0,))


def test_each_problem_is_trained_on_its_own_loss():
    """Training a batch equals training each problem alone (the sum objective decouples)."""
    _features, loss, policy, task, init = _small_problem(torch.float64)
    car = MountainCar()
    opt = InnerOptimizer("sgd", lr=0.5, steps=2)
    both = meta_test(loss, policy, init, car, task, opt)
    for b in range(2):
        alone = meta_test(
            loss, policy, {k: v[b : b + 1] for k, v in init.items()}, car, task.select([b]), opt
        )
        torch.testing.assert_close(alone.states[:, 0], both.states[:, b], rtol=1e-10, atol=1e-12)


def test_learned_control_loss_is_mean_over_steps():
    features, loss, policy, task, init = _small_problem(torch.float64)
    r = policy_rollout(policy, init, MountainCar(), task)
    f = features(r, task)
    assert f.shape == (2, 8, 6)
    torch.testing.assert_close(f[..., -1], torch.arange(1, 9, dtype=D).expand(2, 8) / 8)
    torch.testing.assert_close(learned_control_loss(loss, features)(r, task), loss(f).mean(-1))
    assert isinstance(init, Mapping)
