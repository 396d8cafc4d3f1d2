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
import fcntl
import glob
import inspect
import json
import math
import os
import platform
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from ml3_robotics.core.errors import ML3Error, RunDirError
from ml3_robotics.core.learned_loss import LearnedLoss
from ml3_robotics.core.meta_trainer import MetaTrainer
from ml3_robotics.core.run_context import (
    RUN_MARKER,
    RunContext,
    marker_entry,
    read_run_marker,
    symlink_on_the_way,
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
        check_inputs: ``check_inputs(config)`` reads and checks the files and names the
            config refers to (saved losses, robots), raising ``ValueError`` or
            ``FileNotFoundError``; called before the run folder is made, so a mistake in them
            leaves nothing behind.
        smoke_yields: ``smoke_yields(user_keys)``: the keys of ``smoke`` that give way to the
            user's own choices (``user_keys``: what ``--config`` and ``--set`` set), where the
            preset would contradict them.
    """

    name: str
    summary: str
    config_type: type
    run: Callable[[Any, RunContext], RunResult]
    smoke: Mapping[str, Any] = field(default_factory=dict)
    demo: Mapping[str, Any] = field(default_factory=dict)
    data_parallel: bool = False
    check_inputs: Callable[[Any], None] = lambda _config: None
    smoke_yields: Callable[[Mapping[str, Any]], Collection[str]] = lambda _user: ()


def check_run_inputs(experiment: Experiment, config: Any) -> None:
    """``experiment.check_inputs(config)`` with its mistakes as :class:`ConfigError`."""
    try:
        experiment.check_inputs(config)
    except ML3Error:
        raise
    except (TypeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e


def _load_plugins() -> tuple[dict[str, Experiment], dict[str, str]]:
    """The registered experiments that load, and ``name -> one-line reason`` for the others."""
    found: dict[str, Experiment] = {}
    broken: dict[str, str] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            exp = ep.load()
        except Exception as e:  # any error of a third-party module: report it, go on
            broken[ep.name] = f"{ep.value} failed to import ({type(e).__name__}: {e})"
            continue
        if isinstance(exp, Experiment):
            found[exp.name] = exp
        else:
            broken[ep.name] = f"{ep.value} is not an Experiment"
    return dict(sorted(found.items())), broken


def discover_experiments() -> dict[str, Experiment]:
    """All experiments registered under the ``ml3r.experiments`` entry-point group; a plug-in
    that fails to load is left out (:func:`broken_experiments` says why), the others work."""
    return _load_plugins()[0]


def broken_experiments() -> dict[str, str]:
    """Registered plug-ins that fail to import or are not an :class:`Experiment`: name ->
    one-line reason."""
    return _load_plugins()[1]


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; unknown names suggest the nearest registered one."""
    experiments = discover_experiments()
    if name in experiments:
        return experiments[name]
    broken = broken_experiments()
    if name in broken:
        raise ConfigError(f"experiment {name!r} cannot be loaded: {broken[name]}")
    close = difflib.get_close_matches(name, list(experiments), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown experiment {name!r}{hint} (available: {', '.join(experiments) or 'none'})"
    )


# -- config resolution -----------------------------------------------------------------------


# No integer setting here is near a billion (steps, sizes, counts); a larger one is a typo, and
# taken as given it allocates or loops without end.
MAX_CONFIG_INT = 10**9


def _short(value: int) -> str:
    """A huge integer as a few digits and its length."""
    text = str(value)
    return text if len(text) <= 20 else f"{text[:12]}... ({len(text)} digits)"


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
        if abs(value) > MAX_CONFIG_INT:
            raise ConfigError(f"{key}: expected an integer of at most {MAX_CONFIG_INT:.0e} in "
                              f"size, got {_short(value)}")  # fmt: skip
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int) and abs(value) > 1e300:
            raise ConfigError(f"{key}: expected a finite number, got {_short(value)}")
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


# What every run writes at the top of its folder: a user's own file of one of these names is
# refused before --overwrite removes anything (not when the run reaches it).
RUN_FILES = ("config.yaml", "results.json", "metrics.csv")


