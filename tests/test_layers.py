"""The package's structure: its folders are layers, each importing only from those below it."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "linearised_laplace"
LAYERS = [
    ("core", "exceptions", "reference"),
    ("network", "metrics"),
    ("model",),
    ("solvers",),
    ("coordinates",),
    ("posteriors",),
    ("tuning",),
    ("methods",),
    ("__init__", "tomography"),
    ("experiments",),
    ("cli",),
]
"""From the bottom up: a module may import from its own layer and those below."""
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}
MAX_LINES = 450
"""No module outside ``experiments/`` and ``cli.py`` is longer."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module that ``path`` imports: at the top, in functions or for type checking."""
    parts = name.split(".") if name else []
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                child = f"{target}.{alias.name}" if target else alias.name
                found.add(child if child in known else target)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "linearised_laplace"
        ):
            found.add(node.module.removeprefix("linearised_laplace").lstrip("."))
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
    return LEVEL[name.split(".")[0] or "__init__"]


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_function_local_and_type_checking_imports():
    edges = graph()
    assert "core.persistence" in edges["tuning.checkpoint"]  # a top-level import
    assert "core.persistence" in edges["cli"]  # in a function
    assert "model.linear_model" in edges["model.noise"]  # for type checking
    assert "solvers.mean" in edges["posteriors.expectation"]
    assert {"metrics", "methods.base"} <= edges[""]  # the package's own __init__
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if (name.split(".")[0] or "__init__") not in LEVEL]
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_no_import_cycle():
    assert cycle(graph()) is None


def test_no_module_imports_from_a_higher_layer():
    upward = [
        f"{name} -> {target}"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name)
    ]
    assert not upward


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    long = {
        name: n
        for name, n in sizes.items()
        if n > MAX_LINES and not name.startswith("experiments") and name != "cli"
    }
    assert not long
    assert sizes["methods.base"] <= 350
