"""Experiments, their configs and the artefacts every run leaves in its output directory.

An experiment is a frozen config dataclass plus a ``run(config, ctx)`` function; it registers
under the ``ml3r.experiments`` entry-point group. The CLI resolves the config (defaults, then
``--smoke`` sizes, then ``--config`` YAML, then ``--set``), prepares the output directory and
writes ``config.yaml``, ``results.json`` and ``metrics.csv``; the experiment writes its plots,
learned loss and checkpoints through :class:`RunContext`, always inside ``ctx.out``.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import inspect
import json
import math
import platform
import re
import shutil
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ml3_robotics.core.errors import ML3Error, RunDirError
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.meta_trainer import MetaTrainer
from ml3_robotics.core.run_context import (
    RUN_MARKER,
    RunContext,
    read_run_marker,
    write_run_marker,
)
from ml3_robotics.core.serialization import atomic_write_bytes, load_learned_loss
from robots.yaml_io import dump_yaml, parse_yaml, read_yaml_file

ENTRY_POINT_GROUP = "ml3r.experiments"


class ConfigError(ML3Error, ValueError):
    """An unknown or mistyped configuration key or value."""


@dataclass
class RunResult:
    """What an experiment reports; written to ``results.json``.

    Attributes:
        metrics: named numbers of our method.
        baselines: the same metrics per baseline name.
        extra: anything else worth keeping (per-task figures, per-seed lists).
    """

    metrics: dict[str, Any]
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_other_rank(cls) -> RunResult:
        """What a data-parallel rank other than 0 returns once its share is done (rank 0
        reports; nothing of this is written)."""
        return cls(metrics={})


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: the CLI name (``ml3r run NAME``).
        summary: one line for ``ml3r list``.
        config_type: frozen dataclass with a default for every field.
        run: ``run(config, ctx) -> RunResult``.
        smoke: field overrides for ``--smoke`` (a size the test suite runs end to end).
        demo: field overrides for the demo size (``ml3r demo``: minutes on 2 CPU cores).
        data_parallel: the run splits its work across processes (``ml3r run --nproc N``,
            :mod:`ml3_robotics.core.distributed`); others refuse ``--nproc``.
    """

    name: str
    summary: str
    config_type: type
    run: Callable[[Any, RunContext], RunResult]
    smoke: Mapping[str, Any] = field(default_factory=dict)
    demo: Mapping[str, Any] = field(default_factory=dict)
    data_parallel: bool = False


def discover_experiments() -> dict[str, Experiment]:
    """All experiments registered under the ``ml3r.experiments`` entry-point group."""
    found: dict[str, Experiment] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        exp = ep.load()
        if not isinstance(exp, Experiment):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not an Experiment")
        found[exp.name] = exp
    return dict(sorted(found.items()))


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; unknown names suggest the nearest registered one."""
    experiments = discover_experiments()
    if name in experiments:
        return experiments[name]
    close = difflib.get_close_matches(name, list(experiments), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown experiment {name!r}{hint} (available: {', '.join(experiments) or 'none'})"
    )


# -- config resolution -----------------------------------------------------------------------


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check/convert ``value`` (parsed YAML) against a dataclass field annotation."""
    if isinstance(annotation, str):
        raise TypeError(f"field {key}: unresolved annotation {annotation!r}")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: got {value!r}")
    if origin is tuple:
        if isinstance(value, str) and "," in value:
            # YAML reads a,b as one string; a list needs brackets.
            raise ConfigError(f"{key}: a list is written [a, b] (YAML), got {value!r}")
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(key, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))
    if origin is typing.Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: got {value!r}, expected one of {list(args)}{hint}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"field {key}: unsupported annotation {annotation!r}")


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _field_names(config_type: type) -> list[str]:
    """Every key ``config_type`` takes: its fields, and ``group.name`` for each field of a
    nested config group (also written as a mapping under ``group``)."""
    hints = typing.get_type_hints(config_type)
    names = []
    for f in dataclasses.fields(config_type):
        names.append(f.name)
        if _is_config(hints[f.name]):
            names += [f"{f.name}.{sub}" for sub in _field_names(hints[f.name])]
    return names


