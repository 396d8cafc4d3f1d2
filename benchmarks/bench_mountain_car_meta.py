"""Meta-training speed on MountainCar: our outer iteration under ``protocol=paper`` against a
paper-style reference loop, side by side in one process.

The reference is written here the way the paper's code is structured (not its code): one
policy (``nn.Linear`` 2 -> 200 -> 1, no biases) rolled out step by step, M_phi an ELU 400-400
MLP over per-step inputs, one SGD step with ``create_graph``, a second rollout scored with the
paper's objective, Adam on phi. Ours: ``experiments.mountain_car``'s pieces at the same sizes
(``meta_train_loss`` with our per-step features, tanh-bounded policy, MetaTrainer's update).
Both do the same work per outer iteration (35-step rollout, one differentiable inner step,
35-step rollout, meta-gradient); the ratio is ours / reference per iteration, medians of
round-robin rounds. Run: ``python benchmarks/bench_mountain_car_meta.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import LearnedLoss, LossConfig
from ml3_robotics.core.policy_search import ControlFeatures, meta_train_loss
from ml3_robotics.tasks.mountain_car import (
    FEATURE_GROUPS,
    FEATURE_SCALE,
    make_policy,
    make_task,
    objective_for,
)
from robots.mountain_car import MountainCar

ITERS, ROUNDS, T = 20, 5, 35
G_INT, GOAL, START = (-0.947, -0.0055), (0.5, 1.0375), (-0.55, 0.0)


def reference_iteration_fn():
    """One outer iteration of the paper-style loop (plain modules, a Python loop over time)."""
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(2, 200, bias=False), nn.Linear(200, 1, bias=False))
    loss = nn.Sequential(nn.Linear(4, 400), nn.ELU(), nn.Linear(400, 400), nn.ELU(),
                         nn.Linear(400, 1))  # fmt: skip
    meta_opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    goal, g_int = torch.tensor(GOAL), torch.tensor(G_INT)

    def step(x, a):
        v = x[1] + (-9.8 * 0.2 * torch.cos(3 * x[0]) + a / 0.2 - 0.3 * x[1]) * 0.1
        return torch.stack([torch.clamp(x[0] + v * 0.1, -1.2, 0.5), torch.clamp(v, -1.5, 1.5)])

    def rollout(w0, w1):
        x, states, actions = torch.tensor(START), [torch.tensor(START)], []
        for _ in range(T):
            a = torch.clamp(w1 @ (w0 @ x), -0.25, 0.25)[0]
            x = step(x, a)
            states.append(x)
            actions.append(a)
        return torch.stack(states), torch.stack(actions)

    def iteration() -> None:
        meta_opt.zero_grad()
        w0, w1 = (p.detach().requires_grad_() for p in policy.parameters())
        s, a = rollout(w0, w1)
        dist = torch.norm(s[-1] - goal).expand(T, 1)
        inner = loss(torch.cat([s[:-1], a[:, None], dist], 1)).mean()
        g0, g1 = torch.autograd.grad(inner, (w0, w1), create_graph=True)
        s, _ = rollout(w0 - 1e-3 * g0, w1 - 1e-3 * g1)
        (torch.norm(s[:15] - g_int) + torch.norm(s[15:] - goal)).backward()
        meta_opt.step()

    return iteration


def ours_iteration_fn():
    """One outer iteration of ours at the protocol=paper sizes (meta_batch 1, K = 1)."""
    car = MountainCar()
    policy = make_policy(200, car.params.action_bound, "tanh", (1.0, 0.1))
    features = ControlFeatures(FEATURE_GROUPS, nx=2, nu=1)
    loss = LearnedLoss(LossConfig(features.spec(scale=FEATURE_SCALE), hidden=(400, 400),
                                  activation="elu", output_activation="none"))  # fmt: skip
    loss.reset_parameters(torch.Generator().manual_seed(0))
    meta_opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    init = policy.init(1, torch.Generator().manual_seed(1))
    task = make_task(torch.tensor([START]))
    objective = objective_for("goal", 1.0, "final", "paper")
    inner = InnerOptimizer("sgd", lr=0.1, steps=1)

    def iteration() -> None:
        meta_opt.zero_grad()
        meta, _ = meta_train_loss(loss, features, policy, init, car, task, objective, inner)
        meta.backward()
        meta_opt.step()

    return iteration


def main() -> None:
    torch.set_num_threads(1)
    fns = {"reference (paper-style loop)": reference_iteration_fn(), "ours": ours_iteration_fn()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(ITERS):
                fn()
            times[name].append((time.perf_counter() - t0) / ITERS)
    ref = statistics.median(times["reference (paper-style loop)"])
    print(
        f"MountainCar meta-training, one outer iteration (T={T}, K=1, meta_batch 1, M_phi "
        f"400-400, policy 2-200-1; medians of {ROUNDS} round-robin rounds of {ITERS})"
    )
    for name, t in times.items():
        med = statistics.median(t)
        print(f"  {name:30s} {1000 * med:8.2f} ms   ratio to reference {med / ref:5.2f}x   "
              f"300 iterations ~{300 * med:5.1f} s")  # fmt: skip


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # --help: what this measures, before it runs
    main()
