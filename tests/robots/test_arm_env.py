"""Gymnasium reach environments: check_env, determinism, reward, registration."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import robots
from robots.arm import BACKENDS, ArmSim, ReachEnv, RenderingUnavailableError

ARM_IDS = [i for i, entry in robots.ENV_IDS.items() if entry.startswith("robots.arm.")]


@pytest.fixture(scope="module")
def render_mode() -> dict:
    """Check rendering too, unless MuJoCo has no offscreen GL context here (then check the rest)."""
    modes = {b: "rgb_array" for b in BACKENDS}
    with ArmSim("reacher2") as sim:
        try:
            sim.render(32, 24)
        except RenderingUnavailableError:
            modes["mujoco"] = None
    return modes


def test_arm_ids_registered() -> None:
    assert "ml3r/Reacher-v0" in ARM_IDS and len(ARM_IDS) >= 3


@pytest.mark.filterwarnings("ignore:.*Box observation space.*infinity")
@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space")  # torques in N*m, by design
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("env_id", ARM_IDS)
def test_check_env(env_id: str, backend: str, render_mode: dict) -> None:
    mode = render_mode[backend]
    env = gymnasium.make(env_id, backend=backend, render_mode=mode)
    check_env(env.unwrapped, skip_render_check=mode is None)
    env.close()


def _trajectory(backend: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    env = ReachEnv("reacher2", backend=backend)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out, rewards = [obs], []
    done = False
    while not done:
        obs, r, term, trunc, _ = env.step(env.action_space.sample())
        out.append(obs)
        rewards.append(r)
        done = term or trunc
    env.close()
    return np.array(out), np.array(rewards)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_trajectory(backend: str) -> None:
    a, ra = _trajectory(backend, 5)
    b, rb = _trajectory(backend, 5)
    c, _ = _trajectory(backend, 6)
    assert a.shape == (66, 6)  # horizon 65 + the reset observation
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ra, rb)
    assert not np.array_equal(a[0, 4:], c[0, 4:])  # a different seed, a different goal


def test_observation_reward_and_goal_options() -> None:
    env = ReachEnv(goal=[0.1, 0.1], horizon=3)
    obs, info = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0, 0, 0, 0.1, 0.1])  # the paper's start at zero
    assert info["distance"] == pytest.approx(np.hypot(0.1, 0.1))
    _, r, term, trunc, info = env.step(np.zeros(2, dtype=np.float32))
    assert r == pytest.approx(-np.hypot(0.1, 0.1)) and not term and not trunc
    env.step(np.zeros(2, dtype=np.float32))
    assert env.step(np.zeros(2, dtype=np.float32))[3]  # truncated at the horizon
    obs, _ = env.reset(options={"goal": [0.0, 0.15]})
    np.testing.assert_array_equal(obs[4:], [0.0, 0.15])
    with pytest.raises(ValueError, match="u: expected shape"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="horizon"):
        ReachEnv(horizon=0)
    with pytest.raises(ValueError, match="goal"):
        ReachEnv(goal=[np.nan, 0.0])


def test_iiwa_env_goals_reachable_and_seeded() -> None:
    from robots.arm import IiwaReachEnv

    env = IiwaReachEnv(horizon=2)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (17,) and np.all(a[:14] == 0)
    # the goal is a tool point the arm reaches at some joint angles within the limits
    goals = env.sim.sample_goals(4, seed=0)
    q = np.random.default_rng(0).uniform(
        env.sim.joint_limits[:, 0] * 0.8, env.sim.joint_limits[:, 1] * 0.8, size=(4, 7)
    )
    np.testing.assert_allclose(goals, env.sim.ee_positions(q), atol=1e-12)
    env.close()
