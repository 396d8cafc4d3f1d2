"""A MuJoCo model as :class:`controllers.Dynamics`, with Jacobians from ``mjd_transitionFD``.

State ``x = [qpos, qvel]`` (hinge and slide joints only, so ``nq == nv`` and the tangent space of
``qpos`` is ``qpos`` itself), control ``u = ctrl``. One ``step`` is one ``mj_step``.

Torch tensors are converted to numpy float64 at the boundary; ``step`` is not differentiable by
torch autograd (use :meth:`MujocoDynamics.jacobians`, which the iLQR picks up automatically).
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
import torch
from mujoco import rollout
from torch import Tensor

_BADQACC = int(mujoco.mjtWarning.mjWARN_BADQACC)
_BADQVEL = int(mujoco.mjtWarning.mjWARN_BADQVEL)
_BADQPOS = int(mujoco.mjtWarning.mjWARN_BADQPOS)
_BADCTRL = int(mujoco.mjtWarning.mjWARN_BADCTRL)
_WARNS = (_BADQACC, _BADQVEL, _BADQPOS, _BADCTRL)


class SimulationDiverged(FloatingPointError):
    """A simulation became unstable (NaN/inf or huge accelerations).

    Attributes:
        states: ``(B, nx)`` numpy output with NaN in the diverged rows.
    """

    def __init__(self, message: str, states: np.ndarray) -> None:
        super().__init__(message)
        self.states = states


class MujocoDynamics:
    """Batched MuJoCo dynamics.

    Args:
        model: a ``mujoco.MjModel`` with hinge/slide joints only, no actuator activations, and an
            integrator other than RK4 (``mjd_transitionFD`` refuses RK4; use Euler or
            implicitfast).
        eps: finite-difference step of ``mjd_transitionFD``.
        centered: centered (two-sided) differences: twice the cost, error O(eps^2) instead of
            O(eps).
        n_threads: MjData copies worked on in parallel threads (MuJoCo releases the GIL during
            simulation calls). 1 runs everything in the calling thread.

    Attributes:
        nx: ``nq + nv``.
        nu: ``model.nu``.
        dt: ``model.opt.timestep`` in seconds.
    """

    def __init__(self, model: mujoco.MjModel, *, eps: float = 1e-6, centered: bool = False,
                 n_threads: int = 1) -> None:
        if not isinstance(model, mujoco.MjModel):
            raise TypeError(f"model: expected a mujoco.MjModel, got {type(model).__name__}")
        if model.nq != model.nv:
            raise ValueError(
                f"model: expected hinge/slide joints only (nq == nv), got nq={model.nq}, "
                f"nv={model.nv}; free and ball joints need a tangent-space state")
        if model.na != 0:
            raise ValueError(
                f"model: expected no actuator activations (na == 0), got na={model.na}")
        if model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
            raise ValueError("model: mjd_transitionFD refuses the RK4 integrator; expected Euler, "
                             "implicit or implicitfast")
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps: expected a finite value > 0, got {eps!r}")
        if not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads: expected an int >= 1, got {n_threads!r}")
        self.model = model
        self.nq, self.nv = model.nq, model.nv
        self.nx, self.nu = model.nq + model.nv, model.nu
        self.dt = float(model.opt.timestep)
        self.eps, self.centered, self.n_threads = float(eps), bool(centered), n_threads
        self._datas = [mujoco.MjData(model) for _ in range(n_threads)]
        self._pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
        # Batched stepping through mujoco.rollout; the state template carries every part of the
        # full physics state other than qpos/qvel (time, mocap, ...) at its reset value.
        self._roller = rollout.Rollout(nthread=n_threads if n_threads > 1 else 0)
        self._roll_datas = [mujoco.MjData(model) for _ in range(n_threads)]
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._state_template = np.empty((1, mujoco.mj_stateSize(model, spec)))
        mujoco.mj_getState(model, self._roll_datas[0], self._state_template[0], spec)

    @property
    def control_bounds(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` of shape ``(nu,)`` from ``actuator_ctrlrange`` (inf if unlimited)."""
        m = self.model
        limited = np.asarray(m.actuator_ctrllimited, dtype=bool)
        rng = np.asarray(m.actuator_ctrlrange, dtype=np.float64).reshape(self.nu, 2)
        lo = np.where(limited, rng[:, 0], -np.inf)
        hi = np.where(limited, rng[:, 1], np.inf)
        return torch.from_numpy(lo), torch.from_numpy(hi)

    def _inputs(self, x: Tensor, u: Tensor) -> tuple[np.ndarray, np.ndarray]:
        if x.ndim != 2 or x.shape[1] != self.nx:
            raise ValueError(f"x: expected shape (B, {self.nx}), got {tuple(x.shape)}")
        if u.ndim != 2 or u.shape != (x.shape[0], self.nu):
            raise ValueError(f"u: expected shape ({x.shape[0]}, {self.nu}), got {tuple(u.shape)}")
        xn = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float64)
        un = np.ascontiguousarray(u.detach().cpu().numpy(), dtype=np.float64)
        return xn, un

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        k = self.n_threads
        edges = np.linspace(0, n, k + 1).astype(int)
        return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]

    def _run(self, fn, n: int) -> None:  # type: ignore[no-untyped-def]
        if self._pool is None or n < 2 * self.n_threads:
            fn(self._datas[0], 0, n)
            return
        futs = [self._pool.submit(fn, self._datas[i], a, b)
                for i, (a, b) in enumerate(self._chunks(n))]
        for f in futs:
            f.result()

    def _set(self, d: mujoco.MjData, x: np.ndarray, u: np.ndarray) -> None:
        d.qpos[:] = x[: self.nq]
        d.qvel[:] = x[self.nq:]
        d.ctrl[:] = u
        d.time = 0.0
        # Same warm start for every call, so results do not depend on call history.
        d.qacc_warmstart[:] = 0.0

    @staticmethod
    def _clear_warnings(d: mujoco.MjData) -> None:
        # Counters are zeroed before every check because MuJoCo's auto-reset (mj_resetData)
        # zeroes them itself, so "count went up" is not a reliable test.
        for k in _WARNS:
            d.warning[k].number = 0

    @staticmethod
    def _warned(d: mujoco.MjData) -> bool:
        return any(d.warning[k].number for k in _WARNS)

    def step_numpy(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """:meth:`step` on float64 numpy arrays (the fast path the iLQR uses).

        The batch goes through ``mujoco.rollout`` (one C call, no Python loop over rows). Rows
        whose input is non-finite, or whose simulation MuJoCo flags as unstable (it then resets
        the data, so the output would be silently wrong), are returned as NaN.
        """
        nq, nv = self.nq, self.nv
        n = len(x)
        bad = ~(np.isfinite(x).all(1) & np.isfinite(u).all(1))
        state0 = np.repeat(self._state_template, n, axis=0)
        state0[:, 1:1 + nq] = np.where(bad[:, None], 0.0, x[:, :nq])
        state0[:, 1 + nq:1 + nq + nv] = np.where(bad[:, None], 0.0, x[:, nq:])
        ctrl = np.where(bad[:, None], 0.0, u)[:, None, :]
        for d in self._roll_datas:
            self._clear_warnings(d)
        st, _ = self._roller.rollout(self.model, self._roll_datas, state0, ctrl, nstep=1)
        out = np.concatenate([st[:, 0, 1:1 + nq], st[:, 0, 1 + nq:1 + nq + nv]], axis=1)
        if any(self._warned(d) for d in self._roll_datas):
            # Some row diverged; find which ones by stepping them one at a time (rare).
            d = self._datas[0]
            for i in range(n):
                self._set(d, x[i], u[i])
                self._clear_warnings(d)
                mujoco.mj_step(self.model, d)
                bad[i] |= self._warned(d)
        out[bad] = np.nan
        return out

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        """One ``mj_step`` per row: ``x (B, nq+nv)``, ``u (B, nu)`` -> ``(B, nq+nv)``.

        Raises:
            SimulationDiverged: when a simulation became unstable; its ``states`` attribute holds
                the output with NaN in the diverged rows.
        """
        xn, un = self._inputs(x, u)
        out = self.step_numpy(xn, un)
        bad = ~np.isfinite(out).all(1)
        if bad.any():
            raise SimulationDiverged(
                f"MujocoDynamics.step: simulation diverged in rows {np.nonzero(bad)[0].tolist()}",
                out)
        return torch.from_numpy(out).to(x.dtype)

    def jacobians(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Finite-difference transition Jacobians by ``mujoco.mjd_transitionFD``.

        Args:
            x: states ``(N, nq+nv)``.
            u: controls ``(N, nu)``.

        Returns:
            ``A (N, nx, nx)`` and ``B (N, nx, nu)``, float64.
        """
        xn, un = self._inputs(x, u)
        n = len(xn)
        A = np.empty((n, self.nx, self.nx))
        B = np.empty((n, self.nx, self.nu))
        m, eps, cen = self.model, self.eps, self.centered

        def work(d: mujoco.MjData, a: int, b: int) -> None:
            for i in range(a, b):
                self._set(d, xn[i], un[i])
                mujoco.mjd_transitionFD(m, d, eps, cen, A[i], B[i], None, None)

        self._run(work, n)
        return torch.from_numpy(A), torch.from_numpy(B)
