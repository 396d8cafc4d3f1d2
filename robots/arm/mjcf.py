"""Model files generated from one ``ArmConfig``: MJCF for MuJoCo, URDF for PyBullet.

Both carry the same physical numbers, written explicitly so that neither simulator derives its
own: link frames, centre of mass at the middle of each link, the rod inertia of
``ArmConfig.rod_inertia``, zero armature, no contacts. Joint damping is NOT written into the URDF:
MuJoCo's Euler integrator integrates damping implicitly, and ``ArmSim``'s PyBullet backend
reproduces exactly that update with a torque correction (PyBullet's own joint damping is applied
differently). Both backends are then semi-implicit Euler with implicit damping on the same
equations of motion; see docs/arms.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from robots.arm.config import ArmConfig

GRAVITY = 9.81
# Hinge axis: world -y, so positive angles turn +x towards +z (counter-clockwise seen from -y,
# which is where the camera stands).
AXIS = "0 -1 0"
LINK_RGBA = ("0.85 0.45 0.15 1", "0.20 0.45 0.80 1")


def _f(v: float) -> str:
    return repr(float(v))


def build_mjcf(config: ArmConfig) -> str:
    """MJCF XML for the arm: Euler integrator, torque motors, a side camera and a backdrop.

    Names: joints ``joint1..n``, bodies ``link1..n``, motors ``motor1..n``, end-effector site
    ``ee``, a movable marker site ``goal`` (set ``model.site_pos``), camera ``side``.
    """
    n, reach = config.n_links, config.reach
    gravcomp = ' gravcomp="1"' if config.gravity_compensation else ""
    r = config.link_radius
    view = 1.3 * reach
    cam_dist = view / math.tan(math.radians(22.5))
    lines = [
        f'<mujoco model="{config.name}">',
        '  <compiler angle="radian" autolimits="true"/>',
        # Euler (not RK4) so that mujoco.mjd_transitionFD works; its joint damping is implicit
        # (the PyBullet backend reproduces that, docs/arms.md). autoreset disabled: a blow-up must
        # surface as SimulationError, not as a silent reset.
        f'  <option timestep="{_f(config.dt)}" integrator="Euler" gravity="0 0 {-GRAVITY}">',
        '    <flag autoreset="disable" contact="disable"/>',
        "  </option>",
        '  <visual><global offwidth="1280" offheight="960"/>'
        '<headlight ambient="0.35 0.35 0.35" diffuse="0.35 0.35 0.35" specular="0 0 0"/></visual>',
        "  <asset>",
        '    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.85 0.9 0.95"'
        ' rgb2="0.45 0.55 0.65" width="64" height="64"/>',
        '    <texture name="grid" type="2d" builtin="checker" rgb1="0.85 0.85 0.85"'
        ' rgb2="0.65 0.68 0.72" width="256" height="256"/>',
        f'    <material name="grid" texture="grid" texrepeat="{_f(4 / reach)} {_f(4 / reach)}"'
        ' texuniform="true"/>',
        "  </asset>",
        "  <worldbody>",
        f'    <light pos="0 {_f(-cam_dist)} {_f(reach)}" dir="0 1 -0.3"'
        ' diffuse="0.45 0.45 0.45" specular="0.1 0.1 0.1"/>',
        f'    <camera name="side" pos="0 {_f(-cam_dist)} 0" xyaxes="1 0 0 0 0 1" fovy="45"/>',
        # Backdrop behind the arm plane (normal -y) and a floor below the reach: frames are never
        # blank and the arm reads against a grid.
        f'    <geom name="backdrop" type="plane" pos="0 {_f(4 * r + 0.05 * reach)} 0"'
        f' zaxis="0 -1 0" size="{_f(3 * reach)} {_f(3 * reach)} 0.01" material="grid"'
        ' contype="0" conaffinity="0"/>',
        f'    <geom name="floor" type="plane" pos="0 0 {_f(-1.1 * reach)}"'
        f' size="{_f(3 * reach)} {_f(3 * reach)} 0.01" rgba="0.6 0.6 0.62 1"'
        ' contype="0" conaffinity="0"/>',
        f'    <geom name="base" type="cylinder" fromto="0 {_f(-2 * r)} 0 0 {_f(2 * r)} 0"'
        f' size="{_f(1.6 * r)}" rgba="0.3 0.3 0.3 1" contype="0" conaffinity="0"/>',
        f'    <site name="goal" pos="{_f(reach)} 0 0" size="{_f(1.2 * r)}"'
        ' rgba="0.1 0.8 0.2 0.8"/>',
    ]
    indent = "    "
    for i in range(n):
        length, mass = config.link_lengths[i], config.link_masses[i]
        ixx, iyy, izz = config.rod_inertia(i)
        pos = "0 0 0" if i == 0 else f"{_f(config.link_lengths[i - 1])} 0 0"
        lim = config.joint_limits[i]
        limit = f' range="{_f(lim[0])} {_f(lim[1])}"' if lim is not None else ' limited="false"'
        lines += [
            f'{indent}<body name="link{i + 1}" pos="{pos}"{gravcomp}>',
            f'{indent}  <joint name="joint{i + 1}" type="hinge" axis="{AXIS}"'
            f' damping="{_f(config.joint_damping[i])}" armature="0"{limit}/>',
            f'{indent}  <inertial pos="{_f(length / 2)} 0 0" mass="{_f(mass)}"'
            f' diaginertia="{_f(ixx)} {_f(iyy)} {_f(izz)}"/>',
            f'{indent}  <geom name="link{i + 1}" type="capsule" fromto="0 0 0 {_f(length)} 0 0"'
            f' size="{_f(r)}" rgba="{LINK_RGBA[i % 2]}" contype="0" conaffinity="0"'
            ' mass="0"/>',
        ]
        indent += "  "
    lines.append(
        f'{indent}<site name="ee" pos="{_f(config.link_lengths[-1])} 0 0" size="{_f(1.1 * r)}"'
        ' rgba="0.9 0.1 0.1 1"/>'
    )
    for _ in range(n):
        indent = indent[:-2]
        lines.append(f"{indent}</body>")
    lines += ["  </worldbody>", "  <actuator>"]
    for i in range(n):
        t = config.torque_limits[i]
        lines.append(
            f'    <motor name="motor{i + 1}" joint="joint{i + 1}" gear="1"'
            f' ctrlrange="{_f(-t)} {_f(t)}"/>'
        )
    lines += ["  </actuator>", "</mujoco>", ""]
    return "\n".join(lines)


def build_urdf(config: ArmConfig) -> str:
    """URDF of the same arm for PyBullet (load with ``URDF_USE_INERTIA_FROM_FILE``).

    Link ``i`` (index ``i`` in PyBullet, base = -1) has its frame at joint ``i+1``, x along the
    link. No collision shapes: the arm has no contacts in either backend. No ``<dynamics>``
    damping: ``ArmSim`` applies it (module docstring).
    """
    r = config.link_radius
    lines = [
        f'<?xml version="1.0"?>\n<robot name="{config.name}">',
        '  <material name="c0"><color rgba="0.85 0.45 0.15 1"/></material>',
        '  <material name="c1"><color rgba="0.20 0.45 0.80 1"/></material>',
        '  <material name="base"><color rgba="0.3 0.3 0.3 1"/></material>',
        '  <link name="base">',
        '    <inertial><origin xyz="0 0 0"/><mass value="0"/>'
        '<inertia ixx="0" ixy="0" ixz="0" iyy="0" iyz="0" izz="0"/></inertial>',
        f'    <visual><origin xyz="0 0 0" rpy="{_f(math.pi / 2)} 0 0"/>'
        f'<geometry><cylinder radius="{_f(1.6 * r)}" length="{_f(4 * r)}"/></geometry>'
        '<material name="base"/></visual>',
        "  </link>",
    ]
    parent = "base"
    for i in range(config.n_links):
        length, mass = config.link_lengths[i], config.link_masses[i]
        ixx, iyy, izz = config.rod_inertia(i)
        lines += [
            f'  <link name="link{i + 1}">',
            f'    <inertial><origin xyz="{_f(length / 2)} 0 0" rpy="0 0 0"/>'
            f'<mass value="{_f(mass)}"/><inertia ixx="{_f(ixx)}" ixy="0" ixz="0"'
            f' iyy="{_f(iyy)}" iyz="0" izz="{_f(izz)}"/></inertial>',
            f'    <visual><origin xyz="{_f(length / 2)} 0 0" rpy="0 {_f(math.pi / 2)} 0"/>'
            f'<geometry><cylinder radius="{_f(r)}" length="{_f(length)}"/></geometry>'
            f'<material name="c{i % 2}"/></visual>',
            "  </link>",
        ]
        lim = config.joint_limits[i]
        jtype = "continuous" if lim is None else "revolute"
        limit_xml = (
            f'<limit effort="{_f(config.torque_limits[i])}" velocity="1000"/>'
            if lim is None
            else f'<limit lower="{_f(lim[0])}" upper="{_f(lim[1])}"'
            f' effort="{_f(config.torque_limits[i])}" velocity="1000"/>'
        )
        origin = "0 0 0" if i == 0 else f"{_f(config.link_lengths[i - 1])} 0 0"
        lines += [
            f'  <joint name="joint{i + 1}" type="{jtype}">',
            f'    <parent link="{parent}"/><child link="link{i + 1}"/>',
            f'    <origin xyz="{origin}" rpy="0 0 0"/><axis xyz="{AXIS}"/>',
            f"    {limit_xml}",
            "  </joint>",
        ]
        parent = f"link{i + 1}"
    lines += ["</robot>", ""]
    return "\n".join(lines)
