"""The paper's MountainCar meta-train objective and protocol (issue 20).

The meta-loss and meta-gradient at iteration 0 are checked against a reference written here from
the equations alone (car, policy, features, M_phi, one SGD step, the objective), in float64.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from experiments.mountain_car import PAPER_PROTOCOL, MountainCarConfig
from ml3_robotics.app.cli import run_experiment
from ml3_robotics.app.runs import ConfigError, build_config
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.policy_search import ControlFeatures, meta_train_loss
from ml3_robotics.core.task_losses import Rollout
from ml3_robotics.tasks.mountain_car import (
    FEATURE_GROUPS,
    FEATURE_SCALE,
    energy_shortfall,
    make_policy,
    make_task,
    mechanical_energy,
    objective_for,
)
from robots.mountain_car import MountainCar, MountainCarParams

F64 = torch.float64
G_INT = (-0.947, -0.0055)
GOAL = (0.5, 1.0375)
T, N_INT, INNER_LR = 35, 15, 0.1


def _car_step(x, a):
    """v' = v + (g m cos 3p + a/m - k v) dt, p' = p + v' dt (m 0.2, g -9.8, k 0.3, dt 0.1)."""
    p, v = x[0], x[1]
    v = v + (-9.8 * 0.2 * torch.cos(3 * p) + a / 0.2 - 0.3 * v) * 0.1
    return torch.stack([p + v * 0.1, v])


def _policy(w0, w1, x):
    """0.25 tanh(W1 W0 (p, v / 0.1)): the linear policy, tanh-bounded, velocity input x10."""
    return 0.25 * torch.tanh(w1 @ (w0 @ (x / torch.tensor([1.0, 0.1], dtype=F64))))[0]


def _rollout(w0, w1, s0):
    states, actions = [s0], []
    for _ in range(T):
        a = _policy(w0, w1, states[-1])
        actions.append(a)
        states.append(_car_step(states[-1], a))
    return torch.stack(states), torch.stack(actions)


def _learned_loss(weights, states, actions):
    """mean_t M_phi(s_{t+1}, a_t, s_{t+1} - goal, ||s_T - goal||, t / T), inputs / scale."""
    goal = torch.tensor(GOAL, dtype=F64)
    d_final = torch.sqrt(((states[-1] - goal) ** 2).sum() + 1e-12)
    values = []
    for t in range(T):
        f = torch.cat([states[t + 1], actions[t : t + 1], states[t + 1] - goal,
                       d_final[None], torch.tensor([(t + 1) / T], dtype=F64)])  # fmt: skip
        h = f / torch.tensor(FEATURE_SCALE, dtype=F64)
        (w_a, b_a), (w_b, b_b), (w_c, b_c) = weights
        h = torch.nn.functional.elu(w_a @ h + b_a)
        h = torch.nn.functional.elu(w_b @ h + b_b)
        values.append((w_c @ h + b_c)[0])
    return torch.stack(values).mean()


def _paper_objective(states):
    """||S_0..14 - g_int||_F + ||S_15..35 - goal||_F (the paper's code: s[:15], s[15:])."""
    g_int, goal = torch.tensor(G_INT, dtype=F64), torch.tensor(GOAL, dtype=F64)
    return torch.sqrt(((states[:N_INT] - g_int) ** 2).sum()) + torch.sqrt(
        ((states[N_INT:] - goal) ** 2).sum()
    )


def test_paper_objective_meta_loss_and_gradient_match_the_equations():
    car = MountainCar()
    policy = make_policy(6, car.params.action_bound, "tanh", (1.0, 0.1))
    features = ControlFeatures(FEATURE_GROUPS, nx=2, nu=1)
    loss = LearnedLoss(LossConfig(features.spec(scale=FEATURE_SCALE), hidden=(8, 8),
                                  activation="elu", output_activation="none")).double()  # fmt: skip
    loss.reset_parameters(torch.Generator().manual_seed(0))
    init = policy.init(2, torch.Generator().manual_seed(1), dtype=F64)
    # Small gains: the car stays inside its bounds, where the clamps (left out of the reference)
    # do nothing; the test checks that below.
    init["w0"] = 0.3 * init["w0"]
    starts = torch.tensor([[-0.55, 0.0], [-0.5, 0.01]], dtype=F64)
    objective = objective_for("goal", 1.0, "final", "paper")
    meta, _ = meta_train_loss(loss, features, policy, init, car, make_task(starts), objective,
                              InnerOptimizer("sgd", lr=INNER_LR, steps=1))  # fmt: skip
    phi = list(loss.parameters())
    # The last bias shifts M_phi by a constant: no inner gradient, so no meta-gradient either.
    grads = torch.autograd.grad(meta, phi, allow_unused=True, materialize_grads=True)

    weights = [(phi[0], phi[1]), (phi[2], phi[3]), (phi[4], phi[5])]
    ref = []
    for b in range(2):
        w0, w1 = (init[k][b].clone().requires_grad_() for k in ("w0", "w1"))
        inner = _learned_loss(weights, *_rollout(w0, w1, starts[b]))
        g0, g1 = torch.autograd.grad(inner, (w0, w1), create_graph=True)
        states, _ = _rollout(w0 - INNER_LR * g0, w1 - INNER_LR * g1, starts[b])
        # The reference has no clamps: the car must stay inside its bounds for it to apply.
        assert (states[:, 0] > -1.2).all() and (states[:, 0] < 0.5).all()
        assert (states[:, 1].abs() < 1.5).all()
        ref.append(_paper_objective(states))
    ref_meta = torch.stack(ref).mean()
    ref_grads = torch.autograd.grad(ref_meta, phi, allow_unused=True, materialize_grads=True)
    assert meta.item() == pytest.approx(ref_meta.item(), rel=1e-9)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert (r.abs().max() > 0) == (i < len(phi) - 1)  # all but the last bias matter
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-12)


