"""A 7-DoF spatial arm: the KUKA LBR iiwa model shipped in ``pybullet_data``, on both backends.

One model file is the source of truth: ``pybullet_data/kuka_iiwa/model.urdf``. PyBullet loads it
directly; MuJoCo compiles the same URDF through ``mujoco.MjSpec`` (its meshes resolve against the
URDF's folder), and we add what URDF cannot say: torque motors, the Euler integrator, gravity
compensation, an end-effector site, a camera and a floor. Joint damping (0.5 N*m*s/rad), joint
limits and torque limits (300 N*m) are read from the URDF, the same numbers for both backends.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from robots.arm.sim import (
    _as_array,
    _BulletView,
    _MujocoBackend,
    _PyBulletBackend,
    _SimBase,
    check_backend,
)

IIWA_URDF = ("kuka_iiwa", "model.urdf")
# The tool point: 4.5 cm along the z axis of the last link frame (the flange face of the model).
EE_OFFSET = (0.0, 0.0, 0.045)
CAMERA_EYE = (1.6, -1.6, 1.1)
CAMERA_TARGET = (0.0, 0.0, 0.55)


def iiwa_urdf_path() -> Path:
    """Path of the iiwa URDF inside the installed ``pybullet_data`` package."""
    import pybullet_data

    return Path(pybullet_data.getDataPath(), *IIWA_URDF)


def _urdf_joint_data(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Revolute joint names, damping, effort limits and (lower, upper) limits from the URDF."""
    names, damping, effort, limits = [], [], [], []
    for joint in ET.parse(path).getroot().iter("joint"):
        if joint.get("type") not in ("revolute", "continuous"):
            continue
        names.append(joint.get("name"))
        dyn, lim = joint.find("dynamics"), joint.find("limit")
        damping.append(float(dyn.get("damping", 0.0)) if dyn is not None else 0.0)
        effort.append(float(lim.get("effort")))
        limits.append((float(lim.get("lower")), float(lim.get("upper"))))
    return names, np.array(damping), np.array(effort), np.array(limits)


def _iiwa_mujoco(
    path: Path, names: list[str], effort: np.ndarray, dt: float, gravity_compensation: bool
) -> mujoco.MjModel:
    spec = mujoco.MjSpec.from_file(str(path))
    spec.meshdir = str(path.parent)  # mesh filenames are relative to the URDF ("meshes/...")
    spec.option.timestep = dt
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_EULER
    # No contacts (PyBullet's URDF load has no self-collision either) and no silent auto-reset.
    spec.option.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_CONTACT)
    spec.option.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_AUTORESET)
    spec.visual.headlight.ambient = [0.35, 0.35, 0.35]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]
    spec.visual.global_.offwidth, spec.visual.global_.offheight = 1280, 960
    if gravity_compensation:
        for body in spec.bodies:
            if body.name != "world":
                body.gravcomp = 1.0
    last = spec.body("lbr_iiwa_link_7")
    last.add_site(name="ee", pos=list(EE_OFFSET), size=[0.02, 0, 0], rgba=[0.9, 0.1, 0.1, 1])
    world = spec.worldbody
    world.add_site(name="goal", pos=[0.5, 0, 0.5], size=[0.03, 0, 0], rgba=[0.1, 0.8, 0.2, 0.8])
    world.add_geom(
        type=mujoco.mjtGeom.mjGEOM_PLANE,
        size=[2, 2, 0.01],
        pos=[0, 0, 0],
        rgba=[0.75, 0.77, 0.8, 1],
        contype=0,
        conaffinity=0,
    )
    world.add_light(pos=[0.5, -1.0, 2.5], dir=[-0.2, 0.4, -1.0], diffuse=[0.5, 0.5, 0.5])
    eye, tgt = np.array(CAMERA_EYE), np.array(CAMERA_TARGET)
    fwd = (tgt - eye) / np.linalg.norm(tgt - eye)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    world.add_camera(name="view", pos=eye.tolist(), xyaxes=[*right, *up], fovy=45)
    for name, t in zip(names, effort, strict=True):
        act = spec.add_actuator(
            name=f"motor_{name}", target=name, trntype=mujoco.mjtTrn.mjTRN_JOINT
        )
        act.gainprm[0] = 1.0
        act.ctrlrange = [-t, t]
        act.ctrllimited = True
    # MuJoCo's URDF import keeps the collision meshes (STL) and drops the visual ones; colour
    # them like the model's materials. contype = conaffinity = 0 would mark them "visual" and the
    # URDF compiler default would then discard them too, so keep that default off.
    spec.compiler.discardvisual = False
    for i, geom in enumerate(g for g in spec.geoms if g.type == mujoco.mjtGeom.mjGEOM_MESH):
        geom.contype, geom.conaffinity = 0, 0
        geom.rgba = (
            [0.2, 0.2, 0.2, 1]
            if i == 0
            else ([0.45, 0.6, 0.85, 1] if i % 2 else [0.9, 0.45, 0.15, 1])
        )
    return spec.compile()


