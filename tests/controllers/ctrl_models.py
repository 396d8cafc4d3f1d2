"""Small test systems for the controllers tests (no dependency on robots/)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Planar 2-link arm: hinges about z, gravity along -z (no effect), 0.1 m links, torque motors,
# Euler integration at dt = 0.01 s. Explicit inertials so other simulators can match it exactly.
TWO_LINK_MJCF = """
<mujoco model="two_link_test">
  <option timestep="0.01" integrator="Euler" gravity="0 0 -9.81">
    <flag contact="disable"/>
  </option>
  <worldbody>
    <body name="link1" pos="0 0 0">
      <joint name="j1" type="hinge" axis="0 0 1" damping="0.0"/>
      <inertial pos="0.05 0 0" mass="0.1" diaginertia="1e-5 1e-4 1e-4"/>
      <geom type="capsule" fromto="0 0 0 0.1 0 0" size="0.01" contype="0" conaffinity="0"/>
      <body name="link2" pos="0.1 0 0">
        <joint name="j2" type="hinge" axis="0 0 1" damping="0.0"/>
        <inertial pos="0.05 0 0" mass="0.1" diaginertia="1e-5 1e-4 1e-4"/>
        <geom type="capsule" fromto="0 0 0 0.1 0 0" size="0.01" contype="0" conaffinity="0"/>
        <site name="tip" pos="0.1 0 0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="j1" gear="1" ctrllimited="false"/>
    <motor joint="j2" gear="1" ctrllimited="false"/>
  </actuator>
</mujoco>
"""


class Pendulum:
    """Damped pendulum with torque input, semi-implicit Euler (nonlinear, torch)."""

    nx, nu, dt = 2, 1, 0.05

    def step(self, x: Tensor, u: Tensor) -> Tensor:
        th, om = x[:, 0], x[:, 1]
        om2 = om + self.dt * (-9.81 * torch.sin(th) - 0.1 * om + u[:, 0])
        return torch.stack([th + self.dt * om2, om2], dim=-1)


PENDULUM_UP = (math.pi, 0.0)
