"""Linear-quadratic test problems and their exact dense solutions (independent of iLQR)."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
from torch import Tensor


class LinearDynamics:
    """``x' = A x + B u + c`` in torch (no ``jacobians``: iLQR must use torch.func)."""

    def __init__(self, A: np.ndarray, B: np.ndarray, c: np.ndarray, dt: float = 0.1) -> None:
        self.A, self.B, self.c = (torch.as_tensor(a, dtype=torch.float64) for a in (A, B, c))
        self.nx, self.nu, self.dt = A.shape[0], B.shape[1], dt

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        return x @ self.A.T + u @ self.B.T + self.c


def random_lq(seed: int, nx: int = 4, nu: int = 2, nb: int = 3):
    rng = np.random.default_rng(seed)
    A = np.eye(nx) + 0.1 * rng.standard_normal((nx, nx))
    B = 0.3 * rng.standard_normal((nx, nu))
    c = 0.05 * rng.standard_normal(nx)
    M = rng.standard_normal((nx, nx))
    Q = 0.1 * (M @ M.T) + 0.1 * np.eye(nx)
    M = rng.standard_normal((nu, nu))
    R = 0.05 * (M @ M.T) + 0.05 * np.eye(nu)
    M = rng.standard_normal((nx, nx))
    Qf = M @ M.T + np.eye(nx)
    x0 = rng.standard_normal((nb, nx))
    goal = rng.standard_normal((nb, nx))
    return A, B, c, Q, R, Qf, x0, goal


def dense_qp(A, B, c, Q, R, Qf, x0, goal, T):
    """Dense form of one LQ problem: cost(U) = 0.5 U^T H U + g^T U + const, U = (T*nu,).

    Returns H, g, and the affine map X = Mu U + m (X stacks x_1..x_T).
    """
    nx, nu = B.shape
    Mu = np.zeros((T * nx, T * nu))
    m = np.zeros(T * nx)
    x = x0.copy()
    Apow = [np.linalg.matrix_power(A, i) for i in range(T + 1)]
    for t in range(1, T + 1):
        x = A @ x + c
        m[(t - 1) * nx : t * nx] = x
        for s in range(t):
            Mu[(t - 1) * nx : t * nx, s * nu : (s + 1) * nu] = Apow[t - 1 - s] @ B
    # state weights: x_1..x_{T-1} get Q, x_T gets Qf; x_0 is constant
    W = scipy.linalg.block_diag(*([Q] * (T - 1) + [Qf]))
    Rb = scipy.linalg.block_diag(*([R] * T))
    G = np.tile(goal, T)
    H = Mu.T @ W @ Mu + Rb
    g = Mu.T @ W @ (m - G)
    return H, g, Mu, m


def dense_solution(A, B, c, Q, R, Qf, x0, goal, T):
    H, g, _, _ = dense_qp(A, B, c, Q, R, Qf, x0, goal, T)
    return np.linalg.solve(H, -g).reshape(T, B.shape[1])


def dense_box_solution(A, B, c, Q, R, Qf, x0, goal, T, lo, hi):
    """Exact box-constrained solution by bounded-variable least squares (active set)."""
    H, g, _, _ = dense_qp(A, B, c, Q, R, Qf, x0, goal, T)
    L = np.linalg.cholesky(H)  # H = L L^T; 0.5 U^T H U + g^T U = 0.5 ||L^T U + L^-1 g||^2 + c
    b = -scipy.linalg.solve_triangular(L, g, lower=True)
    nu = B.shape[1]
    res = scipy.optimize.lsq_linear(
        L.T, b, bounds=(np.tile(lo, T), np.tile(hi, T)), method="bvls", tol=1e-14, max_iter=1000
    )
    return res.x.reshape(T, nu), H, g
