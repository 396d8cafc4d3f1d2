"""The handle a run gives library code: its seed, timed phases, ``metrics.csv`` and paths inside
its output directory.

Every name a run writes is recorded in the run marker before it is written, so a killed run
leaves an exact list (``--overwrite`` removes only those names; a folder without a marker is
never emptied). Run folders, configs and the results file are the app layer's
(:mod:`ml3_robotics.app.runs`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from ml3_robotics.core.distributed import SINGLE, World
from ml3_robotics.core.errors import RunDirError
from ml3_robotics.core.serialization import atomic_write_bytes, read_format_json

progress_log = logging.getLogger("ml3r.progress")
# The file that makes a folder an ml3r run: format, version and the files the run wrote, as
# paths relative to the folder (each recorded before it is written, so a killed run leaves an
# exact list). --overwrite removes only those files; a folder without it is never emptied. A
# nested run (a robot of a several-robot eval, the transfer study's source run) keeps its own
# marker, which the outer marker lists. Version 1 listed top-level names, folders included.
RUN_MARKER = ".ml3r-run.json"
RUN_FORMAT = "ml3r-run"
RUN_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


def marker_entry(name: Any, where: Path) -> PurePosixPath:
    """A marker entry checked: a non-empty relative path without ``..`` (raises
    :class:`RunDirError` naming the marker ``where`` otherwise)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise RunDirError(f"run marker {where} lists {name!r}, which is not a file name")
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", ".") for part in rel.parts) or not rel.parts:
        raise RunDirError(
            f"run marker {where} lists {name!r}, which is not a path inside its folder"
        )
    return rel


def read_run_marker(out: Path) -> dict[str, Any] | None:
    """The run marker of ``out``, or None when ``out`` is not a marked ml3r run folder. Every
    entry is checked before the marker is returned."""
    path = out / RUN_MARKER
    if path.is_symlink():
        raise RunDirError(f"run marker {path} is a symbolic link; ml3r never writes one")
    if not path.is_file():
        return None
    doc = read_format_json(path, RUN_FORMAT, _READABLE_VERSIONS, RunDirError, "run marker")
    if not isinstance(doc.get("written"), list):
        raise RunDirError(f"run marker {path} has no list of written names")
    for name in doc["written"]:
        marker_entry(name, path)
    return doc


def write_run_marker(out: Path, written: list[str]) -> None:
    doc = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "written": written}
    atomic_write_bytes(out / RUN_MARKER, (json.dumps(doc, indent=1) + "\n").encode())


def symlink_on_the_way(out: Path, rel: PurePosixPath) -> Path | None:
    """The first of ``out/rel``'s components below ``out`` that is a symbolic link, if any: a
    run follows none (one could lead out of its folder)."""
    p = out
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            return p
    return None


class MetricsLog:
    """``metrics.csv``: one row per logged step, appended and flushed as the run goes.

    A row may bring a column the earlier rows lacked (an evaluation every N iterations); the
    file is then rewritten with the union of columns, empty where a row had no value.
    """

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled  # False on ranks other than 0: rows are kept, nothing written
        self._rows: list[dict[str, Any]] = []
        self._fields: list[str] = []

    def restart(self, rows: list[dict[str, float]]) -> None:
        """Rewrite the file from ``rows`` (on resume: drop rows past the checkpoint)."""
        self._rows = []
        self._fields = []
        if self.enabled:
            self.path.unlink(missing_ok=True)
        for row in rows:
            self.append(row)

    def append(self, row: Mapping[str, Any]) -> None:
        self._rows.append(dict(row))
        new_fields = [k for k in row if k not in self._fields]
        if new_fields or not self.path.exists():
            self._fields += new_fields
            self._write(self._rows, mode="w", header=True)
        else:
            self._write([row], mode="a", header=False)

    def _write(self, rows: list[Mapping[str, Any]], mode: str, header: bool) -> None:
        if not self.enabled:
            return
        # O_NOFOLLOW: a link put in place of the file is refused, never written through.
        flags = (
            os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if mode == "a" else os.O_TRUNC)
        )
        with open(os.open(self.path, flags, 0o666), mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._fields, restval="")
            if header:
                writer.writeheader()
            writer.writerows(rows)


