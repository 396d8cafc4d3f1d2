"""Controllers: protocols for dynamics and costs, iLQR, MPC and policies.

Imports only ``robots`` protocols; never creates environments or writes files.
"""

from controllers.protocols import Cost, Dynamics

__all__ = ["Cost", "Dynamics"]
