"""First and second derivatives of dynamics and costs, batched over problems and time.

Dynamics: a dynamics object that has ``jacobians(x, u) -> (A, B)`` supplies its own (MuJoCo finite
differences, analytic models); otherwise they come from ``torch.func.jacrev`` on ``step``.
Costs: a cost that has ``quadratize(X, U)`` supplies analytic derivatives; otherwise they come from
``torch.func`` (``jacrev`` of ``grad``) at every time step.

Batch trick: the output row ``b`` of ``step`` depends only on input row ``b``, so the Jacobian of
``step(x, u).sum(0)`` with respect to ``x`` holds every per-problem Jacobian, at the price of ``nx``
vector-Jacobian products (which ``jacrev`` vmaps) independent of the batch size. The same holds for
the gradient of ``cost.sum()``. This needs no per-sample function, so dynamics and costs whose
parameters carry a batch axis (per-problem goals) work unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, jacrev

log = logging.getLogger(__name__)


def dynamics_jacobians(dynamics: Any, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row Jacobians of ``dynamics.step``.

    Args:
        dynamics: an object satisfying :class:`controllers.Dynamics`, optionally with
            ``jacobians(x, u) -> (A, B)``.
        x: states, shape ``(N, nx)``.
        u: controls, shape ``(N, nu)``.

    Returns:
        ``A = d step / d x`` of shape ``(N, nx, nx)`` and ``B = d step / d u`` of shape
        ``(N, nx, nu)``.
    """
    if hasattr(dynamics, "jacobians"):
        return dynamics.jacobians(x, u)

    def summed(xx: Tensor, uu: Tensor) -> Tensor:
        return dynamics.step(xx, uu).sum(0)

    try:
        ja, jb = jacrev(summed, argnums=(0, 1))(x.detach(), u.detach())
    except RuntimeError as err:
        # Not vmap-compatible (in-place ops, data-dependent control flow, ...): fall back to one
        # reverse pass per output dimension with plain autograd.
        log.debug("jacrev failed (%s); using a loop of autograd.grad", err)
        return _jacobians_loop(dynamics, x, u)
    # (nx_out, N, nx_in) -> (N, nx_out, nx_in)
    return ja.permute(1, 0, 2), jb.permute(1, 0, 2)


def _jacobians_loop(dynamics: Any, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    xx = x.detach().clone().requires_grad_(True)
    uu = u.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = dynamics.step(xx, uu)
        rows_a, rows_b = [], []
        for i in range(y.shape[1]):
            ga, gb = torch.autograd.grad(
                y[:, i].sum(), (xx, uu), retain_graph=True, allow_unused=True
            )
            rows_a.append(torch.zeros_like(xx) if ga is None else ga)
            rows_b.append(torch.zeros_like(uu) if gb is None else gb)
    return torch.stack(rows_a, 1).detach(), torch.stack(rows_b, 1).detach()


@dataclass
class CostDerivatives:
    """Derivatives of a trajectory cost (numpy float64).

    Index ``T`` of ``lx``/``lxx`` is the terminal cost; the others are running costs.

    Attributes:
        lx: ``(B, T+1, nx)``.
        lu: ``(B, T, nu)``.
        lxx: ``(B, T+1, nx, nx)``.
        luu: ``(B, T, nu, nu)``.
        lux: ``(B, T, nu, nx)``.
    """

    lx: np.ndarray
    lu: np.ndarray
    lxx: np.ndarray
    luu: np.ndarray
    lux: np.ndarray


def _to_np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def cost_derivatives(cost: Any, X: Tensor, U: Tensor) -> CostDerivatives:
    """Gradients and Hessians of a cost along a batch of trajectories.

    Args:
        cost: an object satisfying :class:`controllers.Cost`, optionally with
            ``quadratize(X, U) -> CostDerivatives``.
        X: states, shape ``(B, T+1, nx)``.
        U: controls, shape ``(B, T, nu)``.

    Returns:
        :class:`CostDerivatives`.
    """
    if hasattr(cost, "quadratize"):
        return cost.quadratize(X, U)
    X = X.detach()
    U = U.detach()
    nb, T, nu = U.shape
    nx = X.shape[-1]
    lx = np.empty((nb, T + 1, nx))
    lu = np.empty((nb, T, nu))
    lxx = np.empty((nb, T + 1, nx, nx))
    luu = np.empty((nb, T, nu, nu))
    lux = np.empty((nb, T, nu, nx))
    for t in range(T):

        def total(x: Tensor, u: Tensor, t: int = t) -> Tensor:
            return cost.running(x, u, t).sum()

        g = grad(total, argnums=(0, 1))

        def gsum(x: Tensor, u: Tensor, g: Any = g) -> Tensor:
            gx, gu = g(x, u)
            return torch.cat([gx, gu], dim=-1).sum(0)

        gx, gu = g(X[:, t], U[:, t])
        hx, hu = jacrev(gsum, argnums=(0, 1))(X[:, t], U[:, t])  # (nz, B, nx), (nz, B, nu)
        hx = _to_np(hx.permute(1, 0, 2))
        hu = _to_np(hu.permute(1, 0, 2))
        lx[:, t], lu[:, t] = _to_np(gx), _to_np(gu)
        lxx[:, t] = hx[:, :nx]
        luu[:, t] = hu[:, nx:]
        lux[:, t] = hx[:, nx:]

    def term(x: Tensor) -> Tensor:
        return cost.terminal(x).sum()

    gT = grad(term)

    def gTsum(x: Tensor) -> Tensor:
        return gT(x).sum(0)

    lx[:, T] = _to_np(gT(X[:, T]))
    lxx[:, T] = _to_np(jacrev(gTsum)(X[:, T]).permute(1, 0, 2))
    return CostDerivatives(lx=lx, lu=lu, lxx=lxx, luu=luu, lux=lux)


def trajectory_cost(cost: Any, X: Tensor, U: Tensor) -> Tensor:
    """Total cost ``sum_t running(x_t, u_t, t) + terminal(x_T)``, shape ``(B,)``.

    Uses ``cost.trajectory(X, U)`` when the cost provides a vectorised version.
    """
    if hasattr(cost, "trajectory"):
        return cost.trajectory(X, U)
    T = U.shape[1]
    total = cost.terminal(X[:, T])
    for t in range(T):
        total = total + cost.running(X[:, t], U[:, t], t)
    return total
