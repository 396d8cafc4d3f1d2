"""Receding-horizon control over any planner.

The planner is any object with ``solve(x0 (B, nx), U0 (B, T, nu) | None) -> plan`` where ``plan``
has ``controls (B, T, nu)`` (e.g. :class:`controllers.ILQR`). The same planner object is reused at
every tick and warm-started from the previous plan shifted by one step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class Planner(Protocol):
    """Anything that plans a batch of control sequences from initial states."""

    horizon: int

    def solve(self, x0: Tensor, U0: Tensor | None = None) -> Any:
        """Plan from ``x0 (B, nx)``, warm start ``U0 (B, T, nu)``; result has ``.controls``."""
        ...


@dataclass
class MPCRollout:
    """A closed-loop run.

    Attributes:
        states: ``(B, steps+1, nx)`` visited real states.
        controls: ``(B, steps, nu)`` applied controls.
        plan_costs: ``(B, steps)`` planned cost at each tick (NaN if the plan has no ``cost``).
        converged: ``(B, steps)`` planner convergence at each tick (True if not reported).
    """

    states: Tensor
    controls: Tensor
    plan_costs: Tensor
    converged: Tensor


class MPC:
    """Receding-horizon controller.

    Args:
        planner: a :class:`Planner`, reused between ticks.
        horizon: planning horizon; must equal ``planner.horizon`` when the planner has one
            (kept explicit so that configs state it).
        shift_fill: how the warm start is completed after shifting: ``"last"`` repeats the last
            control, ``"zero"`` appends zeros.
    """

    _FILLS = ("last", "zero")

    def __init__(
        self, planner: Planner, horizon: int | None = None, *, shift_fill: str = "last"
    ) -> None:
        if not hasattr(planner, "solve"):
            raise TypeError(
                f"planner: expected an object with .solve(x0, U0), got {type(planner).__name__}"
            )
        ph = getattr(planner, "horizon", None)
        if horizon is None:
            horizon = ph
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")
        if ph is not None and ph != horizon:
            raise ValueError(f"horizon: expected the planner's horizon {ph}, got {horizon}")
        if shift_fill not in self._FILLS:
            raise ValueError(f"shift_fill: expected one of {self._FILLS}, got {shift_fill!r}")
        self.planner, self.horizon, self.shift_fill = planner, horizon, shift_fill
        self._warm: Tensor | None = None
        self.last_plan: Any = None

    def reset(self) -> None:
        """Forget the warm start (call between episodes)."""
        self._warm = None
        self.last_plan = None

    def _shift(self, U: Tensor) -> Tensor:
        tail = U[:, -1:] if self.shift_fill == "last" else torch.zeros_like(U[:, -1:])
        return torch.cat([U[:, 1:], tail], dim=1)

    def act(self, x: Tensor) -> Tensor:
        """Plan from ``x (B, nx)`` and return the first control ``(B, nu)``."""
        warm = self._warm
        if warm is not None and warm.shape[0] != x.shape[0]:
            warm = None  # batch changed: start cold rather than fail
        plan = self.planner.solve(x, warm)
        self.last_plan = plan
        self._warm = self._shift(plan.controls)
        return plan.controls[:, 0]

    def run(
        self, simulate: Callable[[Tensor, Tensor], Tensor], x0: Tensor, steps: int
    ) -> MPCRollout:
        """Run the controller in closed loop against the caller's simulator.

        Args:
            simulate: the real system, ``simulate(x (B, nx), u (B, nu)) -> x_next (B, nx)``
                (controllers never create environments; wrap yours in a function).
            x0: initial states ``(B, nx)``.
            steps: number of control steps >= 1.

        Returns:
            :class:`MPCRollout`.
        """
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        self.reset()
        xs, us, costs, conv = [x0], [], [], []
        x = x0
        for _ in range(steps):
            u = self.act(x)
            plan = self.last_plan
            c = getattr(plan, "cost", None)
            costs.append(
                c.to(torch.float64)
                if c is not None
                else torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
            )
            cv = getattr(plan, "converged", None)
            conv.append(cv if cv is not None else torch.ones(x.shape[0], dtype=torch.bool))
            x = simulate(x, u)
            us.append(u)
            xs.append(x)
        return MPCRollout(
            states=torch.stack(xs, 1),
            controls=torch.stack(us, 1),
            plan_costs=torch.stack(costs, 1),
            converged=torch.stack(conv, 1),
        )
