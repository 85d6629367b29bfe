"""The package's import graph: no cycles, no upward or sideways imports between
layers, no reach into another package's private names.

The rules are checked by small functions over an ``ast`` walk (module-level imports
and those inside functions, methods and ``if TYPE_CHECKING:`` blocks alike), and each
function is also run on a tiny fake package so the test shows it can fail.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT_PACKAGE = "mtlcompress"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / ROOT_PACKAGE

# Lowest first. A module may import from its own package or from a lower layer.
# The root ``mtlcompress/__init__.py`` is the lazy public facade: above everything.
# ``errors``, ``version`` and ``progress`` sit under ``io``, ``tasks`` and ``devices``, which use them.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "version", "progress"}),
    frozenset({"io", "tasks", "devices"}),
    frozenset({"data", "models"}),
    frozenset({"training", "bundle"}),
    frozenset({"sparsify", "runtime"}),
    frozenset({"report"}),
    frozenset({"demo"}),  # the whole pipeline, its report included (``report.check``)
    frozenset({"cli"}),
)


@dataclass(frozen=True)
class Import:
    importer: str       # dotted module name doing the import
    module: str         # dotted module imported (resolved to a module when it is one)
    name: str | None    # the name taken from ``module`` (``from m import name``), if any
    line: int


def module_names(package_dir: Path, root: str) -> dict[str, Path]:
    """Dotted name -> file for every ``.py`` under ``package_dir``."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [root, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def collect_imports(package_dir: Path, root: str) -> list[Import]:
    """Every import of ``root`` or its submodules, wherever it sits in a module."""
    modules = module_names(package_dir, root)
    found = []
    for importer, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(importer, alias.name, None, node.lineno) for alias in node.names
                          if alias.name.split(".")[0] == root]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: climb from the importer's own package
                    anchor = importer.split(".") if is_package else importer.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base.split(".")[0] != root:
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:
                        found.append(Import(importer, submodule, None, node.lineno))
                    else:
                        found.append(Import(importer, base, alias.name, node.lineno))
    return found


def package_of(module: str, root: str) -> str:
    """``mtlcompress.runtime.lockstep`` -> ``runtime``; the root facade -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == root else ""


def find_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected groups of more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for edge in imports:
        graph.setdefault(edge.importer, set()).add(edge.module)
        graph.setdefault(edge.module, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:  # Tarjan; the graph is a few hundred nodes
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def layer_violations(imports: list[Import], layers: tuple[frozenset[str], ...], root: str) -> list[str]:
    """Imports that go up a layer or sideways to another package of the same layer."""
    layer_of = {package: level for level, packages in enumerate(layers) for package in packages}
    layer_of[""] = len(layers)  # the root facade sits above everything
    problems = []
    for edge in imports:
        source, target = package_of(edge.importer, root), package_of(edge.module, root)
        if source == target:
            continue
        for package in (source, target):
            if package not in layer_of:
                problems.append(f"{edge.importer}:{edge.line}: package '{package}' has no layer")
        if source not in layer_of or target not in layer_of:
            continue
        if layer_of[target] > layer_of[source]:
            problems.append(f"{edge.importer}:{edge.line}: imports {edge.module} from a higher layer")
        elif layer_of[target] == layer_of[source]:
            problems.append(f"{edge.importer}:{edge.line}: imports {edge.module} sideways (same layer)")
    return problems


def private_violations(imports: list[Import], root: str) -> list[str]:
    """Another package's ``_private`` module, or a ``_private`` name of any other module."""
    problems = []
    for edge in imports:
        other_package = package_of(edge.importer, root) != package_of(edge.module, root)
        private_module = any(part.startswith("_") for part in edge.module.split(".")[1:])
        if other_package and private_module:
            problems.append(f"{edge.importer}:{edge.line}: imports private module {edge.module}")
        if edge.name and edge.name.startswith("_") and not edge.name.startswith("__"):
            problems.append(f"{edge.importer}:{edge.line}: imports private name {edge.module}.{edge.name}")
    return problems


# -- the real package -------------------------------------------------------------

@pytest.fixture(scope="module")
def package_imports() -> list[Import]:
    return collect_imports(PACKAGE_DIR, ROOT_PACKAGE)


