"""``ml3r``: the command line. This module is the user-facing edge, so it (alone) prints.

Errors the user can fix (unknown names, bad values, bad files, an occupied output directory)
end with one line on stderr and exit status 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from ml3_robotics.app.robot_eval import (
    EVAL_SMOKE,
    MODEL_EVAL_SMOKE,
    ModelEvalRunConfig,
    ReachEvalRunConfig,
    is_model_loss,
    run_model_eval,
    run_reach_eval,
)
from ml3_robotics.app.runs import (
    ConfigError,
    Experiment,
    RunResult,
    broken_experiments,
    build_config,
    check_out_dir,
    check_run_inputs,
    describe_config,
    discover_experiments,
    execute_run,
    get_experiment,
    parse_set_options,
    plain_value,
    prepare_out_dir,
    read_config_file,
    read_run_config,
)
from ml3_robotics.core.distributed import World, world_from_env
from ml3_robotics.core.errors import ML3Error
from ml3_robotics.core.run_context import RunContext
from ml3_robotics.core.serialization import load_learned_loss, read_loss_sidecar
from ml3_robotics.evaluation.robots import load_reach_loss, load_start_policy
from ml3_robotics.mbrl.loop import load_reach_model
from ml3_robotics.reporting.render import render_system
from ml3_robotics.tasks.model_fitting import MODEL_LOSS_FEATURES
from robots.arm import ArmConfig, load_arm_config
from robots.arm.sim import RenderingUnavailableError
from robots.yaml_io import dump_yaml

log = logging.getLogger("ml3r")

# `ml3r demo`: the main job at its demo size (the experiment's `demo` overrides).
DEMO_EXPERIMENT = "reacher"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line and exit status 2 (argparse's own
    prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ml3r: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _seed(text: str) -> int:
    """``--seed``: an integer >= 0 (numpy's seed sequences refuse negative ones)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _check_seed(seed: Any) -> None:
    if type(seed) is not int or seed < 0:
        raise ConfigError(f"seed: expected an integer >= 0, got {seed!r}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ml3r", description="Robot control with meta-learned losses")
    p.add_argument("-v", "--verbose", action="store_true", help="log details at INFO level")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress (a bar on a terminal, else lines)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the networks here are small, and two "
        "threads on a busy 2-core machine measured over 10x slower)",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the registered experiments")
    show = sub.add_parser("show", help="list an experiment's config fields: type, default, doc")
    show.add_argument("experiment")
    run = sub.add_parser("run", help="run an experiment and write its artefacts")
    run.add_argument("experiment", help="its name (ml3r list); with --help: its config fields")
    run.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes for data-parallel meta-training (torch.distributed, gloo on CPU; "
        "needs --out). Launched with torch.distributed.run; see docs/distributed.md",
    )
    _run_options(run)
    render = sub.add_parser("render", help="write a video of a scripted rollout of a system")
    render.add_argument("system", help="mountain-car or arm")
    render.add_argument("--out", type=Path, required=True, help="video file (.gif or .mp4)")
    render.add_argument("--robot", default="reacher2", help="arm configuration name or YAML path")
    render.add_argument("--backend", default="mujoco", help="mujoco or pybullet")
    render.add_argument("--steps", type=int, default=None)
    render.add_argument("--seed", type=_seed, default=0)
    ev = sub.add_parser(
        "eval",
        help="apply a saved learned loss to an arm: a reach loss (vs task loss and iLQR) or a "
        "model-fitting loss (vs MSE and NLL fits)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_fields_help(ReachEvalRunConfig),
    )
    ev.add_argument("--loss", required=True, help="saved loss (X.safetensors, X.json or X)")
    ev.add_argument("--robot", action="append", default=None,
                    help="arm configuration name or YAML path (default reacher2); repeat it "
                    "for several robots, each evaluated in OUT/robots/NAME")  # fmt: skip
    ev.add_argument("--nproc", type=int, default=1,
                    help="processes that split several robots (needs --out)")  # fmt: skip
    ev.add_argument("--goals", type=int, default=None, help="evaluation goals (default 10)")
    ev.add_argument("--steps", type=int, default=None,
                    help="K inner steps (default: as the loss was meta-trained)")  # fmt: skip
    ev.add_argument("--policy-depth", type=int, default=None, help="hidden layers (default 2)")
    ev.add_argument("--policy-width", type=int, default=None, help="hidden width (default 64)")
    _run_options(ev, resume=False, default_out="runs/eval/<timestamp>")
    demo = sub.add_parser("demo", help="run the main job at demo size and print its table")
    demo.add_argument("--out", type=Path, default=None)
    demo.add_argument("--seed", type=_seed, default=0)
    return p


def _run_options(
    run: argparse.ArgumentParser,
    *,
    resume: bool = True,
    default_out: str = "runs/<experiment>/<timestamp>",
) -> None:
    run.add_argument("--config", type=Path, help="YAML file of config keys")
    run.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable; values parsed as YAML 1.2; the keys: "
        "ml3r show EXPERIMENT, or the list below for eval)",
    )
    run.add_argument("--seed", type=_seed, default=0)
    run.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default {default_out})",
    )
    run.add_argument("--smoke", action="store_true", help="tiny sizes, for tests")
    if resume:
        run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument("--overwrite", action="store_true", help="replace a run in --out")


