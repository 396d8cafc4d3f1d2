"""Policies as plain ``torch.nn.Module``s (work with ``torch.func.functional_call`` and vmap).

Both policies share the call signature ``policy(x (B, nx), t) -> u (B, nu)``; :func:`rollout`
runs either through differentiable dynamics.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


def _bound(name: str, value: float | Sequence[float] | Tensor | None, nu: int) -> Tensor | None:
    if value is None:
        return None
    b = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if b.ndim == 0:
        b = b.expand(nu).clone()
    if b.shape != (nu,) or not bool((b > 0).all()) or not bool(torch.isfinite(b).all()):
        raise ValueError(
            f"{name}: expected a positive finite scalar or ({nu},) tensor, got {value!r}"
        )
    return b


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        near = difflib.get_close_matches(name, list(ACTIVATIONS), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}{hint}")
    return ACTIVATIONS[name]()


class MLPPolicy(nn.Module):
    """Feedback policy ``u = bound * tanh(MLP(x))`` (or the raw MLP output when unbounded).

    Args:
        nx_in: input (state/feature) size.
        nu: control size.
        depth: number of hidden layers; 0 gives a linear (affine) policy.
        width: hidden layer width.
        activation: hidden activation, one of :data:`ACTIVATIONS`.
        action_bound: symmetric bound, scalar or ``(nu,)``; None for unbounded output.
    """

    def __init__(
        self,
        nx_in: int,
        nu: int,
        depth: int = 2,
        width: int = 64,
        activation: str = "tanh",
        action_bound: float | Sequence[float] | Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, v, lo in (
            ("nx_in", nx_in, 1),
            ("nu", nu, 1),
            ("depth", depth, 0),
            ("width", width, 1),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
        layers: list[nn.Module] = []
        d = nx_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), _activation(activation)]
            d = width
        if depth == 0:
            _activation(activation)  # validate the name even when unused
        layers.append(nn.Linear(d, nu))
        self.net = nn.Sequential(*layers)
        self.nx_in, self.nu = nx_in, nu
        b = _bound("action_bound", action_bound, nu)
        self.bounded = b is not None
        self.register_buffer("action_bound", b if b is not None else torch.ones(nu))

    def forward(self, x: Tensor, t: int | None = None) -> Tensor:
        """Controls for states ``x (..., nx_in)`` -> ``(..., nu)``; ``t`` is ignored."""
        y = self.net(x)
        return self.action_bound * torch.tanh(y) if self.bounded else y


class OpenLoopPolicy(nn.Module):
    """Open-loop action sequence ``u_t = bound * tanh(theta_t)`` (or ``theta_t`` if unbounded).

    Args:
        T: sequence length.
        nu: control size.
        bound: symmetric bound, scalar or ``(nu,)``; None for unbounded.
        batch: if given, one sequence per problem: parameters ``(batch, T, nu)``.
        init: initial controls ``(T, nu)`` or ``(batch, T, nu)`` (inside the bounds); zeros if None.
    """

    def __init__(
        self,
        T: int,
        nu: int,
        bound: float | Sequence[float] | Tensor | None = None,
        batch: int | None = None,
        init: Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("T", T), ("nu", nu)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if batch is not None and (not isinstance(batch, int) or batch < 1):
            raise ValueError(f"batch: expected None or an int >= 1, got {batch!r}")
        shape = (T, nu) if batch is None else (batch, T, nu)
        b = _bound("bound", bound, nu)
        self.bounded = b is not None
        self.register_buffer("bound", b if b is not None else torch.ones(nu))
        theta = torch.zeros(shape)
        if init is not None:
            init = torch.as_tensor(init, dtype=theta.dtype)
            if tuple(init.shape) != shape:
                raise ValueError(f"init: expected shape {shape}, got {tuple(init.shape)}")
            if self.bounded:
                r = init / self.bound
                if not bool((r.abs() < 1).all()):
                    raise ValueError("init: expected controls strictly inside the bounds")
                theta = torch.atanh(r)
            else:
                theta = init.clone()
        self.theta = nn.Parameter(theta)
        self.T, self.nu, self.batch = T, nu, batch

    def actions(self) -> Tensor:
        """The whole sequence, ``(T, nu)`` or ``(batch, T, nu)``."""
        return self.bound * torch.tanh(self.theta) if self.bounded else self.theta

    def forward(self, x: Tensor, t: int) -> Tensor:
        """Control at step ``t`` for a batch of states ``x (B, nx)`` -> ``(B, nu)``."""
        if not 0 <= t < self.T:
            raise ValueError(f"t: expected 0 <= t < {self.T}, got {t}")
        a = self.actions()[..., t, :]
        return a.expand(x.shape[0], self.nu) if a.ndim == 1 else a


def rollout(
    policy: Callable[[Tensor, int], Tensor],
    step: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    horizon: int,
) -> tuple[Tensor, Tensor]:
    """Differentiable closed-loop rollout.

    Args:
        policy: ``policy(x (B, nx), t) -> u (B, nu)``.
        step: dynamics ``step(x, u) -> x_next`` (e.g. ``dynamics.step``).
        x0: ``(B, nx)``.
        horizon: number of steps >= 1.

    Returns:
        ``X (B, horizon+1, nx)`` and ``U (B, horizon, nu)``.
    """
    if not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"horizon: expected an int >= 1, got {horizon!r}")
    xs, us = [x0], []
    x = x0
    for t in range(horizon):
        u = policy(x, t)
        x = step(x, u)
        xs.append(x)
        us.append(u)
    return torch.stack(xs, 1), torch.stack(us, 1)
