"""Controllers: protocols for dynamics and costs, iLQR, MPC and policies.

Imports only ``robots`` protocols (in fact nothing of ``robots``); never creates environments or
writes files.
"""

from controllers.costs import MountainCarCost, QuadraticCost, ReachCost, TaskSpaceReachCost
from controllers.ilqr import ILQR, ILQRConfig, ILQRResult
from controllers.mpc import MPC, MPCRollout, Planner
from controllers.mujoco_dynamics import MujocoDynamics, SimulationDiverged
from controllers.planar_chain import PlanarChainDynamics
from controllers.policies import MLPPolicy, OpenLoopPolicy, rollout
from controllers.protocols import Cost, Dynamics

__all__ = [
    "ILQR",
    "MPC",
    "Cost",
    "Dynamics",
    "ILQRConfig",
    "ILQRResult",
    "MLPPolicy",
    "MPCRollout",
    "MountainCarCost",
    "MujocoDynamics",
    "OpenLoopPolicy",
    "PlanarChainDynamics",
    "Planner",
    "QuadraticCost",
    "ReachCost",
    "SimulationDiverged",
    "TaskSpaceReachCost",
    "rollout",
]
