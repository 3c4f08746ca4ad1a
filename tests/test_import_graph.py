"""The import graph of aop_client/ is one-way: no cycle, and every import points down the layers.

Every ``import`` of every module counts: at module level, inside functions and
under ``if TYPE_CHECKING:`` (a lazy import is how a cycle hides; a typing-only
import is still a dependency a reader has to follow). Relative imports are
resolved; ``from . import x`` is an edge to the module ``x`` when it is one.
Not an edge: the package ``__init__`` Python runs before a submodule
(``import aop_client.store.api`` also runs ``aop_client/store/__init__.py``);
counting it would make every package that re-exports its modules a cycle.
The layer table below is the one docs/design.md ("Layout") draws.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = "aop_client"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Lowest first. A module may import from its own layer or a lower one, never from a higher one.
#: Patterns are fnmatch patterns over dotted module names; a module matches the first layer naming it.
#: ``aop_client.ports*`` and ``aop_client.protocol.*`` place the typed ports and a protocol package
#: where issue 13 puts them, should those modules appear; any other new module must be placed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("aop_client.errors", "aop_client._version", "aop_client.extras", "aop_client.forking")),
    ("protocol", ("aop_client.protocol", "aop_client.protocol.*", "aop_client.events",
                  "aop_client.canonical", "aop_client.signing")),
    ("core", ("aop_client.core", "aop_client.core.*", "aop_client.config",
              "aop_client.toon_parser", "aop_client.trace_builder")),
    ("ports", ("aop_client.store.api", "aop_client.ports", "aop_client.ports.*")),
    ("adapters", ("aop_client.store", "aop_client.store.*", "aop_client.transport", "aop_client.election",
                  "aop_client.send_pipeline", "aop_client.delivery_report", "aop_client.spool_backlog",
                  "aop_client.spool_identity")),
    ("trace files", ("aop_client.trace_files",)),
    ("flusher", ("aop_client.flusher",)),
    ("client", ("aop_client.client",)),
    ("streaming", ("aop_client.streaming", "aop_client.streaming.*")),
    ("entry points", ("aop_client", "aop_client.cli", "aop_client.cli.*", "aop_client.collector",
                      "aop_client.collector.*", "aop_client.demo", "aop_client.testing")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, source: str, known: set[str], *, is_package: bool = False) -> set[str]:
    """The aop_client modules ``name`` imports anywhere in ``source`` (module level, functions, TYPE_CHECKING)."""
    tree = ast.parse(source, filename=name)
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from pkg import x``: an edge to pkg.x when x is a module, else to pkg itself
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # ``import aop_client.store.api.X`` -> the module
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] == PACKAGE:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path.read_text(encoding="utf-8"), known, is_package=path.name == "__init__.py")
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, and self-loops (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> int | None:
    for level, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return level
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        own = layer_of(module)
        for target in sorted(targets):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                wrong.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]})")
    return wrong


# ---------------------------------------------------------------------------------------------- the rules


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles in aop_client/ (each line one strongly connected component):\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_every_module_has_a_layer() -> None:
    homeless = [m for m in sorted(all_modules()) if layer_of(m) is None]
    assert not homeless, f"modules in no layer (add them to LAYERS here and to docs/design.md 'Layout'): {homeless}"


def test_imports_point_down_the_layers() -> None:
    wrong = upward_imports(import_graph())
    assert not wrong, "imports pointing up the layers:\n" + "\n".join(wrong)


def test_the_layout_section_of_the_design_record_names_every_layer() -> None:
    design = (ROOT.parent / "docs" / "design.md").read_text(encoding="utf-8")
    assert "## Layout" in design
    layout = design.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for name, _ in LAYERS:
        assert name in layout, f"docs/design.md 'Layout' does not name the layer {name!r}"


# ------------------------------------------------------------------------------ the checker itself works


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"a"}, "b": set()}, [["a"]]),
    ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
])
def test_cycles_finds_every_strongly_connected_component(graph: dict, expected: list) -> None:
    assert sorted(cycles(graph)) == expected


def test_imports_inside_functions_and_type_checking_blocks_are_edges() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import json\n"
        "from . import sibling\n"
        "from .errors import AOPError\n"
        "if TYPE_CHECKING:\n"
        "    from .client import AOPClient\n"
        "def f():\n"
        "    from .store.api import StoredEvent\n"
        "    import aop_client.flusher\n"
        "    from .. import outside\n"
    )
    known = {"aop_client", "aop_client.sibling", "aop_client.errors", "aop_client.client", "aop_client.store",
             "aop_client.store.api", "aop_client.flusher", "aop_client.sub", "aop_client.sub.mod"}
    assert imports_of("aop_client.some_module", source, known) == {
        "aop_client.sibling", "aop_client.errors", "aop_client.client", "aop_client.store.api",
        "aop_client.flusher"}
    # in a package's __init__, ``.`` is the package itself; in a submodule, its parent
    assert imports_of("aop_client.sub", "from . import mod\nfrom .. import errors", known, is_package=True) == {
        "aop_client.sub.mod", "aop_client.errors"}
    assert imports_of("aop_client.sub.mod", "from .. import sibling", known) == {"aop_client.sibling"}
