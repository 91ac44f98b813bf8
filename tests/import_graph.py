"""Who imports whom, read from the source (ast), for the boundary and import-cycle tests.

Every import counts, including those inside functions (a function-level import hides a cycle
from Python's import machinery, not from this graph) and relative ones (resolved against the
file's package). Imports under `if TYPE_CHECKING:` never run; `runtime_only` leaves them out.
"""

from __future__ import annotations

import ast
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """core/archs/tier.py -> core.archs.tier; a package's __init__.py -> the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, *, runtime_only: bool = False) -> set[str]:
    """Absolute names of everything the file imports; `from a import b` gives a and a.b
    (b may be a submodule)."""
    name = module_name(path, root) if path.is_relative_to(root) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree) if runtime_only else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}
    return {n for n in found if n}


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    parts = package.split(".") if package else []
    parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
    return ".".join([*parts, *([node.module] if node.module else [])])


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) bodies."""
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING"):
            for stmt in node.body:
                ids |= {id(n) for n in ast.walk(stmt)}
    return ids


def package_graph(package_dir: Path, root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (at run time)."""
    modules = {module_name(p, root): p for p in sorted(package_dir.rglob("*.py"))}
    return {name: {m for m in imports_of(path, root, runtime_only=True)
                   if m in modules and m != name}
            for name, path in modules.items()}


def project_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project's modules it imports (at run time), over every top-level folder
    with Python files (core, dashboard, training, benchmarks, tests, ...): an import circle
    between packages is found as well as one inside a package."""
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and any(d.rglob("*.py")))
    modules = {module_name(p, root): p for d in folders for p in sorted(d.rglob("*.py"))}
    return {name: {m for m in imports_of(path, root, runtime_only=True)
                   if m in modules and m != name}
            for name, path in modules.items()}


def package_of(module: str, depth: int) -> str:
    """training.evaluation.crossval -> training.evaluation (depth 2); a module directly in the
    top package (training.train_lora) stands for that package."""
    parts = module.split(".")
    return ".".join(parts[:depth]) if len(parts) > depth else ".".join(parts[:depth - 1])


def collapse(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph of packages `depth` names deep: a -> b when a module of a imports one of b."""
    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        a = package_of(src, depth)
        out.setdefault(a, set()).update(b for b in (package_of(t, depth) for t in targets)
                                        if b != a)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None
