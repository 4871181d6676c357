"""The layering of docs/architecture.md, checked on the source: who may import whom.

- ``tiling`` never imports ``geoclf`` or a deep-learning stack: tiling a county needs rasterio, not torch.
- The land-use map contract (``geoclf.landuse``) and the page builder (``geoclf.webmap``) sit below the stages
  that use them: they never import change, trend or score, not even through another module.
- The CLI is a thin layer over the library's public API: it imports nothing private.
- No module imports another module's private (``_name``) names, or reaches for them as ``module._name``.
- No import cycle among geoclf's and tiling's modules (imports run when a module loads: module level, outside
  ``if TYPE_CHECKING:``).

Imports are read from the syntax tree (``ast``), so the rules hold for every code path, not only those a test
happens to run; one test also imports every tiling module in a fresh interpreter.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("geoclf", "tiling")
DEEP_LEARNING = ("torch", "torchvision", "lightning", "pytorch_lightning", "onnxruntime")


@dataclass(frozen=True)
class Import:
    """One imported name: ``from module import name`` (``name`` None for ``import module``)."""

    importer: str  # the importing module, e.g. "geoclf.score"
    module: str  # the absolute module imported from
    name: str | None
    line: int
    module_level: bool  # runs when the importer loads (not in a function, not under TYPE_CHECKING)

    @property
    def target(self) -> str:
        """The module this import loads: ``module.name`` when that is a module of ours, else ``module``."""
        if self.name and f"{self.module}.{self.name}" in MODULES:
            return f"{self.module}.{self.name}"
        return self.module

    def where(self) -> str:
        return f"{MODULES[self.importer].relative_to(ROOT)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str) -> None:
        self.importer = importer
        self.package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> module it stands for
        self.attributes: list[tuple[str, str, int]] = []  # (module, attribute, line) of module.attribute uses
        self._depth = 0  # > 0 inside functions or TYPE_CHECKING blocks

    def _deferred(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _deferred

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            self._deferred(node)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imports.append(Import(self.importer, alias.name, None, node.lineno, self._depth == 0))
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                self.aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - node.level + 1]
            module = ".".join([*base, node.module] if node.module else base)
        else:
            module = node.module or ""
        for alias in node.names:
            self.imports.append(Import(self.importer, module, alias.name, node.lineno, self._depth == 0))
            if f"{module}.{alias.name}" in MODULES:
                self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = []
        value: ast.AST = node
        while isinstance(value, ast.Attribute):
            dotted.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in self.aliases:
            module = self.aliases[value.id]
            for attr in reversed(dotted):  # geoclf.runs._client: walk down the modules to the first non-module
                if f"{module}.{attr}" in MODULES:
                    module = f"{module}.{attr}"
                    continue
                self.attributes.append((module, attr, node.lineno))
                break
            return  # the chain is handled; its inner Attribute nodes are parts of it
        self.generic_visit(node)


def _collect() -> dict[str, _Collector]:
    collected = {}
    for name, path in MODULES.items():
        collector = _Collector(name)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        collected[name] = collector
    return collected


COLLECTED = _collect()
IMPORTS = [imp for collector in COLLECTED.values() for imp in collector.imports]


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        if (_ours(imp.module) and (imp.module_level or not module_level_only) and imp.target in MODULES
                and imp.target != imp.importer):
            graph[imp.importer].add(imp.target)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Modules reachable from ``start``, each with the module that first imports it (for the message)."""
    seen: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for nxt in sorted(graph[current]):
            if nxt not in seen and nxt != start:
                seen[nxt] = current
                todo.append(nxt)
    return seen


def _path(seen: dict[str, str], start: str, end: str) -> str:
    chain = [end]
    while chain[-1] != start:
        chain.append(seen[chain[-1]])
    return " -> ".join(reversed(chain))


def test_the_source_was_read():
    assert {"tiling", "tiling.index", "tiling.synth.world", "geoclf", "geoclf.cli", "geoclf.landuse"} <= set(MODULES)
    assert len(IMPORTS) > 200