def _config_layers(
    smoke_settings: Mapping[str, Any],
    config_file: Path | None,
    sets: Sequence[str],
    smoke_yields: Callable[[Mapping[str, Any]], Collection[str]] = lambda _user: (),
) -> list[dict[str, Any]]:
    """Config layers, later ones winning: smoke sizes, then ``--config FILE``, then ``--set``.
    The smoke sizes leave out what ``smoke_yields(the user's keys)`` names: a preset is not a
    choice of the user's, so it gives way where it would contradict one (a protocol that fixes
    a size)."""
    user = [read_config_file(config_file)] if config_file is not None else []
    user.append(parse_set_options(list(sets)))
    merged = {k: v for layer in user for k, v in layer.items()}
    yields = set(smoke_yields(merged))
    return [{k: v for k, v in smoke_settings.items() if k not in yields}, *user]


@dataclass(frozen=True)
class RunPlan:
    """A resolved run, checked and not yet started: what to run, with which config, where.

    Attributes:
        name: the experiment's name as ``config.yaml`` and ``results.json`` record it.
        config: the resolved config.
        run: ``run(config, ctx) -> RunResult``.
        seed, smoke, resume, overwrite: as given (on resume: the run's own seed and size).
        out: the output folder.
    """

    name: str
    config: Any
    run: Callable[[Any, RunContext], RunResult]
    seed: int
    smoke: bool
    out: Path
    resume: bool = False
    overwrite: bool = False

    def execute(self, world: World, progress: bool) -> tuple[RunContext, RunResult]:
        """Rank 0 prepares and locks ``out`` (the other ranks wait for it), then the run;
        the lock is released when it ends."""
        lock = None
        if world.is_main:
            lock = prepare_out_dir(self.out, resume=self.resume, overwrite=self.overwrite)
        world.barrier()
        ctx = RunContext(self.out, self.seed, resume=self.resume, smoke=self.smoke,
                         progress=progress, world=world)  # fmt: skip
        try:
            return ctx, execute_run(ctx, self.name, self.config, self.run)
        finally:
            if lock is not None:
                lock.release()


