"""``ArmSim``: one planar arm, one interface, two simulators (MuJoCo and PyBullet).

State ``x = [q, qdot]`` (rad, rad/s), shape ``(2n,)``; action ``u`` = joint torques (N*m), shape
``(n,)``, clipped to ``ArmConfig.torque_limits`` identically on both backends. Both backends run
semi-implicit Euler with implicitly integrated viscous damping on the same rigid-body model (see
``mjcf.py``), so their trajectories agree to the tolerance stated in docs/arms.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout

from robots.arm.config import ArmConfig, load_arm_config, suggest
from robots.arm.mjcf import GRAVITY

log = logging.getLogger(__name__)

BACKENDS = ("mujoco", "pybullet")
# Joint speeds at or above this (rad/s) count as a blow-up. PyBullet caps joint speed (we raise its
# cap to this value) instead of producing NaN, so a diverging PyBullet run shows up as speeds
# pinned at the cap; MuJoCo produces NaN or stops (see _MujocoBackend.rollout).
MAX_JOINT_SPEED = 1e6


class SimulationError(RuntimeError):
    """The simulation produced a non-finite state (blew up)."""


def check_backend(backend: Any) -> str:
    """Validate a backend name; unknown names raise ``ValueError`` suggesting the nearest."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        hint = suggest(backend, BACKENDS) if isinstance(backend, str) else ""
        raise ValueError(f"backend: unknown backend {backend!r}.{hint} Expected one of {BACKENDS}")
    return backend


