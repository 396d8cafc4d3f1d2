"""Progress of long runs: a tqdm bar on a terminal, log lines elsewhere.

A run that prints nothing for minutes looks hung, and tqdm's bar is unreadable in a log file or a
CI transcript; so :func:`progress_bar` draws a bar only on a terminal and otherwise logs one line
every tenth of the way (and at the end) to the ``ml3r.progress`` logger, which the CLI shows.
Library code never prints: without a configured logger the log lines go nowhere.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from tqdm.auto import tqdm

log = logging.getLogger("ml3r.progress")


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, refresh: bool = True, **values: Any) -> Any: ...

    def close(self) -> Any: ...


class LogProgress:
    """tqdm's ``update``/``set_postfix``/``close``, reported as log lines: one per
    ``every`` updates and one at the end, with the rate and the time left."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, lines: int = 10) -> None:
        self.total, self.desc, self.n = total, desc, initial
        self.every = max(1, total // max(1, lines))
        self._start_n, self._start = initial, time.perf_counter()
        self._postfix = ""
        self._closed = False
        log.info("%s: %d/%d", desc, initial, total)

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every and self.n < self.total:
            self._report()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _report(self) -> None:
        elapsed = time.perf_counter() - self._start
        done = self.n - self._start_n
        left = elapsed / done * (self.total - self.n) if done > 0 else float("nan")
        extra = f", {self._postfix}" if self._postfix else ""
        log.info("%s: %d/%d (%.0f s, ~%.0f s left%s)", self.desc, self.n, self.total,
                 elapsed, left, extra)  # fmt: skip

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._report()


def progress_bar(total: int, desc: str, *, tty: bool, initial: int = 0) -> ProgressBar:
    """A tqdm bar when ``tty`` (stderr is a terminal), else a :class:`LogProgress`."""
    if tty:
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
    return LogProgress(total, desc, initial=initial)