def test_paper_objective_without_the_goal_covers_every_state():
    states = torch.rand(3, T + 1, 2, dtype=F64)
    objective = objective_for("none", 1.0, "final", "paper")
    rollout = Rollout(states, torch.zeros(3, T, 1, dtype=F64))
    value = objective(rollout, make_task(states[:, 0]))
    goal = torch.tensor(GOAL, dtype=F64)
    expected = ((states - goal) ** 2).sum((1, 2)).sqrt()
    torch.testing.assert_close(value, expected)
    assert not math.isnan(float(value.sum()))


def test_protocol_paper_is_one_switch():
    config = build_config(MountainCarConfig, {"protocol": "paper"})
    for name, value in PAPER_PROTOCOL.items():
        assert getattr(config, name) == value, name
    assert config.inner_lr == MountainCarConfig().inner_lr  # our other choices stay
    with pytest.raises(ConfigError, match="meta_batch: protocol=paper fixes it to 1"):
        build_config(MountainCarConfig, {"protocol": "paper", "meta_batch": 4})


def test_paper_protocol_study_smoke(tmp_path):
    path = Path(__file__).resolve().parents[2] / "scripts" / "mountain_car_paper_protocol.py"
    spec = importlib.util.spec_from_file_location("mountain_car_paper_protocol", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    rows = study.run_seeds([1], tmp_path, smoke=True, sets=["landscape_grid=3"])
    doc = json.loads((tmp_path / "seed1" / "results.json").read_text())
    assert doc["config"]["protocol"] == "paper" and doc["config"]["meta_batch"] == 1
    assert doc["config"]["objective"] == "paper" and doc["config"]["fixed_init"] is True
    text = study.table(rows)
    assert text.count("\n") == 3 and text.splitlines()[-1].startswith("| total | ")
    for k in study.STEPS:
        state = rows[0][f"final_state_fixedinit_k{k}"]
        assert len(state) == 2 and -1.2 <= state[0] <= 0.5


def test_energy_prior_is_zero_once_the_car_can_reach_the_flag():
    prm = MountainCarParams()
    still = torch.tensor(prm.start, dtype=F64).expand(1, T + 1, 2)
    at_flag = still.clone()
    at_flag[0, -1] = torch.tensor([0.5, 0.0])
    fast_at_bottom = still.clone()  # v^2/2 = 1.4 at p = -pi/6 (U = -0.653): E = 0.75 > U(0.5)
    fast_at_bottom[0, 10] = torch.tensor([-math.pi / 6, math.sqrt(2.8)])
    rollout = Rollout(torch.cat([still, at_flag, fast_at_bottom]), torch.zeros(3, T, 1))
    torch.testing.assert_close(energy_shortfall(rollout), torch.tensor([1.0, 0.0, 0.0], dtype=F64))
    # U(p) = -(g m / 3) sin(3p): without friction or throttle the energy only oscillates with
    # the Euler step (no drift); with the potential's sign flipped it swings ~9x wider.
    car = MountainCar(MountainCarParams(friction=0.0, v_max=10.0))
    x = torch.tensor([[-0.9, 0.0]], dtype=F64)
    states = []
    for _ in range(200):
        states.append(x[0])
        x = car.step(x, torch.zeros(1, 1, dtype=F64))
    states = torch.stack(states)
    energy = mechanical_energy(states, prm)
    flipped = 0.5 * states[:, 1] ** 2 + prm.gravity * prm.mass / 3 * torch.sin(3 * states[:, 0])
    assert float(energy.std()) < 0.12 * float(energy.mean().abs())
    assert abs(float(energy[:100].mean() - energy[100:].mean())) < 0.005
    assert float(flipped.std()) > 5 * float(energy.std())


def test_energy_variant_meta_trains(tmp_path):
    assert [e.name for e in objective_for("energy", 1.0, "final").extras] == ["energy"]
    with pytest.raises(ConfigError, match="energy_weight"):
        build_config(MountainCarConfig, {"energy_weight": -1.0})
    _, result = run_experiment("mountain-car", out=tmp_path / "run", smoke=True,
                               sets=["extra=energy", "ilqr=false"])  # fmt: skip
    assert result.extra["main_method"] == "ml3_energy"
    assert (tmp_path / "run" / "loss_energy.safetensors").is_file()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert "energy" in rows[0] and len(rows) == 1 + 3  # the prior's value logged per update


def test_generalisation_study_smoke(tmp_path):
    path = Path(__file__).resolve().parents[2] / "scripts" / "mountain_car_generalisation.py"
    spec = importlib.util.spec_from_file_location("mountain_car_generalisation", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    by_method = study.run_study([0], ["energy"], tmp_path, smoke=True, sets=["landscape_grid=3"])
    assert set(by_method) == {"ml3_energy", "task_loss_sgd"}
    text = study.table(by_method)
    assert len(text.splitlines()) == 4 and "| ml3_energy | 1 | " in text
