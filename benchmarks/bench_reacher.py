"""Meta-training speed on the reacher: batched ML3 outer iteration vs a paper-style reference.

Both compute the same meta-gradient (checked below) for G training goals, K inner SGD steps and
65-step rollouts through the same learned ensemble:

* ``batched`` (ml3_robotics.tasks.reach.meta_loss): all goals in one batch, per-goal policies as
  stacked parameters evaluated with one batched matmul per layer, inner steps with torch.func.
* ``reference``: the structure of the paper's code: for each goal, for each inner step, a Python
  loop rollout of a single-goal policy module through the model, torch.autograd.grad with
  create_graph, functional parameter updates (what `higher` does), no vmap, no batching.

``--levers`` (issue 22) times the batched iteration at K = 10 as it was before each speed lever
and with it, side by side, and checks that the exact levers leave the meta-gradient unchanged:

* exact: ``torch.autograd.grad(create_graph=True)`` instead of ``torch.func`` in the inner loop;
  the policy's weight transposes taken once per rollout (``ReachPolicy.bind``), not per step;
  the ensemble's deterministic step without its log-variance head;
* approximate (change the meta-gradient): a truncated meta-gradient through the last steps
  only; a smaller M_phi (64-64).

Usage: ``python benchmarks/bench_reacher.py [--goals 16] [--inner-steps 1] [--reps 3]
[--levers]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.func import functional_call

from ml3_robotics.core.inner import InnerOptimizer, adapt, init_params
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.policy_search import policy_rollout
from ml3_robotics.models.learned_dynamics import EnsembleConfig, ProbabilisticEnsemble, fit
from ml3_robotics.tasks.reach import (
    ReachPolicy,
    ReachTask,
    batched_policy,
    learned_loss_fn,
    meta_loss,
    reach_feature_spec,
    task_loss_fn,
)
from robots.arm import ArmSim, load_arm_config, sample_goals


def reference_meta_gradient(policy, params, model, task, loss, lr, K):
    """Paper-style: goal by goal, step by step, single-goal Python-loop rollouts."""
    total = 0.0
    lfn = learned_loss_fn(loss)
    for g in range(task.n):
        sub = task.subset([g])
        p = {k: v[g].clone().requires_grad_(True) for k, v in params.items()}

        def rollout(p):
            x = torch.zeros(1, task.config.nx)
            xs, us = [x], []
            for _ in range(task.horizon):
                u = functional_call(policy, p, (x,))
                x = model.step(x, u)
                xs.append(x)
                us.append(u)
            return torch.stack(xs, 1), torch.stack(us, 1)

        for _ in range(K):
            X, U = rollout(p)
            inner = lfn(X, U, sub).sum()
            grads = torch.autograd.grad(inner, list(p.values()), create_graph=True)
            p = {k: v - lr * gk for (k, v), gk in zip(p.items(), grads, strict=True)}
        X, U = rollout(p)
        meta = sub.task_loss(X, U).sum() / task.n
        meta.backward()
        total += float(meta.detach())
    return total


def full_head_step(model: ProbabilisticEnsemble):
    """The ensemble's deterministic step as it was before the mean-only head (it computed the
    log-variance head too and dropped it)."""

    def step(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        z, lead = model._flat(x, u)
        mean_n, _ = model.forward_normalized(z)
        return x + model.denormalize_delta(mean_n.mean(dim=0)).reshape(*lead, model.nx)

    return step


def lever_meta_gradient(policy, params, model, task, loss, opt, *, gradients, bind, mean_head,
                        differentiable_steps=None):  # fmt: skip
    """The reacher's meta-gradient with each speed lever on or off (the library's meta_loss is
    all levers on)."""
    pol = batched_policy(policy)
    if not bind:  # per-step transposes: a plain function has no bind
        pol = lambda p, x: policy.bind(p)(x)  # noqa: E731
    step = model.step if mean_head else full_head_step(model)
    learned = learned_loss_fn(loss)

    def objective(p):
        r = policy_rollout(pol, p, step, task)
        return learned(r.states, r.actions, task).sum()

    adapted = adapt(objective, params, opt, gradients=gradients,
                    differentiable_steps=differentiable_steps)  # fmt: skip
    r = policy_rollout(pol, adapted, step, task)
    value = task_loss_fn(r.states, r.actions, task).mean()
    loss.zero_grad(set_to_none=True)
    value.backward()
    return float(value.detach()), [p.grad.clone() for p in loss.parameters()]


def compare_levers(policy, params, model, task, reps: int) -> None:
    K = 10
    opt = InnerOptimizer("sgd", lr=1e-3, steps=K)
    spec = reach_feature_spec()
    big = LearnedLoss(LossConfig(spec, hidden=(400, 400), activation="elu", learn_scale=True))
    small = LearnedLoss(LossConfig(spec, hidden=(64, 64), activation="elu", learn_scale=True))
    before = {"gradients": "func", "bind": False, "mean_head": False}
    variants = [
        ("before (torch.func, per-step policy, full model head)", big, before),
        ("+ autograd.grad inner loop", big, before | {"gradients": "autograd"}),
        ("+ policy bound once per rollout", big, before | {"gradients": "autograd", "bind": True}),
        ("+ mean-only model step (= library)", big, {"gradients": "autograd", "bind": True,
                                                     "mean_head": True}),
    ]  # fmt: skip
    exact = variants[-1][2]
    variants += [
        ("~ meta-gradient through last 3 steps", big, exact | {"differentiable_steps": 3}),
        ("~ meta-gradient through last step", big, exact | {"differentiable_steps": 1}),
        ("~ M_phi 64-64", small, exact),
        ("~ M_phi 64-64, last 3 steps", small, exact | {"differentiable_steps": 3}),
    ]
    print(f"\nspeed levers at K={K}, G={task.n}, T=65, best of {reps} (~: approximate)")
    print(f"{'variant':58s}{'s / outer iteration':>20s}{'speed-up':>10s}")
    grads, base = {}, None
    for name, loss, options in variants:
        times = []
        for _ in range(reps + 1):  # the first call warms up
            t0 = time.perf_counter()
            value, g = lever_meta_gradient(policy, params, model, task, loss, opt, **options)
            times.append(time.perf_counter() - t0)
        grads[name] = (value, g)
        best = min(times[1:])
        base = base or best
        print(f"{name:58s}{best:20.3f}{base / best:9.2f}x")
    (v0, g0), (v1, g1) = grads[variants[0][0]], grads[variants[3][0]]
    err = max(
        float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(g1, g0, strict=True)
    )
    lib_value, _ = meta_loss(policy, params, model.step, task, learned_loss_fn(big), opt)
    print(f"exact levers: meta-loss {v1:.6g} vs {v0:.6g} before (library meta_loss "
          f"{float(lib_value):.6g}); meta-gradient max rel diff {err:.1e}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--goals", type=int, default=16)
    ap.add_argument("--inner-steps", type=int, default=1)  # the reacher's K
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--levers", action="store_true", help="time the K = 10 speed levers only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    arm = load_arm_config("reacher2")
    sim = ArmSim(arm)
    rng = np.random.default_rng(0)
    U = np.repeat(rng.uniform(-1, 1, (40, 9, 2)) * 0.2, 8, axis=1)[:, :65]
    X = sim.rollout(np.zeros((40, 4)), U)
    model = ProbabilisticEnsemble(
        4,
        2,
        0.01,
        EnsembleConfig(hidden=(128, 128), epochs=5, angle_dims=(0, 1)),
        generator=torch.Generator().manual_seed(0),
    )
    fit(
        model, (X[:, :-1].reshape(-1, 4), U.reshape(-1, 2), X[:, 1:].reshape(-1, 4)), progress=False
    )
    for p in model.parameters():
        p.requires_grad_(False)
    task = ReachTask(arm, sample_goals(arm, args.goals, 0, min_radius=0.3), 65)
    policy = ReachPolicy(arm)
    loss = LearnedLoss(
        LossConfig(reach_feature_spec(), hidden=(400, 400), activation="elu", learn_scale=True)
    )
    params = init_params(policy, task.n, torch.Generator().manual_seed(0))
    if args.levers:
        compare_levers(policy, params, model, task, args.reps)
        return
    lr, K = 1e-3, args.inner_steps
    opt = InnerOptimizer("sgd", lr=lr, steps=K)

    def batched() -> tuple[float, list[torch.Tensor]]:
        loss.zero_grad(set_to_none=True)
        value, _ = meta_loss(policy, params, model.step, task, learned_loss_fn(loss), opt)
        value.backward()
        return float(value.detach()), [p.grad.clone() for p in loss.parameters()]

    def reference() -> tuple[float, list[torch.Tensor]]:
        loss.zero_grad(set_to_none=True)
        value = reference_meta_gradient(policy, params, model, task, loss, lr, K)
        return value, [p.grad.clone() for p in loss.parameters()]

    times: dict[str, list[float]] = {"batched": [], "reference": []}
    out = {}
    for _ in range(args.reps):
        for name, fn in (("batched", batched), ("reference", reference)):
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(time.perf_counter() - t0)
    (vb, gb), (vr, gr) = out["batched"], out["reference"]
    err = max(
        float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(gb, gr, strict=True)
    )
    best = {k: min(v) for k, v in times.items()}
    print(
        f"reacher meta-training, G={task.n} goals, K={K}, T=65, ensemble 5x(128,128), "
        f"M_phi 400-400, 1 torch thread, best of {args.reps}"
    )
    print(f"meta-loss batched {vb:.6g} reference {vr:.6g}; meta-gradient max rel diff {err:.1e}")
    print(f"{'method':12s}{'s / outer iteration':>22s}{'speed-up':>10s}")
    for name in ("reference", "batched"):
        print(f"{name:12s}{best[name]:22.3f}{best['reference'] / best[name]:9.1f}x")
    print("(paper's code measured here earlier: 1.9 s per outer iteration, one goal)")


if __name__ == "__main__":
    main()
