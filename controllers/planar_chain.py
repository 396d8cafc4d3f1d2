"""Closed-form dynamics of a planar chain of hinges, with analytic Jacobians.

The counterpart of what Crocoddyl gets from Pinocchio: rigid-body dynamics and their exact
derivatives, with no simulator call and no finite differences. It covers the arms of this toolkit
that have no joint limits (the bench's 2-link arm, ``reacher2``) and reproduces MuJoCo's Euler step
of the same model to round-off (tested), so plans made with it run unchanged in MuJoCo.

Model. Links ``1..n`` hang off each other; all hinge axes are parallel (the plane's normal ``e``).
With ``psi = S q + alpha`` the absolute link angles (``S[a, j] = s_j`` for ``j <= a``, ``s_j = +-1``
the joint's axis sign, ``alpha`` the links' directions at ``q = 0``) the kinetic energy is
``0.5 psi_dot^T H(psi) psi_dot`` with

    H[a, b] = W[a, b] cos(psi_a - psi_b) + I_a delta_ab,
    W[a, b] = sum_{l >= max(a, b)} m_l r[l, a] r[l, b],

``r[l, a]`` the lever of link ``a`` on link ``l``'s centre of mass (link length ``L_a`` for
``a < l``, the centre-of-mass offset ``c_l`` for ``a = l``) and ``I_a`` link ``a``'s inertia about
its centre of mass and the axis. Lagrange's equations give ``H psi_ddot + C = S^-T tau`` with the
centrifugal terms ``C[a] = sum_b W[a, b] sin(psi_a - psi_b) psi_dot_b^2`` (the Coriolis terms of
``H`` cancel for a planar chain). In joint coordinates, with MuJoCo's Euler integrator (joint
damping ``D`` implicit, armature ``R`` on the diagonal):

    (S^T H S + R + dt D) a = tau - D v - S^T C,   v' = v + dt a,   q' = q + dt v'.

Gravity must lie along the axes or be cancelled (``gravcomp="1"`` on every link).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import mujoco
import numpy as np
import torch
from torch import Tensor

from controllers.mujoco_dynamics import ctrl_range, numpy_batch

_AXIS_TOL = 1e-9  # relative tolerance of the geometric checks in from_mujoco


def _per_joint(name: str, value: float | Sequence[float], n: int, bound: str) -> np.ndarray:
    """``value`` as ``(n,)`` float64, checked finite and ``bound`` (``"> 0"``, ``">= 0"`` or "")."""
    a = np.asarray(value, dtype=np.float64)
    a = np.full(n, float(a)) if a.ndim == 0 else a
    if a.shape != (n,):
        raise ValueError(f"{name}: expected a scalar or {n} values (one per link), got {a.shape}")
    bad = ~np.isfinite(a)
    if bound == "> 0":
        bad |= a <= 0
    elif bound == ">= 0":
        bad |= a < 0
    if bad.any():
        what = f"finite values {bound}" if bound else "finite values"
        raise ValueError(f"{name}: expected {what}, got {a.tolist()}")
    return a


class PlanarChainDynamics:
    """A planar serial chain of hinges as :class:`controllers.Dynamics` (numpy, float64).

    State ``x = [q, v]`` (joint angles and velocities, ``nx = 2 n``), control ``u`` one motor per
    joint (``tau = gear * clip(u, ctrl_lower, ctrl_upper)``). ``step`` is not differentiable by
    torch autograd; :meth:`jacobians` returns the exact Jacobians, which the iLQR picks up.

    Args:
        link_lengths: ``L_a``, joint ``a`` to joint ``a + 1`` in m (the last link's is unused).
        masses: link masses in kg.
        com_offsets: ``c_a``, joint ``a`` to link ``a``'s centre of mass along the link, in m.
        inertias: link inertias about their centre of mass and the hinge axis, in kg m^2.
        dt: time step in s.
        damping: viscous joint damping in N m s/rad (integrated implicitly, as MuJoCo's Euler).
        armature: rotor inertia added to each joint's diagonal of the mass matrix, in kg m^2.
        gear: torque per unit of control.
        ctrl_lower, ctrl_upper: controls are clipped to these (None: unbounded).
        axis_signs: ``+1`` or ``-1`` per joint (a joint turning about ``-e``).
        angle_offsets: the links' absolute directions at ``q = 0`` in rad.
    """

    def __init__(
        self,
        link_lengths: Sequence[float],
        masses: Sequence[float],
        com_offsets: Sequence[float],
        inertias: Sequence[float],
        dt: float,
        *,
        damping: float | Sequence[float] = 0.0,
        armature: float | Sequence[float] = 0.0,
        gear: float | Sequence[float] = 1.0,
        ctrl_lower: float | Sequence[float] | None = None,
        ctrl_upper: float | Sequence[float] | None = None,
        axis_signs: Sequence[float] | None = None,
        angle_offsets: float | Sequence[float] = 0.0,
    ) -> None:
        n = len(link_lengths)
        if n < 1:
            raise ValueError("link_lengths: expected at least one link, got none")
        lengths = _per_joint("link_lengths", link_lengths, n, ">= 0")
        m = _per_joint("masses", masses, n, "> 0")
        c = _per_joint("com_offsets", com_offsets, n, "")
        inertia = _per_joint("inertias", inertias, n, ">= 0")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected a finite time step > 0 in s, got {dt!r}")
        self.n = n
        self.nx, self.nu, self.dt = 2 * n, n, float(dt)
        self.damping = _per_joint("damping", damping, n, ">= 0")
        self.armature = _per_joint("armature", armature, n, ">= 0")
        self.gear = np.asarray(gear, dtype=np.float64) * np.ones(n)
        if self.gear.shape != (n,) or not (np.isfinite(self.gear) & (self.gear != 0)).all():
            raise ValueError(f"gear: expected {n} finite non-zero values, got {gear!r}")
        lo = np.full(n, -np.inf) if ctrl_lower is None else np.asarray(ctrl_lower) * np.ones(n)
        hi = np.full(n, np.inf) if ctrl_upper is None else np.asarray(ctrl_upper) * np.ones(n)
        if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
            raise ValueError(f"ctrl_lower/ctrl_upper: expected lower <= upper, got {lo}, {hi}")
        self.ctrl_lower, self.ctrl_upper = lo.astype(np.float64), hi.astype(np.float64)
        self._clipped = bool(np.isfinite(lo).any() or np.isfinite(hi).any())
        signs = np.ones(n) if axis_signs is None else np.asarray(axis_signs, dtype=np.float64)
        if signs.shape != (n,) or not np.isin(signs, (-1.0, 1.0)).all():
            raise ValueError(f"axis_signs: expected {n} values of +1 or -1, got {axis_signs!r}")
        self.alpha = np.asarray(angle_offsets, dtype=np.float64) * np.ones(n)
        # r[l, a]: lever of link a on link l's centre of mass.
        r = np.tril(np.broadcast_to(lengths, (n, n)), -1) + np.diag(c)
        W = np.einsum("l,la,lb->ab", m, r, r)
        S = np.tril(np.ones((n, n))) * signs  # psi_dot = S v
        self._W, self._ST = W, np.ascontiguousarray(S.T)
        # Every per-step quantity is linear in cos/sin of the n^2 angle differences
        # d[ab] = psi_a - psi_b (flattened row-major): one small matmul each instead of
        # batched n x n products (whose per-call cost is several times larger).
        diff = (S[:, None, :] - S[None, :, :]).reshape(n * n, n)
        self._diff_q = np.ascontiguousarray(diff.T)  # q -> d (without the offsets)
        self._diff_0 = (self.alpha[:, None] - self.alpha[None, :]).reshape(n * n)
        self._offset = bool(self._diff_0.any())
        # psi_dot_b at flat index (a, b): v -> (n, n^2).
        self._rate_b = np.ascontiguousarray(np.tile(S, (n, 1)).T)
        # M(q) = S^T (W cos(d) + I) S + armature + dt damping = cos(d) @ _mass_cos + _mass_0.
        self._mass_cos = np.einsum("aj,ab,bk->abjk", S, W, S).reshape(n * n, n * n)
        self._mass_0 = (
            S.T @ np.diag(inertia) @ S + np.diag(self.armature + self.dt * self.damping)
        ).reshape(n * n)
        # S^T X S for any n x n X, flattened: X.reshape(n^2) @ _congruence.
        self._congruence = np.einsum("aj,bk->abjk", S, S).reshape(n * n, n * n)
        self._damping_flat = np.diag(self.damping).reshape(n * n)
        # Centrifugal torques S^T C = (sin(d) psi_dot_b^2) @ _centrifugal.
        self._centrifugal = np.einsum("aj,ab->abj", S, W).reshape(n * n, n)
        # Analytic Jacobians: only unchanged steps keep theirs (reuse would only lose accuracy).
        self.jacobian_reuse_radius = 0.0

    @classmethod
    def from_mujoco(cls, model: mujoco.MjModel) -> PlanarChainDynamics:
        """The chain a MuJoCo model describes, checked to be one this class reproduces exactly.

        Raises:
            ValueError: naming the first feature the closed form does not cover (joint limits,
                contacts, springs, other integrators, non-parallel axes, ...); use
                :class:`controllers.MujocoDynamics` for such models.
        """
        m = model
        n = m.njnt

        def refuse(why: str) -> ValueError:
            return ValueError(f"model: {why}; use controllers.MujocoDynamics for this model")

        if n < 1 or m.nq != n or m.nv != n or m.nbody != n + 1:
            raise refuse(
                f"expected a chain of n bodies with one hinge each (nbody = n + 1), got "
                f"njnt={n}, nq={m.nq}, nv={m.nv}, nbody={m.nbody}"
            )
        if (m.jnt_type != mujoco.mjtJoint.mjJNT_HINGE).any():
            raise refuse("expected hinge joints only")
        if m.opt.integrator != mujoco.mjtIntegrator.mjINT_EULER:
            raise refuse("expected the Euler integrator (its implicit damping is modelled)")
        if m.opt.disableflags & int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP):
            raise refuse("expected Euler's implicit damping enabled")
        for name, what in (
            ("jnt_limited", "joint limits (constraint forces)"),
            ("jnt_stiffness", "joint springs"),
            ("dof_frictionloss", "joint friction loss"),
        ):
            if np.any(getattr(m, name)):
                raise refuse(f"{what} are not modelled")
        if m.neq or m.ntendon or m.na or m.nflex:
            raise refuse("equality constraints, tendons, activations and flexes are not modelled")
        contacts_off = m.opt.disableflags & int(mujoco.mjtDisableBit.mjDSBL_CONTACT)
        if not contacts_off and m.ngeom > 1:
            ct, ca = m.geom_contype, m.geom_conaffinity
            pairs = (ct[:, None] & ca[None, :]) | (ca[:, None] & ct[None, :])
            np.fill_diagonal(pairs, 0)
            if pairs.any() or m.npair:
                raise refuse("geoms may collide (contype/conaffinity); contacts are not modelled")
        if np.any(m.opt.wind) or m.opt.density or m.opt.viscosity:
            raise refuse("wind, density and viscosity forces are not modelled")
        # Chain order: body j + 1 carries joint j, and its parent is body j.
        if (m.jnt_bodyid != np.arange(1, n + 1)).any() or (
            m.body_parentid[1:] != np.arange(n)
        ).any():
            raise refuse("expected body i (1..n) to carry joint i - 1 and hang off body i - 1")
        if np.abs(m.jnt_pos).max() > 0 or np.abs(m.body_quat - [1, 0, 0, 0]).max() > 0:
            raise refuse("expected hinges at their body origins and unrotated body frames")
        axes = m.jnt_axis / np.linalg.norm(m.jnt_axis, axis=1, keepdims=True)
        e = axes[0]
        signs = np.sign(axes @ e)
        if np.abs(axes - signs[:, None] * e).max() > _AXIS_TOL:
            raise refuse(f"expected parallel hinge axes, got {m.jnt_axis.tolist()}")
        # In-plane basis (e1, e2) with e1 x e2 = e.
        e1 = np.cross(e, [1.0, 0.0, 0.0] if abs(e[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(e, e1)
        scale = max(float(np.abs(m.body_pos[2:]).max(initial=0.0)), 1e-3)
        child = np.vstack([m.body_pos[2:], np.zeros((1, 3))])  # joint j to joint j + 1
        ipos = m.body_ipos[1:]
        if (
            np.abs(child @ e).max() > _AXIS_TOL * scale
            or np.abs(ipos @ e).max() > _AXIS_TOL * scale
        ):
            raise refuse("expected joints and centres of mass in one plane normal to the axes")
        # Each link's direction at q = 0: towards the next joint (the last link: its centre of
        # mass); the centre of mass must lie on that line (else it would need its own offset).
        lengths = np.linalg.norm(child, axis=1)
        direction = np.where(lengths[:, None] > 0, child, ipos)
        alpha = np.arctan2(direction @ e2, direction @ e1)
        along = np.cos(alpha)[:, None] * e1 + np.sin(alpha)[:, None] * e2
        across = -np.sin(alpha)[:, None] * e1 + np.cos(alpha)[:, None] * e2
        if np.abs((ipos * across).sum(1)).max() > _AXIS_TOL * scale:
            raise refuse("expected every centre of mass on the line from its joint to the next")
        com = (ipos * along).sum(1)
        # Inertia about the axis through the centre of mass: e in the inertial frame.
        inertia = np.empty(n)
        for j in range(n):
            rot = np.empty(9)
            mujoco.mju_quat2Mat(rot, m.body_iquat[j + 1])
            e_local = rot.reshape(3, 3).T @ e
            inertia[j] = float(m.body_inertia[j + 1] @ e_local**2)
        g = np.asarray(m.opt.gravity, dtype=np.float64)
        gravity_off = m.opt.disableflags & int(mujoco.mjtDisableBit.mjDSBL_GRAVITY)
        if not gravity_off and np.linalg.norm(g - (g @ e) * e) > 0:
            if (m.body_gravcomp[1:] != 1.0).any():
                raise refuse(
                    "expected gravity along the hinge axes or cancelled (gravcomp=1 on every link)"
                )
        # Motors: one per joint, fixed gain, no bias, no dynamics.
        if m.nu != n:
            raise refuse(f"expected one actuator per joint, got nu={m.nu} for {n} joints")
        if (
            (m.actuator_trntype != mujoco.mjtTrn.mjTRN_JOINT).any()
            or (m.actuator_dyntype != mujoco.mjtDyn.mjDYN_NONE).any()
            or (m.actuator_gaintype != mujoco.mjtGain.mjGAIN_FIXED).any()
            or (m.actuator_biastype != mujoco.mjtBias.mjBIAS_NONE).any()
            or (m.actuator_trnid[:, 0] != np.arange(n)).any()
            or m.actuator_forcelimited.any()
        ):
            raise refuse(
                "expected actuator i to be a motor (fixed gain, no bias, no force limit) on joint i"
            )
        gear = m.actuator_gear[:, 0] * m.actuator_gainprm[:, 0]
        lo, hi = ctrl_range(m)
        return cls(
            lengths,
            m.body_mass[1:],
            com,
            inertia,
            float(m.opt.timestep),
            damping=m.dof_damping.copy(),
            armature=m.dof_armature.copy(),
            gear=gear,
            ctrl_lower=lo,
            ctrl_upper=hi,
            axis_signs=signs,
            angle_offsets=alpha,
        )

    # ---------------------------------------------------------------- dynamics
    def _accelerations(
        self, x: np.ndarray, u: np.ndarray, jacobian_terms: bool = False
    ) -> tuple[np.ndarray, ...]:
        """Joint accelerations ``a (N, n)``; with ``jacobian_terms`` also the terms the Jacobians
        reuse: ``M^-1 (N, n, n)``, ``cos(d)`` and ``sin(d)`` ``(N, n^2)`` and the absolute angular
        velocities ``(N, n)``."""
        n = self.n
        v = x[:, n:]
        d = x[:, :n] @ self._diff_q
        if self._offset:
            d += self._diff_0
        cos_d, sin_d = np.cos(d), np.sin(d)
        rate_b = v @ self._rate_b
        if self._clipped:
            u = np.clip(u, self.ctrl_lower, self.ctrl_upper)
        rhs = self.gear * u - self.damping * v - (sin_d * rate_b * rate_b) @ self._centrifugal
        M = (cos_d @ self._mass_cos + self._mass_0).reshape(-1, n, n)
        if not jacobian_terms:
            return (_solve(M, rhs),)
        Minv = _inverse(M)
        a = (Minv @ rhs[:, :, None])[:, :, 0]
        return a, Minv, cos_d, sin_d, rate_b[:, :n]

    def numpy_session(self) -> contextlib.AbstractContextManager[object]:
        """Context for many consecutive numpy calls (the iLQR enters it around a solve): numpy's
        overflow warnings off, as diverged trial rollouts are expected and come back non-finite."""
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")

    def step_numpy(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One Euler step on float64 ``x (N, nx)``, ``u (N, nu)``; diverged rows end non-finite."""
        n, h = self.n, self.dt
        a = self._accelerations(x, u)[0]
        out = np.empty_like(x)
        v1, q1 = out[:, n:], out[:, :n]
        np.multiply(a, h, out=v1)
        v1 += x[:, n:]  # v' = v + h a, then q' = q + h v' (MuJoCo's order of operations)
        np.multiply(v1, h, out=q1)
        q1 += x[:, :n]
        return out

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        """:meth:`step_numpy` on tensors ``x (B, nx)``, ``u (B, nu)`` (no autograd graph)."""
        xn, un = numpy_batch(x, u, self.nx, self.nu)
        return torch.from_numpy(self.step_numpy(xn, un)).to(x.dtype)

    def jacobians_numpy(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``A = dx'/dx (N, nx, nx)`` and ``B = dx'/du (N, nx, nu)`` on float64 arrays.

        At a control on its clip bound the derivative is taken from inside the box (the iLQR's
        box QP decides whether the bound is active).
        """
        n, h = self.n, self.dt
        with self.numpy_session():
            a, Minv, cos_d, sin_d, w = self._accelerations(x, u, jacobian_terms=True)
            WC = self._W * cos_d.reshape(-1, n, n)
            WS = self._W * sin_d.reshape(-1, n, n)
            w2 = w * w
            ddpsi = a @ self._ST  # absolute angular accelerations
            # G[a, k] = d(H psi_ddot + C)_a / d psi_k, Gv[a, k] = dC_a / d psi_dot_k.
            G = WS * ddpsi[:, None, :] - WC * w2[:, None, :]
            diag = np.arange(n)
            G[:, diag, diag] += (WC @ w2[:, :, None])[:, :, 0] - (WS @ ddpsi[:, :, None])[:, :, 0]
            Gv = 2.0 * WS * w[:, None, :]
            N = len(x)
            # S^T G S as one matmul on the flattened matrices (see _congruence).
            da_dq = -Minv @ (G.reshape(N, n * n) @ self._congruence).reshape(N, n, n)
            dv = (Gv.reshape(N, n * n) @ self._congruence + self._damping_flat).reshape(N, n, n)
            da_dv = -Minv @ dv
            da_du = Minv * self.gear
            if self._clipped:
                inside = (u >= self.ctrl_lower) & (u <= self.ctrl_upper)
                da_du = da_du * inside[:, None, :]
            A = np.empty((N, 2 * n, 2 * n))
            eye = np.eye(n)
            A[:, n:, :n] = h * da_dq
            A[:, n:, n:] = eye + h * da_dv
            A[:, :n, :n] = eye + h * A[:, n:, :n]  # q' = q + h v'
            A[:, :n, n:] = h * A[:, n:, n:]
            B = np.empty((N, 2 * n, n))
            B[:, n:] = h * da_du
            B[:, :n] = h * B[:, n:]
        return A, B

    def jacobians(self, x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`jacobians_numpy` on tensors: ``A (N, nx, nx)``, ``B (N, nx, nu)``, float64."""
        xn, un = numpy_batch(x, u, self.nx, self.nu)
        A, B = self.jacobians_numpy(xn, un)
        return torch.from_numpy(A), torch.from_numpy(B)

    @property
    def control_bounds(self) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` of shape ``(nu,)`` (inf if unlimited), as ``MujocoDynamics``'s."""
        return torch.from_numpy(self.ctrl_lower.copy()), torch.from_numpy(self.ctrl_upper.copy())


def _solve(M: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``M^-1 r`` for SPD ``M (N, n, n)``, ``r (N, n)``; n <= 2 in closed form, as _inverse."""
    n = M.shape[-1]
    if n == 1:
        return r / M[:, 0]
    if n == 2:
        a, b, d = M[:, 0, 0], M[:, 0, 1], M[:, 1, 1]
        det = a * d - b * b
        # [d r0 - b r1, a r1 - b r0] / det, with (d, a) the reversed diagonal (a view).
        out = M.diagonal(axis1=1, axis2=2)[:, ::-1] * r
        out -= b[:, None] * r[:, ::-1]
        out /= det[:, None]
        return out
    return np.linalg.solve(M, r[:, :, None])[:, :, 0]


def _inverse(M: np.ndarray) -> np.ndarray:
    """Inverses of a batch of small SPD matrices; 1x1 and 2x2 in closed form (LAPACK's per-call
    overhead is several times the arithmetic at that size)."""
    n = M.shape[-1]
    if n == 1:
        return 1.0 / M
    if n == 2:
        a, b, d = M[:, 0, 0], M[:, 0, 1], M[:, 1, 1]
        det = a * d - b * b
        out = np.empty_like(M)
        out[:, 0, 0], out[:, 1, 1] = d / det, a / det
        out[:, 0, 1] = out[:, 1, 0] = -b / det
        return out
    return np.linalg.inv(M)