def plan_experiment(
    name: str,
    *,
    seed: int = 0,
    out: Path | None = None,
    config_file: Path | None = None,
    sets: Sequence[str] = (),
    smoke: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    nproc: int = 1,
    check_out: bool = True,
) -> RunPlan:
    """Resolve and check ``ml3r run``: the config (defaults, smoke sizes, ``--config``,
    ``--set``; on resume the run's own), the files it names and ``out``; writes nothing.
    ``check_out`` False skips the folder's checks (a rank of a data-parallel run: rank 0
    prepares the folder, and the launcher checked it before the processes started)."""
    _check_seed(seed)
    experiment = get_experiment(name)
    if nproc > 1:
        _check_data_parallel(experiment)
        _require_out(out)
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out DIR naming the run to continue")
        if config_file is not None or sets or smoke:
            raise ConfigError(
                "--resume takes the run's own config.yaml; drop --config/--set/--smoke"
            )
        if overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        saved = read_run_config(out)
        if saved.get("experiment") != name:
            raise ConfigError(
                f"--resume: {out} holds a run of {saved.get('experiment')!r}, not {name!r}"
            )
        try:
            config = build_config(experiment.config_type, saved["config"])
        except ConfigError as e:
            raise ConfigError(f"--resume: {out / 'config.yaml'}: {e}") from e
        seed, smoke = int(saved["seed"]), bool(saved.get("smoke", False))
    else:
        layers = _config_layers(
            experiment.smoke if smoke else {}, config_file, sets, experiment.smoke_yields
        )
        config = build_config(experiment.config_type, *layers)
        if out is None:
            out = Path("runs") / name / time.strftime("%Y%m%d-%H%M%S")
    check_run_inputs(experiment, config)
    if check_out:
        check_out_dir(out, resume=resume, overwrite=overwrite)
    return RunPlan(name, config, experiment.run, seed, smoke, out, resume, overwrite)


def run_experiment(
    name: str, *, progress: bool = False, **options: Any
) -> tuple[RunContext, RunResult]:
    """Resolve the config, prepare ``out``, run the experiment, write its artefacts
    (``options``: the keyword arguments of :func:`plan_experiment`: seed, out, config_file,
    sets, smoke, resume, overwrite).

    Under ``torch.distributed.run`` (``ml3r run --nproc N``) every rank resolves the same
    config; rank 0 alone prepares ``out`` and writes in it (the others wait for it, then read
    the checkpoints on resume)."""
    world = world_from_env()
    plan = plan_experiment(name, nproc=world.size, check_out=not world.distributed, **options)
    return plan.execute(world, progress)


def _require_out(out: Path | None) -> None:
    if out is None:
        raise ConfigError("--nproc: a data-parallel run needs --out DIR (every rank uses it)")


def _check_data_parallel(experiment: Experiment) -> None:
    if not experiment.data_parallel:
        able = [n for n, e in discover_experiments().items() if e.data_parallel]
        raise ConfigError(
            f"--nproc: {experiment.name!r} runs in one process (its work is not split across "
            f"processes); experiments that are: {', '.join(able) or 'none'}"
        )


