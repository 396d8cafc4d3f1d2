"""Trajectory costs satisfying :class:`controllers.Cost`, with analytic derivatives.

Every cost holds its per-problem data (goals) with a leading batch axis ``B``. Besides the
protocol methods ``running(x, u, t)`` and ``terminal(x)`` they provide two optional fast paths the
iLQR uses: ``trajectory(X, U) -> (B,)`` (vectorised total cost) and ``quadratize(X, U)``
(analytic derivatives). Costs without them work too, through ``torch.func``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from controllers.derivatives import CostDerivatives

_NORMS = ("squared", "smooth")


def _as_batch(name: str, value: Tensor | Sequence[float], dim: int) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[-1] != dim:
        raise ValueError(f"{name}: expected shape (B, {dim}) or ({dim},), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values, got {t.tolist()}")
    return t


def _as_matrix(name: str, value: Tensor | Sequence, dim: int) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.ndim == 1:
        t = torch.diag(t)
    if t.shape[-2:] != (dim, dim) or t.ndim not in (2, 3):
        raise ValueError(
            f"{name}: expected a ({dim},) diagonal, ({dim}, {dim}) or (B, {dim}, {dim}) matrix, "
            f"got shape {tuple(t.shape)}"
        )
    return t


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


class QuadraticCost:
    """``0.5 (x-x_g)^T Q (x-x_g) + 0.5 (u-u_g)^T R (u-u_g)`` per step, ``0.5 (x-x_g)^T Qf (x-x_g)``
    at the end.

    Args:
        Q: state weight, ``(nx,)`` diagonal, ``(nx, nx)`` or ``(B, nx, nx)``.
        R: control weight, ``(nu,)``, ``(nu, nu)`` or ``(B, nu, nu)``.
        Qf: terminal state weight, like ``Q``.
        x_goal: goal states, ``(B, nx)`` or ``(nx,)``.
        u_goal: control reference, ``(B, nu)`` or ``(nu,)``; zeros when None.
    """

    def __init__(
        self,
        Q: Tensor | Sequence,
        R: Tensor | Sequence,
        Qf: Tensor | Sequence,
        x_goal: Tensor | Sequence[float],
        u_goal: Tensor | Sequence[float] | None = None,
    ) -> None:
        q = torch.as_tensor(Q, dtype=torch.float64)
        nx = q.shape[-1]
        r = torch.as_tensor(R, dtype=torch.float64)
        nu = r.shape[-1]
        self.Q = _as_matrix("Q", Q, nx)
        self.R = _as_matrix("R", R, nu)
        self.Qf = _as_matrix("Qf", Qf, nx)
        self.x_goal = _as_batch("x_goal", x_goal, nx)
        self.u_goal = _as_batch("u_goal", torch.zeros(nu) if u_goal is None else u_goal, nu)
        self.nx, self.nu = nx, nu

    @staticmethod
    def _quad(W: Tensor, d: Tensor) -> Tensor:
        # d: (..., n); W: (n, n) or (B, n, n) broadcast over the leading batch axis of d.
        if W.ndim == 3 and d.ndim == 3:
            return 0.5 * torch.einsum("bti,bij,btj->bt", d, W, d)
        return 0.5 * torch.einsum("...i,...ij,...j->...", d, W, d)

    def running(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        """Running cost, ``x (B, nx)``, ``u (B, nu)`` -> ``(B,)``."""
        return self._quad(self.Q.to(x), x - self.x_goal.to(x)) + self._quad(
            self.R.to(u), u - self.u_goal.to(u)
        )

    def terminal(self, x: Tensor) -> Tensor:
        """Terminal cost, ``x (B, nx)`` -> ``(B,)``."""
        return self._quad(self.Qf.to(x), x - self.x_goal.to(x))

    def trajectory(self, X: Tensor, U: Tensor) -> Tensor:
        """Total cost of trajectories ``X (B, T+1, nx)``, ``U (B, T, nu)`` -> ``(B,)``."""
        dx = X[:, :-1] - self.x_goal.to(X)[:, None]
        du = U - self.u_goal.to(U)[:, None]
        run = self._quad(self.Q.to(X), dx).sum(1) + self._quad(self.R.to(U), du).sum(1)
        return run + self.terminal(X[:, -1])

    def quadratize(self, X: Tensor, U: Tensor) -> CostDerivatives:
        """Exact derivatives along ``X (B, T+1, nx)``, ``U (B, T, nu)``."""
        nb, T = U.shape[:2]
        Xn, Un = _np(X), _np(U)
        Q, R, Qf = _np(self.Q), _np(self.R), _np(self.Qf)
        Q = np.broadcast_to(Q, (nb, self.nx, self.nx)) if Q.ndim == 2 else Q
        R = np.broadcast_to(R, (nb, self.nu, self.nu)) if R.ndim == 2 else R
        Qf = np.broadcast_to(Qf, (nb, self.nx, self.nx)) if Qf.ndim == 2 else Qf
        dx = Xn - _np(self.x_goal)[:, None]
        du = Un - _np(self.u_goal)[:, None]
        lx = np.empty_like(Xn)
        lx[:, :T] = np.einsum("bij,btj->bti", Q, dx[:, :T])
        lx[:, T] = np.einsum("bij,bj->bi", Qf, dx[:, T])
        lxx = np.empty((nb, T + 1, self.nx, self.nx))
        lxx[:, :T] = Q[:, None]
        lxx[:, T] = Qf
        lu = np.einsum("bij,btj->bti", R, du)
        luu = np.broadcast_to(R[:, None], (nb, T, self.nu, self.nu)).copy()
        lux = np.zeros((nb, T, self.nu, self.nx))
        return CostDerivatives(lx=lx, lu=lu, lxx=lxx, luu=luu, lux=lux)


def _penalty(r: Tensor, norm: str, eps: float) -> Tensor:
    sq = (r * r).sum(-1)
    if norm == "squared":
        return sq
    return torch.sqrt(sq + eps * eps) - eps


def _penalty_numpy(r: np.ndarray, norm: str, eps: float) -> np.ndarray:
    """:func:`_penalty` on numpy arrays."""
    sq = (r * r).sum(-1)
    if norm == "squared":
        return sq
    return np.sqrt(sq + eps * eps) - eps


def _penalty_derivs(r: np.ndarray, norm: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradient ``(..., n)`` and Hessian ``(..., n, n)`` of the penalty of ``r``."""
    n = r.shape[-1]
    eye = np.eye(n)
    if norm == "squared":
        return 2.0 * r, np.broadcast_to(2.0 * eye, (*r.shape, n)).copy()
    s = np.sqrt((r * r).sum(-1, keepdims=True) + eps * eps)
    g = r / s
    h = eye / s[..., None] - r[..., :, None] * r[..., None, :] / s[..., None] ** 3
    return g, h


