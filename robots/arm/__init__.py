"""Configurable planar N-link arms on MuJoCo and PyBullet, and a 7-DoF spatial arm.

Build an arm from an ``ArmConfig`` (or load a shipped one by name), simulate it with ``ArmSim``
on either backend, compute kinematics in torch, sample reach goals and wrap it all as a Gymnasium
``ReachEnv``. See docs/arms.md.
"""

from robots.arm.config import ArmConfig, available_arm_configs, load_arm_config
from robots.arm.env import IiwaReachEnv, ReachEnv
from robots.arm.kinematics import (
    ee_velocity,
    forward_kinematics,
    inverse_kinematics,
    jacobian,
    joint_positions,
    kinetic_energy,
    mass_matrix,
)
from robots.arm.render import render_rollout
from robots.arm.sim import (
    BACKENDS,
    MAX_JOINT_SPEED,
    ArmSim,
    RenderingUnavailableError,
    SimDynamics,
    SimulationError,
)
from robots.arm.spatial import SpatialArmSim
from robots.arm.task import check_goals, sample_goals, start_state

__all__ = [
    "BACKENDS",
    "MAX_JOINT_SPEED",
    "ArmConfig",
    "ArmSim",
    "IiwaReachEnv",
    "ReachEnv",
    "RenderingUnavailableError",
    "SimDynamics",
    "SimulationError",
    "SpatialArmSim",
    "available_arm_configs",
    "check_goals",
    "ee_velocity",
    "forward_kinematics",
    "inverse_kinematics",
    "jacobian",
    "joint_positions",
    "kinetic_energy",
    "load_arm_config",
    "mass_matrix",
    "render_rollout",
    "sample_goals",
    "start_state",
]
