"""Check optiml_engine's package graph: no cycles, imports go downwards only (DESIGN.md, Layout).

Every `import` / `from ... import` of the package is read with `ast`, nothing is imported, and
imports inside functions count like the others. Each import is resolved to its unit: a subpackage
(optiml_engine.data) or a top-level module (optiml_engine.config). Prints one line per problem,
`file:line: optiml_engine.a -> optiml_engine.b (why)`, and exits 1 if there is any.

    python tools/check_imports.py [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

# Rank per unit: a unit imports only units of a strictly lower rank (and itself). Units of the
# same rank, such as training and eval, must not import each other.
LAYERS = {
    0: ["errors", "__init__", "_C", "_cuda_ops"],  # the compiled extensions import nothing
    1: ["config"],  # the recipe schema: its errors are OptimlErrors
    2: ["kernels", "distributed"],
    3: ["model"],
    4: ["optim", "data"],
    5: ["training", "eval"],
    6: ["sweep"],
    7: ["planner", "benchmarks"],
    8: ["cli"],  # dispatches to planner and benchmarks, by module name
    9: ["__main__"],  # `python -m optiml_engine` runs the cli
}
RANK = {unit: rank for rank, units in LAYERS.items() for unit in units}


def imports(path: Path, package: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for each import of `package` in the file of dotted `module`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_init = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):  # every node: function-level and TYPE_CHECKING imports too
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, `level - 1` packages up
                parts = module.split(".")[: len(module.split(".")) - node.level + is_init]
                base = ".".join(parts + ([base] if base else []))
            # `from pkg import x` may import the submodule pkg.x; the unit decides below
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == package]


def unit_of(name: str, units: set[str]) -> str:
    """optiml_engine.data.bench -> data; optiml_engine.config.load -> config; anything else of
    the package's own __init__.py (optiml_engine.__version__) -> __init__."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in units else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle once, starting at its smallest unit (fine for a few dozen units)."""
    found = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append(path)
            elif nxt > start and nxt not in path:
                walk(start, nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def check(package_dir: Path) -> list[str]:
    """The problems of the package at `package_dir`, one line each; empty when clean."""
    package_dir = Path(package_dir)
    package = package_dir.name
    units = set(RANK) | {p.name.split(".")[0] for p in package_dir.iterdir()}
    sites = defaultdict(list)  # (from unit, to unit) -> ["file:line", ...]
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        src = unit_of(module, units)
        for line, name in imports(path, package, module):
            dst = unit_of(name, units)
            if dst != src and f"{rel}:{line}" not in sites[src, dst]:
                sites[src, dst].append(f"{rel}:{line}")

    for (src, dst), where in sorted(sites.items()):
        if src not in RANK or dst not in RANK:
            unknown = src if src not in RANK else dst
            why = f"{package}.{unknown} has no rank in the layering table"
        elif RANK[src] == RANK[dst]:
            why = f"same layer ({RANK[src]}): side by side, neither imports the other"
        elif RANK[src] < RANK[dst]:
            why = f"upward: layer {RANK[src]} imports layer {RANK[dst]}"
        else:
            continue
        problems += [f"{site}: {package}.{src} -> {package}.{dst} ({why})" for site in where]

    graph = defaultdict(set)
    for src, dst in sites:
        graph[src].add(dst)
    for cycle in cycles(graph):
        loop = " -> ".join(f"{package}.{u}" for u in cycle + cycle[:1])
        first = sites[cycle[0], cycle[1]][0]  # where the loop leaves its smallest unit
        problems.append(f"{first}: {package}.{cycle[0]} -> {package}.{cycle[1]} (cycle: {loop})")
    return problems


def main(argv: list[str]) -> int:
    package_dir = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "optiml_engine"
    problems = check(package_dir)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
