"""Checks of configuration values, one place for all: each raises ``ValueError`` naming the
field, what was expected and what it got (the CLI prints it as one line)."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

MAX_WIDTH = 65_536  # far above any network here; a typo like 4000000 is refused, not allocated


def check_choice(argument: str, value: str, choices: Sequence[str]) -> None:
    """``value`` is one of ``choices`` (else a hint at the nearest)."""
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{argument}: got {value!r}, expected one of {sorted(choices)}{hint}")


def check_widths(argument: str, widths: Sequence[int]) -> None:
    """``widths`` is a non-empty list of layer widths: integers in ``[1, MAX_WIDTH]``."""
    if not widths or not all(type(w) is int and 1 <= w <= MAX_WIDTH for w in widths):
        raise ValueError(
            f"{argument}: expected a non-empty list of layer widths (integers from 1 to "
            f"{MAX_WIDTH}), got {tuple(widths)!r}"
        )


MAX_OUTER_STEPS = 1_000_000  # meta-updates: weeks on this hardware; a larger count is a typo
MAX_INNER_STEPS = 100_000  # inner steps a loss is applied for (the studies use 1 to 100)


def check_ints(owner: Any, names: Sequence[str], minimum: int, maximum: int | None = None) -> None:
    """Each field ``names`` of ``owner`` is an integer (not a bool) ``>= minimum`` (and
    ``<= maximum`` when given)."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{name}: expected an integer <= {maximum}, got {value!r}")


def check_positive(owner: Any, names: Sequence[str]) -> None:
    """Each field ``names`` of ``owner`` is a finite number ``> 0``."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}: expected a positive number, got {value!r}")


def config_from(kind: Any, source: Any, changes: Mapping[str, Any]) -> Any:
    """A ``kind`` config from the same-named fields of ``source``, then ``changes``."""
    names = {f.name for f in dataclasses.fields(kind)}
    values = {k: getattr(source, k) for k in names if hasattr(source, k)}
    return kind(**(values | dict(changes)))