class RunContext:
    """Everything an experiment needs from the run: seed, output dir, timing, logging.

    Attributes:
        out: the output directory (the only place a run writes).
        seed: the run's seed.
        resume: continue from the checkpoint in ``out/checkpoints``.
        smoke: the run uses the experiment's smoke sizes.
        progress: show progress bars.
        world: this process's rank (data-parallel runs): ranks other than 0 read the folder
            (checkpoints on resume) but write nothing in it.
        timing: seconds per named phase.
    """

    def __init__(
        self,
        out: Path,
        seed: int,
        *,
        resume: bool = False,
        smoke: bool = False,
        progress: bool = False,
        world: World = SINGLE,
    ) -> None:
        self.world = world
        self.out = Path(out)
        self.seed = seed
        self.resume = resume
        self.smoke = smoke
        self.progress = progress
        self.timing: dict[str, float] = {}
        self._open_phases: list[str] = []
        marker = read_run_marker(self.out) if self.out.is_dir() else None
        self._written: list[str] = list(marker["written"]) if marker else []
        self._metrics_log: MetricsLog | None = None

    def _record(self, name: str) -> None:
        """Add ``name`` (relative to ``out``) to the run marker before it is written."""
        if name in self._written or not self.world.is_main:
            return
        self._written.append(name)
        self.out.mkdir(parents=True, exist_ok=True)
        write_run_marker(self.out, self._written)

    @property
    def metrics_log(self) -> MetricsLog:
        if self._metrics_log is None:
            self._metrics_log = MetricsLog(self.path("metrics.csv"), enabled=self.world.is_main)
        return self._metrics_log

    @property
    def checkpoint_path(self) -> Path:
        return self.path("checkpoints/meta_train.safetensors")

    def loss_stem(self, name: str) -> Path:
        """``out/name``, the stem a learned loss is saved under (``.safetensors`` + ``.json``)."""
        self.path(f"{name}.json")
        return self.path(f"{name}.safetensors").with_suffix("")

    def nested_run(
        self,
        name: str,
        *,
        smoke: bool | None = None,
        world: World = SINGLE,
        progress: bool = False,
    ) -> RunContext:
        """A run of its own in the folder ``out/name`` (its own marker, which this run's marker
        lists, so ``--overwrite`` of this run removes what the nested run wrote too).

        Args:
            name: the folder, relative to ``out``.
            smoke: the nested run's size is the smoke size (default: as this run).
            world: the nested run's ranks (:data:`SINGLE`: it is computed by one process, which
                writes it, whatever rank that is).
            progress: show its progress bars.
        """
        marker = self.path(f"{name}/{RUN_MARKER}", create=True)
        smoke = self.smoke if smoke is None else smoke
        return RunContext(marker.parent, self.seed, smoke=smoke, progress=progress, world=world)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; repeated phases add up. The outermost phases of a run (inside
        ``total``) are reported to the ``ml3r.progress`` logger as they start and end."""
        report = name != "total" and not any(p != "total" for p in self._open_phases)
        self._open_phases.append(name)
        if report:
            progress_log.info("%s ...", name)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self._open_phases.pop()
            self.timing[name] = self.timing.get(name, 0.0) + seconds
            if report:
                progress_log.info("%s done (%.1f s)", name, seconds)

    def path(self, name: str, *, create: bool = False) -> Path:
        """A file name inside the output directory, recorded in the run marker before the
        caller writes it.

        Refuses (``ValueError`` or :class:`RunDirError`) a name that leaves the folder, a path
        through a symbolic link, and a file this run did not write (a user's file is never
        written over). Ranks other than 0 get the path and record nothing. ``create`` makes
        the file's folder on every rank (for a nested run a non-main rank writes).
        """
        try:
            rel = marker_entry(name, self.out / RUN_MARKER)
        except RunDirError:
            raise ValueError(
                f"name: {name!r} would leave the output directory {self.out}"
            ) from None
        key = rel.as_posix()
        target = self.out / rel
        link = symlink_on_the_way(self.out, rel)
        if link is not None:
            raise RunDirError(
                f"{link} is a symbolic link: a run writes only inside --out {self.out} and "
                "follows no links (remove the link or choose a new --out)"
            )
        if self.world.is_main and key not in self._written and target.exists():
            raise RunDirError(
                f"{target} exists and this run did not write it: ml3r never writes over a file "
                "it did not make (move it away or choose a new --out)"
            )
        self._record(key)
        if self.world.is_main or create:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target
