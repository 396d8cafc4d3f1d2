"""A MuJoCo model as :class:`controllers.Dynamics`, with Jacobians from ``mjd_transitionFD``.

State ``x = [qpos, qvel]`` (hinge and slide joints only, so ``nq == nv`` and the tangent space of
``qpos`` is ``qpos`` itself), control ``u = ctrl``. One ``step`` is one ``mj_step``.

Torch tensors are converted to numpy float64 at the boundary; ``step`` is not differentiable by
torch autograd (use :meth:`MujocoDynamics.jacobians`, which the iLQR picks up automatically).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
import torch
from mujoco import rollout
from torch import Tensor

# MuJoCo's mjMAXVAL: larger qpos/qvel/qacc/ctrl values count as diverged (or are rejected).
_MAXVAL = 1e10

log = logging.getLogger(__name__)
# mujoco.rollout costs ~250 us per call in Python overhead and ~5 us per row; a Python loop of
# mj_step costs ~10-16 us per row. Below this batch size the loop is faster (measured, 2-link arm).
_ROLLOUT_MIN_BATCH = 16


@contextlib.contextmanager
def _quiet_mujoco() -> Iterator[None]:
    """Keep MuJoCo from writing MUJOCO_LOG.TXT into the current directory and printing warnings.

    Library code must not write files; diverged trial steps are expected inside the iLQR line
    search and are reported as NaN rows instead. The previous log configuration is restored.
    """
    cfg = mujoco.MjLogConfig.get()
    to_file, to_console = cfg.logto_file, cfg.logto_console
    cfg.logto_file = False
    cfg.logto_console = False
    mujoco.MjLogConfig.set(cfg)
    try:
        yield
    finally:
        cfg.logto_file, cfg.logto_console = to_file, to_console
        mujoco.MjLogConfig.set(cfg)


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
        model: a ``mujoco.MjModel`` with hinge/slide joints only, no actuator activations, and
            an integrator other than RK4 (``mjd_transitionFD`` refuses RK4; use Euler or
            implicitfast). Copied at construction (auto-reset disabled in the copy).
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

    def __init__(
        self,
        model: mujoco.MjModel,
        *,
        eps: float = 1e-6,
        centered: bool = False,
        n_threads: int = 1,
    ) -> None:
        if not isinstance(model, mujoco.MjModel):
            raise TypeError(f"model: expected a mujoco.MjModel, got {type(model).__name__}")
        if model.nq != model.nv:
            raise ValueError(
                f"model: expected hinge/slide joints only (nq == nv), got nq={model.nq}, "
                f"nv={model.nv}; free and ball joints need a tangent-space state"
            )
        if model.na != 0:
            raise ValueError(
                f"model: expected no actuator activations (na == 0), got na={model.na}"
            )
        if model.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4:
            raise ValueError(
                "model: mjd_transitionFD refuses the RK4 integrator; expected Euler, "
                "implicit or implicitfast"
            )
        if not (np.isfinite(eps) and eps > 0):
            raise ValueError(f"eps: expected a finite value > 0, got {eps!r}")
        if not isinstance(n_threads, int) or n_threads < 1:
            raise ValueError(f"n_threads: expected an int >= 1, got {n_threads!r}")
        # A private copy with MuJoCo's auto-reset disabled, so a divergence shows up as huge
        # values instead of a silent reset to qpos0. Later changes to ``model`` are not seen.
        self.model = copy.deepcopy(model)
        self.model.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_AUTORESET)
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
        futs = [
            self._pool.submit(fn, self._datas[i], a, b) for i, (a, b) in enumerate(self._chunks(n))
        ]
        for f in futs:
            f.result()

    def _set(self, d: mujoco.MjData, x: np.ndarray, u: np.ndarray) -> None:
        d.qpos[:] = x[: self.nq]
        d.qvel[:] = x[self.nq :]
        d.ctrl[:] = u
        d.time = 0.0
        # Same warm start for every call, so results do not depend on call history.
        d.qacc_warmstart[:] = 0.0

    def step_numpy(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """:meth:`step` on float64 numpy arrays (the fast path the iLQR uses).

        See :meth:`_step_numpy`; MuJoCo's own warning log is silenced during the call.
        """
        with _quiet_mujoco():
            return self._step_numpy(x, u)

    def _step_numpy(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Batched step.

        Large batches go through ``mujoco.rollout`` (one C call), small ones through a Python loop
        of ``mj_step`` (lower overhead). Rows with non-finite input, with a control MuJoCo would
        reject (``|u| > mjMAXVAL``, it would silently zero it) or whose simulation diverged
        (``|x| > mjMAXVAL``) are returned as NaN.
        """
        nq, nv = self.nq, self.nv
        n = len(x)
        # Whole-batch checks first: per-row masks only when something is wrong (the common case
        # costs two reductions instead of eight array operations per call).
        if np.isfinite(x).all() and np.abs(u).max(initial=0.0) <= _MAXVAL:
            bad = None
        else:
            bad = ~(np.isfinite(x).all(1) & (np.abs(u) <= _MAXVAL).all(1))
            x = np.where(bad[:, None], 0.0, x)
            u = np.where(bad[:, None], 0.0, u)
        if n < _ROLLOUT_MIN_BATCH:
            out = np.empty_like(x)
            m, d = self.model, self._datas[0]
            for i in range(n):
                self._set(d, x[i], u[i])
                mujoco.mj_step(m, d)
                out[i, :nq] = d.qpos
                out[i, nq:] = d.qvel
        else:
            state0 = np.repeat(self._state_template, n, axis=0)
            state0[:, 1 : 1 + nq] = x[:, :nq]
            state0[:, 1 + nq : 1 + nq + nv] = x[:, nq:]
            st, _ = self._roller.rollout(
                self.model, self._roll_datas, state0, u[:, None, :], nstep=1
            )
            out = np.concatenate([st[:, 0, 1 : 1 + nq], st[:, 0, 1 + nq : 1 + nq + nv]], axis=1)
        if bad is None and np.abs(out).max(initial=0.0) <= _MAXVAL:
            return out
        diverged = ~(np.abs(out) <= _MAXVAL).all(1)
        bad = diverged if bad is None else (bad | diverged)
        log.debug("MujocoDynamics: %d of %d rows diverged or had invalid input", bad.sum(), n)
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
                out,
            )
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

        with _quiet_mujoco():
            self._run(work, n)
        return torch.from_numpy(A), torch.from_numpy(B)
