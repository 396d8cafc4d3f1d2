"""iLQR benchmark: ours vs Crocoddyl FDDP on the same 2-link reach, and MountainCar box vs clip.

Run: ``make bench`` or ``PYTHONPATH=. python benchmarks/bench_ilqr.py``. Crocoddyl is optional
(``pip install crocoddyl==3.2.1 pin==4.0.0 libpinocchio==4.0.0``); without it only our columns
are printed. Ours and Crocoddyl's 2-link solves are timed round-robin in this process
(``ILQR_BENCH_ROUNDS``, default 5) and reported as medians of wall and CPU time: the machine is
shared, and ratios of blocks timed one after the other swung 2x with the load.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import mujoco
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "controllers"))  # the shared problem definitions

from ctrl_models import TWO_LINK_MJCF  # noqa: E402

from controllers import (  # noqa: E402
    ILQR,
    ILQRConfig,
    MountainCarCost,
    MujocoDynamics,
    PlanarChainDynamics,
    ReachCost,
)

T, DT = 100, 0.01
N_GOALS = 64
# Optional extra row: the batched solve with MujocoDynamics(n_threads=N), e.g. ILQR_BENCH_THREADS=2.
N_THREADS = int(os.environ.get("ILQR_BENCH_THREADS", "1"))
ROUNDS = int(os.environ.get("ILQR_BENCH_ROUNDS", "5"))
CONTROL_WEIGHT = 1e-3

try:
    import crocoddyl  # noqa: F401
    from ctrl_crocoddyl import reach_problem, solve_fddp, solve_goals_in_place

    HAVE_CROC = True
except ImportError:
    HAVE_CROC = False


CPU: dict[str, float] = {}


def timed(fn, repeats: int, cpu_key: str | None = None):
    """Median wall time; with ``cpu_key``, also the median CPU time of this process in ``CPU``.

    The machine is shared: CPU time (everything here runs in one thread) is the steadier figure
    when other processes take the cores; wall time is what a user waits.
    """
    out, ts, cs = None, [], []
    for _ in range(repeats):
        # Release the previous result first: 64 Crocoddyl solvers hold ~150 MB, and keeping
        # them alive while the next repeat allocates as much again costs page faults (measured:
        # up to 4x Crocoddyl's CPU time), which would be charged to the solver, not its work.
        out = None
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    if cpu_key is not None:
        CPU[cpu_key] = statistics.median(cs)
    return out, statistics.median(ts)


def round_robin(tasks: dict, rounds: int) -> tuple[dict, dict, dict]:
    """Median wall and CPU seconds per call of each task, and its last result.

    ``tasks`` maps a name to ``(fn, calls per round)``. The tasks run in turn, ``rounds`` times,
    so that load from other processes on the shared machine hits ours and Crocoddyl's alike
    (timed one block after the other, their ratio swung 2x between runs). The previous result of
    a task is released before the next call: 64 Crocoddyl solvers hold ~150 MB, and keeping them
    alive while the next call allocates as much again costs page faults (measured: up to 4x
    Crocoddyl's CPU time), which would be charged to the solver, not its work.
    """
    wall: dict = {k: [] for k in tasks}
    cpu: dict = {k: [] for k in tasks}
    last: dict = {}
    for fn, _ in tasks.values():
        fn()  # warm-up (imports, allocations)
    for _ in range(rounds):
        for key, (fn, calls) in tasks.items():
            for _ in range(calls):
                last[key] = None
                t0, c0 = time.perf_counter(), time.process_time()
                last[key] = fn()
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}, last


def reach_bench() -> None:
    torch.set_num_threads(1)
    model = mujoco.MjModel.from_xml_string(TWO_LINK_MJCF)
    sim = MujocoDynamics(model)
    # The same arm in closed form with exact Jacobians: the counterpart of Crocoddyl's Pinocchio
    # model (MuJoCo alone costs ~2.6 us per mj_step and ~11 us per mjd_transitionFD here).
    chain = PlanarChainDynamics.from_mujoco(model)
    rng = np.random.default_rng(0)
    goals = rng.uniform(-1.5, 1.5, (N_GOALS, 2))
    print(
        f"2-link reach (MuJoCo Euler model, T={T}, dt={DT}, ReachCost squared, "
        f"control_weight={CONTROL_WEIGHT}, from zero controls; medians of {ROUNDS} "
        f"round-robin rounds, ours and Crocoddyl alternating)"
    )

    def reach(dyn, g: np.ndarray, config: ILQRConfig | None = None) -> ILQR:
        return ILQR(dyn, ReachCost(g, T, control_weight=CONTROL_WEIGHT), T, config=config)

    one, one_c = reach(sim, goals[:1]), reach(chain, goals[:1])
    x0 = torch.zeros(1, 4, dtype=torch.float64)
    xb = torch.zeros(N_GOALS, 4, dtype=torch.float64)
    # The batched solves build their problem inside the timed call, as Crocoddyl's do.
    tasks = {
        "ours1": (lambda: one.solve(x0), 5),
        "oursb": (lambda: reach(sim, goals).solve(xb), 1),
        "chain1": (lambda: one_c.solve(x0), 5),
        "chainb": (lambda: reach(chain, goals).solve(xb), 1),
    }
    if HAVE_CROC:
        prob = reach_problem(goals[0], T, DT, control_weight=CONTROL_WEIGHT)

        def rebuilt():
            return [
                solve_fddp(reach_problem(g, T, DT, control_weight=CONTROL_WEIGHT), T)[0].cost
                for g in goals
            ]

        # The same solves stopped by Crocoddyl's own rule (converged when the full step's
        # predicted decrease is below its th_stop = 1e-9) instead of our tighter default.
        rule = ILQRConfig(tol_expected=1e-9)
        one_r = reach(sim, goals[:1], rule)
        tasks.update(
            croc1=(lambda: solve_fddp(prob, T), 25),
            crocb=(rebuilt, 1),
            croci=(lambda: solve_goals_in_place(goals, T, DT, control_weight=CONTROL_WEIGHT), 1),
            ours1r=(lambda: one_r.solve(x0), 5),
            oursbr=(lambda: reach(sim, goals, rule).solve(xb), 1),
        )
    wall, cpu, last = round_robin(tasks, ROUNDS)

    def ms(key: str, per: int = 1) -> str:
        return f"{wall[key] / per * 1e3:6.2f} ms (cpu {cpu[key] / per * 1e3:5.2f})"

    croc_cost = last["croc1"][0].cost if HAVE_CROC else None
    print("  single goal:")
    for key, label in (
        ("ours1", "ours, MuJoCo + mjd_transitionFD"),
        ("chain1", "ours, closed form"),
    ):
        res = last[key]
        row = f"    {label:34s} {ms(key)}  iters {int(res.iterations[0])}  "
        row += f"cost {res.cost[0].item():.6g}"
        if HAVE_CROC:
            rel = abs(res.cost[0].item() - croc_cost) / croc_cost
            row += (
                f" | ratio ours/croc {wall[key] / wall['croc1']:5.1f}x, cpu "
                f"{cpu[key] / cpu['croc1']:5.1f}x (goal <= 10x)  cost rel diff {rel:.1e} "
                f"(goal < 1e-3)"
            )
        print(row)
    if HAVE_CROC:
        sol = last["croc1"][0]
        print(f"    {'crocoddyl FDDP':34s} {ms('croc1')}  iters {sol.iter}  cost {sol.cost:.6g}")
    print(f"  {N_GOALS} goals, time per goal:")
    costs_c = np.array(last["crocb"]) if HAVE_CROC else None
    if HAVE_CROC:
        # The goal compares with Crocoddyl's faster sequential way.
        best = "croci" if wall["croci"] <= wall["crocb"] else "crocb"
    for key, label in (
        ("oursb", "ours, MuJoCo + mjd_transitionFD"),
        ("chainb", "ours, closed form"),
    ):
        res = last[key]
        row = (
            f"    {label:34s} {ms(key, N_GOALS)}  batched incl. build, converged "
            f"{int(res.converged.sum())}/{N_GOALS}, iters mean "
            f"{res.iterations.double().mean():.2f} "
            f"max {int(res.iterations.max())}"
        )
        if HAVE_CROC:
            rel = np.abs(res.cost.numpy() - costs_c) / costs_c
            row += (
                f" | ratio to crocoddyl's best {wall[key] / wall[best]:4.2f}x, cpu "
                f"{cpu[key] / cpu[best]:4.2f}x (goal < 1x)  max cost rel diff {rel.max():.1e}, "
                f"ours lower on {int((res.cost.numpy() < costs_c).sum())}"
            )
        print(row)
    if HAVE_CROC:
        its = np.array([i for _, i in last["croci"]])
        print(
            f"    {'crocoddyl FDDP, rebuilt per goal':34s} {ms('crocb', N_GOALS)}  sequential, "
            f"a new problem and solver per goal"
        )
        print(
            f"    {'crocoddyl FDDP, goal set in place':34s} {ms('croci', N_GOALS)}  sequential, "
            f"one problem and solver, iters mean {its.mean():.2f} max {its.max()}"
        )
        relr = np.abs(last["oursbr"].cost.numpy() - costs_c) / costs_c
        print(
            f"  with Crocoddyl's stopping rule (tol_expected=1e-9), MuJoCo: single "
            f"{wall['ours1r'] * 1e3:.1f} ms (cpu {cpu['ours1r'] * 1e3:.1f}), ratio "
            f"{wall['ours1r'] / wall['croc1']:.1f}x | {N_GOALS} goals per goal "
            f"{wall['oursbr'] / N_GOALS * 1e3:.2f} ms (cpu {cpu['oursbr'] / N_GOALS * 1e3:.2f}), "
            f"ratio {wall['oursbr'] / wall[best]:.2f}x, iters max "
            f"{int(last['oursbr'].iterations.max())}, max cost rel diff {relr.max():.1e}"
        )
    resb = last["oursb"]
    if N_THREADS > 1:
        dyn_t = MujocoDynamics(model, n_threads=N_THREADS)
        res_t, t_t = timed(lambda: reach(dyn_t, goals).solve(xb), 3)
        same = torch.equal(res_t.controls, resb.controls)
        print(
            f"  {N_GOALS} goals per goal ours with n_threads={N_THREADS}: "
            f"{t_t / N_GOALS * 1e3:.2f} ms wall (same controls as 1 thread: {same})"
        )
    # where the time goes (one iteration's parts, at the solution)
    X, U = resb.states.numpy(), resb.controls.numpy()
    for label, dyn in (("MuJoCo", sim), ("closed form", chain)):
        with dyn.numpy_session():  # as inside solve()
            for B in (1, N_GOALS):
                s, Xs, Us = reach(dyn, goals[:B]), X[:B], U[:B]
                _, t_der = timed(lambda s=s, Xs=Xs, Us=Us: s._derivatives(Xs, Us), 5)
                d = s._derivatives(Xs, Us)
                _, t_bwd = timed(
                    lambda s=s, d=d, B=B, Us=Us: s._backward(
                        Us, *d, np.zeros(B), np.zeros_like(Us)
                    ),
                    5,
                )
                _, t_roll = timed(lambda s=s, B=B, Us=Us: s._rollout(np.zeros((B, 4)), Us), 5)
                print(
                    f"  per iteration, {label}, B={B}: derivatives from scratch {t_der * 1e3:.1f} "
                    f"ms, backward pass {t_bwd * 1e3:.1f} ms, one rollout {t_roll * 1e3:.1f} ms"
                )


def arm4_bench() -> None:
    try:
        from robots.arm import load_arm_config
    except ImportError:
        print("4-link arm: robots.arm not available, skipped")
        return
    cfg = load_arm_config("arm4")
    dyn = MujocoDynamics(mujoco.MjModel.from_xml_string(cfg.to_mjcf()))
    lo, hi = dyn.control_bounds
    rng = np.random.default_rng(1)
    n_goals = 8  # box QPs are active at most steps and iterations are many; keeps make bench short
    goals = rng.uniform(-1.0, 1.0, (n_goals, cfg.n_links))
    print(
        f"4-link arm (robots 'arm4': damping, joint limits, torque limits {hi.tolist()}; "
        f"T={T}, box-constrained, joint-space ReachCost; no Crocoddyl counterpart built)"
    )
    icfg = ILQRConfig(max_iters=60)
    one = ILQR(dyn, ReachCost(goals[:1], T, control_weight=CONTROL_WEIGHT), T, lo, hi, icfg)
    x0 = torch.zeros(1, dyn.nx, dtype=torch.float64)
    r1, t1 = timed(lambda: one.solve(x0), 1)
    many = ILQR(dyn, ReachCost(goals, T, control_weight=CONTROL_WEIGHT), T, lo, hi, icfg)
    rb, tb = timed(lambda: many.solve(torch.zeros(n_goals, dyn.nx, dtype=torch.float64)), 1)
    err = np.abs(rb.states[:, -1, : cfg.n_links].numpy() - goals).max(1)
    print(
        f"  single goal ours {t1 * 1e3:8.1f} ms  iters {int(r1.iterations[0])} | {n_goals} goals "
        f"batched {tb / n_goals * 1e3:.1f} ms per goal, converged "
        f"{int(rb.converged.sum())}/{n_goals}, iters max {int(rb.iterations.max())}, "
        f"median final joint error {np.median(err):.3f} rad"
    )


def mountain_car_bench() -> None:
    try:
        from robots.mountain_car import MountainCar, MountainCarParams
    except ImportError:
        print("MountainCar: robots.mountain_car not available, skipped")
        return
    print(
        "MountainCar (ML3 variant, |a| <= 0.25, start (-0.55, 0), MountainCarCost = "
        "||x_T - (0.5, 1.0375)||^2, from zero controls)"
    )
    x0 = torch.tensor([[-0.55, 0.0]], dtype=torch.float64)
    cfg = ILQRConfig(max_iters=300)
    warm = MountainCar(MountainCarParams())
    ILQR(warm, MountainCarCost(), 5, config=ILQRConfig(max_iters=2)).solve(x0)  # torch.func import
    for horizon in (35, 100):
        real = MountainCar(MountainCarParams(horizon=horizon))
        free = MountainCar(MountainCarParams(horizon=horizon, action_bound=1e6))
        cost = MountainCarCost()
        t0 = time.perf_counter()
        box = ILQR(real, cost, horizon, lower=-0.25, upper=0.25, config=cfg).solve(x0)
        t1 = time.perf_counter()
        unc = ILQR(free, cost, horizon, config=ILQRConfig(max_iters=100)).solve(x0)
        t2 = time.perf_counter()
        Xb = real.rollout(x0, box.controls)
        Xc = real.rollout(x0, unc.controls.clamp(-0.25, 0.25))
        print(
            f"  T={horizon:3d}  box-QP iLQR: reached {bool(real.solved(Xb).any())} "
            f"(max p {Xb[0, :, 0].max().item():.3f}, {int(box.iterations[0])} it, "
            f"{t1 - t0:.2f} s) | clip-after-solve: reached {bool(real.solved(Xc).any())} "
            f"(max p {Xc[0, :, 0].max().item():.3f}; unclipped plan max |a| "
            f"{unc.controls.abs().max().item():.1f}, p_T {unc.states[0, -1, 0].item():.3f}, "
            f"{int(unc.iterations[0])} it, converged {bool(unc.converged[0])}, "
            f"{t2 - t1:.2f} s)"
        )


if __name__ == "__main__":
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # --help: what this measures, before it runs
    print(
        f"crocoddyl available: {HAVE_CROC}; torch threads 1; numpy backward pass; "
        f"times: wall median (cpu = this process's CPU time, steadier on a shared machine)"
    )
    reach_bench()
    arm4_bench()
    mountain_car_bench()