class _ReachCostBase:
    """What the joint-space and task-space reach costs share: the running and total cost built
    from a per-state term ``_state_term`` (averaged over the rollout states ``x_1..x_T``) and a
    control term; subclasses define ``_state_term`` and ``terminal``."""

    horizon: int
    w_u: float

    def _state_term(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def terminal(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def running(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        """Running cost at step ``t``: ``x (B, 2n)``, ``u (B, n)`` -> ``(B,)``."""
        c = self.w_u / self.horizon * (u * u).sum(-1)
        if t >= 1:  # the paper averages over rollout states x_1..x_T; x_0 is fixed
            c = c + self._state_term(x) / self.horizon
        return c

    def trajectory(self, X: Tensor, U: Tensor) -> Tensor:
        """Total cost, ``X (B, T+1, 2n)``, ``U (B, T, n)`` -> ``(B,)``."""
        T = U.shape[1]
        run = self.w_u / self.horizon * (U * U).sum((-1, -2))
        run = run + self._state_term(X[:, 1:T]).sum(-1) / self.horizon
        return run + self.terminal(X[:, T])


class ReachCost(_ReachCostBase):
    """Joint-space reach cost mirroring the reacher task loss of ML3.

    The task loss of the paper is ``10 ||q_T - q_g|| + mean_t ||q_t - q_g|| + 1e-4 mean_t ||qd_t||``
    over the rollout states ``t = 1..T``. Norms are not differentiable at zero, which breaks the
    quadratic model of iLQR near the goal, so the penalty ``rho`` is either

    * ``"squared"`` (default): ``rho(r) = ||r||^2``. The quadratic model is exact in the states,
      the cost is convex, and iLQR converges in a few iterations; the minimiser is the same point
      (the goal) but errors are weighted quadratically instead of linearly.
    * ``"smooth"``: ``rho(r) = sqrt(||r||^2 + eps^2) - eps`` (pseudo-Huber). Equals the paper's
      norm up to ``eps`` away from zero, but its curvature decays like ``1/||r||`` far from the
      goal, so iLQR needs more iterations.

    Cost: ``w_T rho(q_T - q_g) + (1/T) sum_{t=1..T} [rho(q_t - q_g) + w_v rho(qd_t)]
    + (w_u / T) sum_{t=0..T-1} ||u_t||^2``. The control term (default tiny) keeps the control
    Hessian positive definite; the paper's loss has none.

    Args:
        q_goal: goal joint angles in rad, ``(B, n)`` or ``(n,)``. State is ``[q, qd]`` (``nx=2n``).
        horizon: ``T``, the number of controls (needed for the means).
        terminal_weight: ``w_T`` (paper: 10).
        velocity_weight: ``w_v`` (paper: 1e-4).
        control_weight: ``w_u``.
        norm: ``"squared"`` or ``"smooth"``.
        eps: smoothing of ``"smooth"``, in rad (and rad/s).
    """

    def __init__(
        self,
        q_goal: Tensor | Sequence[float],
        horizon: int,
        *,
        terminal_weight: float = 10.0,
        velocity_weight: float = 1e-4,
        control_weight: float = 1e-6,
        norm: str = "squared",
        eps: float = 1e-3,
    ) -> None:
        g = torch.as_tensor(q_goal, dtype=torch.float64)
        self.q_goal = _as_batch("q_goal", g, g.shape[-1])
        self.n = self.q_goal.shape[-1]
        self.nx, self.nu = 2 * self.n, self.n
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")
        if norm not in _NORMS:
            raise ValueError(f"norm: expected one of {_NORMS}, got {norm!r}")
        for name, w in (
            ("terminal_weight", terminal_weight),
            ("velocity_weight", velocity_weight),
            ("control_weight", control_weight),
            ("eps", eps),
        ):
            if not (np.isfinite(w) and w >= 0):
                raise ValueError(f"{name}: expected a finite value >= 0, got {w!r}")
        self.horizon = horizon
        self.w_T, self.w_v, self.w_u = terminal_weight, velocity_weight, control_weight
        self.norm, self.eps = norm, eps
        self._goal_np = _np(self.q_goal)

    def _state_term(self, x: Tensor) -> Tensor:
        q, qd = x[..., : self.n], x[..., self.n :]
        goal = self.q_goal.to(x) if x.ndim == 2 else self.q_goal.to(x)[:, None]
        pq = _penalty(q - goal, self.norm, self.eps)
        return pq + self.w_v * _penalty(qd, self.norm, self.eps)

    def terminal(self, x: Tensor) -> Tensor:
        """Terminal cost: ``x (B, 2n)`` -> ``(B,)``."""
        goal = self.q_goal.to(x)
        return self.w_T * _penalty(x[:, : self.n] - goal, self.norm, self.eps) + (
            self._state_term(x) / self.horizon
        )

    def trajectory_numpy(self, X: np.ndarray, U: np.ndarray) -> np.ndarray:
        """:meth:`trajectory` on float64 numpy arrays (the iLQR's line search calls it many
        times; torch's per-operation overhead would be most of the time)."""
        T, n, h = U.shape[1], self.n, self.horizon
        goal = self._goal_np

        def rho(r: np.ndarray) -> np.ndarray:
            return _penalty_numpy(r, self.norm, self.eps)

        xs, xT = X[:, 1:T], X[:, T]
        run = self.w_u / h * (U * U).sum((-1, -2))
        run = run + (rho(xs[..., :n] - goal[:, None]) + self.w_v * rho(xs[..., n:])).sum(-1) / h
        pT = rho(xT[:, :n] - goal)
        return run + (self.w_T * pT + (pT + self.w_v * rho(xT[:, n:])) / h)

    def quadratize(self, X: Tensor, U: Tensor) -> CostDerivatives:
        """Exact derivatives along ``X (B, T+1, 2n)``, ``U (B, T, n)``."""
        nb, T = U.shape[:2]
        n, h = self.n, self.horizon
        Xn, Un = _np(X), _np(U)
        rq = Xn[..., :n] - _np(self.q_goal)[:, None]
        gq, hq = _penalty_derivs(rq, self.norm, self.eps)
        gv, hv = _penalty_derivs(Xn[..., n:], self.norm, self.eps)
        lx = np.concatenate([gq, self.w_v * gv], -1) / h
        lxx = np.zeros((nb, T + 1, 2 * n, 2 * n))
        lxx[..., :n, :n] = hq / h
        lxx[..., n:, n:] = self.w_v * hv / h
        lx[:, 0] = 0.0
        lxx[:, 0] = 0.0
        lx[:, T, :n] += self.w_T * gq[:, T]
        lxx[:, T, :n, :n] += self.w_T * hq[:, T]
        lu = 2.0 * self.w_u / h * Un
        luu = np.broadcast_to(2.0 * self.w_u / h * np.eye(n), (nb, T, n, n)).copy()
        lux = np.zeros((nb, T, n, 2 * n))
        return CostDerivatives(lx=lx, lu=lu, lxx=lxx, luu=luu, lux=lux)


class MountainCarCost:
    """MountainCar cost mirroring the ML3 task loss: distance of the final state to the goal.

    Cost: ``w_T ||x_T - x_g||^2 + w_u sum_t u_t^2 + w_i sum_{t < t_i} ||x_t - x_i||^2``. The
    intermediate-goal term is the "extra information" of ML3 and is off by default (``w_i = 0``).
    Squared distances keep the quadratic model of iLQR exact in the cost.

    Args:
        goal: goal state ``(position m, velocity m/s)``, ``(B, 2)`` or ``(2,)``. ML3: (0.5, 1.0375).
        terminal_weight: ``w_T``.
        control_weight: ``w_u``.
        intermediate_goal: ``x_i``; ML3: (-0.947, -0.0055).
        intermediate_steps: ``t_i``; ML3: 15.
        intermediate_weight: ``w_i``.
    """

    def __init__(
        self,
        goal: Tensor | Sequence[float] = (0.5, 1.0375),
        *,
        terminal_weight: float = 1.0,
        control_weight: float = 0.0,
        intermediate_goal: Tensor | Sequence[float] = (-0.947, -0.0055),
        intermediate_steps: int = 15,
        intermediate_weight: float = 0.0,
    ) -> None:
        self.goal = _as_batch("goal", goal, 2)
        self.x_int = _as_batch("intermediate_goal", intermediate_goal, 2)
        for name, w in (
            ("terminal_weight", terminal_weight),
            ("control_weight", control_weight),
            ("intermediate_weight", intermediate_weight),
        ):
            if not (np.isfinite(w) and w >= 0):
                raise ValueError(f"{name}: expected a finite value >= 0, got {w!r}")
        self.w_T, self.w_u, self.w_i = terminal_weight, control_weight, intermediate_weight
        self.t_i = intermediate_steps
        self.nx, self.nu = 2, 1

    def running(self, x: Tensor, u: Tensor, t: int) -> Tensor:
        """Running cost at step ``t``: ``x (B, 2)``, ``u (B, 1)`` -> ``(B,)``."""
        c = self.w_u * (u * u).sum(-1)
        if self.w_i > 0 and t < self.t_i:
            c = c + self.w_i * ((x - self.x_int.to(x)) ** 2).sum(-1)
        return c

    def terminal(self, x: Tensor) -> Tensor:
        """Terminal cost: ``x (B, 2)`` -> ``(B,)``."""
        return self.w_T * ((x - self.goal.to(x)) ** 2).sum(-1)

    def trajectory(self, X: Tensor, U: Tensor) -> Tensor:
        """Total cost, ``X (B, T+1, 2)``, ``U (B, T, 1)`` -> ``(B,)``."""
        T = U.shape[1]
        c = self.w_u * (U * U).sum((-1, -2)) + self.terminal(X[:, T])
        if self.w_i > 0:
            k = min(self.t_i, T)
            c = c + self.w_i * ((X[:, :k] - self.x_int.to(X)[:, None]) ** 2).sum((-1, -2))
        return c

    def quadratize(self, X: Tensor, U: Tensor) -> CostDerivatives:
        """Exact derivatives along ``X (B, T+1, 2)``, ``U (B, T, 1)``."""
        nb, T = U.shape[:2]
        Xn, Un = _np(X), _np(U)
        lx = np.zeros_like(Xn)
        lxx = np.zeros((nb, T + 1, 2, 2))
        if self.w_i > 0:
            k = min(self.t_i, T)
            lx[:, :k] = 2 * self.w_i * (Xn[:, :k] - _np(self.x_int)[:, None])
            lxx[:, :k] = 2 * self.w_i * np.eye(2)
        lx[:, T] = 2 * self.w_T * (Xn[:, T] - _np(self.goal))
        lxx[:, T] = 2 * self.w_T * np.eye(2)
        lu = 2 * self.w_u * Un
        luu = np.broadcast_to(2 * self.w_u * np.eye(1), (nb, T, 1, 1)).copy()
        lux = np.zeros((nb, T, 1, 2))
        return CostDerivatives(lx=lx, lu=lu, lxx=lxx, luu=luu, lux=lux)


class TaskSpaceReachCost(_ReachCostBase):
    """Reach cost on the end-effector position, through a forward-kinematics callable.

    Same structure as :class:`ReachCost` with ``r = fk(q) - p_goal`` in place of ``q - q_goal``
    (squared norms): ``w_T ||r_T||^2 + (1/T) sum_{t=1..T} [||r_t||^2 + w_v ||qd_t||^2]
    + (w_u / T) sum_t ||u_t||^2``. :meth:`quadratize` uses the Gauss-Newton Hessian
    ``2 J^T J`` (``J = d fk / d q`` by ``torch.func.jacrev``), which drops the curvature of the
    kinematics: positive semi-definite, as iLQR needs, and exact at the goal.

    Args:
        fk: batched torch forward kinematics ``q (N, n) -> positions (N, d)`` (e.g.
            ``functools.partial(robots.arm.forward_kinematics, config)``); rows independent.
        goal: goal positions in m, ``(B, d)`` or ``(d,)``.
        n_joints: ``n`` (state is ``[q, qd]``, ``nx = 2n``).
        horizon: ``T``.
        terminal_weight, velocity_weight, control_weight: as in :class:`ReachCost`.
    """

    def __init__(
        self,
        fk,
        goal: Tensor | Sequence[float],
        n_joints: int,
        horizon: int,
        *,
        terminal_weight: float = 10.0,
        velocity_weight: float = 1e-4,
        control_weight: float = 1e-6,
    ) -> None:
        if not callable(fk):
            raise TypeError(f"fk: expected a callable q (N, n) -> (N, d), got {type(fk).__name__}")
        g = torch.as_tensor(goal, dtype=torch.float64)
        self.goal = _as_batch("goal", g, g.shape[-1])
        if not isinstance(n_joints, int) or n_joints < 1:
            raise ValueError(f"n_joints: expected an int >= 1, got {n_joints!r}")
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")
        for name, w in (
            ("terminal_weight", terminal_weight),
            ("velocity_weight", velocity_weight),
            ("control_weight", control_weight),
        ):
            if not (np.isfinite(w) and w >= 0):
                raise ValueError(f"{name}: expected a finite value >= 0, got {w!r}")
        self.fk, self.n, self.horizon = fk, n_joints, horizon
        self.nx, self.nu = 2 * n_joints, n_joints
        self.w_T, self.w_v, self.w_u = terminal_weight, velocity_weight, control_weight

    def _residual(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        p = self.fk(x.reshape(-1, self.nx)[:, : self.n])
        p = p.reshape(*lead, p.shape[-1])
        goal = self.goal.to(x) if x.ndim == 2 else self.goal.to(x)[:, None]
        return p - goal

    def _state_term(self, x: Tensor) -> Tensor:
        r = self._residual(x)
        return (r * r).sum(-1) + self.w_v * (x[..., self.n :] ** 2).sum(-1)

    def terminal(self, x: Tensor) -> Tensor:
        """Terminal cost: ``x (B, 2n)`` -> ``(B,)``."""
        r = self._residual(x)
        return self.w_T * (r * r).sum(-1) + self._state_term(x) / self.horizon

    def quadratize(self, X: Tensor, U: Tensor) -> CostDerivatives:
        """Gauss-Newton derivatives along ``X (B, T+1, 2n)``, ``U (B, T, n)``."""
        from torch.func import jacrev

        nb, T = U.shape[:2]
        n, h = self.n, self.horizon
        X = X.detach().to(torch.float64)
        q = X[..., :n].reshape(-1, n)
        J = jacrev(lambda qq: self.fk(qq).sum(0))(q)  # (d, N, n) by the batch-sum trick
        J = _np(J.permute(1, 0, 2)).reshape(nb, T + 1, -1, n)
        r = _np(self._residual(X))
        gq = 2.0 * np.einsum("btdi,btd->bti", J, r)
        hq = 2.0 * np.einsum("btdi,btdj->btij", J, J)
        Xn = _np(X)
        lx = np.concatenate([gq, 2.0 * self.w_v * Xn[..., n:]], -1) / h
        lxx = np.zeros((nb, T + 1, 2 * n, 2 * n))
        lxx[..., :n, :n] = hq / h
        lxx[..., n:, n:] = 2.0 * self.w_v / h * np.eye(n)
        lx[:, 0] = 0.0
        lxx[:, 0] = 0.0
        lx[:, T, :n] += self.w_T * gq[:, T]
        lxx[:, T, :n, :n] += self.w_T * hq[:, T]
        Un = _np(U)
        lu = 2.0 * self.w_u / h * Un
        luu = np.broadcast_to(2.0 * self.w_u / h * np.eye(n), (nb, T, n, n)).copy()
        lux = np.zeros((nb, T, n, 2 * n))
        return CostDerivatives(lx=lx, lu=lu, lxx=lxx, luu=luu, lux=lux)
