"""Batched box-constrained quadratic programs by projected Newton.

Solves, independently for every problem ``b`` of a batch,

    min_x 0.5 x^T H_b x + g_b^T x   subject to   lower_b <= x <= upper_b,

with the projected-Newton method of Tassa, Mansard & Todorov (2014), "Control-limited
differential dynamic programming": at each iteration the variables that sit on a bound with the
gradient pushing outwards are clamped, a Newton step is taken in the remaining (free) subspace and
a projected Armijo line search is run along it. The free set at the solution is returned because
the iLQR backward pass needs it: feedback gains act only on free dimensions.

Internal numpy (float64) module; the public API of the package is torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Line-search step sizes tried all at once (vectorised): 1, 0.6, 0.36, ... down to ~2e-7;
# when none gives sufficient decrease the QP is treated as solved (stalled at machine precision).
_STEPS = 0.6 ** np.arange(30)


@dataclass
class BoxQPResult:
    """Solution of a batch of box QPs.

    Attributes:
        x: minimisers, shape ``(B, n)``; components on an active bound equal the bound exactly.
        free: ``(B, n)`` bool, True where the variable is not clamped at the solution.
        converged: ``(B,)`` bool.
        iterations: number of projected-Newton iterations run for the batch.
    """

    x: np.ndarray
    free: np.ndarray
    converged: np.ndarray
    iterations: int


def masked_hessian(H: np.ndarray, free: np.ndarray) -> np.ndarray:
    """``H`` with rows and columns of clamped dims replaced by the identity.

    Solving with it gives the free-subspace Newton step and zeros on clamped dims, which lets a
    batch with different free sets share one batched solve.
    """
    both = free[:, :, None] & free[:, None, :]
    eye = np.broadcast_to(np.eye(H.shape[-1], dtype=bool), H.shape)
    return np.where(both, H, eye.astype(H.dtype))


def box_qp(
    H: np.ndarray,
    g: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    max_iter: int = 100,
    tol_grad: float = 1e-10,
    tol_rel_improve: float = 1e-12,
    armijo: float = 0.1,
) -> BoxQPResult:
    """Solve ``B`` box-constrained QPs by projected Newton.

    Args:
        H: Hessians, shape ``(B, n, n)``, symmetric positive definite.
        g: linear terms, shape ``(B, n)``.
        lower: lower bounds, shape ``(B, n)`` (may be ``-inf``).
        upper: upper bounds, shape ``(B, n)`` (may be ``+inf``).
        x0: warm start, shape ``(B, n)``; projected onto the box. Zeros when None.
        max_iter: iteration limit.
        tol_grad: stop when the free-subspace gradient norm is below this.
        tol_rel_improve: stop when the relative objective improvement is below this.
        armijo: sufficient-decrease constant of the projected line search.

    Returns:
        A :class:`BoxQPResult`.
    """
    nb, _n = g.shape
    x = np.zeros_like(g) if x0 is None else x0.copy()
    x = np.clip(x, lower, upper)
    active = np.ones(nb, dtype=bool)
    converged = np.zeros(nb, dtype=bool)
    value = np.einsum("bi,bi->b", x, g) + 0.5 * np.einsum("bi,bij,bj->b", x, H, x)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported as iterations)
        grad = g + np.einsum("bij,bj->bi", H, x)
        clamped = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
        free = ~clamped
        gfree = np.where(free, grad, 0.0)
        small = np.linalg.norm(gfree, axis=1) < tol_grad
        done = active & small
        converged |= done
        active &= ~small
        if not active.any():
            break
        d = np.linalg.solve(masked_hessian(H, free), -gfree[..., None])[..., 0]
        sdotg = np.einsum("bi,bi->b", d, grad)
        # Candidates for all step sizes at once: (B, S, n).
        cand = np.clip(
            x[:, None, :] + _STEPS[None, :, None] * d[:, None, :],
            lower[:, None, :],
            upper[:, None, :],
        )
        vals = np.einsum("bsi,bi->bs", cand, g) + 0.5 * np.einsum("bsi,bij,bsj->bs", cand, H, cand)
        ok = (vals - value[:, None]) <= armijo * _STEPS[None, :] * sdotg[:, None]
        ok &= (sdotg < 0)[:, None]
        has = ok.any(axis=1)
        j = np.argmax(ok, axis=1)
        newx = cand[np.arange(nb), j]
        newv = vals[np.arange(nb), j]
        upd = active & has
        improve = (value - newv) / np.maximum(np.abs(value), 1e-300)
        x = np.where(upd[:, None], newx, x)
        # Stalled line search (no descent possible) or negligible improvement: solution reached.
        stop = active & (~has | (improve < tol_rel_improve))
        value = np.where(upd, newv, value)
        converged |= stop
        active &= ~stop
        if not active.any():
            break
    grad = g + np.einsum("bij,bj->bi", H, x)
    clamped = ((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0))
    return BoxQPResult(x=x, free=~clamped, converged=converged, iterations=it)