def build_config(
    config_type: type,
    *layers: Mapping[str, Any],
) -> Any:
    """Instantiate ``config_type`` from its defaults overridden by ``layers`` in order.

    A field that is itself a config dataclass (a group, e.g. ``model``) takes a mapping of its
    fields or dotted keys (``model.fit_epochs``); a layer changes only the keys it names.
    Unknown keys raise :class:`ConfigError` suggesting the nearest field; values are checked
    against the field types; the dataclass's own ``__post_init__`` validates the rest.
    """
    hints = typing.get_type_hints(config_type)
    values: dict[str, Any] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    known = _field_names(config_type)

    def check_known(key: str) -> None:
        if key not in known:
            # A field of a group named without its group ("fit_epochs") is pointed to exactly.
            close = [k for k in known if k.endswith("." + key)]
            close = close or difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")

    for layer in layers:
        for key, value in layer.items():
            check_known(str(key))
            name, dot, sub = str(key).partition(".")
            if not _is_config(hints[name]):
                values[name] = _coerce(key, value, hints[name])
                continue
            if dot:
                value = {sub: value}
            elif isinstance(value, hints[name]):
                value = config_to_dict(value)
            elif not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a mapping of its fields, got {value!r}")
            for sub_key in value:
                check_known(f"{name}.{sub_key}")
            groups.setdefault(name, []).append(dict(value))
    for name, group_layers in groups.items():
        try:
            values[name] = build_config(hints[name], *group_layers)
        except ConfigError as e:  # "field: expected ..." names the field inside the group
            raise ConfigError(f"{name}.{e}") from e
    try:
        return config_type(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e


@dataclass(frozen=True)
class FieldHelp:
    """One config field as ``ml3r show`` lists it."""

    name: str
    type: str
    default: Any
    doc: str


def _docstring_attributes(cls: type) -> dict[str, str]:
    """``name: text`` entries of the Google-style ``Attributes:`` sections of ``cls`` and its
    bases (``a, b: text`` documents both; continuation lines are joined)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) if "__doc__" in vars(klass) else None
        if not doc or "Attributes:" not in doc:
            continue
        current: list[str] = []
        for line in doc.split("Attributes:", 1)[1].splitlines()[1:]:
            if line and not line.startswith(" "):
                break  # the next section
            entry = re.match(r"^    (\w[\w, ]*?):\s+(.*)$", line)
            if entry:
                current = [n.strip() for n in entry.group(1).split(",")]
                for name in current:
                    docs[name] = entry.group(2).strip()
            elif line.strip() and current:
                for name in current:
                    docs[name] += " " + line.strip()
    return docs


def _source_comments(cls: type) -> dict[str, str]:
    """Comments written beside or just above each field in the class bodies of ``cls`` and
    its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            field_line = re.match(r"^    (\w+): [^=]+=", line)
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
            elif field_line:
                name = field_line.group(1)
                trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
                text = " ".join(t for t in (" ".join(above), trailing) if t)
                if text:
                    docs[name] = text
                above = []
            else:
                above = []
    return docs


def describe_config(config_type: type, prefix: str = "") -> list[FieldHelp]:
    """Every field of a config dataclass: name, type, default and its documentation (the
    class's ``Attributes:`` docstring, else the comment beside or above the field); the fields
    of a nested group follow as ``group.field``."""
    hints = typing.get_type_hints(config_type)
    docs = {**_source_comments(config_type), **_docstring_attributes(config_type)}
    out = []
    for f in dataclasses.fields(config_type):
        hint = hints[f.name]
        if _is_config(hint):
            out += describe_config(hint, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        type_name = hint.__name__ if isinstance(hint, type) else str(hint)
        type_name = re.sub(r"\b(typing|builtins)\.", "", type_name)
        out.append(FieldHelp(prefix + f.name, type_name, default, docs.get(f.name, "")))
    return out


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """``["a=1", "b=[2, 3]"]`` -> ``{"a": 1, "b": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected key=value, got {item!r}")
        try:
            out[key.strip()] = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else ""
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of config keys (refuses anything else with a clear message)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: file {path} does not exist")
    try:
        data = read_yaml_file(path, f"--config {path}")
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"--config: {path} must hold a mapping of keys, got {type(data).__name__}"
        )
    return data


def plain_value(value: Any) -> Any:
    """A config value as YAML/JSON writes it (tuples become lists)."""
    if isinstance(value, tuple | list):
        return [plain_value(x) for x in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain YAML/JSON-friendly dict of a config dataclass (tuples become lists)."""
    return {
        f.name: config_to_dict(value) if dataclasses.is_dataclass(value) else plain_value(value)
        for f in dataclasses.fields(config)
        for value in [getattr(config, f.name)]
    }


# -- the run directory -----------------------------------------------------------------------


def _remove_run_outputs(out: Path, written: list[str]) -> None:
    """Delete the top-level entries a run wrote (and their stale atomic-write temporaries)."""
    for name in written:
        if not name or "/" in name or name in (".", ".."):
            raise RunDirError(f"{out / RUN_MARKER} lists {name!r}, which is not a top-level name")
        targets = [out / name, *out.glob(f".{glob.escape(name)}.*.tmp")]
        for target in targets:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()


def prepare_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create ``out``, or check it before a run writes into it.

    A new run needs ``out`` absent, empty, or (with ``overwrite``) a marked ml3r run folder, of
    which only what the run wrote is removed; resuming needs the run's ``config.yaml``. Raises
    :class:`RunDirError` (one line) otherwise; nothing is touched before the checks pass.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"--out {out}: {parent} is a file, not a folder")
    if resume:
        if not (out / "config.yaml").is_file():
            raise RunDirError(f"--resume: {out} holds no run to resume (no config.yaml)")
        read_run_marker(out)  # refuses a damaged marker before the run writes
        return
    if out.is_dir() and any(out.iterdir()):
        marker = read_run_marker(out)
        if marker is None:
            found = sorted(p.name for p in out.iterdir())
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            raise RunDirError(
                f"--out {out} is not empty and is not an ml3r run folder (holds {shown}); "
                "choose a new or empty folder"
            )
        if not overwrite:
            raise RunDirError(
                f"output directory {out} holds another run; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        _remove_run_outputs(out, [n for n in marker["written"] if n != RUN_MARKER])
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--out {out}: cannot create the folder ({e.strerror})") from e
    write_run_marker(out, [])


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape results."""
    out = {"python": platform.python_version()}
    for dist in ("ml3-robotics", "torch", "numpy", "mujoco", "pybullet", "gymnasium"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _finite_or_null(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no bare NaN, and a reader that meets
    one (Python's json writes it by default) fails on the whole file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def write_results(ctx: RunContext, experiment: str, config: Any, result: RunResult) -> Path:
    """Write ``results.json`` with the fields DESIGN.md names."""
    doc = {
        "experiment": experiment,
        "seed": ctx.seed,
        "config": config_to_dict(config),
        "metrics": result.metrics,
        "baselines": result.baselines,
        "timing": {k: round(v, 4) for k, v in ctx.timing.items()},
        "versions": versions(),
        **({"extra": result.extra} if result.extra else {}),
    }
    path = ctx.path("results.json")
    atomic_write_bytes(
        path, (json.dumps(_finite_or_null(doc), indent=2, allow_nan=False) + "\n").encode()
    )
    return path


def write_config(ctx: RunContext, experiment: str, config: Any, smoke: bool) -> None:
    doc = {
        "experiment": experiment,
        "seed": ctx.seed,
        "smoke": smoke,
        "config": config_to_dict(config),
    }
    atomic_write_bytes(ctx.path("config.yaml"), dump_yaml(doc).encode())


def execute_run(
    ctx: RunContext, experiment: str, config: Any, run: Callable[[Any, RunContext], RunResult]
) -> RunResult:
    """``config.yaml``, then ``run(config, ctx)`` timed as the ``total`` phase, then
    ``results.json``: what every run through the CLI leaves (rank 0's files, in a
    data-parallel run)."""
    if ctx.world.is_main:
        write_config(ctx, experiment, config, ctx.smoke)
    with ctx.phase("total"):
        result = run(config, ctx)
    if ctx.world.is_main:
        write_results(ctx, experiment, config, result)
    return result


def read_run_config(out: Path) -> dict[str, Any]:
    """The ``config.yaml`` of an existing run (for ``--resume``)."""
    path = out / "config.yaml"
    try:
        data = read_yaml_file(path, f"--resume: {path}")
    except ValueError as e:
        raise RunDirError(str(e)) from e
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("config"), dict)
        or not isinstance(data.get("seed"), int)
    ):
        raise RunDirError(f"--resume: {path} is not a run config written by ml3r")
    return data


def load_or_meta_train(
    variants: Sequence[str],
    paths: Mapping[str, str | None],
    features: tuple[str, ...],
    meta_train: Callable[[str], tuple[LearnedLoss, MetaTrainer]],
    ctx: RunContext,
    keep_row: Callable[[Mapping[str, float]], bool] = lambda _row: True,
) -> tuple[dict[str, LearnedLoss], dict[str, MetaTrainer]]:
    """The learned losses of an experiment with several variants: per variant the saved loss at
    ``paths[variant]`` (refused unless it reads ``features``) or a fresh loss and its trainer
    from ``meta_train(variant)``. On ``--resume`` the trainers restore their checkpoints and
    ``metrics.csv`` is rewritten from their histories (rows ``keep_row`` accepts, tagged with
    the variant), so it holds no row past a checkpoint."""
    losses: dict[str, LearnedLoss] = {}
    trainers: dict[str, MetaTrainer] = {}
    for variant in variants:
        path = paths.get(variant)
        if path is not None:
            losses[variant], _ = load_learned_loss(path, expect_features=features)
        else:
            losses[variant], trainers[variant] = meta_train(variant)
    if ctx.resume:
        resumed = [v for v, t in trainers.items() if t.load_checkpoint()]
        if resumed:
            ctx.metrics_log.restart(
                [
                    {"variant": v, **row}
                    for v in resumed
                    for row in trainers[v].history
                    if keep_row(row)
                ]
            )
    return losses, trainers