def _launch_data_parallel(argv: Sequence[str], nproc: int, plan: RunPlan) -> int:
    """Re-run this command under ``torch.distributed.run`` with ``nproc`` local processes,
    once ``plan`` (the command resolved and checked here) holds. A failure is one line."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "ml3_robotics.app.launch", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "ml3_robotics", *rest]  # fmt: skip
    code = subprocess.run(cmd, check=False).returncode
    if code != 0:
        checkpoints = sorted((plan.out / "checkpoints").glob("*.safetensors"))
        hint = (
            f"; its last checkpoint in {plan.out / 'checkpoints'} is intact: continue with "
            f"ml3r run {plan.name} --nproc {nproc} --resume --out {plan.out}"
            if checkpoints and plan.name != "eval"
            else ""
        )
        print(f"ml3r: error: a process of the {nproc}-process run failed (exit {code}){hint}",
              file=sys.stderr)  # fmt: skip
    return code


ONE_ROBOT_ONE_PROCESS = (
    "--nproc: one robot is evaluated in one process; several processes split several robots "
    "(repeat --robot)"
)


def plan_eval(
    loss: str | Path,
    *,
    robot: str | Sequence[str] | None = None,
    goals: int | None = None,
    steps: int | None = None,
    policy_depth: int | None = None,
    policy_width: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    config_file: Path | None = None,
    sets: Sequence[str] = (),
    smoke: bool = False,
    overwrite: bool = False,
    nproc: int = 1,
    check_out: bool = True,
) -> RunPlan:
    """Resolve and check ``ml3r eval`` (the loss, the robots, the config, ``out``); writes
    nothing. A reach loss runs :func:`ml3_robotics.app.robot_eval.run_reach_eval`, a
    model-fitting loss (told apart by the features its sidecar names)
    :func:`~ml3_robotics.app.robot_eval.run_model_eval`."""
    _check_seed(seed)
    robots = [robot] if isinstance(robot, str) else robot
    model_loss = is_model_loss(read_loss_sidecar(loss))  # LossFileError before anything else
    if model_loss:
        unused = [f for f, v in (("--policy-depth", policy_depth), ("--policy-width",
                  policy_width)) if v is not None]  # fmt: skip
        if unused:
            raise ConfigError(
                f"{', '.join(unused)}: {loss} is a model-fitting loss (it fits a dynamics "
                "model, not a policy); leave these out"
            )
        options = {"loss": str(loss), "robot": robots, "n_goals": goals, "inner_steps": steps}
        smoke_layer, config_type, run_fn = MODEL_EVAL_SMOKE, ModelEvalRunConfig, run_model_eval
    else:
        options = {"loss": str(loss), "robot": robots, "n_goals": goals, "inner_steps": steps,
                   "policy_depth": policy_depth, "policy_width": policy_width}  # fmt: skip
        smoke_layer, config_type, run_fn = EVAL_SMOKE, ReachEvalRunConfig, run_reach_eval
    layers = _config_layers(smoke_layer if smoke else {}, config_file, sets)
    layers.append({k: v for k, v in options.items() if v is not None})
    config = build_config(config_type, *layers)
    if model_loss:  # FeatureSpecError / LossFileError before anything is written
        load_learned_loss(config.loss, expect_features=MODEL_LOSS_FEATURES)
    else:
        _, sidecar = load_reach_loss(config.loss)
    arms = [_arm(name) for name in config.robot]
    if not model_loss:
        if config.start == "as_trained":  # the start rebuilds on every robot, or one line
            for arm in arms:
                load_start_policy(sidecar, config.loss, arm)
        if config.model_checkpoint:
            load_reach_model(arms[0], config.model, config.model_checkpoint, seed)
    if nproc > 1:
        if len(config.robot) < 2:
            raise ConfigError(ONE_ROBOT_ONE_PROCESS)
        _require_out(out)
    if out is None:
        out = Path("runs") / "eval" / time.strftime("%Y%m%d-%H%M%S")
    if check_out:
        check_out_dir(out, resume=False, overwrite=overwrite)
    return RunPlan("eval", config, run_fn, seed, smoke, out, overwrite=overwrite)


def _arm(robot: str) -> ArmConfig:
    """``--robot``'s arm (its mistakes as :class:`ConfigError` naming the option)."""
    try:
        return load_arm_config(robot)
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"--robot: {e}") from e


def eval_loss(
    loss: str | Path, *, progress: bool = False, **options: Any
) -> tuple[RunContext, RunResult]:
    """``ml3r eval``: :func:`plan_eval` (``options`` are its keyword arguments: robot, goals,
    steps, seed, out, ...), then the evaluation, then its artefacts. Several robots (``robot``
    a list) are evaluated one by one, or split across the processes of ``ml3r eval --nproc
    N``."""
    world = world_from_env()
    plan = plan_eval(loss, nproc=world.size, check_out=not world.distributed, **options)
    return plan.execute(world, progress)


TABLE_STEPS = (1, 2, 5, 10)  # inner steps whose distance the table shows, where recorded
CELL = 13  # width of a method's column; headers wrap at underscores to fit it


