"""Batched, box-constrained iterative LQR.

Solves ``B`` independent optimal-control problems at once,

    min_{u_0..u_{T-1}}  sum_t l(x_t, u_t, t) + l_T(x_T)
    s.t.  x_{t+1} = f(x_t, u_t),  x_0 given,  lower <= u_t <= upper,

with the control-limited DDP of Tassa, Mansard & Todorov (2014): the backward pass solves a
box-constrained QP per step (projected Newton, :mod:`controllers.boxqp`); feedback gains act only on
the free (unclamped) control dimensions. Levenberg-Marquardt regularisation ``Quu + mu I`` follows
the adaptive schedule of Tassa, Erez & Todorov (2012); the forward pass backtracks over a set of
step sizes, chosen per problem. Problems converge (or fail) independently; a finished problem's
solution is frozen while the rest of the batch iterates.

The dynamics and cost are torch objects; the linear algebra of the backward pass runs in numpy
float64, batched over problems, because for the small matrices of control problems (nx, nu < 30)
the per-call overhead dominates and numpy's is several times lower than torch's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from controllers.boxqp import box_qp, masked_hessian
from controllers.derivatives import (
    CostDerivatives,
    cost_derivatives,
    dynamics_jacobians,
    trajectory_cost,
)

log = logging.getLogger(__name__)

_DEFAULT_ALPHAS = tuple(float(a) for a in 10.0 ** np.linspace(0.0, -3.0, 11))


@dataclass(frozen=True)
class ILQRConfig:
    """Solver settings.

    Attributes:
        max_iters: iteration limit (one iteration = derivatives, backward pass, line search).
        tol_cost: converged when an accepted step decreases the cost by less than
            ``tol_cost * |J|`` (relative cost decrease).
        tol_grad: converged when the feedforward step is small: ``mean_t max_i |k_ti| /
            (|u_ti| + 1) < tol_grad`` (the "gradient norm" of Tassa et al.) while ``mu <= mu_min``.
        tol_expected: also converged when the backward pass predicts a cost decrease
            ``-(dV1 + dV2)`` of the full step below this absolute value while ``mu <= mu_min``
            (Crocoddyl's stopping rule, its ``th_stop``; Crocoddyl still takes that last step,
            which cannot change the cost by more than this, here it is skipped). 0 (default)
            disables the test.
        jacobian_reuse_radius: a time step whose state and control moved by at most this
            (max-norm, state and control units) since its dynamics Jacobians were evaluated
            keeps them. None: the dynamics' ``jacobian_reuse_radius`` attribute if it has one
            (:class:`MujocoDynamics`: 1/100 of its one-sided finite-difference step, so the
            Jacobians change by far less than their own finite-difference error), else 0
            (only unchanged steps keep theirs, which gives the same numbers as recomputing).
        mu_init: initial Levenberg-Marquardt regularisation added to ``Quu``.
        mu_min: smallest non-zero ``mu``; decreasing below it sets ``mu = 0``.
        mu_max: a problem whose ``mu`` exceeds this stops, not converged.
        mu_factor: base factor of the adaptive (quadratic) mu schedule, > 1.
        alphas: line-search step sizes tried in order, decreasing, in (0, 1].
        accept_ratio: a step is accepted when actual / expected cost decrease exceeds this.
        boxqp_max_iter: iteration limit of the projected-Newton box QP.
        dtype: dtype in which dynamics and costs are called.
    """

    max_iters: int = 100
    tol_cost: float = 1e-9
    tol_grad: float = 1e-6
    tol_expected: float = 0.0
    jacobian_reuse_radius: float | None = None
    mu_init: float = 0.0
    mu_min: float = 1e-6
    mu_max: float = 1e10
    mu_factor: float = 1.6
    alphas: tuple[float, ...] = _DEFAULT_ALPHAS
    accept_ratio: float = 1e-4
    boxqp_max_iter: int = 100
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        if not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ValueError(f"max_iters: expected an int >= 1, got {self.max_iters!r}")
        for name in ("tol_cost", "tol_grad", "tol_expected", "mu_init", "mu_min", "accept_ratio"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a finite value >= 0, got {v!r}")
        r = self.jacobian_reuse_radius
        if r is not None and not (np.isfinite(r) and r >= 0):
            raise ValueError(
                f"jacobian_reuse_radius: expected None or a finite value >= 0, got {r!r}"
            )
        if not self.mu_max > self.mu_min:
            raise ValueError(f"mu_max: expected > mu_min={self.mu_min}, got {self.mu_max!r}")
        if not self.mu_factor > 1:
            raise ValueError(f"mu_factor: expected > 1, got {self.mu_factor!r}")
        a = self.alphas
        if (
            len(a) == 0
            or any(not (0 < x <= 1) for x in a)
            or any(x <= y for x, y in itertools.pairwise(a))
        ):
            raise ValueError(f"alphas: expected a non-empty decreasing tuple in (0, 1], got {a!r}")
        if not isinstance(self.boxqp_max_iter, int) or self.boxqp_max_iter < 1:
            raise ValueError(f"boxqp_max_iter: expected an int >= 1, got {self.boxqp_max_iter!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {self.dtype!r}")


@dataclass
class ILQRResult:
    """A batch of plans.

    The time-varying feedback policy around the plan is ``u_t = controls_t + K_t (x - states_t)``,
    clipped to the bounds; ``K`` is zero on control dims clamped at a bound.

    Attributes:
        states: ``(B, T+1, nx)``.
        controls: ``(B, T, nu)``.
        K: feedback gains ``(B, T, nu, nx)`` from the last backward pass.
        k: feedforward steps ``(B, T, nu)`` of the last backward pass (about 0 when converged).
        cost: final cost ``(B,)``.
        cost_history: ``(B, I+1)``, the cost before the first and after every iteration
            (constant after a problem finished).
        iterations: ``(B,)`` iterations each problem ran.
        converged: ``(B,)`` bool; non-convergence is reported here, never raised.
        mu: ``(B,)`` final regularisation.
    """

    states: Tensor
    controls: Tensor
    K: Tensor
    k: Tensor
    cost: Tensor
    cost_history: Tensor
    iterations: Tensor
    converged: Tensor
    mu: Tensor = field(repr=False)


def _bounds(name: str, value: Any, nu: int, fill: float) -> np.ndarray:
    if value is None:
        return np.full((1, nu), fill)
    a = np.asarray(value.detach().cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full((nu,), float(a))
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[-1] != nu:
        raise ValueError(f"{name}: expected a scalar, ({nu},) or (B, {nu}), got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name}: expected no NaN, got {a.tolist()}")
    return a


def _spd_solve(H: np.ndarray, R: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """``-H^{-1} R`` for a batch of symmetric ``H (B, n, n)``, and which ``H`` are not PD.

    Returns ``(bad, X)`` with ``bad`` None when every ``H`` is positive definite; rows of ``X``
    for bad problems are meaningless. n = 1 and 2 use closed forms because LAPACK's per-call
    overhead is several times the arithmetic at that size.
    """
    n = H.shape[-1]
    if n == 1:
        h = H[:, 0, 0]
        bad = ~(h > 0)
        return (bad if bad.any() else None), -R / np.where(bad, 1.0, h)[:, None, None]
    if n == 2 and H.shape[0] == 1:
        # A single problem (the common MPC / one-goal case): Python floats are IEEE doubles
        # without fused multiply-add, so these are the same numbers as the batched branch below
        # at a fraction of the per-call overhead.
        (a, b), (_, d) = H[0].tolist()
        det = a * d - b * b
        bad1 = not (a > 0 and det > 0)
        if bad1:
            det = 1.0
        # Rows [b r1 - d r0, b r0 - a r1] / det, both at once (R[:, ::-1] swaps r0 and r1).
        X = (b * R[:, ::-1] - np.array([[[d], [a]]]) * R) / det
        return (np.ones(1, dtype=bool) if bad1 else None), X
    if n == 2:
        a, b, d = H[:, 0, 0], H[:, 0, 1], H[:, 1, 1]
        det = a * d - b * b
        good = (a > 0) & (det > 0)
        # .tolist() + all(): a numpy reduction costs ~10x more on a handful of elements.
        bad = None if all(good.tolist()) else ~good
        if bad is not None:
            det = np.where(bad, 1.0, det)
        # -H^{-1} R = [b r1 - d r0, b r0 - a r1] / det: the single-problem branch's operations
        # (R[:, ::-1] swaps r0 and r1), elementwise, so the same numbers (no matmul, no FMA).
        da = H.diagonal(axis1=1, axis2=2)[:, ::-1, None]  # (d, a): a view
        X = (b[:, None, None] * R[:, ::-1] - da * R) / det[:, None, None]
        return bad, X
    try:
        np.linalg.cholesky(H)
        bad = None
    except np.linalg.LinAlgError:
        bad = ~np.isfinite(H).all((-1, -2))
        Hs = np.where(bad[:, None, None], np.eye(n), H)
        bad |= np.linalg.eigvalsh(Hs).min(-1) <= 0
        H = np.where(bad[:, None, None], np.eye(n), H)
    return bad, -np.linalg.solve(H, R)


def _run_sources(bi: np.ndarray, ti: np.ndarray, Z: np.ndarray, r: float) -> np.ndarray:
    """For steps ``(bi, ti)`` (row-major, problem then time) at points ``Z (m, nz)``: the index
    of the step whose Jacobians each one uses, itself or an earlier step of the same problem
    within max-norm distance ``r`` of it (through consecutive steps, each within ``r``).

    A run of consecutive steps starts anew wherever a step is farther than ``r`` from the
    previous one or from the run's first step, so every step is within ``r`` of its source.
    """
    m = len(bi)
    idx = np.arange(m)
    if m < 2:
        return idx
    start = np.ones(m, dtype=bool)
    start[1:] = ~(
        (bi[1:] == bi[:-1]) & (ti[1:] == ti[:-1] + 1) & (np.abs(Z[1:] - Z[:-1]) <= r).all(-1)
    )
    if start.all():
        return idx
    for round_ in itertools.count():
        src = np.maximum.accumulate(np.where(start, idx, 0))
        # A start is its own source (also when it holds NaN, which is never near anything).
        far = ~(np.abs(Z - Z[src]) <= r).all(-1) & ~start
        if not far.any():
            return src
        f = np.nonzero(far)[0]
        if round_ < 4:
            # The first step of each run that drifted out becomes a start (runs stay long).
            s = src[f]
            f = f[np.concatenate([[True], s[1:] != s[:-1]])]
        start[f] = True  # later rounds: every step still out; terminates, starts only grow
    raise AssertionError("unreachable")


class ILQR:
    """Batched box-constrained iLQR planner.

    Args:
        dynamics: satisfies :class:`controllers.Dynamics`; ``jacobians(x, u)`` is used if present,
            else ``torch.func.jacrev``.
        cost: satisfies :class:`controllers.Cost`; ``quadratize``/``trajectory`` used if present.
        horizon: number of controls ``T >= 1``.
        lower: control lower bound, scalar, ``(nu,)`` or ``(B, nu)``; None for unbounded.
        upper: control upper bound, like ``lower``.
        config: :class:`ILQRConfig`.
    """

    def __init__(
        self,
        dynamics: Any,
        cost: Any,
        horizon: int,
        lower: Tensor | Sequence[float] | float | None = None,
        upper: Tensor | Sequence[float] | float | None = None,
        config: ILQRConfig | None = None,
    ) -> None:
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")
        for attr in ("nx", "nu", "step"):
            if not hasattr(dynamics, attr):
                raise TypeError(
                    f"dynamics: expected an object with .{attr} (Dynamics protocol), "
                    f"got {type(dynamics).__name__}"
                )
        for attr in ("running", "terminal"):
            if not hasattr(cost, attr):
                raise TypeError(
                    f"cost: expected an object with .{attr}() (Cost protocol), "
                    f"got {type(cost).__name__}"
                )
        self.dynamics, self.cost, self.horizon = dynamics, cost, horizon
        self.nx, self.nu = int(dynamics.nx), int(dynamics.nu)
        self.config = config if config is not None else ILQRConfig()
        r = self.config.jacobian_reuse_radius
        if r is None:
            r = float(getattr(dynamics, "jacobian_reuse_radius", 0.0))
        self._reuse_radius = r
        # Optional fast path for simulators that work in numpy float64 (MujocoDynamics).
        self._step_numpy = getattr(dynamics, "step_numpy", None)
        self._cost_numpy = getattr(cost, "trajectory_numpy", None)
        self.lower = _bounds("lower", lower, self.nu, -np.inf)
        self.upper = _bounds("upper", upper, self.nu, np.inf)
        lo, hi = np.broadcast_arrays(self.lower, self.upper)
        bad = lo > hi
        if bad.any():
            raise ValueError(
                f"lower: expected lower <= upper elementwise, got lower={lo[bad]} "
                f"above upper={hi[bad]}"
            )
        self.bounded = bool(np.isfinite(self.lower).any() or np.isfinite(self.upper).any())

    # ---------------------------------------------------------------- helpers
    def _step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        if self._step_numpy is not None:
            return self._step_numpy(x, u)
        dt = self.config.dtype
        with torch.no_grad():
            y = self.dynamics.step(torch.from_numpy(x).to(dt), torch.from_numpy(u).to(dt))
        return y.detach().to(torch.float64).cpu().numpy()

    def _cost(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        dt = self.config.dtype
        if self._cost_numpy is not None and dt == torch.float64:
            return self._cost_numpy(X, U)
        with torch.no_grad():
            J = trajectory_cost(self.cost, torch.from_numpy(X).to(dt), torch.from_numpy(U).to(dt))
        return J.detach().to(torch.float64).cpu().numpy().reshape(-1)

    def _rollout(
        self,
        x0: np.ndarray,
        U: np.ndarray,
        X: np.ndarray | None = None,
        k: np.ndarray | None = None,
        K: np.ndarray | None = None,
        alpha: float = 1.0,
        rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Open loop (``k is None``) or closed loop around ``(X, U)`` with step ``alpha``.

        With ``rows`` (bool ``(B,)``), only those problems are simulated (dynamics rows are
        independent) and the others keep ``(X, U)``: finished problems cost nothing.
        """
        if rows is not None and not rows.all():
            i = np.nonzero(rows)[0]
            Xn, Un = X.copy(), U.copy()
            lo = self.lower[i] if self.lower.shape[0] > 1 else self.lower
            hi = self.upper[i] if self.upper.shape[0] > 1 else self.upper
            Xn[i], Un[i] = self._simulate(x0[i], U[i], X[i], k[i], K[i], alpha, lo, hi)
            return Xn, Un
        if k is None and len(x0) > 1:
            # Open loop: problems with the same start and controls (a batch of goals solved
            # from one state with zero controls) share one simulation. U is already inside
            # every problem's bounds, so clipping cannot tell such rows apart.
            z = np.concatenate([x0, U.reshape(len(x0), -1)], axis=1)
            _, first, inv = np.unique(z, axis=0, return_index=True, return_inverse=True)
            if len(first) < len(x0):
                lo = self.lower[first] if self.lower.shape[0] > 1 else self.lower
                hi = self.upper[first] if self.upper.shape[0] > 1 else self.upper
                Xf, Uf = self._simulate(x0[first], U[first], None, None, None, alpha, lo, hi)
                inv = inv.reshape(-1)
                return Xf[inv], Uf[inv]
        return self._simulate(x0, U, X, k, K, alpha, self.lower, self.upper)

    def _simulate(
        self,
        x0: np.ndarray,
        U: np.ndarray,
        X: np.ndarray | None,
        k: np.ndarray | None,
        K: np.ndarray | None,
        alpha: float,
        lo: np.ndarray,
        hi: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        T = U.shape[1]
        x = x0
        xs, us = [x0], []
        if self.bounded:
            with np.errstate(invalid="ignore"):
                snap_lo = 1e-12 * (1.0 + np.abs(lo))
                snap_hi = 1e-12 * (1.0 + np.abs(hi))
        # Feedforward part for all steps at once (elementwise, so the same numbers as per step).
        Uff = list(np.moveaxis(U if k is None else U + alpha * k, 1, 0))
        if k is not None:
            # One expression for any batch size: a problem solved alone then gets exactly the
            # numbers it gets in a batch (a 2-D dot rounds differently, and active-set
            # decisions of the box QP can amplify a rounding difference).
            X_t, K_t = list(np.moveaxis(X, 1, 0)), list(np.moveaxis(K, 1, 0))
        step = self._step_numpy if self._step_numpy is not None else self._step
        for t in range(T):
            if k is None:
                u = Uff[t]
            else:
                u = Uff[t] + (K_t[t] @ (x - X_t[t])[..., None])[..., 0]
            if self.bounded:
                u = np.clip(u, lo, hi)
                if k is not None:
                    # The box QP gives k = bound - u_t on clamped dims; u_t + k can round to a
                    # few ulps inside the bound. Snap so active constraints hold exactly.
                    u = np.where(np.abs(u - lo) <= snap_lo, lo, u)
                    u = np.where(np.abs(u - hi) <= snap_hi, hi, u)
            us.append(u)
            if k is None and t > 0 and (x == xs[-2]).all() and (u == us[-2]).all():
                # Open loop at a fixed point (a system at rest under constant controls, as at
                # the start from zero controls): the step is a function of (x, u) alone, so
                # the same input gives the same next state. Not simulated again.
                xs.append(x)
                continue
            x = step(x, u)
            xs.append(x)
        # Stacking copies, so views into the inputs or the simulator's buffers are not kept.
        return np.stack(xs, axis=1), np.stack(us, axis=1)

    def _validate(self, x0: Tensor, U0: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(x0, Tensor):
            raise TypeError(
                f"x0: expected a torch.Tensor of shape (B, {self.nx}), got {type(x0).__name__}"
            )
        if x0.ndim != 2 or x0.shape[1] != self.nx or x0.shape[0] < 1:
            raise ValueError(f"x0: expected shape (B, {self.nx}), got {tuple(x0.shape)}")
        x = x0.detach().to(torch.float64).cpu().numpy()
        if not np.isfinite(x).all():
            raise ValueError(
                f"x0: expected finite values, got NaN/inf in rows "
                f"{np.nonzero(~np.isfinite(x).all(1))[0].tolist()}"
            )
        nb, T = x.shape[0], self.horizon
        for name, b in (("lower", self.lower), ("upper", self.upper)):
            if b.shape[0] not in (1, nb):
                raise ValueError(
                    f"{name}: expected batch size 1 or {nb} (from x0), got {b.shape[0]}"
                )
        if U0 is None:
            U = np.zeros((nb, T, self.nu))
        else:
            if not isinstance(U0, Tensor):
                raise TypeError(f"U0: expected a torch.Tensor, got {type(U0).__name__}")
            if tuple(U0.shape) != (nb, T, self.nu):
                raise ValueError(
                    f"U0: expected shape {(nb, T, self.nu)} (B, horizon, nu), got {tuple(U0.shape)}"
                )
            U = U0.detach().to(torch.float64).cpu().numpy().copy()
            if not np.isfinite(U).all():
                raise ValueError("U0: expected finite values, got NaN/inf")
        if self.bounded:
            U = np.clip(U, self.lower[:, None], self.upper[:, None])
        return x, U

    def _derivatives(
        self,
        X: np.ndarray,
        U: np.ndarray,
        rows: np.ndarray | None = None,
        prev_Faug: np.ndarray | None = None,
        anchor: np.ndarray | None = None,
        inplace: bool = False,
        finish: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Derivatives packed for the backward pass.

        Dynamics Jacobians are evaluated only for ``rows`` (bool ``(B,)``, all when None); the
        other problems get theirs from ``prev_Faug`` (zeros when None). Used for problems that are
        finished, or whose trajectory did not change since ``prev_Faug`` was computed.

        With ``anchor`` (``(B, T, nz)``, the ``(x_t, u_t)`` at which each step's Jacobians in
        ``prev_Faug`` were evaluated; ``inf`` where never), a step of ``rows`` that moved by at
        most the reuse radius (max-norm; see :class:`ILQRConfig`) keeps its Jacobians; the
        anchors of re-evaluated steps are updated in place. With ``inplace``, ``prev_Faug``
        itself is updated and returned instead of a copy.

        Returns ``Faug (B, T, 1+nx, 1+nz)`` = blockdiag(1, [A B]), ``FT (B, T, nz, nx)`` =
        [A B]^T, ``Laug (B, T, nz, 1+nz)`` = [l_z | l_zz] and the terminal ``V (B, nx, 1+nx)`` =
        [V_x | V_xx], where ``z = [x, u]`` and ``nz = nx + nu``. With ``finish`` (indices of
        problems), ``FT``, ``Laug`` and ``V`` are built for those problems only (the ones the
        backward pass will sweep), in that order.
        """
        nb, T = U.shape[:2]
        nx, nu = self.nx, self.nu
        nz = nx + nu
        dt = self.config.dtype
        # Dynamics Jacobians only where needed (they dominate for simulators).
        i = np.arange(nb) if rows is None else np.nonzero(rows)[0]
        ni = len(i)
        if prev_Faug is not None:
            Faug = prev_Faug if inplace else prev_Faug.copy()
        else:
            Faug = np.zeros((nb, T, 1 + nx, 1 + nz))
            Faug[..., 0, 0] = 1.0
        if ni == 0:
            return (Faug, *self._finish_derivatives(Faug, X, U, finish))
        Z = np.concatenate([X[i, :T], U[i]], axis=-1)  # (ni, T, nz)
        if anchor is None or prev_Faug is None:
            bi, ti = np.repeat(np.arange(ni), T), np.tile(np.arange(T), ni)
        else:
            r = self._reuse_radius
            moved = ~(np.abs(Z - anchor[i]) <= r)  # NaN counts as moved
            bi, ti = np.nonzero(moved.any(-1))  # row-major: runs along t stay together
            if len(bi) == 0:
                return (Faug, *self._finish_derivatives(Faug, X, U, finish))
        Zs = Z[bi, ti]
        # Steps of a problem that follow each other within the radius (a system at rest, or
        # settled at its goal) share the Jacobians of the first: the dynamics do not depend
        # on t, so this is the same reuse as across iterations.
        src = _run_sources(bi, ti, Zs, self._reuse_radius)
        first = src == np.arange(len(src))
        Ze = Zs[first]
        xs = torch.from_numpy(np.ascontiguousarray(Ze[:, :nx])).to(dt)
        us = torch.from_numpy(np.ascontiguousarray(Ze[:, nx:])).to(dt)
        A, Bm = dynamics_jacobians(self.dynamics, xs, us)
        A = np.asarray(A.detach().to(torch.float64).cpu().numpy() if isinstance(A, Tensor) else A)
        Bm = np.asarray(
            Bm.detach().to(torch.float64).cpu().numpy() if isinstance(Bm, Tensor) else Bm
        )
        if not first.all():
            at = (np.cumsum(first) - 1)[src]  # row of A/Bm evaluated for each step
            A, Bm = A[at], Bm[at]
        Faug[i[bi], ti, 1:, 1 : 1 + nx] = A
        Faug[i[bi], ti, 1:, 1 + nx :] = Bm
        if anchor is not None:
            anchor[i[bi], ti] = Zs[src]  # where each step's Jacobians were evaluated
        return (Faug, *self._finish_derivatives(Faug, X, U, finish))

    def _finish_derivatives(
        self, Faug: np.ndarray, X: np.ndarray, U: np.ndarray, finish: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        """``FT``, ``Laug`` and ``VT`` of :meth:`_derivatives`, for the problems ``finish`` (all
        when None). The cost is differentiated for all problems: per-problem data (goals) lives
        inside the cost object, so it cannot be given a subset of rows."""
        T = U.shape[1]
        nx, nu = self.nx, self.nu
        nz = nx + nu
        dt = self.config.dtype
        c = cost_derivatives(self.cost, torch.from_numpy(X).to(dt), torch.from_numpy(U).to(dt))
        if finish is not None:
            Faug = Faug[finish]
            c = CostDerivatives(
                lx=c.lx[finish], lu=c.lu[finish], lxx=c.lxx[finish], luu=c.luu[finish],
                lux=c.lux[finish],
            )  # fmt: skip
        nb = len(Faug)
        FT = np.ascontiguousarray(np.swapaxes(Faug[..., 1:, 1:], -1, -2))
        Laug = np.empty((nb, T, nz, 1 + nz))
        Laug[..., :nx, 0] = c.lx[:, :T]
        Laug[..., nx:, 0] = c.lu
        Laug[..., :nx, 1 : 1 + nx] = c.lxx[:, :T]
        Laug[..., nx:, 1 + nx :] = c.luu
        Laug[..., nx:, 1 : 1 + nx] = c.lux
        Laug[..., :nx, 1 + nx :] = np.swapaxes(c.lux, -1, -2)
        VT = np.concatenate([c.lx[:, T, :, None], c.lxx[:, T]], axis=-1)
        return FT, Laug, VT

    def _backward(
        self,
        U: np.ndarray,
        Faug: np.ndarray,
        FT: np.ndarray,
        Laug: np.ndarray,
        VT: np.ndarray,
        mu: np.ndarray,
        k_prev: np.ndarray,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Riccati sweep with a box QP per step. Returns ``ok (B,)``, k, K, dV1, dV2.

        ``lower``/``upper`` (``(1, nu)`` or ``(B, nu)``) default to the solver's bounds; the
        solve passes the rows of the problems it sweeps.

        Works on augmented matrices so that each step is a handful of batched calls (the
        Python overhead per call dominates at these sizes): with ``V = [V_x | V_xx]``,
        ``Q = [Q_z | Q_zz] = Laug_t + F^T (V blockdiag(1, F))`` and, for the affine policy
        ``du = k + K dx`` packed as ``Gaug = [[1, 0], [0, I], [k, K]]``, the new value is
        ``V = [I 0 ... ; K]^T Q Gaug`` (Tassa et al. 2012, eq. 11 in matrix form).
        """
        nb, T = U.shape[:2]
        if nb == 1:
            return self._backward_one(U, Faug, FT, Laug, VT, mu, k_prev, lower, upper)
        nx, nu = self.nx, self.nu
        eye_u = np.eye(nu)
        ok = np.ones(nb, dtype=bool)
        V = VT
        Gaug = np.zeros((nb, 1 + nx + nu, 1 + nx))
        Gaug[:, 0, 0] = 1.0
        Gaug[:, 1 : 1 + nx, 1:] = np.eye(nx)
        GT = np.swapaxes(Gaug[:, 1:, 1:], -1, -2)  # view: follows Gaug's K block
        lo = np.broadcast_to(self.lower if lower is None else lower, (nb, nu))
        hi = np.broadcast_to(self.upper if upper is None else upper, (nb, nu))
        # mu = 0 (the usual state near convergence) adds nothing: skip the addition.
        mu_i = mu[:, None, None] * eye_u if (mu != 0).any() else None
        bounded = self.bounded
        # Each statement below is one batched numpy call on tiny matrices, where the per-call
        # overhead (~1 us) dominates: keep their number per step small.
        # Per-step views made once (C iteration) and per-step results collected in lists,
        # stacked at the end: indexing and setitem cost about a microsecond per call each.
        F_t = list(np.moveaxis(Faug, 1, 0))
        FT_t = list(np.moveaxis(FT, 1, 0))
        L_t = list(np.moveaxis(Laug, 1, 0))
        sols: list[np.ndarray] = []
        qrows: list[np.ndarray] = []
        for t in range(T - 1, -1, -1):
            Q = FT_t[t] @ (V @ F_t[t])
            Q += L_t[t]
            Qu_rows = Q[:, nx:]  # [Q_u | Q_ux | Q_uu]
            H = Qu_rows[:, :, 1 + nx :]
            if mu_i is not None:
                H = H + mu_i
            bad, sol = _spd_solve(H, Qu_rows[:, :, : 1 + nx])
            if bad is not None:
                ok &= ~bad
                H = np.where(bad[:, None, None], eye_u, H)
            if bounded:
                ut = U[:, t]
                un = ut + sol[..., 0]
                viol = ((un < lo) | (un > hi)).any(-1)
                if any(viol.tolist()):
                    i = np.nonzero(viol)[0]
                    Qu = Qu_rows[i, :, 0]
                    res = box_qp(
                        H[i],
                        Qu,
                        lo[i] - ut[i],
                        hi[i] - ut[i],
                        k_prev[i, t],
                        max_iter=self.config.boxqp_max_iter,
                    )
                    Hm = masked_hessian(H[i], res.free)
                    Ki = np.linalg.solve(
                        Hm, -np.where(res.free[..., None], Qu_rows[i, :, 1 : 1 + nx], 0.0)
                    )
                    sol[i, :, 0] = res.x
                    sol[i, :, 1:] = Ki
            sols.append(sol)
            qrows.append(Qu_rows)  # a view of this step's Q, which is not written again
            Gaug[:, 1 + nx :] = sol
            V = GT @ (Q @ Gaug)
            Vxx = V[:, :, 1:]
            # Not in place: numpy's buffered overlapping add is slower on these strided views.
            np.multiply(Vxx + Vxx.transpose(0, 2, 1), 0.5, out=Vxx)
        S = np.stack(sols[::-1], axis=1)  # (B, T, nu, 1+nx) = [k | K]
        Qs = np.stack(qrows[::-1], axis=1)  # (B, T, nu, 1+nx+nu) = [Q_u | Q_ux | Q_uu]
        k = S[..., 0]
        K = S[..., 1:]
        dV1 = np.einsum("bti,bti->b", k, Qs[..., 0])
        dV2 = 0.5 * np.einsum("bti,btij,btj->b", k, Qs[..., 1 + nx :], k)
        return ok, np.ascontiguousarray(k), np.ascontiguousarray(K), dV1, dV2

    def _backward_one(
        self,
        U: np.ndarray,
        Faug: np.ndarray,
        FT: np.ndarray,
        Laug: np.ndarray,
        VT: np.ndarray,
        mu: np.ndarray,
        k_prev: np.ndarray,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """:meth:`_backward` for a single problem (``B == 1``), on 2-D arrays.

        The same recursion with the batch axis dropped: 2-D matmuls and the closed-form 2x2
        solve on Python floats cost about half the calls of the batched form, which matters
        because per-call overhead is nearly all of the time for one problem.
        """
        T = U.shape[1]
        nx, nu = self.nx, self.nu
        V = VT[0]
        G = np.zeros((1 + nx + nu, 1 + nx))
        G[0, 0] = 1.0
        G[1 : 1 + nx, 1:] = np.eye(nx)
        GT = G[1:, 1:].T  # view: follows G's K block
        lo = (self.lower if lower is None else lower)[0]
        hi = (self.upper if upper is None else upper)[0]
        m = float(mu[0])
        mu_i = m * np.eye(nu) if m != 0 else None
        bounded = self.bounded
        F_t, FT_t, L_t, U_t = Faug[0], FT[0], Laug[0], U[0]
        sols: list[np.ndarray] = []
        qrows: list[np.ndarray] = []
        da = np.empty((2, 1))
        iu, ju = nx, 1 + nx  # Q_uu's first entry in Q
        for t in range(T - 1, -1, -1):
            # ndarray.dot on 2-D arrays goes straight to BLAS, at half the call cost of `@`.
            Q = FT_t[t].dot(V.dot(F_t[t]))
            Q += L_t[t]
            Qu_rows = Q[nx:]  # [Q_u | Q_ux | Q_uu]
            H = Qu_rows[:, 1 + nx :]
            if mu_i is not None:
                H = H + mu_i
            if nu == 2:
                # _spd_solve's single-problem closed form, inlined (same operations and
                # numbers; a function call and two reshapes per step saved).
                a, b, d = Q.item(iu, ju) + m, Q.item(iu, ju + 1), Q.item(iu + 1, ju + 1) + m
                det = a * d - b * b
                if not (a > 0 and det > 0):
                    return self._failed_one(T)  # the caller raises mu; the rest is moot
                R = Qu_rows[:, : 1 + nx]
                da[0, 0], da[1, 0] = d, a
                sol = (b * R[::-1] - da * R) / det
            else:
                bad, sol3 = _spd_solve(H[None], Qu_rows[None, :, : 1 + nx])
                if bad is not None:
                    return self._failed_one(T)
                sol = sol3[0]
            if bounded:
                ut = U_t[t]
                un = ut + sol[:, 0]
                if ((un < lo) | (un > hi)).any():
                    Qu = Qu_rows[None, :, 0]
                    res = box_qp(
                        H[None],
                        Qu,
                        (lo - ut)[None],
                        (hi - ut)[None],
                        k_prev[:, t],
                        max_iter=self.config.boxqp_max_iter,
                    )
                    Hm = masked_hessian(H[None], res.free)
                    Ki = np.linalg.solve(
                        Hm, -np.where(res.free[..., None], Qu_rows[None, :, 1 : 1 + nx], 0.0)
                    )
                    sol = sol.copy()
                    sol[:, 0] = res.x[0]
                    sol[:, 1:] = Ki[0]
            sols.append(sol)
            qrows.append(Qu_rows)
            G[1 + nx :] = sol
            V = GT.dot(Q.dot(G))
            Vxx = V[:, 1:]
            np.multiply(Vxx + Vxx.T, 0.5, out=Vxx)  # as the batched pass (same numbers)
        S = np.stack(sols[::-1])  # (T, nu, 1+nx) = [k | K]
        Qs = np.stack(qrows[::-1])  # (T, nu, 1+nx+nu)
        k = S[:, :, 0]
        dV1 = np.einsum("ti,ti->", k, Qs[..., 0]).reshape(1)
        dV2 = 0.5 * np.einsum("ti,tij,tj->", k, Qs[..., 1 + nx :], k).reshape(1)
        return np.ones(1, dtype=bool), k[None].copy(), S[None, :, :, 1:].copy(), dV1, dV2

    def _failed_one(self, T: int) -> tuple[np.ndarray, ...]:
        z = np.zeros(1)
        return (
            np.zeros(1, dtype=bool),
            np.zeros((1, T, self.nu)),
            np.zeros((1, T, self.nu, self.nx)),
            z,
            z.copy(),
        )

    def _backward_rows(
        self,
        rows: np.ndarray,
        U: np.ndarray,
        derivs: tuple[np.ndarray, ...],
        mu: np.ndarray,
        k_out: np.ndarray,
        K_out: np.ndarray,
        finish: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """:meth:`_backward` for the problems in ``rows`` only (finished ones cost nothing).

        ``derivs`` is :meth:`_derivatives`' output; with its ``finish`` indices given here, its
        ``FT``, ``Laug`` and ``V`` hold those problems only (a superset of ``rows``).
        Rows are independent, so the swept problems get the same numbers as in a full sweep;
        the others report ``ok``, keep ``k_out``/``K_out`` and have zero expected decrease.
        """
        if rows.all():
            return self._backward(U, *derivs, mu, k_out)
        i = np.nonzero(rows)[0]
        lo = self.lower[i] if self.lower.shape[0] > 1 else self.lower
        hi = self.upper[i] if self.upper.shape[0] > 1 else self.upper
        Faug, rest = derivs[0], derivs[1:]
        if finish is None:
            rest = tuple(a[i] for a in rest)
        elif len(finish) != len(i):  # rows dropped since: their positions among ``finish``
            at = np.searchsorted(finish, i)
            rest = tuple(a[at] for a in rest)
        ok_i, k_i, K_i, dV1_i, dV2_i = self._backward(U[i], Faug[i], *rest, mu[i], k_out[i], lo, hi)
        nb = len(rows)
        ok = np.ones(nb, dtype=bool)
        k, K = k_out.copy(), K_out.copy()
        dV1, dV2 = np.zeros(nb), np.zeros(nb)
        ok[i], k[i], K[i], dV1[i], dV2[i] = ok_i, k_i, K_i, dV1_i, dV2_i
        return ok, k, K, dV1, dV2

    # ---------------------------------------------------------------- solve
    def solve(self, x0: Tensor, U0: Tensor | None = None) -> ILQRResult:
        """Plan from initial states ``x0 (B, nx)``, warm-started from ``U0 (B, T, nu)``.

        Args:
            x0: initial states, shape ``(B, nx)``, finite.
            U0: initial control sequences, shape ``(B, T, nu)``; zeros when None. Projected onto
                the bounds.

        Returns:
            :class:`ILQRResult`. Problems that did not converge within ``max_iters`` or whose
            regularisation exceeded ``mu_max`` have ``converged == False``.
        """
        # Dynamics may offer a context for many consecutive numpy calls (MujocoDynamics
        # silences MuJoCo's log once per solve instead of once per step).
        session = getattr(self.dynamics, "numpy_session", None)
        with session() if session is not None else contextlib.nullcontext():
            return self._solve(x0, U0)

    def _solve(self, x0: Tensor, U0: Tensor | None) -> ILQRResult:
        cfg = self.config
        x0n, U = self._validate(x0, U0)
        nb, T = U.shape[:2]
        X, U = self._rollout(x0n, U)
        J = self._cost(X, U)
        if not np.isfinite(J).all() or not np.isfinite(X).all():
            raise ValueError(
                "x0/U0: the initial rollout has non-finite states or cost in rows "
                f"{np.nonzero(~np.isfinite(J))[0].tolist()}"
            )
        mu = np.full(nb, cfg.mu_init)
        delta = np.ones(nb)
        done = np.zeros(nb, dtype=bool)
        converged = np.zeros(nb, dtype=bool)
        iters = np.zeros(nb, dtype=np.int64)
        history = [J.copy()]
        k_out = np.zeros((nb, T, self.nu))
        K_out = np.zeros((nb, T, self.nu, self.nx))
        alphas = cfg.alphas

        def increase(mask: np.ndarray) -> None:
            delta[mask] = np.maximum(cfg.mu_factor, delta[mask] * cfg.mu_factor)
            mu[mask] = np.maximum(cfg.mu_min, mu[mask] * delta[mask])

        def decrease(mask: np.ndarray) -> None:
            delta[mask] = np.minimum(1.0 / cfg.mu_factor, delta[mask] / cfg.mu_factor)
            m = mu[mask] * delta[mask]
            mu[mask] = np.where(m > cfg.mu_min, m, 0.0)

        # Problems whose (X, U) changed since their Jacobians were computed; a rejected line
        # search leaves (X, U) as they were, so their Jacobians are reused (bitwise the same).
        stale = np.ones(nb, dtype=bool)
        Faug_prev: np.ndarray | None = None
        anchor = np.full((nb, T, self.nx + self.nu), np.inf)
        for _ in range(cfg.max_iters):
            active = ~done
            iters[active] += 1
            # FT, Laug and V only for the problems the backward pass sweeps.
            finish = None if active.all() else np.nonzero(active)[0]
            derivs = self._derivatives(
                X,
                U,
                rows=active & stale,
                prev_Faug=Faug_prev,
                anchor=anchor,
                inplace=True,
                finish=finish,
            )
            Faug_prev = derivs[0]
            stale[active] = False
            # Backward pass; problems whose Quu + mu I is not positive definite get more mu.
            while True:
                ok, k, K, dV1, dV2 = self._backward_rows(
                    active, U, derivs, mu, k_out, K_out, finish
                )
                failed = active & ~ok
                if not failed.any():
                    break
                increase(failed)
                over = failed & (mu > cfg.mu_max)
                done |= over
                active &= ~over
                if not (active & ~ok).any():
                    break
            upd = active[:, None, None]
            k_out = np.where(upd, k, k_out)
            K_out = np.where(upd[..., None], K, K_out)
            gnorm = (np.abs(k) / (np.abs(U) + 1.0)).max(-1).mean(-1)
            small = gnorm < cfg.tol_grad
            if cfg.tol_expected > 0:
                # Crocoddyl's rule: the model predicts almost nothing left to gain. Crocoddyl
                # still takes that last step; it cannot change the cost by more than the
                # tolerance, so here it is skipped (one rollout saved).
                small |= -(dV1 + dV2) < cfg.tol_expected
            small &= active & (mu <= cfg.mu_min)
            converged |= small
            done |= small
            decrease(small)
            trial = active & ~small
            accepted = np.zeros(nb, dtype=bool)
            Xnew, Unew, Jnew = X.copy(), U.copy(), J.copy()
            for a in alphas:
                pending = trial & ~accepted
                if not pending.any():
                    break
                Xa, Ua = self._rollout(x0n, U, X, k, K, a, rows=pending)
                Ja = self._cost(Xa, Ua)
                expected = -(a * dV1 + a * a * dV2)
                actual = J - Ja
                with np.errstate(divide="ignore", invalid="ignore"):
                    z = actual / expected
                acc = pending & np.isfinite(Ja) & (expected > 0) & (z > cfg.accept_ratio)
                if acc.any():
                    Xnew[acc], Unew[acc], Jnew[acc] = Xa[acc], Ua[acc], Ja[acc]
                    accepted |= acc
            rejected = trial & ~accepted
            stale |= accepted
            decrease(accepted)
            increase(rejected)
            rel = (J - Jnew) / np.maximum(np.abs(J), 1e-300)
            flat = accepted & (rel < cfg.tol_cost)
            converged |= flat
            done |= flat | (rejected & (mu > cfg.mu_max))
            X, U, J = Xnew, Unew, Jnew
            history.append(J.copy())
            if done.all():
                break
        n_nc = int((~converged).sum())
        if n_nc:
            log.info("iLQR: %d of %d problems did not converge", n_nc, nb)

        def out(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(cfg.dtype)

        return ILQRResult(
            states=out(X),
            controls=out(U),
            K=out(K_out),
            k=out(k_out),
            cost=out(J),
            cost_history=out(np.stack(history, axis=1)),
            iterations=torch.from_numpy(iters),
            converged=torch.from_numpy(converged),
            mu=out(mu),
        )
