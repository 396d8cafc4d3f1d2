"""Sine meta-training speed: time per outer iteration, and vmap vs a Python loop over tasks.

Both variants run side by side in this process on the same tasks; the ratio is what counts
(absolute times depend on the machine and its load).
"""

import argparse
import time

import torch

from experiments.sine import TRAIN_TASKS
from ml3_robotics.core.inner import InnerOptimizer
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import iteration_generator
from ml3_robotics.tasks.sine import SINE_FEATURES, regressor, sine_meta_loss


def time_outer_iteration(batch: int, vectorize: bool, repeats: int) -> float:
    """Median seconds of one meta-update (forward, K=1 inner step, meta-gradient, Adam)."""
    model = regressor((100, 10))
    loss = LearnedLoss(LossConfig(FeatureSpec(SINE_FEATURES), hidden=(50, 50), bias=False))
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    inner = InnerOptimizer("sgd", lr=1e-3, steps=1)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        opt.zero_grad()
        value = sine_meta_loss(
            model,
            loss,
            TRAIN_TASKS,
            inner,
            batch=batch,
            n_points=100,
            generator=iteration_generator(0, i),
            vectorize=vectorize,
        )
        value.backward()
        opt.step()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch threads: {torch.get_num_threads()}")
    single = time_outer_iteration(1, vectorize=True, repeats=40)
    print(
        f"sine outer iteration, 1 task (paper setting): {single * 1e3:.2f} ms "
        f"-> 500 iterations ~ {500 * single:.1f} s of meta-training"
    )
    print(f"{'tasks':>6} {'loop ms':>10} {'vmap ms':>10} {'loop/vmap':>10}")
    for batch in (4, 16):
        loop = time_outer_iteration(batch, vectorize=False, repeats=15)
        vmap = time_outer_iteration(batch, vectorize=True, repeats=15)
        print(f"{batch:>6} {loop * 1e3:>10.2f} {vmap * 1e3:>10.2f} {loop / vmap:>10.2f}")
    # The paper's code needs about 20 minutes per seed here (issue 2); ratio against that:
    print(
        f"paper code ~1200 s per 500-iteration seed; ours {500 * single:.1f} s of meta-training "
        f"(~{1200 / (500 * single):.0f}x)"
    )


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # --help: what this measures, before it runs
    main()
