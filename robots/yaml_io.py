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
import typing
from pathlib import Path
from typing import Any

import yaml

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
# Resolved by our own rules below, or (timestamps: YAML 1.2's core schema has no dates) not at
# all: 2024-01-01 stays the string it looks like.
_REPLACED = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}
# Bounds on what a config may hold: far above any real one, far below what exhausts memory (an
# alias "bomb" expands a few lines to billions of nodes) or the stack (deep nesting).
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_INT = 2**63 - 1


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema booleans, integers and floats, no dates, no
    duplicate keys, and bounded nesting, alias expansion and integers."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        depth = getattr(self, "_depth", 0) + 1
        if depth > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
            )
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML's own construct_mapping refuses it with its line
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (the first is at line "
                    f"{seen[key].line + 1}; which one counts would be a guess)", key_node.start_mark
                )  # fmt: skip
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose nodes, aliases expanded, exceed MAX_NODES (or that refers to
    itself): each node's expanded size is counted once, so the check itself stays linear."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            open_nodes.discard(key)
            if sizes[key] > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"expands to more than {MAX_NODES} values (aliases counted "
                    "each time they are used)", node.start_mark
                )  # fmt: skip
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "refers to itself through an alias", node.start_mark
            )
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


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
    if len(text) > 25:  # before int(): parsing 10**400 digits is itself the cost
        value = MAX_INT + 1
    elif text.startswith(("0o", "0x")):
        value = int(text[2:], 8 if text[1] == "o" else 16)
    else:
        value = int(text, 10)
    if abs(value) > MAX_INT:
        raise yaml.constructor.ConstructorError(
            None, None, f"integer {text[:20]}{'...' if len(text) > 20 else ''} is out of range "
            f"(at most {MAX_INT} in size)", node.start_mark
        )  # fmt: skip
    return value


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