def test_every_package_has_a_layer() -> None:
    packages = {package_of(name, ROOT_PACKAGE) for name in module_names(PACKAGE_DIR, ROOT_PACKAGE)} - {""}
    assert packages <= set().union(*LAYERS), packages - set().union(*LAYERS)


def test_no_import_cycles(package_imports: list[Import]) -> None:
    assert find_cycles(package_imports) == []


def test_imports_follow_the_layers(package_imports: list[Import]) -> None:
    assert layer_violations(package_imports, LAYERS, ROOT_PACKAGE) == []


def test_no_private_reach_ins(package_imports: list[Import]) -> None:
    assert private_violations(package_imports, ROOT_PACKAGE) == []


def test_the_walk_sees_lazy_and_type_checking_imports(package_imports: list[Import]) -> None:
    # the root facade's names are imported only under TYPE_CHECKING and inside functions
    seen = {(edge.importer, edge.module) for edge in package_imports}
    assert ("mtlcompress", "mtlcompress.runtime.runner") in seen


# -- the checks on a fake package that breaks each rule ------------------------------

def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fakepkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in {p.parent for p in root.rglob("*.py")}:
        (folder / "__init__.py").touch()
    return root


FAKE_LAYERS = (frozenset({"low"}), frozenset({"mid", "side"}), frozenset({"top"}))


def test_clean_fake_package_passes(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "low/a.py": "X = 1\n",
        "low/_impl.py": "Y = 2\n",
        "low/b.py": "from fakepkg.low import _impl\nfrom fakepkg.low.a import X\n",
        "mid/m.py": "from fakepkg.low.a import X\n",
        "top/t.py": "def f():\n    from fakepkg.mid import m\n",
    })
    imports = collect_imports(root, "fakepkg")
    assert find_cycles(imports) == []
    assert layer_violations(imports, FAKE_LAYERS, "fakepkg") == []
    assert private_violations(imports, "fakepkg") == []


def test_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "mid/a.py": "from fakepkg.mid.b import g\n",
        "mid/b.py": "def g():\n    from fakepkg.mid import a\n",
        "mid/c.py": "from . import a\n",
    })
    assert find_cycles(collect_imports(root, "fakepkg")) == [["fakepkg.mid.a", "fakepkg.mid.b"]]


def test_upward_and_sideways_imports_are_found(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakepkg.top.t import T\n",
        "mid/m.py": "import fakepkg.side.s\n",
        "side/s.py": "S = 1\n",
        "top/t.py": "T = 1\n",
    })
    problems = layer_violations(collect_imports(root, "fakepkg"), FAKE_LAYERS, "fakepkg")
    assert len(problems) == 2
    assert "fakepkg.low.a:3: imports fakepkg.top.t from a higher layer" in problems
    assert "fakepkg.mid.m:1: imports fakepkg.side.s sideways (same layer)" in problems


def test_importing_the_root_facade_counts_as_upward(tmp_path: Path) -> None:
    root = write_package(tmp_path, {"low/a.py": "from fakepkg import VERSION\n", "ver.py": "VERSION = 1\n"})
    (root / "__init__.py").write_text("VERSION = 1\n")
    problems = layer_violations(collect_imports(root, "fakepkg"), FAKE_LAYERS + (frozenset({"ver"}),), "fakepkg")
    assert problems == ["fakepkg.low.a:1: imports fakepkg from a higher layer"]


def test_private_module_and_private_name_are_found(tmp_path: Path) -> None:
    root = write_package(tmp_path, {
        "low/_impl.py": "Y = 2\n",
        "low/a.py": "_Hidden = 1\n",
        "mid/m.py": "from fakepkg.low import _impl\n",
        "mid/n.py": "def f():\n    from fakepkg.low.a import _Hidden\n",
    })
    problems = private_violations(collect_imports(root, "fakepkg"), "fakepkg")
    assert problems == ["fakepkg.mid.m:1: imports private module fakepkg.low._impl",
                        "fakepkg.mid.n:2: imports private name fakepkg.low.a._Hidden"]


def test_a_package_missing_from_the_table_is_reported(tmp_path: Path) -> None:
    root = write_package(tmp_path, {"low/a.py": "from fakepkg.extra.e import E\n", "extra/e.py": "E = 1\n"})
    problems = layer_violations(collect_imports(root, "fakepkg"), FAKE_LAYERS, "fakepkg")
    assert problems == ["fakepkg.low.a:1: package 'extra' has no layer"]
