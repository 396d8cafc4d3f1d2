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
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml3_robotics.core.distributed import SINGLE, World
from ml3_robotics.core.errors import RunDirError
from ml3_robotics.core.serialization import atomic_write_bytes, read_format_json

progress_log = logging.getLogger("ml3r.progress")
# The file that makes a folder an ml3r run: format, version and the top-level names the run
# wrote (recorded before each is written, so a killed run leaves an exact list). --overwrite
# removes only those names; a folder without it is never emptied.
RUN_MARKER = ".ml3r-run.json"
RUN_FORMAT = "ml3r-run"
RUN_FORMAT_VERSION = 1


def read_run_marker(out: Path) -> dict[str, Any] | None:
    """The run marker of ``out``, or None when ``out`` is not a marked ml3r run folder."""
    path = out / RUN_MARKER
    if not path.is_file():
        return None
    doc = read_format_json(path, RUN_FORMAT, RUN_FORMAT_VERSION, RunDirError, "run marker")
    if not isinstance(doc.get("written"), list):
        raise RunDirError(f"run marker {path} has no list of written names")
    return doc


def write_run_marker(out: Path, written: list[str]) -> None:
    doc = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "written": written}
    atomic_write_bytes(out / RUN_MARKER, (json.dumps(doc, indent=1) + "\n").encode())


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
        with self.path.open(mode, newline="") as f:
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
        """Add the top-level entry of ``name`` to the run marker before it is written."""
        top = Path(name).parts[0]
        if top in self._written or not self.world.is_main:
            return
        self._written.append(top)
        self.out.mkdir(parents=True, exist_ok=True)
        write_run_marker(self.out, self._written)

    @property
    def metrics_log(self) -> MetricsLog:
        if self._metrics_log is None:
            self._record("metrics.csv")
            self._metrics_log = MetricsLog(self.out / "metrics.csv", enabled=self.world.is_main)
        return self._metrics_log

    @property
    def checkpoint_path(self) -> Path:
        return self.path("checkpoints/meta_train.safetensors")

    def loss_stem(self, name: str) -> Path:
        """``out/name``, the stem a learned loss is saved under (``.safetensors`` + ``.json``)."""
        self.path(f"{name}.json")
        return self.path(f"{name}.safetensors").with_suffix("")

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

    def path(self, name: str) -> Path:
        """A file name inside the output directory (refuses to escape it)."""
        target = (self.out / name).resolve()
        if self.out.resolve() not in target.parents:
            raise ValueError(f"name: {name!r} would leave the output directory {self.out}")
        self._record(str(target.relative_to(self.out.resolve())))
        if self.world.is_main:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target
