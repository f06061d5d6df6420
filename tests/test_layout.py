"""The engine's layout (issue 32): no import circle in harness/, built-in methods and suites
import only harness.api, and no method imports a suite."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every ``harness`` import of a file; ``from
    harness.pkg import module`` names the module when it is one."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, inside: bool):
        for child in ast.iter_child_nodes(node):
            nested = inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] in ("harness", "suites",
                                                                                                  "baselines", "radis"):
                for alias in child.names:
                    target = f"{child.module}.{alias.name}"
                    found.append((target if (ROOT / (target.replace(".", "/") + ".py")).exists()
                                  or (ROOT / target.replace(".", "/")).is_dir() else child.module, nested))
            elif isinstance(child, ast.Import):
                found.extend((a.name, nested) for a in child.names if a.name.split(".")[0] == "harness")
            visit(child, nested)

    visit(tree, False)
    return found


def graph(top_level_only: bool = True) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "harness").rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        edges[name] = {target for target, inside in imports(path) if (not inside or not top_level_only) and target in modules
                       and target != name}
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_harness_has_no_import_circle_even_through_imports_inside_functions():
    assert cycle(graph(top_level_only=False)) is None, " -> ".join(cycle(graph(top_level_only=False)))


def test_builtin_methods_and_suites_import_only_the_api_and_no_method_imports_a_suite():
    for folder in ("radis", "baselines", "suites"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for target, _ in imports(path):
                if target.startswith("harness"):
                    assert target == "harness.api", f"{path.relative_to(ROOT)} imports {target}; plugins import harness.api only"
                if folder != "suites":
                    assert not target.startswith("suites"), f"{path.relative_to(ROOT)} imports the suite {target}"


# Files of harness/ allowed over ~450 lines, and why (issue 32: list the exceptions).
LONG_FILES = {
    "harness/intervals.py": "one statistical model (item bootstrap, seed variance, their combination, small-count "
                            "intervals and residue snapping) whose parts share private helpers; split, it would scatter it",
}


def test_rooms_stay_small():
    """No file of harness/ over 450 lines but the listed exceptions, no top-level module beyond ten,
    and no function over 80 lines."""
    files = sorted((ROOT / "harness").rglob("*.py"))
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in files}
    over = {name: n for name, n in long.items() if n > 450 and name not in LONG_FILES}
    assert not over, over
    assert len(list((ROOT / "harness").glob("*.py"))) <= 10
    functions = [(str(p.relative_to(ROOT)), node.name, node.end_lineno - node.lineno + 1)
                 for p in files for node in ast.walk(ast.parse(p.read_text()))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not functions, functions