def test_tiling_never_imports_geoclf_or_deep_learning():
    bad = [f"{imp.where()}: {imp.module}" for imp in IMPORTS if _in(imp.importer, "tiling")
           and imp.module.split(".")[0] in ("geoclf", *DEEP_LEARNING)]
    assert not bad, bad


def test_importing_every_tiling_module_loads_no_geoclf_and_no_torch():
    modules = sorted(name for name in MODULES if _in(name, "tiling"))
    code = (f"import sys\nfor name in {modules!r}:\n    __import__(name)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {('geoclf', *DEEP_LEARNING)!r})\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("contract", ["geoclf.landuse", "geoclf.webmap"])
def test_map_contracts_never_reach_the_stages_above_them(contract):
    if contract not in MODULES:
        pytest.skip(f"{contract} does not exist")
    graph = _graph(module_level_only=False)  # a deferred import is a dependency all the same
    seen = _reachable(graph, contract)
    bad = [_path(seen, contract, module) for module in seen
           if any(_in(module, f"geoclf.{stage}") for stage in ("change", "trend", "score"))]
    assert not bad, bad


def test_the_cli_imports_nothing_private():
    bad = [f"{imp.where()}: {imp.module}.{imp.name}" for imp in IMPORTS if _in(imp.importer, "geoclf.cli")
           and _ours(imp.module) and (_private(imp.name or "") or any(map(_private, imp.module.split("."))))]
    bad += [f"{MODULES[importer].relative_to(ROOT)}:{line}: {module}.{attr}"
            for importer, collector in COLLECTED.items() if _in(importer, "geoclf.cli")
            for module, attr, line in collector.attributes if _ours(module) and _private(attr)]
    assert not bad, bad


def test_no_private_name_crosses_a_module_boundary():
    """``from geoclf.runs import _client`` or ``runs._client(...)``: a private helper another module relies on
    is API in all but name; make it public (and documented) or keep it at home."""
    bad = [f"{imp.where()}: from {imp.module} import {imp.name}" for imp in IMPORTS
           if _ours(imp.module) and imp.module != imp.importer and imp.name and _private(imp.name)
           and f"{imp.module}.{imp.name}" not in MODULES]
    bad += [f"{imp.where()}: import {imp.target}" for imp in IMPORTS
            if _ours(imp.target) and any(map(_private, imp.target.split(".")))]
    bad += [f"{MODULES[importer].relative_to(ROOT)}:{line}: {module}.{attr}"
            for importer, collector in COLLECTED.items()
            for module, attr, line in collector.attributes
            if _ours(module) and module != importer and _private(attr)]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = _cycles(_graph(module_level_only=True))
    assert not cycles, cycles


def _documented_layers() -> dict[str, int]:
    """Module -> layer number, read from the layer table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("| layer |", 1)[1].split("\n\n", 1)[0]
    layers: dict[str, int] = {}
    layer = -1
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if cells[0]:
            layer = int(cells[0].split(".")[0])
        for name in re.findall(r"`([a-z_.]+)`", cells[1]):
            if _ours(name):
                layers[name] = layer
    return layers


def _layer_of(module: str, layers: dict[str, int]) -> int | None:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in layers:
            return layers[".".join(parts[:end])]
    return None


def test_the_documented_layers_cover_every_module():
    layers = _documented_layers()
    unplaced = [name for name in MODULES if name not in PACKAGES and name != "geoclf.__main__"
                and _layer_of(name, layers) is None]
    assert not unplaced, f"modules missing from the layer table of docs/architecture.md: {unplaced}"
    assert not [name for name in layers if name not in MODULES], "the table names modules that do not exist"


def test_no_module_imports_from_a_layer_above_it():
    """docs/architecture.md's table is the truth: an import (deferred or not) never goes up a layer."""
    layers = _documented_layers()
    bad = []
    for imp in IMPORTS:
        here, there = _layer_of(imp.importer, layers), _layer_of(imp.target, layers)
        if _ours(imp.target) and here is not None and there is not None and there > here:
            bad.append(f"{imp.where()}: {imp.importer} (layer {here}) imports {imp.target} (layer {there})")
    assert not bad, "\n".join(bad)
