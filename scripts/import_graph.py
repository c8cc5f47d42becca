"""The import graph of the `forgetscope` package, and the imports that point back up.

    python scripts/import_graph.py            # the layers, each module's imports, and violations
    python scripts/import_graph.py --check    # exit 1 if any import points back up

Every import counts, at the top of a file or inside a function (a lazy import is still a
dependency). A module may import only modules of a lower layer, or of its own layer within
its own package (`sweep.run` -> `sweep.store`); the layers, lowest first, are `LAYERS`.
Within a package the graph must also be acyclic.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "forgetscope"

LAYERS: list[list[str]] = [
    ["errors", "allocations", "distributed"],
    ["files", "sources", "registry"],
    ["extensions"],
    ["settings"],
    ["records", "data", "models", "plots", "judges", "heads"],
    ["sweepdir"],
    ["base_cache", "laws"],
    ["metric"],
    ["meter", "budget"],
    ["callback", "tiny", "mitigate"],
    ["train"],
    ["downstream", "conjugate", "synthetic"],
    ["sweep"],
    ["report"],
    ["demo", "render"],
    ["options"],
    ["cli"],
    ["__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every `forgetscope.*` module that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("forgetscope"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("forgetscope") and node.level == 0:
            found.add(node.module)
    return found


def top(module: str) -> str:
    """The first component after `forgetscope`: the unit the layers are drawn on."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    name = top(module)
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise SystemExit(f"{module}: not in any layer of scripts/import_graph.py LAYERS")


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "tasks" not in p.parts}
    return {name: {m for m in imports_of(path) if m != name} for name, path in modules.items()}


def violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in edges.items():
        for target in sorted(targets):
            if top(target) == "" or top(source) == "":
                continue  # the package's own __init__
            if top(source) == top(target):
                continue  # within a unit: checked for cycles below
            if layer_of(target) >= layer_of(source):
                found.append(f"{source} -> {target} (layer {layer_of(source)} imports layer {layer_of(target)})")
    found.extend(f"cycle: {' -> '.join(c)}" for c in _cycles(edges))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (one path each), by depth-first search."""
    state: dict[str, int] = {}
    cycles, stack = [], []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            nxt = nxt if nxt in edges else nxt.rsplit(".", 1)[0]  # `from pkg import module` names a module's package
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt in edges and nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report violations; exit 1 if there are any")
    args = parser.parse_args()
    edges = graph()
    if not args.check:
        for i, layer in enumerate(LAYERS):
            print(f"layer {i}: {', '.join(layer)}")
        print()
        for source in sorted(edges):
            print(f"{source} -> {', '.join(sorted(edges[source])) or '(nothing)'}")
        print()
    found = violations(edges)
    for line in found:
        print(f"points back up: {line}")
    print(f"{len(edges)} modules, {sum(len(t) for t in edges.values())} imports, {len(found)} pointing back up")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
