"""Controllers: protocols for dynamics and costs, iLQR, MPC and policies.

Imports only ``robots`` protocols; never creates environments or writes files.
"""

from controllers.costs import MountainCarCost, QuadraticCost, ReachCost
from controllers.ilqr import ILQR, ILQRConfig, ILQRResult
from controllers.mujoco_dynamics import MujocoDynamics
from controllers.protocols import Cost, Dynamics

__all__ = [
    "ILQR",
    "Cost",
    "Dynamics",
    "ILQRConfig",
    "ILQRResult",
    "MountainCarCost",
    "MujocoDynamics",
    "QuadraticCost",
    "ReachCost",
]
