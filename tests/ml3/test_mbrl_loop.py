"""The MBRL loop's data and model (ml3_robotics.mbrl.loop): babble, collect, refit, checkpoint."""

import numpy as np
import torch

from ml3_robotics.core.inner import init_params
from ml3_robotics.mbrl.loop import DynamicsLearner, babble
from ml3_robotics.models.learned_dynamics import EnsembleConfig
from ml3_robotics.tasks.reach import ReachPolicy, ReachTask
from robots.arm import ArmSim, load_arm_config, sample_goals

SMALL = EnsembleConfig(n_members=2, hidden=(16,), batch_size=32, epochs=2, angle_dims=(0, 1))


def _learner(seed=0):
    arm = load_arm_config("reacher2")
    return arm, ArmSim(arm, "mujoco"), DynamicsLearner(arm, SMALL, seed)


def test_refit_learns_from_the_buffer_and_keeps_the_weights_frozen_outside_it():
    arm, sim, learner = _learner()
    learner.add(*babble(sim, 4, 10, 2, np.random.default_rng(0)))
    assert learner.buffer.n_transitions_added == 40
    assert not any(p.requires_grad for p in learner.model.parameters())
    before = [p.clone() for p in learner.model.parameters()]
    learner.refit(2, torch.Generator().manual_seed(0))
    assert learner.refits == 1
    assert not any(p.requires_grad for p in learner.model.parameters())
    after = list(learner.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # collecting executes the policies in the simulator and keeps their transitions
    task = ReachTask(arm, sample_goals(arm, 3, 0), 10)
    policy = ReachPolicy(arm, (8,))
    X, U = learner.collect(sim, policy, init_params(policy, 3, torch.Generator()), task)
    assert X.shape == (3, 11, arm.nx) and U.shape == (3, 10, arm.nu)
    assert learner.buffer.n_transitions_added == 70


def test_state_dict_restores_buffer_model_and_counters_exactly():
    arm, sim, learner = _learner()
    learner.add(*babble(sim, 3, 8, 2, np.random.default_rng(1)))
    learner.refit(2, torch.Generator().manual_seed(1))
    learner.monitor_steps = 17
    _, _, restored = _learner(seed=5)  # another initialisation, overwritten by the state
    restored.load_state_dict(learner.state_dict())
    assert (restored.refits, restored.monitor_steps) == (1, 17)
    assert restored.buffer.n_transitions_added == learner.buffer.n_transitions_added
    x, u = torch.zeros(4, arm.nx), torch.full((4, arm.nu), 0.1)
    torch.testing.assert_close(restored.step(x, u), learner.step(x, u), rtol=0, atol=0)
