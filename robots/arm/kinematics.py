"""Planar-arm kinematics in torch: batched, differentiable, checked against both simulators.

Conventions (``config.py``): the arm lies in the world x-z plane, joint ``i`` turns about -y, so
with absolute link angles ``phi_i = q_1 + ... + q_i`` the end effector is at
``(sum_i L_i cos phi_i, sum_i L_i sin phi_i)``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from robots.arm.config import ArmConfig

log = logging.getLogger(__name__)


def _as_tensor(name: str, value: Any, last: int, what: str) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.ndim < 1 or t.shape[-1] != last:
        raise ValueError(f"{name}: expected shape (..., {last}) ({what}), got {tuple(t.shape)}")
    return t


def _lengths(config: ArmConfig, like: Tensor) -> Tensor:
    return torch.tensor(config.link_lengths, dtype=like.dtype, device=like.device)


def joint_positions(config: ArmConfig, q: Tensor) -> Tensor:
    """Positions of the base, every joint and the end effector.

    Args:
        config: the arm.
        q: joint angles ``(..., n)`` in rad.

    Returns:
        ``(..., n + 1, 2)`` points ``(x, z)`` in m; index 0 is the base, -1 the end effector.
    """
    q = _as_tensor("q", q, config.n_links, "joint angles in rad")
    phi = torch.cumsum(q, dim=-1)
    seg = _lengths(config, q)[..., :, None] * torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    zero = torch.zeros_like(seg[..., :1, :])
    return torch.cat([zero, torch.cumsum(seg, dim=-2)], dim=-2)


def forward_kinematics(config: ArmConfig, q: Tensor) -> Tensor:
    """End-effector position ``(..., 2)`` = ``(x, z)`` in m for joint angles ``q (..., n)``."""
    q = _as_tensor("q", q, config.n_links, "joint angles in rad")
    phi = torch.cumsum(q, dim=-1)
    lengths = _lengths(config, q)
    return torch.stack(
        [(lengths * torch.cos(phi)).sum(-1), (lengths * torch.sin(phi)).sum(-1)], dim=-1
    )


def jacobian(config: ArmConfig, q: Tensor) -> Tensor:
    """End-effector Jacobian ``d(x, z)/dq``: ``(..., 2, n)`` in m/rad (analytic)."""
    q = _as_tensor("q", q, config.n_links, "joint angles in rad")
    phi = torch.cumsum(q, dim=-1)
    lengths = _lengths(config, q)
    # Joint j moves every link i >= j: reverse cumulative sums over the links.
    sx = torch.flip(torch.cumsum(torch.flip(lengths * torch.sin(phi), [-1]), -1), [-1])
    cz = torch.flip(torch.cumsum(torch.flip(lengths * torch.cos(phi), [-1]), -1), [-1])
    return torch.stack([-sx, cz], dim=-2)


def ee_velocity(config: ArmConfig, q: Tensor, qdot: Tensor) -> Tensor:
    """End-effector velocity ``(..., 2)`` in m/s: ``J(q) qdot``."""
    qdot = _as_tensor("qdot", qdot, config.n_links, "joint velocities in rad/s")
    return (jacobian(config, q) @ qdot.unsqueeze(-1)).squeeze(-1)


def mass_matrix(config: ArmConfig, q: Tensor) -> Tensor:
    """Joint-space inertia ``M(q)``: ``(..., n, n)`` in kg*m^2 (analytic, checked against MuJoCo).

    Each link is the config's uniform rod (mass at mid-length, ``m L^2 / 12`` about the hinge
    axis): ``M = sum_i m_i Jc_i^T Jc_i + I_i w_i w_i^T`` with ``Jc_i`` the Jacobian of link ``i``'s
    centre of mass and ``w_i`` the ones on joints ``1..i`` (all hinges share one axis).
    """
    q = _as_tensor("q", q, config.n_links, "joint angles in rad")
    n = config.n_links
    phi = torch.cumsum(q, dim=-1)
    perp = torch.stack([-torch.sin(phi), torch.cos(phi)], -1)  # (..., n, 2): d(link k)/d phi_k
    lengths = _lengths(config, q)
    # coef[i, k]: how much of link k's direction moves link i's centre: L_k before i, L_i / 2 at i.
    below = torch.tril(torch.ones(n, n, dtype=q.dtype, device=q.device), -1)
    coef = below * lengths + torch.diag(lengths / 2)
    v = coef[..., :, :, None] * perp[..., None, :, :]  # (..., i, k, 2)
    # Joint j turns every link k >= j: reverse cumulative sum over k gives Jc[i, j].
    jc = torch.flip(torch.cumsum(torch.flip(v, [-2]), -2), [-2])
    masses = torch.tensor(config.link_masses, dtype=q.dtype, device=q.device)
    inertia = torch.tensor([config.rod_inertia(i)[1] for i in range(n)], dtype=q.dtype,
                           device=q.device)  # fmt: skip
    translational = torch.einsum("i,...ijd,...ild->...jl", masses, jc, jc)
    # Joints j and l both turn link i when max(j, l) <= i.
    idx = torch.arange(n, device=q.device)
    reach = (torch.maximum(idx[:, None], idx[None, :])[..., None] <= idx).to(q.dtype)
    return translational + (reach * inertia).sum(-1)


def kinetic_energy(config: ArmConfig, q: Tensor, qdot: Tensor) -> Tensor:
    """``0.5 qdot^T M(q) qdot``: ``(...)`` in J."""
    qdot = _as_tensor("qdot", qdot, config.n_links, "joint velocities in rad/s")
    return 0.5 * torch.einsum("...j,...jl,...l->...", qdot, mass_matrix(config, q), qdot)


def _limits(config: ArmConfig, like: Tensor) -> tuple[Tensor, Tensor]:
    lo = [-math.inf if lim is None else lim[0] for lim in config.joint_limits]
    hi = [math.inf if lim is None else lim[1] for lim in config.joint_limits]
    return (
        torch.tensor(lo, dtype=like.dtype, device=like.device),
        torch.tensor(hi, dtype=like.dtype, device=like.device),
    )


def _wrap(a: Tensor) -> Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def _ik_two_link(config: ArmConfig, target: Tensor, q0: Tensor | None) -> Tensor:
    l1, l2 = config.link_lengths
    x, z = target[..., 0], target[..., 1]
    c2 = ((x**2 + z**2 - l1**2 - l2**2) / (2 * l1 * l2)).clamp(-1.0, 1.0)
    sols = []
    for sign in (1.0, -1.0):  # elbow: positive q2 first
        q2 = sign * torch.acos(c2)
        q1 = torch.atan2(z, x) - torch.atan2(l2 * torch.sin(q2), l1 + l2 * torch.cos(q2))
        sols.append(torch.stack([_wrap(q1), q2], dim=-1))
    a, b = sols
    lo, hi = _limits(config, target)
    ok_a = ((a >= lo) & (a <= hi)).all(-1)
    ok_b = ((b >= lo) & (b <= hi)).all(-1)
    if q0 is not None:
        prefer_a = (_wrap(a - q0).norm(dim=-1) <= _wrap(b - q0).norm(dim=-1)) & ok_a
    else:
        prefer_a = ok_a
    pick_a = prefer_a | (ok_a & ~ok_b)
    return torch.where(pick_a[..., None], a, b)


def _ik_dls(
    config: ArmConfig, target: Tensor, q0: Tensor | None, max_iters: int, tol: float, damping: float
) -> Tensor:
    """Damped least squares from several seeds, projected onto the joint limits; best seed wins."""
    n = config.n_links
    lo, hi = _limits(config, target)
    batch = target.shape[:-1]
    seeds = []
    if q0 is not None:
        seeds.append(q0.expand(*batch, n))
    heading = torch.atan2(target[..., 1], target[..., 0])
    for bend in (0.4, -0.4, 1.2, -1.2):
        s = torch.full((*batch, n), bend, dtype=target.dtype, device=target.device)
        s[..., 0] = heading - bend * (n - 1) / 2
        seeds.append(s)
    q = torch.stack(seeds, dim=0)  # (S, ..., n)
    tgt = target.expand((*q.shape[:-1], 2))
    eye = torch.eye(2, dtype=target.dtype, device=target.device)
    q = torch.minimum(torch.maximum(q, lo), hi)
    for _ in range(max_iters):
        err = tgt - forward_kinematics(config, q)
        if err.norm(dim=-1).amax() < tol:
            break
        J = jacobian(config, q)
        A = J @ J.transpose(-1, -2) + damping**2 * eye
        # Closed-form inverse of the symmetric positive definite 2x2 system (torch.linalg.solve
        # costs ~20 ms per call for these tiny batches on CPU, the closed form microseconds).
        a, b, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 1]
        det = a * d - b * b
        ex, ez = err[..., 0], err[..., 1]
        y = torch.stack([(d * ex - b * ez) / det, (a * ez - b * ex) / det], dim=-1)
        dq = (J.transpose(-1, -2) @ y.unsqueeze(-1)).squeeze(-1)
        q = torch.minimum(torch.maximum(q + dq, lo), hi)
    err = (tgt - forward_kinematics(config, q)).norm(dim=-1)  # (S, ...)
    best = err.argmin(dim=0)
    return torch.gather(q, 0, best[None, ..., None].expand(1, *batch, n))[0]


def _flag_targets(mask: Tensor, problem: str, label: str, values: Tensor, strict: bool) -> None:
    """Raise (``strict``) or log which IK targets have ``problem``, with up to 5 examples."""
    if not mask.any():
        return
    idx = torch.nonzero(mask)[:5].tolist() if mask.ndim else "(unbatched)"
    msg = (
        f"target: {int(mask.sum())} target(s) {problem}, e.g. at batch index {idx} "
        f"({label} {values[mask][:5].tolist()} m)"
    )
    if strict:
        raise ValueError(msg)
    log.warning(msg)


def inverse_kinematics(
    config: ArmConfig,
    target: Tensor,
    q0: Tensor | None = None,
    *,
    tol: float = 1e-6,
    max_iters: int = 200,
    damping: float = 1e-3,
    strict: bool = True,
) -> Tensor:
    """Joint angles that put the end effector at ``target``.

    Two links: closed form (positive elbow angle unless the joint limits or ``q0`` say otherwise).
    More links: damped least squares from ``q0`` and four fixed seeds, projected onto the joint
    limits; the best seed per target wins. Not differentiable (use it to turn task-space goals
    into joint goals).

    Args:
        config: the arm.
        target: ``(..., 2)`` end-effector positions ``(x, z)`` in m.
        q0: optional initial/preferred joint angles ``(..., n)``.
        tol: accepted position error in m.
        max_iters: damped-least-squares iterations.
        damping: damped-least-squares damping (m).
        strict: raise for unreachable targets; if False, log a warning and return the closest
            solution found.

    Returns:
        ``(..., n)`` joint angles in rad (same dtype as ``target``; float64 for non-tensors).

    Raises:
        ValueError: a target lies outside the reachable annulus or cannot be reached within the
            joint limits (``strict=True``); the message lists the offending batch indices.
    """
    target = _as_tensor("target", target, 2, "end-effector (x, z) in m")
    if q0 is not None:
        q0 = _as_tensor("q0", q0, config.n_links, "joint angles in rad").to(target)
    with torch.no_grad():
        r = target.norm(dim=-1)
        slack = 1e-9 + tol
        outside = (r > config.reach + slack) | (r < config.min_reach - slack)
        _flag_targets(
            outside,
            f"outside the reachable annulus [{config.min_reach:.4g}, {config.reach:.4g}] m",
            "distance",
            r,
            strict,
        )
        if config.n_links == 2:
            q = _ik_two_link(config, target, q0)
            lo, hi = _limits(config, q)
            inside = ((q >= lo) & (q <= hi)).all(-1)
            if not inside.all():  # neither closed-form elbow fits the limits: search instead
                q = torch.where(
                    inside[..., None], q, _ik_dls(config, target, q0, max_iters, tol, damping)
                )
        else:
            q = _ik_dls(config, target, q0, max_iters, tol, damping)
        err = (forward_kinematics(config, q) - target).norm(dim=-1)
        missed = (err > tol) & ~outside
        _flag_targets(
            missed,
            f"not reached within {tol} m (joint limits {config.joint_limits})",
            "residual",
            err,
            strict,
        )
    return q