def _table_rows(result: RunResult) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Row names (results.json's metric keys, whole) and each method's numbers for them.

    The distance after 1, 2, 5 and 10 inner steps (``distance_by_budget_mm`` where the method was
    tuned per budget, else ``distance_by_inner_step_mm``) follows the final distance: the
    number at the trained step count alone hides an overshoot after it.
    """
    methods = {"ml3": result.metrics, **result.baselines}
    rows: list[str] = []
    values: dict[str, dict[str, float]] = {m: {} for m in methods}
    for method, metrics in methods.items():
        # Per-budget tuned figures where a method has them (the task loss's step size is tuned
        # for each budget), else its one curve.
        curve = metrics.get("distance_by_inner_step_mm")
        tuned = metrics.get("distance_by_budget_mm")
        for key, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                values[method][key] = v
                if key not in rows:
                    rows.append(key)
        for k in TABLE_STEPS:
            if isinstance(tuned, dict) and str(k) in tuned:
                values[method][f"distance_at_inner_step_{k}_mm"] = tuned[str(k)]
            elif isinstance(curve, list) and k < len(curve):
                values[method][f"distance_at_inner_step_{k}_mm"] = curve[k]
    step_rows = [f"distance_at_inner_step_{k}_mm" for k in TABLE_STEPS]
    step_rows = [r for r in step_rows if any(r in v for v in values.values())]
    at = rows.index("mean_final_distance_mm") + 1 if "mean_final_distance_mm" in rows else 0
    return rows[:at] + step_rows + rows[at:], values


def _wrap_header(name: str) -> list[str]:
    """``name`` in lines of at most CELL - 1 characters, broken before underscores."""
    lines = [""]
    for i, part in enumerate(name.split("_")):
        piece = part if i == 0 else "_" + part
        if lines[-1] and len(lines[-1]) + len(piece) > CELL - 1:
            lines.append(piece)
        else:
            lines[-1] += piece
    return lines


def _table(result: RunResult) -> str:
    """Methods side by side (a column each), one metric per row, in about 100 columns."""
    rows, values = _table_rows(result)
    methods = list(values)
    width = max(len(r) for r in rows) + 2 if rows else 8
    headers = [_wrap_header(m) for m in methods]
    depth = max(len(h) for h in headers)
    lines = []
    for level in range(depth):
        label = "method" if level == depth - 1 else ""
        cells = [(h[level] if level < len(h) else "").rjust(CELL) for h in headers]
        lines.append(label.ljust(width) + "".join(cells))
    for row in rows:
        cells = [
            (f"{values[m][row]:.4g}" if row in values[m] else "-").rjust(CELL) for m in methods
        ]
        lines.append(row.ljust(width) + "".join(cells))
    return "\n".join(lines)


def _fields_help(config_type: type) -> str:
    """Every field of a config dataclass: name, type, default and one paragraph of doc."""
    lines = ["config fields (set with --set KEY=VALUE or a --config YAML file):"]
    for f in describe_config(config_type):
        default = dump_yaml(plain_value(f.default), flow=True).strip()
        default = default.removesuffix("\n...").removesuffix(" ...")
        lines.append(f"  {f.name} ({f.type}, default {default})")
        if f.doc:
            lines.append(textwrap.fill(f.doc, width=96, initial_indent="      ",
                                       subsequent_indent="      "))  # fmt: skip
    return "\n".join(lines)


def _config_help(experiment: str) -> str:
    """An experiment's config fields (``ml3r show``, ``ml3r run EXPERIMENT --help``)."""
    exp = get_experiment(experiment)
    lines = [f"{exp.name}: {exp.summary}", "", _fields_help(exp.config_type)]
    if exp.smoke:
        smoke = ", ".join(f"{k}={v}" for k, v in exp.smoke.items())
        lines += ["", textwrap.fill(f"--smoke sets: {smoke}", width=98, subsequent_indent="  ")]
    return "\n".join(lines)


def _subcommand_help(name: str) -> str:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].format_help()


def _experiment_help_request(argv: Sequence[str]) -> str | None:
    """The experiment of ``ml3r [options] run EXPERIMENT ... --help``, else None."""
    argv = list(argv)
    if "run" not in argv or not {"-h", "--help"} & set(argv):
        return None
    rest = iter(argv[argv.index("run") + 1 :])
    for arg in rest:
        if arg in ("--set", "--config", "--out", "--seed"):
            next(rest, None)  # that option's value
        elif not arg.startswith("-"):
            return arg
    return None


# What the CLI reports as one line with exit status 2: mistakes a user can fix.
USER_ERRORS = (ML3Error, ConfigError, ValueError, FileNotFoundError, RenderingUnavailableError)


