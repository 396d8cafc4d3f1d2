"""One YAML reader for every configuration the toolkit reads (robot files, ``--config``,
``--set``, a run's ``config.yaml``), with YAML 1.2's core-schema scalars.

PyYAML implements YAML 1.1, where ``1e-3`` is a string (a float needs a dot), ``yes``/``off``
are booleans and ``010`` is octal; people write configs the 1.2 way, so this reader resolves
plain scalars as YAML 1.2 does: ``true``/``false`` only, decimal integers (``0o``/``0x``
prefixes), and floats with or without a dot.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_REPLACED = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans, integers and floats."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+.0123456789"))


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.lstrip("+-") == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text with YAML 1.2 scalars. Raises ``ValueError`` naming ``source`` and the
    line on a syntax error (one line, no PyYAML traceback)."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ValueError(f"{source}: not valid YAML{where} ({problem})") from e


def read_yaml_file(path: str | Path, source: str | None = None) -> Any:
    """Parse a YAML file with YAML 1.2 scalars; errors name ``source`` (default: the path)."""
    path = Path(path)
    source = source or str(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not a text file ({e.reason})") from e
    except OSError as e:
        raise ValueError(f"{source}: cannot read {path} ({e.strerror})") from e
    return parse_yaml(text, source)


class _Yaml12Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string a YAML 1.2 reader would take for another type
    (PyYAML writes ``"1e-3"`` bare, since 1.1 reads it back as a string)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    looks_typed = any(rx.match(data) for rx in (_BOOL, _INT, _FLOAT)) or data in ("", "~", "null")
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", data, style="'" if looks_typed else None
    )


_Yaml12Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any, *, flow: bool = False) -> str:
    """YAML text that :func:`parse_yaml` reads back to ``data`` (keys in order; block style, or
    one line with ``flow``)."""
    return yaml.dump(data, Dumper=_Yaml12Dumper, sort_keys=False, default_flow_style=flow)