class RunFolderLock:
    """An exclusive OS lock (``flock``) on a run folder, held while a run writes in it: a second
    run on the same folder is refused at once, and a killed run's lock goes with its process."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._fd: int | None = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self.release()
            raise RunDirError(
                f"--out {out}: another ml3r run is using this folder (one run per folder at "
                "a time); wait for it or choose another --out"
            ) from e

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _listed_files(out: Path) -> list[Path]:
    """Every file the run in ``out`` wrote, by its marker, nested runs' files included; all of
    it checked before anything is removed (raises :class:`RunDirError`)."""
    marker = read_run_marker(out)
    if marker is None:
        return []
    where = out / RUN_MARKER
    files = []
    for name in marker["written"]:
        rel = marker_entry(name, where)
        if rel == PurePosixPath(RUN_MARKER):
            continue
        target = out / rel
        link = symlink_on_the_way(out, rel.parent)
        if link is not None:
            raise RunDirError(f"run marker {where} lists {name!r} behind the symbolic link {link}")
        if target.is_dir() and not target.is_symlink():
            if marker["format_version"] == 1:
                raise RunDirError(
                    f"--overwrite: {out} was written by an older ml3r whose marker lists whole "
                    f"folders ({name}/), so what is ours in them is unknown; delete the folder "
                    "yourself or choose a new --out"
                )
            raise RunDirError(f"run marker {where} lists {name!r}, which is a folder")
        if rel.name == RUN_MARKER and target.is_file():
            files += _listed_files(target.parent)  # a nested run: its own files first
        files.append(target)
    return files


def _remove_run_outputs(out: Path, files: list[Path]) -> None:
    """Delete ``files``, the files the run in ``out`` wrote (:func:`_listed_files`), and their
    killed writes' temporaries, then the folders that this leaves empty; a user's files stay,
    wherever they are."""
    for path in files:
        for target in (path, *path.parent.glob(f".{glob.escape(path.name)}.*.tmp")):
            if target.is_symlink() or target.is_file():
                target.unlink()
    folders = {p for f in files for p in f.parents if out in p.parents}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Every check :func:`prepare_out_dir` makes, reading only (a launcher checks before it
    starts processes). Raises :class:`RunDirError` or :class:`ConfigError` (one line)."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise RunDirError(f"--out {out}: {parent} is a file, not a folder")
    if resume:
        if not (out / "config.yaml").is_file():
            raise RunDirError(f"--resume: {out} holds no run to resume (no config.yaml)")
        read_run_marker(out)  # refuses a damaged marker before the run writes
    elif out.is_dir():
        _check_clearable(out, overwrite)


def prepare_out_dir(out: Path, *, resume: bool, overwrite: bool) -> RunFolderLock:
    """Create ``out``, or check it before a run writes into it, and lock it for the run.

    A new run needs ``out`` absent, empty, or (with ``overwrite``) a marked ml3r run folder, of
    which only the files the run wrote are removed; resuming needs the run's ``config.yaml``.
    Raises :class:`RunDirError` (one line) otherwise; nothing is touched before the checks pass.
    The caller releases the returned lock when the run is done (or its process exits).
    """
    check_out_dir(out, resume=resume, overwrite=overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--out {out}: cannot create the folder ({e.strerror})") from e
    lock = RunFolderLock(out)
    try:  # checked again under the lock: another run may have started in between
        if resume:
            check_out_dir(out, resume=resume, overwrite=overwrite)
        else:
            _remove_run_outputs(out, _check_clearable(out, overwrite))
            write_run_marker(out, [])
    except BaseException:
        lock.release()
        raise
    return lock


def _check_clearable(out: Path, overwrite: bool) -> list[Path]:
    """Refuse a folder a new run cannot use: not empty and not an ml3r run, a run without
    ``overwrite``, or a run whose files cannot all be removed safely. Returns the files of the
    run to remove (:func:`_listed_files`; none in an empty folder)."""
    if not any(out.iterdir()):
        return []
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
    listed = _listed_files(out)
    for name in RUN_FILES:
        if (out / name).exists() and out / name not in listed:
            raise RunDirError(
                f"--overwrite: {out / name} is not a file the run in {out} wrote (its marker "
                "does not list it); move it away, nothing was removed"
            )
    return listed


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
    if not path.is_file():
        raise RunDirError(f"--resume: {out} holds no run to resume (no config.yaml)")
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
