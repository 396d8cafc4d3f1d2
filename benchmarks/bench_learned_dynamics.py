"""Fit time and accuracy of the probabilistic ensemble against its hidden widths (2 CPU cores).

Data: a synthetic 2-joint system (two coupled, damped, torque-driven pendulums, nx=4, nu=2,
dt=0.01, like the reacher's sizes), random-torque babbling. Each row fits a 5-member ensemble
with the same data, seed and epoch budget; ratios are against the PETS default (200, 200, 200)
run in the same process. Also times the deterministic ``step`` and a batched Jacobian (what
policy rollouts and iLQR call) at batch 64.

With ``--arm`` (needs ``robots.arm`` from the arms branch) it instead fits the default ensemble,
with and without ``angle_dims``, on MuJoCo babbling of the 2-link reacher and prints one-step
and 65-step open-loop errors on held-out real trajectories.

Run: PYTHONPATH=$PWD python benchmarks/bench_learned_dynamics.py [--epochs N] [--arm]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.func import jacrev, vmap

from ml3_robotics.models.learned_dynamics import (
    EnsembleConfig,
    ProbabilisticEnsemble,
    fit,
    prediction_error,
)

DT = 0.01


def coupled_pendulums(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Semi-implicit Euler step of two pendulums coupled by a spring: x = (q1, q2, w1, w2)."""
    q, w = x[..., :2], x[..., 2:]
    k = 4.0 * (q[..., 1] - q[..., 0])
    coupling = torch.stack([k, -k], dim=-1)
    acc = -30.0 * torch.sin(q) - 0.8 * w + coupling + 20.0 * u
    w2 = w + DT * acc
    return torch.cat([q + DT * w2, w2], dim=-1)


