"""What limits MountainCar generalisation from fresh policies (issue 20, part 3).

For the held-out starts of seeds 0..S-1 (the experiment's draw, ``--set`` fields apply):

1. the policy class: the fraction of starts some gain ``(a, b)`` of ``u = 0.25 tanh(a p + b v/0.1)``
   solves (a grid over [-60, 60]^2), and the best single gain for all starts;
2. hand-written per-step losses of the kind M_phi can express, each at its best step size (chosen
   on these very starts, so optimistic): success after 1, 2 and 5 plain SGD steps from the fresh
   policies the experiment uses. ``power``: ``-sum_t u_t v_{t+1}``; ``imitation``: squared error
   to the best single gain's action at the visited states (target held fixed: outside what a
   learned loss can express, an upper reference); ``task``: ``||x_T - goal||``.

    python scripts/mountain_car_ceiling.py --seeds 3 --set heldout_gap=0.08
"""

from __future__ import annotations

import argparse

import torch

from experiments.mountain_car import MountainCarConfig, heldout_starts
from ml3_robotics.app.runs import build_config, parse_set_options
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.policy_search import adapt_policy, policy_rollout
from ml3_robotics.tasks.mountain_car import (
    gain_params,
    make_policy,
    make_task,
    success,
    success_rates,
    task_term,
)
from robots.mountain_car import MountainCar

LRS = (0.1, 1.0, 10.0, 100.0, 1000.0)
STEPS = (1, 2, 5)


def gain_grid() -> torch.Tensor:
    a = torch.linspace(-60, 60, 61)
    aa, bb = torch.meshgrid(a, a, indexing="ij")
    return torch.stack([aa.reshape(-1), bb.reshape(-1)], 1)


def solved_by_gains(policy, car, starts: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """``(G, N)`` bool: gain g solves start n."""
    cols = []
    with torch.no_grad():
        for s in starts:
            task = make_task(s[None].repeat(len(gains), 1))
            rollout = policy_rollout(policy, gain_params(policy, gains), car, task)
            cols.append(success(rollout.states, car))
    return torch.stack(cols, 1)


def hand_written_losses(gain: torch.Tensor, input_scale: tuple[float, float]):
    a, b = float(gain[0]), float(gain[1])

    def power(rollout, task):
        return -(rollout.actions[..., 0] * rollout.states[:, 1:, 1]).sum(-1)

    def imitation(rollout, task):
        x = rollout.states[:, 1:].detach()
        target = 0.25 * torch.tanh(a * x[..., 0] / input_scale[0] + b * x[..., 1] / input_scale[1])
        return ((rollout.actions[..., 0] - target) ** 2).sum(-1)

    return {"power": power, "imitation": imitation, "task": task_term("final")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    config = build_config(MountainCarConfig, parse_set_options(args.sets))
    car = MountainCar()
    policy = make_policy(
        config.policy_hidden, car.params.action_bound, "tanh", config.policy_input_scale
    )
    gains = gain_grid()
    print("| seed | some gain solves | best single gain | its success | loss | best lr | "
          + " | ".join(f"after {k}" for k in STEPS) + " |")  # fmt: skip
    print("|---" * (6 + len(STEPS)) + "|")
    for seed in range(args.seeds):
        # the experiment's evaluation draw: train inits first, then the held-out inits
        g = torch.Generator().manual_seed(10_000 + seed)
        policy.init(config.train_inits, g)
        task = make_task(heldout_starts(config, seed))
        init = policy.init(config.heldout, g)
        solved = solved_by_gains(policy, car, task.start, gains)
        rate = solved.double().mean(1)
        best = gains[int(rate.argmax())]
        head = (f"| {seed} | {solved.any(0).double().mean():.2f} | ({best[0]:.0f}, {best[1]:.0f}) "
                f"| {rate.max():.2f} |")  # fmt: skip
        for name, fn in hand_written_losses(best, config.policy_input_scale).items():
            curves = {}
            for lr in LRS:
                trace = adapt_policy(
                    fn, policy, init, car, task, InnerOptimizer("sgd", lr=lr, steps=max(STEPS))
                )
                curves[lr] = success_rates(trace, car)
            lr = max(LRS, key=lambda lr: (curves[lr][1], curves[lr][max(STEPS)]))
            cells = " | ".join(f"{curves[lr][k]:.2f}" for k in STEPS)
            print(f"{head} {name} | {lr:g} | {cells} |", flush=True)
            head = "| | | | |"


if __name__ == "__main__":
    main()
