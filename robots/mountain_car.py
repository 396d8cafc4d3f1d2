"""The ML3 MountainCar: one batched, differentiable torch step and a Gymnasium env on top of it.

Physics (Bechtle et al., ML3, arXiv 1906.05374; constants in :class:`MountainCarParams`)::

    a  = clamp(a, -a_max, a_max)
    v' = v + (g*m*cos(3p) + a/m - k*v) * dt
    v' = clamp(v', v_min, v_max)
    p' = clamp(p + v'*dt, p_min, p_max)
    v' = 0 if p' == p_min and v' < 0          (inelastic left wall)

Gradient through the clamps (the design choice of this module)
---------------------------------------------------------------
The forward values are exactly the paper's hard-clamped physics. Hard clamps would cut the
gradient: once the car touches a wall or saturates its speed, the derivative of all later states
with respect to earlier actions would be zero, so gradient-based controllers and learned losses
would get no signal from exactly the trajectories that matter (the car pumping against the left
wall, or hitting top speed). The paper's code clamps the states by assigning ``.data``, which
leaves the autograd graph as it was: its state clamps are straight-through already, and only its
action clamp (``torch.clamp``) cuts the gradient. By default (``clamp_grad="straight_through"``)
every clamp, and the velocity reset at the left wall, is a *straight-through* operation: the
forward value is the exactly clamped value, the backward pass is the identity (as if the limit
were not there). The gradient is then the one of the unconstrained dynamics, which points the
right way (more throttle -> further/faster) even when a limit is active.
``clamp_grad="hard"`` gives zero gradient at every active limit, for comparison.

The action bound is treated the same way. The price: for an action beyond the bound, the gradient
still says "more of it would help", so an unconstrained open-loop action sequence can drift outside
the bound without any effect on the forward physics. Policies should bound their output themselves
(e.g. ``0.25 * tanh``), which also keeps their gradient honest; iLQR uses a box-QP on ``u``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, ClassVar, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

logger = logging.getLogger(__name__)

ClampGrad = Literal["straight_through", "hard"]
_CLAMP_GRADS: tuple[str, ...] = ("straight_through", "hard")

__all__ = [
    "MountainCar",
    "MountainCarEnv",
    "MountainCarParams",
    "render_trajectory",
    "straight_through",
]


def _pair(name: str, value: Any) -> tuple[float, float]:
    """Validate a 2-tuple of finite floats (a state ``(p, v)``)."""
    try:
        p, v = (float(c) for c in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a pair of numbers (p, v), got {value!r}") from None
    if not (math.isfinite(p) and math.isfinite(v)):
        raise ValueError(f"{name}: expected finite numbers, got {value!r}")
    return (p, v)


@dataclasses.dataclass(frozen=True)
class MountainCarParams:
    """Constants of the ML3 MountainCar (defaults: the paper's code).

    Attributes:
        mass: car mass m (> 0).
        gravity: g in ``v' = v + (g*m*cos(3p) + a/m - k*v)*dt`` (the paper uses -9.8).
        friction: viscous friction k (>= 0).
        dt: time step in seconds (> 0).
        action_bound: actions are clamped to ``[-action_bound, action_bound]`` (> 0).
        v_min, v_max: velocity limits (v_min < v_max).
        p_min, p_max: position limits (p_min < p_max); the velocity is zeroed at ``p_min``.
        start: default start state ``(p, v)``.
        goal: goal state ``(p, v)`` used by the task loss and the env reward.
        success_position: the task is solved when ``p >= success_position``.
        horizon: episode length in steps.
        intermediate_goal: ``(p, v)`` the paper's extra meta-train loss pulls towards ...
        intermediate_goal_steps: ... during the first this many steps.
    """

    mass: float = 0.2
    gravity: float = -9.8
    friction: float = 0.3
    dt: float = 0.1
    action_bound: float = 0.25
    v_min: float = -1.5
    v_max: float = 1.5
    p_min: float = -1.2
    p_max: float = 0.5
    start: tuple[float, float] = (-0.55, 0.0)
    goal: tuple[float, float] = (0.5, 1.0375)
    success_position: float = 0.5
    horizon: int = 35
    intermediate_goal: tuple[float, float] = (-0.947, -0.0055)
    intermediate_goal_steps: int = 15

    def __post_init__(self) -> None:
        for name in (
            "mass",
            "gravity",
            "friction",
            "dt",
            "action_bound",
            "v_min",
            "v_max",
            "p_min",
            "p_max",
            "success_position",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
        for name in ("mass", "dt", "action_bound"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        if self.friction < 0:
            raise ValueError(f"friction: expected a number >= 0, got {self.friction!r}")
        if not self.v_min < self.v_max:
            raise ValueError(
                f"v_min: expected v_min < v_max, got v_min={self.v_min!r} > v_max={self.v_max!r}"
            )
        if not self.p_min < self.p_max:
            raise ValueError(
                f"p_min: expected p_min < p_max, got p_min={self.p_min!r} > p_max={self.p_max!r}"
            )
        for name in ("start", "goal", "intermediate_goal"):
            object.__setattr__(self, name, _pair(name, getattr(self, name)))
        p0, v0 = self.start
        if not (self.p_min <= p0 <= self.p_max and self.v_min <= v0 <= self.v_max):
            raise ValueError(
                f"start: expected p in [{self.p_min}, {self.p_max}] and v in "
                f"[{self.v_min}, {self.v_max}], got {self.start!r}"
            )
        if not self.p_min <= self.success_position <= self.p_max:
            raise ValueError(
                f"success_position: expected a value in [p_min, p_max] = "
                f"[{self.p_min}, {self.p_max}], got {self.success_position!r}"
            )
        for name in ("horizon", "intermediate_goal_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {value!r}")
        if self.horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {self.horizon!r}")
        if not 0 <= self.intermediate_goal_steps <= self.horizon:
            raise ValueError(
                f"intermediate_goal_steps: expected an int in [0, horizon={self.horizon}], "
                f"got {self.intermediate_goal_steps!r}"
            )


def straight_through(x: Tensor, target: Tensor) -> Tensor:
    """Return ``target``'s values with ``x``'s gradient (``d out / d x = I``, nothing to target).

    Computed as ``(x - x.detach()) + target.detach()``: for finite ``x`` the bracket is exactly
    0.0 in floating point, so the forward value is bit-exactly ``target`` (unlike the common
    ``x + (target - x).detach()``, which is off by rounding). Plain torch ops, so it works under
    autograd and ``torch.func`` (jacrev, jacfwd, vmap; tested); a custom
    ``autograd.Function`` did the same but cost about 150 us per call at batch 1.

    Args:
        x: the tensor gradients flow to, any shape, finite.
        target: the forward value, same shape as ``x`` (its own graph is ignored).
    """
    return (x - x.detach()) + target.detach()


class MountainCar:
    """Batched, differentiable ML3 MountainCar dynamics (satisfies ``controllers`` ``Dynamics``).

    State ``x = (p, v)`` (position in m along the track, velocity in m/s), control ``u = (a,)``.
    Works for any float dtype and device; the output has the dtype/device of ``x``.

    Args:
        params: physical constants and task constants.
        clamp_grad: how gradients pass the action/velocity/position limits and the wall reset:
            ``"straight_through"`` (default; identity backward, see the module docstring) or
            ``"hard"`` (the paper's original: zero gradient where a limit is active).
    """

    nx: int = 2
    nu: int = 1

    def __init__(
        self, params: MountainCarParams | None = None, clamp_grad: ClampGrad = "straight_through"
    ) -> None:
        params = MountainCarParams() if params is None else params
        if not isinstance(params, MountainCarParams):
            raise TypeError(f"params: expected MountainCarParams, got {type(params).__name__}")
        if clamp_grad not in _CLAMP_GRADS:
            import difflib

            near = difflib.get_close_matches(str(clamp_grad), _CLAMP_GRADS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(
                f"clamp_grad: expected one of {_CLAMP_GRADS}, got {clamp_grad!r}{hint}"
            )
        self.params = params
        self.clamp_grad: ClampGrad = clamp_grad
        self.dt: float = params.dt

    def __repr__(self) -> str:
        return f"MountainCar(params={self.params!r}, clamp_grad={self.clamp_grad!r})"

    # -- validation -------------------------------------------------------------------------------
    def _check(self, name: str, t: Any, shape: tuple[int | None, ...], what: str) -> None:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
        dims = zip(shape, t.shape, strict=False)  # lengths compared first
        if t.ndim != len(shape) or any(s is not None and s != d for s, d in dims):
            raise ValueError(f"{name}: expected shape {what}, got {tuple(t.shape)}")
        # isfinite, not only isnan: the straight-through clamp needs finite inputs (inf-inf=nan).
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"{name}: expected finite values (no NaN or inf), got NaN or inf in "
                f"a tensor of shape {tuple(t.shape)}"
            )

    def _check_step(self, x: Any, u: Any) -> None:
        self._check("x", x, (None, self.nx), "(B, 2)")
        self._check("u", u, (x.shape[0], self.nu), f"(B={x.shape[0]}, 1)")
        if x.dtype != u.dtype:
            raise TypeError(f"u: expected dtype {x.dtype} (the dtype of x), got {u.dtype}")

    # -- physics ----------------------------------------------------------------------------------
    def _clamp(self, x: Tensor, lo: float, hi: float) -> Tensor:
        if self.clamp_grad == "hard":
            return x.clamp(lo, hi)
        return straight_through(x, x.detach().clamp(lo, hi))

    def step(self, x: Tensor, u: Tensor, validate: bool = True) -> Tensor:
        """Advance one step of ``dt``.

        Args:
            x: states ``(B, 2)``: position p [m], velocity v [m/s].
            u: actions ``(B, 1)``: acceleration command a, clamped to ``+-action_bound``.
            validate: check shapes, dtypes and NaN/inf (cheap; turn off in tight inner loops that
                have validated their inputs once, as :meth:`rollout` does). Must be ``False``
                under ``torch.func.vmap``, where data-dependent checks are not allowed.

        Returns:
            Next states ``(B, 2)``, differentiable in ``x`` and ``u``.

        Raises:
            ValueError: wrong shape, or NaN/inf in ``x`` or ``u``.
            TypeError: not a floating-point tensor, or ``x`` and ``u`` dtypes differ.
        """
        if validate:
            self._check_step(x, u)
        prm = self.params
        p, v = x[:, 0], x[:, 1]
        a = self._clamp(u[:, 0], -prm.action_bound, prm.action_bound)
        accel = prm.gravity * prm.mass * torch.cos(3.0 * p) + a / prm.mass - prm.friction * v
        v = v + accel * prm.dt
        v = self._clamp(v, prm.v_min, prm.v_max)
        p = self._clamp(p + v * prm.dt, prm.p_min, prm.p_max)
        # Inelastic left wall: a car pressed against it stops. Exact float comparison is right
        # here because the clamp above returns p_min bit-exactly.
        at_wall = (p.detach() == prm.p_min) & (v.detach() < 0)
        stopped = torch.where(at_wall, torch.zeros_like(v), v)
        v = stopped if self.clamp_grad == "hard" else straight_through(v, stopped)
        return torch.stack((p, v), dim=-1)

    def rollout(self, x0: Tensor, U: Tensor) -> Tensor:
        """Roll the dynamics out from ``x0`` under the action sequence ``U``.

        Args:
            x0: start states ``(B, 2)``.
            U: actions ``(B, T, 1)``.

        Returns:
            States ``(B, T+1, 2)``; ``X[:, 0] == x0``. Differentiable in ``x0`` and ``U``.
        """
        self._check("x0", x0, (None, self.nx), "(B, 2)")
        self._check("U", U, (x0.shape[0], None, self.nu), f"(B={x0.shape[0]}, T, 1)")
        if x0.dtype != U.dtype:
            raise TypeError(f"U: expected dtype {x0.dtype} (the dtype of x0), got {U.dtype}")
        states = [x0]
        x = x0
        for t in range(U.shape[1]):
            x = self.step(x, U[:, t], validate=False)
            states.append(x)
        return torch.stack(states, dim=1)

    def solved(self, x: Tensor) -> Tensor:
        """Boolean ``(...)``: ``p >= success_position`` for states ``x (..., 2)``."""
        return x[..., 0] >= self.params.success_position


# ---------------------------------------------------------------------------------------------
# Gymnasium environment
# ---------------------------------------------------------------------------------------------
class MountainCarEnv(gymnasium.Env):
    """Continuous-action ML3 MountainCar; the physics is :meth:`MountainCar.step` (float64).

    * Observation ``(p, v)`` float64, in ``[p_min, p_max] x [v_min, v_max]``.
    * Action ``(a,)`` float64 in ``[-action_bound, action_bound]``; larger values are clamped by
      the physics. NaN or inf raises ``ValueError``.
    * Reward: ``-||x' - goal||_2`` (Euclidean distance of the next state (p, v) to the goal
      state, unweighted), i.e. the per-step task cost of the paper's MountainCar as a reward.
    * ``terminated`` when ``p >= success_position``; ``truncated`` after ``horizon`` steps.
    * ``info``: ``{"success": bool, "t": steps taken}``.

    Args:
        params: constants (default: the paper's).
        render_mode: ``None`` or ``"rgb_array"``.
        start_noise: half-widths ``(dp, dv)`` of a uniform perturbation of the default start
            state at reset (clipped to the limits); ``(0, 0)`` (default) starts at
            ``params.start`` exactly. Use it for held-out start states.
        width, height: rendered frame size in pixels.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        params: MountainCarParams | None = None,
        render_mode: str | None = None,
        start_noise: tuple[float, float] | float = (0.0, 0.0),
        width: int = 400,
        height: int = 300,
    ) -> None:
        super().__init__()
        self.params = MountainCarParams() if params is None else params
        self.dynamics = MountainCar(self.params)
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(
                f"render_mode: expected None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.render_mode = render_mode
        if isinstance(start_noise, (int, float)):
            start_noise = (float(start_noise), float(start_noise))
        self.start_noise = _pair("start_noise", start_noise)
        if min(self.start_noise) < 0:
            raise ValueError(f"start_noise: expected half-widths >= 0, got {start_noise!r}")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value < 16:
                raise ValueError(f"{name}: expected an int >= 16 pixels, got {value!r}")
        self.width, self.height = width, height
        prm = self.params
        self.observation_space = spaces.Box(
            low=np.array([prm.p_min, prm.v_min]),
            high=np.array([prm.p_max, prm.v_max]),
            dtype=np.float64,
        )
        self.action_space = spaces.Box(
            low=-prm.action_bound, high=prm.action_bound, shape=(1,), dtype=np.float64
        )
        self._goal = np.asarray(prm.goal, dtype=np.float64)
        self._state = torch.tensor([prm.start], dtype=torch.float64)
        self._t = 0
        self._renderer: Any = None

    @property
    def state(self) -> np.ndarray:
        """Current state ``(p, v)`` as a float64 array (a copy)."""
        return self._state[0].numpy().copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset to ``options["start"]`` if given, else ``params.start`` (+ ``start_noise``)."""
        super().reset(seed=seed)
        prm = self.params
        options = options or {}
        unknown = set(options) - {"start"}
        if unknown:
            raise ValueError(f"options: expected only the key 'start', got {sorted(unknown)}")
        if "start" in options:
            p, v = _pair("options['start']", options["start"])
            if not (prm.p_min <= p <= prm.p_max and prm.v_min <= v <= prm.v_max):
                raise ValueError(
                    f"options['start']: expected p in [{prm.p_min}, {prm.p_max}] and v in "
                    f"[{prm.v_min}, {prm.v_max}], got {options['start']!r}"
                )
        else:
            p, v = prm.start
            dp, dv = self.start_noise
            if dp > 0 or dv > 0:
                noise = self.np_random.uniform(-1.0, 1.0, size=2) * (dp, dv)
                p = float(np.clip(p + noise[0], prm.p_min, prm.p_max))
                v = float(np.clip(v + noise[1], prm.v_min, prm.v_max))
        self._state = torch.tensor([[p, v]], dtype=torch.float64)
        self._t = 0
        return self.state, {"success": p >= prm.success_position, "t": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,):
            raise ValueError(f"action: expected shape (1,), got {np.shape(action)}")
        if not np.isfinite(a).all():
            raise ValueError(f"action: expected a finite number, got {action!r}")
        with torch.no_grad():
            u = torch.from_numpy(a).reshape(1, 1)
            self._state = self.dynamics.step(self._state, u, validate=False)
        self._t += 1
        obs = self.state
        reward = -float(np.linalg.norm(obs - self._goal))
        terminated = bool(obs[0] >= self.params.success_position)
        truncated = self._t >= self.params.horizon and not terminated
        return obs, reward, terminated, truncated, {"success": terminated, "t": self._t}

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        """The current state as a ``(height, width, 3)`` uint8 frame (render_mode "rgb_array")."""
        if self.render_mode is None:
            logger.warning("render() called with render_mode=None; pass render_mode='rgb_array'")
            return None
        if self._renderer is None:
            from robots.mountain_car_render import MountainCarRenderer

            self._renderer = MountainCarRenderer(self.params, self.width, self.height)
        return self._renderer.render(self.state)

    def close(self) -> None:
        self._renderer = None


def render_trajectory(
    states: Any, params: MountainCarParams | None = None, width: int = 400, height: int = 300
) -> np.ndarray:
    """Render a trajectory of states to frames for :func:`robots.video.write_video`.

    Args:
        states: ``(T, 2)`` array or tensor of ``(p, v)``.
        params: constants (limits, goal) for the drawing; default the paper's.
        width, height: frame size in pixels.

    Returns:
        ``(T, height, width, 3)`` uint8 frames.
    """
    from robots.mountain_car_render import MountainCarRenderer

    renderer = MountainCarRenderer(params or MountainCarParams(), width, height)
    return renderer.render_trajectory(states)