def babble(n: int, T: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = (torch.rand(n, 4, generator=g, dtype=torch.float64) - 0.5) * torch.tensor(
        [2.0, 2.0, 2.0, 2.0], dtype=torch.float64
    )
    U = (torch.rand(n, T, 2, generator=g, dtype=torch.float64) - 0.5) * 2.0
    xs = [x]
    for t in range(T):
        xs.append(coupled_pendulums(xs[-1], U[:, t]))
    return torch.stack(xs, dim=1), U


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--trajectories", type=int, default=100)
    # 1 thread by default: on the shared 2-core machine, 2 OpenMP threads were ~20x slower
    # under load for these small matmuls.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arm", action="store_true", help="reacher (MuJoCo) prediction errors")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.arm:
        arm(args.trajectories)
        return
    g = torch.Generator().manual_seed(0)
    T = 65
    X, U = babble(args.trajectories, T, g)
    Xt, Ut = babble(20, T, g)
    data = (
        X[:, :-1].reshape(-1, 4),
        U.reshape(-1, 2),
        X[:, 1:].reshape(-1, 4),
    )
    print(
        f"torch threads {torch.get_num_threads()}, {data[0].shape[0]} transitions, "
        f"{args.epochs} epochs (no early stopping), batch 256, 5 members"
    )
    rows = []
    x, u = Xt[:64, 0].float(), Ut[:64, 0].float()
    for hidden in [(200, 200, 200), (200, 200), (128, 128, 128), (128, 128), (64, 64, 64)]:
        cfg = EnsembleConfig(hidden=hidden, epochs=args.epochs, holdout_fraction=0.0)
        model = ProbabilisticEnsemble(4, 2, DT, cfg, generator=torch.Generator().manual_seed(1))
        rep = fit(model, data, generator=torch.Generator().manual_seed(2), progress=False)
        err = prediction_error(model, Xt, Ut, horizon=T)
        with torch.no_grad():
            t_step = _time(lambda m=model: m.step(x, u), 200)
        t_jac = _time(lambda m=model: m.jacobians(x, u), 20)
        per_sample = vmap(jacrev(lambda a, b, m=model: m.step(a[None], b[None])[0], argnums=(0, 1)))
        t_vmap = _time(lambda f=per_sample: f(x, u), 2)
        rows.append((hidden, rep.seconds, err, t_step, t_jac, t_vmap))
    base = rows[0]
    print(
        f"{'hidden':>16} {'fit s':>6} {'ratio':>5} {'1-step':>8} {'naive/':>6} {'65-step':>7} "
        f"{'step ms':>7} {'ratio':>5} {'jac ms':>6} {'ratio':>5} {'vmap(jacrev) ms':>15} "
        f"{'vs jac':>6}"
    )
    for hidden, sec, err, ts, tj, tv in rows:
        print(
            f"{hidden!s:>16} {sec:6.1f} {sec / base[1]:5.2f} {err['one_step_rmse']:8.2e} "
            f"{err['one_step_rmse_naive'] / err['one_step_rmse']:6.1f} "
            f"{err['open_loop_rmse']:7.3f} {ts * 1e3:7.3f} {ts / base[3]:5.2f} "
            f"{tj * 1e3:6.2f} {tj / base[4]:5.2f} {tv * 1e3:15.1f} {tv / tj:6.1f}"
        )
    print(
        "1-step/65-step: RMSE on 20 held-out trajectories (all dims pooled); naive/: x'=x RMSE "
        "over the model's; jac: model.jacobians at B=64; vmap(jacrev): per-sample Jacobians."
    )


def arm(n_train: int) -> None:
    """Prediction error on the MuJoCo reacher: babbling with piecewise-constant random torques
    (uniform within the 0.2 N*m limits, held 5 steps), random starts q ~ U[-1, 1] rad at rest;
    held out: 30 such trajectories and 30 starting at q = 0 (the task's start)."""
    from robots.arm import ArmSim  # optional: only this mode needs the simulator

    sim = ArmSim("reacher2", backend="mujoco")
    g = torch.Generator().manual_seed(0)
    T = 65
    limit = 0.2

    def babble(n: int, zero_start: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.zeros(n, 2, dtype=torch.float64)
        if not zero_start:
            q = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1
        x0 = torch.cat([q, torch.zeros_like(q)], dim=1)
        held = (torch.rand(n, T // 5 + 1, 2, generator=g, dtype=torch.float64) * 2 - 1) * limit
        U = held.repeat_interleave(5, dim=1)[:, :T]
        return torch.as_tensor(sim.rollout(x0.numpy(), U.numpy())), U

    X, U = babble(n_train)
    tests = {"random start": babble(30), "start q=0": babble(30, zero_start=True)}
    data = (X[:, :-1].reshape(-1, 4), U.reshape(-1, 2), X[:, 1:].reshape(-1, 4))
    print(f"reacher2 (MuJoCo), {data[0].shape[0]} babbling transitions, 5 members (200, 200)")
    print(
        f"{'angle_dims':>10} {'fit s':>6} {'epochs':>6} {'held out':>12} {'1-step':>7} "
        f"{'naive/':>6} {'65-step':>7} {'q at 65 (rad)':>14} {'qdot at 65 (rad/s)':>19}"
    )
    for angle_dims in [(), (0, 1)]:
        cfg = EnsembleConfig(epochs=200, patience=10, angle_dims=angle_dims)
        model = ProbabilisticEnsemble(4, 2, sim.dt, cfg, generator=torch.Generator().manual_seed(1))
        rep = fit(model, data, generator=torch.Generator().manual_seed(2), progress=False)
        for name, (Xt, Ut) in tests.items():
            e = prediction_error(model, Xt, Ut, horizon=T)
            qf = ", ".join(f"{v:.3f}" for v in e["open_loop_final_rmse_per_dim"][:2])
            vf = ", ".join(f"{v:.2f}" for v in e["open_loop_final_rmse_per_dim"][2:])
            print(
                f"{angle_dims!s:>10} {rep.seconds:6.1f} {rep.epochs:6d} {name:>12} "
                f"{e['one_step_rmse']:7.3f} {e['one_step_rmse_naive'] / e['one_step_rmse']:6.1f} "
                f"{e['open_loop_rmse']:7.3f} {qf:>14} {vf:>19}"
            )
    print("RMSEs pool (q1, q2, qdot1, qdot2) in rad and rad/s; naive/: x'=x RMSE over the model's.")


def _time(f, n: int) -> float:
    f()  # warm-up
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n


if __name__ == "__main__":
    main()
