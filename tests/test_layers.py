"""The layering of docs/architecture.md, checked on every module's imports so it stays true.

Ranks: a package may import its own modules and packages of a lower rank only. The four
stages share a rank, so none imports another; applications and the testing helpers sit
above the library, so no library module imports them.
"""

from __future__ import annotations

import ast
import pathlib

import networkx as nx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "spec"

RANKS = {
    "errors": 0,
    "io": 1, "randomness": 1, "timing": 1, "models": 1, "protocols": 1, "sampling": 1,
    "runtime": 2,
    "drafters": 3, "verifiers": 3, "acceptors": 3, "trees": 3,
    "pipelines": 4, "training": 4,
    "bench": 5, "registry": 5, "interop": 5,
    "testing": 6, "text": 6,  # text loads heads through the registry and verifiers through bench.pairing
    "apps": 7,
}
#: The package facade re-exports the library; it may import any rank below the applications.
FACADE_RANK = RANKS["testing"]
#: Within the base rank, the only allowed direction (protocols and the rest need errors, not each other's users).
BASE_ORDER = ["errors", "io", "randomness", "timing", "protocols", "sampling", "models"]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """Every ``spec.*`` module ``path`` imports (top level or inside functions), with its line."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
    return [(target, line) for target, line in found if target == "spec" or target.startswith("spec.")]


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(ROOT.rglob("*.py"))
EDGES = [(_module_name(p), target, line, p) for p in MODULES for target, line in _imports(p)]


def test_every_package_has_a_rank():
    unranked = {_package(_module_name(p)) for p in MODULES} - set(RANKS) - {""}
    assert not unranked, f"give {sorted(unranked)} a rank in RANKS (and a place in docs/architecture.md)"


def test_imports_only_go_down_the_layers():
    bad = []
    for source, target, line, path in EDGES:
        a, b = _package(source), _package(target)
        if a == b or b == "":
            continue
        rank_a = FACADE_RANK if a == "" else RANKS[a]
        if a in BASE_ORDER and b in BASE_ORDER:
            allowed = BASE_ORDER.index(b) < BASE_ORDER.index(a)
        else:
            allowed = RANKS[b] < rank_a
        if not allowed:
            bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("stage", ["drafters", "verifiers", "acceptors", "trees"])
def test_no_stage_imports_another(stage):
    others = {"drafters", "verifiers", "acceptors", "trees"} - {stage}
    bad = [f"{p.relative_to(ROOT.parent)}:{line} imports {t}" for s, t, line, p in EDGES
           if _package(s) == stage and _package(t) in others]
    assert not bad, "\n".join(bad)


def test_no_library_module_imports_the_applications_or_the_testing_helpers():
    bad = [f"{p.relative_to(ROOT.parent)}:{line} imports {t}" for s, t, line, p in EDGES
           if _package(t) in {"apps", "testing"} and _package(s) not in {"apps", "testing"}]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_between_packages():
    graph = nx.DiGraph((_package(s), _package(t)) for s, t, _, _ in EDGES
                       if _package(s) and _package(t) and _package(s) != _package(t))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"package import cycles: {cycles}"