def _plan(args: argparse.Namespace) -> RunPlan:
    """The ``run`` or ``eval`` command of ``args`` resolved and checked, for the launcher."""
    common = {"seed": args.seed, "out": args.out, "config_file": args.config, "sets": args.sets,
              "smoke": args.smoke, "overwrite": args.overwrite, "nproc": args.nproc}  # fmt: skip
    if args.command == "run":
        return plan_experiment(args.experiment, resume=args.resume, **common)
    return plan_eval(args.loss, robot=args.robot, goals=args.goals, steps=args.steps,
                     policy_depth=args.policy_depth, policy_width=args.policy_width,
                     **common)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    experiment = _experiment_help_request(argv)
    if experiment is not None:
        try:
            fields = _config_help(experiment)
        except ConfigError as e:
            print(f"ml3r: error: {e}", file=sys.stderr)
            return 2
        print(_subcommand_help("run"))
        print()
        print(fields)
        return 0
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Progress lines (phases; meta-training when stderr is not a terminal) without -v's details.
    progress_log = logging.getLogger("ml3r.progress")
    progress_log.handlers.clear()
    progress_log.propagate = False
    progress_log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    if not args.quiet:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[ml3r %(asctime)s] %(message)s", "%H:%M:%S"))
        progress_log.addHandler(handler)
    if args.threads < 1:
        print(
            f"ml3r: error: --threads: expected an integer >= 1, got {args.threads}", file=sys.stderr
        )
        return 2
    torch.set_num_threads(args.threads)
    progress = sys.stderr.isatty()
    if args.command in ("run", "eval") and args.nproc != 1:
        max_nproc = os.cpu_count() or 1
        if not 1 <= args.nproc <= max_nproc:
            print(f"ml3r: error: --nproc: expected an integer from 1 to {max_nproc} (the CPUs "
                  f"of this machine), got {args.nproc}", file=sys.stderr)  # fmt: skip
            return 2
        if "WORLD_SIZE" not in os.environ:
            try:  # every check before any process starts
                plan = _plan(args)
            except USER_ERRORS as e:
                print(f"ml3r: error: {e}", file=sys.stderr)
                return 2
            return _launch_data_parallel(argv, args.nproc, plan)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # one voice per run: rank 0 reports progress and prints the table
        progress_log.setLevel(logging.WARNING)
        progress = False
    try:
        if args.command == "show":
            print(_config_help(args.experiment))
            return 0
        if args.command == "list":
            for name, exp in discover_experiments().items():
                print(f"{name:16s} {exp.summary}")
            for name, reason in broken_experiments().items():
                print(f"ml3r: warning: plug-in {name!r} is not listed: {reason}", file=sys.stderr)
            return 0
        if args.command == "render":
            path = render_system(
                args.system,
                args.out,
                robot=args.robot,
                backend=args.backend,
                steps=args.steps,
                seed=args.seed,
            )
            print(f"wrote {path}")
            return 0
        if args.command == "eval":
            ctx, result = eval_loss(
                args.loss,
                robot=args.robot,
                goals=args.goals,
                steps=args.steps,
                policy_depth=args.policy_depth,
                policy_width=args.policy_width,
                seed=args.seed,
                out=args.out,
                config_file=args.config,
                sets=args.sets,
                smoke=args.smoke,
                overwrite=args.overwrite,
                progress=progress,
            )
        elif args.command == "demo":
            ctx, result = run_experiment(
                DEMO_EXPERIMENT,
                seed=args.seed,
                out=args.out,
                sets=[f"{k}={v}" for k, v in get_experiment(DEMO_EXPERIMENT).demo.items()],
                progress=progress,
            )
        else:
            ctx, result = run_experiment(
                args.experiment,
                seed=args.seed,
                out=args.out,
                config_file=args.config,
                sets=args.sets,
                smoke=args.smoke,
                resume=args.resume,
                overwrite=args.overwrite,
                progress=progress,
            )
    except USER_ERRORS as e:
        if rank == 0:  # every rank meets the same mistake: one line, from rank 0
            print(f"ml3r: error: {e}", file=sys.stderr)
        return 2
    if not ctx.world.is_main:
        return 0
    print(_table(result))
    print(f"artefacts in {ctx.out} ({ctx.timing['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
