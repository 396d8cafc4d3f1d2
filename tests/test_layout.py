"""The installed packages keep the one-way import direction of DESIGN.md."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# package -> packages it must never import
FORBIDDEN = {
    "robots": {"controllers", "ml3_robotics", "experiments"},
    "controllers": {"ml3_robotics", "experiments"},
    "ml3_robotics": {"experiments"},
}


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    for f in files:
        bad = _imported_roots(f) & FORBIDDEN[package]
        assert not bad, f"{f.relative_to(ROOT)} imports {sorted(bad)}"


# The layers of ml3_robotics, bottom first: each imports only the layers below it.
LAYERS = ("core", "models", "tasks", "mbrl", "evaluation", "reporting", "app")


def _imported_modules(path: pathlib.Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return modules


def test_every_library_module_sits_in_a_layer() -> None:
    top = {p.name for p in (ROOT / "ml3_robotics").glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}, f"modules outside the layers: {sorted(top)}"
    packages = {p.name for p in (ROOT / "ml3_robotics").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_the_layers_below(layer: str) -> None:
    above = set(LAYERS[LAYERS.index(layer) + 1 :])
    for f in sorted((ROOT / "ml3_robotics" / layer).rglob("*.py")):
        for name in _imported_modules(f):
            parts = name.split(".")
            if parts[0] == "ml3_robotics" and len(parts) > 1:
                assert parts[1] not in above, f"{f.relative_to(ROOT)} imports {name}"


def test_library_code_does_not_print() -> None:
    for package in ("robots", "controllers", "ml3_robotics"):
        for f in (ROOT / package).rglob("*.py"):
            if (
                f == ROOT / "ml3_robotics" / "app" / "cli.py"
            ):  # the user-facing edge prints by design
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                    pytest.fail(f"print() in library code: {f.relative_to(ROOT)}:{node.lineno}")


def test_experiments_compose_the_library_not_each_other_or_the_cli() -> None:
    # An experiment reaches another one through the registry (runs.get_experiment), so each
    # stays replaceable, and none depends on the user-facing edge.
    for f in sorted((ROOT / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("experiments"), f"{f.name} imports {name}"
                assert not name.startswith("ml3_robotics.app.cli"), f"{f.name} imports {name}"
