"""Structural rules for lmstack/ (DESIGN.md conventions), checked from the source with ``ast``:
no function longer than 120 lines, no import of another module's private ``_name``, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lmstack"
MAX_FUNCTION_LINES = 120


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        out[module_name(path)] = (path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


def is_package(name: str, modules) -> bool:
    return modules[name][0].name == "__init__.py"


def resolve_from(node: ast.ImportFrom, importer: str, modules) -> str:
    """The absolute module an ``from X import ...`` statement names."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer, modules):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, tree: ast.Module, modules) -> list[tuple[int, str, list[str]]]:
    """(line, imported lmstack module, names taken from it) for every import in the module, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lmstack":
                    found.append((node.lineno, alias.name, []))
        elif isinstance(node, ast.ImportFrom):
            target = resolve_from(node, name, modules)
            if target.split(".")[0] != "lmstack":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            if submodules:
                found.extend((node.lineno, s, []) for s in submodules)
            rest = [n for n in names if f"{target}.{n}" not in modules]
            if rest:
                found.append((node.lineno, target, rest))
    return found


def long_functions(modules) -> list[str]:
    out = []
    for name, (path, tree) in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} has {length} lines")
    return out


def private_imports(modules) -> list[str]:
    out = []
    for name, (path, tree) in modules.items():
        for line, target, names in imports_of(name, tree, modules):
            if target == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    out.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports private {n} from {target}")
    return out


def import_cycles(modules) -> list[list[str]]:
    """Strongly connected components (more than one module) of the import graph (Tarjan)."""
    graph = {name: sorted({t for _l, t, _n in imports_of(name, tree, modules) if t in modules and t != name})
             for name, (_p, tree) in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_function_over_the_line_limit():
    assert long_functions(package_modules()) == []


def test_no_module_imports_a_private_name_from_another():
    assert private_imports(package_modules()) == []


def test_no_import_cycles_among_lmstack_modules():
    assert import_cycles(package_modules()) == []


def test_the_checkers_catch_what_they_look_for(tmp_path):
    # the rules are only worth something if a violation is found: check each on a synthetic tree
    def parsed(files: dict[str, str]):
        return {k: (tmp_path / f"{k.replace('.', '_')}.py", ast.parse(v)) for k, v in files.items()}

    cyc = parsed({"lmstack.a": "from lmstack.b import x\n", "lmstack.b": "def f():\n    from lmstack import a\n",
                  "lmstack": ""})
    cyc["lmstack"] = (PACKAGE / "__init__.py", cyc["lmstack"][1])
    assert import_cycles(cyc) == [["lmstack.a", "lmstack.b"]]
    priv = parsed({"lmstack.a": "from lmstack.b import _hidden, shown\n", "lmstack.b": ""})
    priv = {k: (PACKAGE / "x.py", t) for k, (_p, t) in priv.items()}
    assert private_imports(priv) == ["lmstack/x.py:1 imports private _hidden from lmstack.b"]
    body = "\n".join(["    x = 1"] * MAX_FUNCTION_LINES)
    long = {"lmstack.a": (PACKAGE / "x.py", ast.parse(f"def f():\n{body}\n"))}
    assert len(long_functions(long)) == 1