class SpatialArmSim(_SimBase):
    """The 7-DoF KUKA LBR iiwa, torque controlled, on MuJoCo or PyBullet.

    Same interface as ``ArmSim`` (``reset``, ``step``, ``rollout``, ``transition``, ``render``,
    ``mj_model``/``mj_data``); the end effector is 3-D: ``ee_position() -> (3,)`` world xyz in m
    (from the simulator; there is no torch FK for this arm).

    Args:
        backend: ``"mujoco"`` or ``"pybullet"``.
        dt: time step in s.
        gravity_compensation: cancel gravity exactly (MuJoCo ``gravcomp``, PyBullet zero gravity).
    """

    def __init__(
        self, backend: str = "mujoco", dt: float = 0.01, gravity_compensation: bool = True
    ) -> None:
        self.backend = check_backend(backend)
        if not isinstance(dt, int | float) or not np.isfinite(dt) or dt <= 0:
            raise ValueError(f"dt: expected a finite time step > 0 s, got {dt!r}")
        path = iiwa_urdf_path()
        if not path.is_file():
            raise FileNotFoundError(f"pybullet_data has no {os.path.join(*IIWA_URDF)} at {path}")
        names, damping, effort, limits = _urdf_joint_data(path)
        self.joint_names, self.joint_damping, self.joint_limits = names, damping, limits
        self.nu = len(names)
        self.nx, self.dt = 2 * self.nu, float(dt)
        self._limits = effort
        self._label = "kuka_iiwa"
        if backend == "mujoco":
            model = _iiwa_mujoco(path, names, effort, self.dt, gravity_compensation)
            self._impl: Any = _MujocoBackend(model, camera="view")
        else:
            self._impl = _PyBulletBackend(
                path,
                damping,
                self.dt,
                gravity_compensation,
                ee_link=self.nu - 1,
                ee_offset=EE_OFFSET,
                view=_BulletView(eye=CAMERA_EYE, target=CAMERA_TARGET, marker_radius=0.03),
            )
        self.goal: np.ndarray | None = None
        self.reset()

    def ee_position(self) -> np.ndarray:
        """End-effector (tool point) position ``(3,)`` in world coordinates, m."""
        return self._impl.ee_position()

    def ee_positions(self, Q: Any) -> np.ndarray:
        """Forward kinematics by the simulator: joint angles ``(B, 7)`` -> tool points ``(B, 3)``.

        The sim's own state is restored afterwards.
        """
        Q = np.asarray(Q, dtype=np.float64)
        if Q.ndim != 2:
            raise ValueError(f"Q: expected shape (B, {self.nu}), got {Q.shape}")
        Q = _as_array("Q", Q, (Q.shape[0], self.nu), "joint angles in rad")
        saved = self.state
        try:
            out = []
            for q in Q:
                self.reset(np.concatenate([q, np.zeros(self.nu)]))
                out.append(self.ee_position())
        finally:
            self.reset(saved)
        return np.array(out).reshape(-1, 3)

    def sample_goals(
        self, n: int, seed: int | np.random.Generator, limit_fraction: float = 0.8
    ) -> np.ndarray:
        """``n`` reachable tool-point goals ``(n, 3)``: joint angles uniform within
        ``limit_fraction`` of the joint limits, mapped through the simulator's kinematics."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n: expected a non-negative integer, got {n!r}")
        if not 0 < limit_fraction <= 1:
            raise ValueError(f"limit_fraction: expected a value in (0, 1], got {limit_fraction}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        lim = self.joint_limits * limit_fraction
        return self.ee_positions(rng.uniform(lim[:, 0], lim[:, 1], size=(n, self.nu)))

    def render(self, width: int = 320, height: int = 240, goal: Any = None) -> np.ndarray:
        """Render the current state offscreen: ``(height, width, 3)`` uint8 (goal ``(3,)``)."""
        self._check_size(width, height)
        goal = self.goal if goal is None else _as_array("goal", goal, (3,), "(x, y, z) in m")
        return self._impl.render(width, height, goal)

    def __repr__(self) -> str:
        return f"SpatialArmSim('kuka_iiwa', backend={self.backend!r})"
