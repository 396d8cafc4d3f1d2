"""Structural protocols that simulated robots and learned models satisfy.

The consumer (the controllers) defines them; robots and learned models satisfy them
structurally, without importing this module.

Optional fast paths, used when present (not part of the protocols, so nothing has to provide them):

* dynamics ``jacobians(x (N, nx), u (N, nu)) -> (A (N, nx, nx), B (N, nx, nu))``: analytic or
  simulator Jacobians (MuJoCo finite differences); otherwise ``torch.func.jacrev`` on ``step``.
* dynamics ``step_numpy(x: ndarray, u: ndarray) -> ndarray``: float64 numpy stepping without
  torch conversions (simulators).
* dynamics ``numpy_session() -> context manager``: entered once around a whole iLQR solve, for
  per-call set-up that can be hoisted (MujocoDynamics silences MuJoCo's log once per solve).
* cost ``trajectory(X (B, T+1, nx), U (B, T, nu)) -> (B,)``: vectorised total cost.
* cost ``trajectory_numpy(X, U) -> ndarray``: the same on float64 numpy arrays (the iLQR's line
  search, when it works in float64).
* cost ``quadratize(X, U) -> controllers.derivatives.CostDerivatives``: analytic derivatives;
  otherwise ``torch.func`` (``jacrev`` of ``grad``) per time step.

``step`` must treat rows independently (row ``b`` of the output depends only on row ``b`` of the
inputs): the Jacobians are taken of ``step(x, u).sum(0)``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Dynamics(Protocol):
    """Discrete-time dynamics ``x' = f(x, u)``, batched.

    Attributes:
        nx: state dimension.
        nu: control dimension.
        dt: time step in seconds.
    """

    nx: int
    nu: int
    dt: float

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        """Advance one time step.

        Args:
            x: states, shape ``(B, nx)``.
            u: controls, shape ``(B, nu)``.

        Returns:
            Next states, shape ``(B, nx)``. Differentiable in ``x`` and ``u`` for torch dynamics.
        """
        ...


@runtime_checkable
class Cost(Protocol):
    """Trajectory cost ``sum_t l(x_t, u_t, t) + l_T(x_T)``, batched over problems.

    Per-problem data (goals, weights) lives inside the cost object with a leading batch axis.
    """

    def running(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        """Running cost at step ``t``: ``x (B, nx)``, ``u (B, nu)`` -> ``(B,)``."""
        ...

    def terminal(self, x: Tensor) -> Tensor:
        """Terminal cost: ``x (B, nx)`` -> ``(B,)``."""
        ...