def _as_array(name: str, value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name}: expected a numeric array of shape {shape} ({what}), got {value!r}"
        ) from e
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} ({what}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[:5].tolist()
        raise ValueError(f"{name}: expected finite values ({what}), got NaN/inf at {bad}")
    return arr


class RenderingUnavailableError(RuntimeError):
    """MuJoCo could not create an offscreen OpenGL context (set MUJOCO_GL=egl or osmesa)."""


# The first failure to create a MuJoCo renderer, kept because a second attempt after a failed
# GLFW initialisation aborts the whole process instead of raising.
_RENDER_FAILURE: str | None = None


class _MujocoBackend:
    """A compiled MuJoCo model with an ``ee`` site, an optional ``goal`` site and a camera."""

    def __init__(self, model: mujoco.MjModel, camera: str) -> None:
        self.model = model
        self.data = mujoco.MjData(model)
        self.n = model.nv
        self.camera = camera
        self.ee_site = model.site("ee").id
        self.goal_site = model.site("goal").id
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._rollout_data: list[mujoco.MjData] = []

    def set_state(self, q: np.ndarray, qd: np.ndarray) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = q
        self.data.qvel[:] = qd
        mujoco.mj_forward(self.model, self.data)

    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def step(self, u: np.ndarray) -> None:
        self.data.ctrl[:] = u
        mujoco.mj_step(self.model, self.data)

    def ee_position(self) -> np.ndarray:
        mujoco.mj_kinematics(self.model, self.data)
        return self.data.site_xpos[self.ee_site].copy()

    def rollout(self, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
        B, T, _ = U.shape
        n, m = self.n, self.model
        nthread = max(1, min(os.cpu_count() or 1, B))
        while len(self._rollout_data) < nthread:
            self._rollout_data.append(mujoco.MjData(m))
        spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        template = np.empty(mujoco.mj_stateSize(m, spec))
        mujoco.mj_getState(m, mujoco.MjData(m), template, spec)
        # Full-physics state layout: [time, qpos, qvel, act, ...] (mjtState bit order).
        init = np.tile(template, (B, 1))
        init[:, 1 : 1 + n] = x0[:, :n]
        init[:, 1 + n : 1 + 2 * n] = x0[:, n:]
        state, _ = mj_rollout.rollout(m, self._rollout_data[:nthread], init, U, nstep=T)
        X = np.empty((B, T + 1, 2 * n))
        X[:, 0] = x0
        X[:, 1:] = state[:, :, 1 : 1 + 2 * n]
        # mujoco.rollout stops a diverging rollout (bad qacc) and repeats its last state for the
        # remaining steps. A state that repeats exactly while a velocity is non-zero cannot come
        # from the integrator (q' = q + dt * qdot'), so it marks a blow-up. "Non-zero" means a
        # step dt * qdot well above the rounding of q, so a resting arm is never flagged.
        moving = np.abs(m.opt.timestep * X[:, 1:, n:]) > 1e-9 * (1.0 + np.abs(X[:, 1:, :n]))
        frozen = np.all(X[:, 1:] == X[:, :-1], axis=2) & np.any(moving, axis=2)
        X[frozen.any(axis=1)] = np.nan
        return X

    def render(self, width: int, height: int, goal: np.ndarray | None) -> np.ndarray:
        key = (width, height)
        if key not in self._renderers:
            # The offscreen buffer must hold the frame; it can grow before a Renderer is made.
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, width), max(vis.offheight, height)
            global _RENDER_FAILURE
            if _RENDER_FAILURE is None:
                try:
                    self._renderers[key] = mujoco.Renderer(self.model, height=height, width=width)
                except Exception as e:
                    _RENDER_FAILURE = f"{type(e).__name__}: {e}"
            if _RENDER_FAILURE is not None:
                raise RenderingUnavailableError(
                    f"MuJoCo offscreen rendering unavailable (MUJOCO_GL="
                    f"{os.environ.get('MUJOCO_GL')!r}; set MUJOCO_GL=egl or osmesa before "
                    f"importing mujoco): {_RENDER_FAILURE}"
                )
        if goal is None:
            self.model.site_rgba[self.goal_site, 3] = 0.0
        else:
            self.model.site_rgba[self.goal_site, 3] = 0.8
            self.model.site_pos[self.goal_site] = goal
            # site_xpos is derived data: refresh it (state and time are untouched).
            mujoco.mj_kinematics(self.model, self.data)
        renderer = self._renderers[key]
        renderer.update_scene(self.data, camera=self.camera)
        return np.array(renderer.render(), dtype=np.uint8)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()


@dataclass(frozen=True)
class _BulletView:
    """Camera of the PyBullet TinyRenderer: eye, target, up (world, m) and vertical fov (deg)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fov: float = 45.0
    marker_radius: float = 0.012


class _PyBulletBackend:
    """PyBullet in DIRECT mode, one BulletClient per sim, torque control of a fixed-base URDF.

    The URDF is loaded with ``URDF_USE_INERTIA_FROM_FILE``; PyBullet's own damping, speed cap and
    velocity motors are switched off, and joint damping is integrated the way MuJoCo's Euler
    integrator does it (``step``), so both backends step the same equations.
    """

    def __init__(
        self,
        urdf: Path,
        damping: Sequence[float],
        dt: float,
        gravity_compensation: bool,
        ee_link: int,
        ee_offset: Sequence[float],
        view: _BulletView,
    ) -> None:
        import pybullet
        from pybullet_utils import bullet_client

        self.pb = pybullet
        self.client = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        c = self.client
        c.setTimeStep(dt)
        c.setPhysicsEngineParameter(numSubSteps=0, deterministicOverlappingPairs=1)
        c.setGravity(0.0, 0.0, 0.0 if gravity_compensation else -GRAVITY)
        self.body = c.loadURDF(
            str(urdf), useFixedBase=True, flags=pybullet.URDF_USE_INERTIA_FROM_FILE
        )
        self.n = len(damping)
        self.joints = [
            j
            for j in range(c.getNumJoints(self.body))
            if c.getJointInfo(self.body, j)[2] == pybullet.JOINT_REVOLUTE
        ]
        assert len(self.joints) == self.n, (self.joints, self.n)
        # PyBullet's defaults would add physics MuJoCo does not have: velocity motors holding the
        # joints, linear/angular damping 0.04 on every link and a 100 rad/s joint speed cap.
        for j in range(-1, c.getNumJoints(self.body)):
            c.changeDynamics(self.body, j, linearDamping=0.0, angularDamping=0.0, jointDamping=0.0)
        for j in self.joints:
            c.changeDynamics(self.body, j, maxJointVelocity=MAX_JOINT_SPEED)
        c.setJointMotorControlArray(
            self.body, self.joints, pybullet.VELOCITY_CONTROL, forces=[0.0] * self.n
        )
        self.damping = np.asarray(damping, dtype=np.float64)
        self.dt = dt
        self.ee_link, self.ee_offset = ee_link, np.asarray(ee_offset, dtype=np.float64)
        self.view = view
        self._marker: int | None = None

    def set_state(self, q: np.ndarray, qd: np.ndarray) -> None:
        for i, j in enumerate(self.joints):
            self.client.resetJointState(self.body, j, float(q[i]), float(qd[i]))

    def get_state(self) -> np.ndarray:
        states = self.client.getJointStates(self.body, self.joints)
        return np.array([s[0] for s in states] + [s[1] for s in states], dtype=np.float64)

    def step(self, u: np.ndarray) -> None:
        x = self.get_state()
        q, qd = x[: self.n].tolist(), x[self.n :]
        tau = u
        if self.damping.any():
            # MuJoCo's Euler integrator treats joint damping implicitly:
            #   v' = v + dt (M + dt D)^-1 (u - c - D v),
            # where c = bias forces (Coriolis, gravity). PyBullet steps v' = v + dt M^-1 (tau - c),
            # so commanding tau = c + M (M + dt D)^-1 (u - c - D v) gives the same update. Both M
            # and c come from PyBullet's own model, so this only changes how damping is integrated
            # (implicitly: stable for light distal links, where explicit damping blows up).
            c = np.asarray(
                self.client.calculateInverseDynamics(self.body, q, qd.tolist(), [0.0] * self.n)
            )
            M = np.asarray(self.client.calculateMassMatrix(self.body, q))
            f = u - c - self.damping * qd
            tau = c + M @ np.linalg.solve(M + self.dt * np.diag(self.damping), f)
        self.client.setJointMotorControlArray(
            self.body, self.joints, self.pb.TORQUE_CONTROL, forces=tau.tolist()
        )
        self.client.stepSimulation()

    def ee_position(self) -> np.ndarray:
        s = self.client.getLinkState(self.body, self.ee_link, computeForwardKinematics=True)
        pos, orn = np.asarray(s[4]), s[5]
        rot = np.asarray(self.client.getMatrixFromQuaternion(orn)).reshape(3, 3)
        return pos + rot @ self.ee_offset

    def rollout(self, x0: np.ndarray, U: np.ndarray) -> np.ndarray:
        B, T, _ = U.shape
        n = self.n
        saved = self.get_state()
        X = np.empty((B, T + 1, 2 * n))
        try:
            for b in range(B):
                self.set_state(x0[b, :n], x0[b, n:])
                X[b, 0] = x0[b]
                for t in range(T):
                    self.step(U[b, t])
                    X[b, t + 1] = self.get_state()
        finally:
            self.set_state(saved[:n], saved[n:])
        return X

    def render(self, width: int, height: int, goal: np.ndarray | None) -> np.ndarray:
        c, v = self.client, self.view
        if goal is not None:
            if self._marker is None:
                vis = c.createVisualShape(
                    self.pb.GEOM_SPHERE, radius=v.marker_radius, rgbaColor=[0.1, 0.8, 0.2, 1.0]
                )
                self._marker = c.createMultiBody(baseMass=0, baseVisualShapeIndex=vis)
            c.resetBasePositionAndOrientation(self._marker, goal.tolist(), [0, 0, 0, 1])
        elif self._marker is not None:
            c.resetBasePositionAndOrientation(self._marker, [0, 0, -1e3], [0, 0, 0, 1])
        dist = float(np.linalg.norm(np.subtract(v.eye, v.target)))
        view = c.computeViewMatrix(list(v.eye), list(v.target), list(v.up))
        proj = c.computeProjectionMatrixFOV(v.fov, width / height, 0.01 * dist, 10 * dist)
        img = c.getCameraImage(width, height, view, proj, renderer=self.pb.ER_TINY_RENDERER)
        rgba = np.reshape(np.asarray(img[2], dtype=np.uint8), (height, width, 4))
        return np.ascontiguousarray(rgba[:, :, :3])

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client = None


def _planar_pybullet(config: ArmConfig) -> _PyBulletBackend:
    """The PyBullet backend of a planar arm, from the URDF generated from the same ArmConfig.

    Why URDF and not ``pybullet.loadMJCF`` of the MJCF: loadMJCF reads only part of MJCF (no
    actuators/ctrlrange, no ``<option>`` timestep/integrator, no ``gravcomp``, no sites), so the
    MuJoCo model cannot be loaded faithfully; the URDF carries the same explicit inertials.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ml3r_arm_"))
    try:
        urdf = tmp / f"{config.name}.urdf"
        urdf.write_text(config.to_urdf())
        dist = 1.3 * config.reach / np.tan(np.radians(22.5))
        return _PyBulletBackend(
            urdf,
            config.joint_damping,
            config.dt,
            config.gravity_compensation,
            ee_link=config.n_links - 1,
            ee_offset=(config.link_lengths[-1], 0.0, 0.0),
            view=_BulletView(
                eye=(0.0, -dist, 0.0),
                target=(0.0, 0.0, 0.0),
                marker_radius=1.2 * config.link_radius,
            ),
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _SimBase:
    """Validation, clipping, blow-up checks and batching shared by the arm simulators."""

    backend: str
    nx: int
    nu: int
    dt: float
    _limits: np.ndarray
    _impl: Any
    _label: str

    # ------------------------------------------------------------------ MuJoCo handles
    @property
    def mj_model(self) -> mujoco.MjModel:
        """The MuJoCo model (MuJoCo backend only), e.g. for ``mujoco.mjd_transitionFD``."""
        if self.backend != "mujoco":
            raise AttributeError(
                f"mj_model: only the MuJoCo backend has one (backend={self.backend!r})"
            )
        return self._impl.model

    @property
    def mj_data(self) -> mujoco.MjData:
        """The MuJoCo data holding the current state (MuJoCo backend only)."""
        if self.backend != "mujoco":
            raise AttributeError(
                f"mj_data: only the MuJoCo backend has one (backend={self.backend!r})"
            )
        return self._impl.data

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> np.ndarray:
        """Current state ``[q, qdot]``, shape ``(nx,)``, float64 (a copy)."""
        return self._impl.get_state()

    def reset(self, x0: Any = None) -> np.ndarray:
        """Set the state (default: zero, the paper's start) and return it."""
        x = np.zeros(self.nx) if x0 is None else _as_array("x0", x0, (self.nx,), "[q, qdot]")
        self._impl.set_state(x[: self.nu], x[self.nu :])
        return self.state

    def clip(self, u: np.ndarray) -> np.ndarray:
        """Clip torques to the configured limits (the same on both backends)."""
        return np.clip(u, -self._limits, self._limits)

    def step(self, u: Any) -> np.ndarray:
        """Apply torques ``u`` (nu,) for one ``dt`` and return the new state ``(nx,)``.

        Raises:
            ValueError: ``u`` has the wrong shape or non-finite entries.
            SimulationError: the new state is not finite or a joint speed reached
                ``MAX_JOINT_SPEED``.
        """
        u = self.clip(_as_array("u", u, (self.nu,), "joint torques in N*m"))
        self._impl.step(u)
        x = self._impl.get_state()
        if not np.all(np.isfinite(x)) or np.abs(x[self.nu :]).max() >= MAX_JOINT_SPEED:
            raise SimulationError(
                f"{self.backend} simulation of {self._label!r} blew up: state {x}"
            )
        return x

    def rollout(self, x0: Any, U: Any) -> np.ndarray:
        """Open-loop rollouts from a batch of states; the sim's own state is left unchanged.

        Args:
            x0: initial states ``(B, nx)``.
            U: torques ``(B, T, nu)`` (clipped to the limits).

        Returns:
            States ``(B, T+1, nx)``, ``X[:, 0] == x0``. MuJoCo runs them with ``mujoco.rollout``
            (threaded); PyBullet steps them one after another.

        Raises:
            ValueError: bad shapes or non-finite inputs.
            SimulationError: a rollout blew up (the message lists the batch entries).
        """
        x0 = np.asarray(x0, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        if x0.ndim != 2:
            raise ValueError(f"x0: expected shape (B, {self.nx}), got {x0.shape}")
        x0 = _as_array("x0", x0, (x0.shape[0], self.nx), "batch of [q, qdot]")
        if U.ndim != 3:
            raise ValueError(f"U: expected shape ({x0.shape[0]}, T, {self.nu}), got {U.shape}")
        U = self.clip(_as_array("U", U, (x0.shape[0], U.shape[1], self.nu), "torques (B, T, nu)"))
        X = self._impl.rollout(np.ascontiguousarray(x0), np.ascontiguousarray(U))
        bad = ~np.all(np.isfinite(X), axis=(1, 2)) | (
            np.abs(X[..., self.nu :]).max(axis=(1, 2), initial=0.0) >= MAX_JOINT_SPEED
        )
        if bad.any():
            raise SimulationError(
                f"{self.backend} rollout of {self._label!r} blew up in batch entries "
                f"{np.flatnonzero(bad)[:10].tolist()}"
            )
        return X

    def transition(self, x: Any, u: Any) -> np.ndarray:
        """Batched one-step map ``(B, nx), (B, nu) -> (B, nx)`` (via ``rollout``)."""
        u = np.asarray(u, dtype=np.float64)
        if u.ndim != 2:
            raise ValueError(f"u: expected shape (B, {self.nu}), got {u.shape}")
        return self.rollout(x, u[:, None, :])[:, 1]

    def as_dynamics(self) -> SimDynamics:
        """This simulator as a batched torch ``Dynamics`` (``step(x, u)``, not differentiable)."""
        return SimDynamics(self)

    def _check_size(self, width: Any, height: Any) -> None:
        for arg, v in (("width", width), ("height", height)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{arg}: expected a positive integer, got {v!r}")

    def close(self) -> None:
        """Release renderers and the PyBullet client."""
        self._impl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimDynamics:
    """Adapter: a simulator as the controllers' ``Dynamics`` protocol (torch in, torch out).

    ``step(x (B, nx), u (B, nu)) -> (B, nx)`` runs the simulator (``transition``); results come back
    with the dtype/device of ``x``. Not differentiable: use ``mujoco.mjd_transitionFD`` on
    ``sim.mj_model`` for Jacobians.
    """

    def __init__(self, sim: _SimBase) -> None:
        self.sim = sim
        self.nx, self.nu, self.dt = sim.nx, sim.nu, sim.dt

    def step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = self.sim.transition(x.detach().cpu().numpy(), u.detach().cpu().numpy())
        return torch.as_tensor(out, dtype=x.dtype, device=x.device)


class ArmSim(_SimBase):
    """A planar arm simulated by MuJoCo or PyBullet behind one interface.

    Args:
        config: an ``ArmConfig`` or the name/path of a shipped YAML configuration.
        backend: ``"mujoco"`` or ``"pybullet"``.

    Attributes:
        config: the ``ArmConfig``.
        backend: the backend name.
        nx: state dimension ``2n``; nu: control dimension ``n``; dt: time step (s).
        goal: optional ``(x, z)`` marker drawn by ``render``.
        mj_model, mj_data: the MuJoCo model and data (MuJoCo backend only; e.g. for
            ``mujoco.mjd_transitionFD``).
    """

    def __init__(self, config: ArmConfig | str | Path = "reacher2", backend: str = "mujoco"):
        self.config = load_arm_config(config)
        self.backend = check_backend(backend)
        self.nx, self.nu, self.dt = self.config.nx, self.config.nu, self.config.dt
        self._label = self.config.name
        self._limits = np.asarray(self.config.torque_limits)
        if backend == "mujoco":
            model = mujoco.MjModel.from_xml_string(self.config.to_mjcf())
            self._impl: Any = _MujocoBackend(model, camera="side")
        else:
            self._impl = _planar_pybullet(self.config)
        self.goal: np.ndarray | None = None
        self.reset()

    def ee_position(self) -> np.ndarray:
        """End-effector position ``(x, z)`` in the arm's plane, m, as the simulator computes it."""
        p = self._impl.ee_position()
        return np.array([p[0], p[2]])

    def render(self, width: int = 320, height: int = 240, goal: Any = None) -> np.ndarray:
        """Render the current state offscreen: ``(height, width, 3)`` uint8.

        Args:
            width, height: image size in pixels.
            goal: optional ``(x, z)`` marker to draw (defaults to ``self.goal``).
        """
        self._check_size(width, height)
        goal = self.goal if goal is None else _as_array("goal", goal, (2,), "(x, z) in m")
        goal3 = None if goal is None else np.array([goal[0], 0.0, goal[1]])
        return self._impl.render(width, height, goal3)

    def __repr__(self) -> str:
        return f"ArmSim({self.config.name!r}, backend={self.backend!r}, n_links={self.nu})"
