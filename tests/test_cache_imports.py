"""The cache modules import one another only downward: no import cycle, and each imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import xsmoe_ray

PACKAGE = Path(xsmoe_ray.__file__).parent
OWNED = ("xsmoe_ray.backbones", "xsmoe_ray.cache", "xsmoe_ray.cache.layout", "xsmoe_ray.cache.load",
         "xsmoe_ray.cache.build", "xsmoe_ray.cache.cli", "xsmoe_ray.cache.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (top level or inside functions). ``from a.b import c``
    counts as ``a.b.c`` when that is a module, else ``a.b``; the implicit import of parent packages
    is not counted (Python initialises a package before its submodules, which is no cycle)."""
    this = module_name(path)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = this.split(".") if path.name == "__init__.py" else this.split(".")[:-1]
                base = ".".join(anchor[:len(anchor) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n in modules and n != this)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def cycles_through(graph: dict[str, set[str]], start: str) -> list[list[str]]:
    """Import paths that lead from ``start`` back to itself."""
    found, stack = [], [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                found.append(path + [start])
            elif nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return found


def test_cache_modules_have_no_import_cycle():
    graph = import_graph()
    assert set(OWNED) <= set(graph)
    for module in OWNED:
        assert not cycles_through(graph, module), f"import cycle: {cycles_through(graph, module)[0]}"


def test_cache_submodules_import_only_downward():
    """layout < load < build < cli; none of them goes through the package's re-exports."""
    graph = import_graph()
    order = ["xsmoe_ray.cache.layout", "xsmoe_ray.cache.load", "xsmoe_ray.cache.build", "xsmoe_ray.cache.cli"]
    for rank, module in enumerate(order):
        cache_deps = {d for d in graph[module] if d.startswith("xsmoe_ray.cache")}
        assert cache_deps <= set(order[:rank]), f"{module} imports {sorted(cache_deps)}"
    assert not {d for d in graph["xsmoe_ray.backbones"] if d.startswith("xsmoe_ray.cache")}


@pytest.mark.parametrize("module", ["xsmoe_ray.cache.layout", "xsmoe_ray.cache.load", "xsmoe_ray.cache.build",
                                    "xsmoe_ray.cache.cli"])
def test_each_module_imports_in_a_fresh_interpreter(module):
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=120)


def test_cli_still_runs_as_python_m():
    out = subprocess.run([sys.executable, "-m", "xsmoe_ray.cache", "--help"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    for flag in ("--data", "--out", "--config", "--rebuild", "--threads", "cache.pooling"):
        assert flag in out
