"""Gymnasium reach environments over ``ArmSim`` (the simulator is the only physics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from robots.arm.config import ArmConfig, load_arm_config
from robots.arm.sim import ArmSim
from robots.arm.spatial import SpatialArmSim
from robots.arm.task import sample_goals, start_state


class ReachEnv(gymnasium.Env):
    """Reach a task-space goal with a torque-controlled planar arm (the paper's reacher).

    Observation ``(2n + 2,)`` float64: ``[q (n), qdot (n), goal (2)]`` (rad, rad/s, m).
    Action ``(n,)`` float32: joint torques in N*m, within the configured torque limits.
    Reward: ``-||ee - goal||`` in m (end-effector position from the simulator). Episodes start at
    rest at ``q = 0`` and are truncated after ``horizon`` steps; they never terminate early.

    Args:
        config: an ``ArmConfig`` or a shipped config name / YAML path. Default ``"reacher2"``.
        backend: ``"mujoco"`` or ``"pybullet"``.
        goal: a fixed goal ``(x, z)``; if None, each ``reset`` samples one with the env's seeded
            generator (``reset(options={"goal": g})`` overrides both).
        horizon: steps per episode (default 65, the paper's).
        render_mode: None or ``"rgb_array"``.
        width, height: rendered frame size in pixels.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}  # noqa: RUF012

    def __init__(
        self,
        config: ArmConfig | str | Path = "reacher2",
        backend: str = "mujoco",
        goal: Any = None,
        horizon: int = 65,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
    ) -> None:
        super().__init__()
        self.config = load_arm_config(config)
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon: expected a positive integer, got {horizon!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.sim = ArmSim(self.config, backend)
        self.horizon, self.render_mode = horizon, render_mode
        self.width, self.height = width, height
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.config.dt)}
        self._fixed_goal = None if goal is None else self._check_goal(goal)
        n, lim = self.config.n_links, np.asarray(self.config.torque_limits, dtype=np.float32)
        self.action_space = spaces.Box(-lim, lim, shape=(n,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2 * n + 2,), dtype=np.float64)
        self.goal = self._fixed_goal if self._fixed_goal is not None else np.zeros(2)
        self._t = 0

    def _check_goal(self, goal: Any) -> np.ndarray:
        g = np.asarray(goal, dtype=np.float64)
        if g.shape != (2,) or not np.all(np.isfinite(g)):
            raise ValueError(f"goal: expected a finite (x, z) pair in m, got {goal!r}")
        return g

    def _sample_goal(self) -> np.ndarray:
        return sample_goals(self.config, 1, self.np_random)[0]

    def _start(self) -> np.ndarray:
        return start_state(self.config)

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.sim.state, self.goal])

    def _info(self) -> dict[str, Any]:
        ee = self.sim.ee_position()
        return {
            "ee_position": ee,
            "distance": float(np.linalg.norm(ee - self.goal)),
            "goal": self.goal.copy(),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if options.get("goal") is not None:
            self.goal = self._check_goal(options["goal"])
        elif self._fixed_goal is not None:
            self.goal = self._fixed_goal
        else:
            self.goal = self._sample_goal()
        self.sim.goal = self.goal
        self.sim.reset(options.get("x0", self._start()))
        self._t = 0
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.sim.step(action)
        self._t += 1
        info = self._info()
        return self._obs(), -info["distance"], False, self._t >= self.horizon, info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.sim.render(self.width, self.height, self.goal)

    def close(self) -> None:
        self.sim.close()


class Arm3ReachEnv(ReachEnv):
    """``ReachEnv`` with the shipped ``arm3`` configuration by default."""

    def __init__(self, config: ArmConfig | str | Path = "arm3", **kwargs: Any) -> None:
        super().__init__(config, **kwargs)


class Arm4ReachEnv(ReachEnv):
    """``ReachEnv`` with the shipped ``arm4`` configuration by default."""

    def __init__(self, config: ArmConfig | str | Path = "arm4", **kwargs: Any) -> None:
        super().__init__(config, **kwargs)


class IiwaReachEnv(ReachEnv):
    """Reach a 3-D goal with the 7-DoF KUKA iiwa (``SpatialArmSim``), torque controlled.

    Observation ``(17,)`` float64: ``[q (7), qdot (7), goal (3)]``; action ``(7,)`` torques within
    the URDF efforts; reward ``-||ee - goal||`` (tool point from the simulator). Episodes start at
    rest at ``q = 0`` (arm upright); goals are tool points of joint angles drawn uniformly within
    80 % of the joint limits.

    Args:
        backend, goal, horizon, render_mode, width, height: as ``ReachEnv`` (goal is ``(x, y, z)``).
        dt: time step in s.
    """

    def __init__(
        self,
        backend: str = "mujoco",
        goal: Any = None,
        horizon: int = 100,
        render_mode: str | None = None,
        width: int = 320,
        height: int = 240,
        dt: float = 0.01,
    ) -> None:
        gymnasium.Env.__init__(self)
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon: expected a positive integer, got {horizon!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode: expected None or 'rgb_array', got {render_mode!r}")
        self.config = None
        self.sim = SpatialArmSim(backend, dt=dt)
        self.horizon, self.render_mode = horizon, render_mode
        self.width, self.height = width, height
        self.metadata = {**self.metadata, "render_fps": round(1.0 / dt)}
        self._fixed_goal = None if goal is None else self._check_goal(goal)
        lim = self.sim._limits.astype(np.float32)
        self.action_space = spaces.Box(-lim, lim, shape=(self.sim.nu,), dtype=np.float32)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(self.sim.nx + 3,), dtype=np.float64
        )
        self.goal = self._fixed_goal if self._fixed_goal is not None else np.zeros(3)
        self._t = 0

    def _check_goal(self, goal: Any) -> np.ndarray:
        g = np.asarray(goal, dtype=np.float64)
        if g.shape != (3,) or not np.all(np.isfinite(g)):
            raise ValueError(f"goal: expected a finite (x, y, z) point in m, got {goal!r}")
        return g

    def _sample_goal(self) -> np.ndarray:
        return self.sim.sample_goals(1, self.np_random)[0]

    def _start(self) -> np.ndarray:
        return np.zeros(self.sim.nx)
