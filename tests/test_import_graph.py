"""The import graph of ``dpopkit``: no module imports another in a cycle; roles stay apart.

The graph is read from the source (:mod:`ast`), not from ``sys.modules``, so an import
hidden inside a function counts as much as one at the top: a function-local import that
dodges a cycle at run time leaves the cycle in the design. Only imports under
``if TYPE_CHECKING:`` are left out (they never run; annotations are strings).

``from package import name`` is an edge to ``package.name`` when that is a module of
the package, else to ``package``. A package's ``__init__`` is the module named like the
package; importing a submodule is not counted as importing its parent package.

Besides no cycles, the direction rules of the layout: :mod:`dpopkit.resource` and
:mod:`dpopkit.server` never import each other, and :mod:`dpopkit.core` imports nothing
of dpopkit outside itself and :mod:`dpopkit.errors`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import dpopkit

Graph = dict[str, set[str]]


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name → file."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join([package, *parts])] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def build_graph(root: Path, package: str) -> Graph:
    """The import graph of the package at ``root`` (edges inside the package only)."""
    modules = _module_names(root, package)
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                # ``import a.b.c`` may name a module or reach through to the longest one.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a path back to its start) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def connect(start: str) -> None:  # iterative Tarjan: no recursion limit
        nonlocal counter
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(component)) for component in components]


def _cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest cycle through the first member of a strongly connected component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


ROOT = Path(dpopkit.__file__).parent
GRAPH = build_graph(ROOT, "dpopkit")


def _edges(prefix: str) -> Iterator[tuple[str, str]]:
    for source in sorted(GRAPH):
        if source == prefix or source.startswith(prefix + "."):
            for target in sorted(GRAPH[source]):
                yield source, target


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_graph_covers_every_module() -> None:
    """Every module of the package is a node, and the AS reaches its endpoints and grants."""
    assert len(GRAPH) == len(list(ROOT.rglob("*.py")))
    assert "dpopkit.server.endpoints.token" in GRAPH["dpopkit.server.service"]
    assert "dpopkit.server.grants.refresh_token_grant" in GRAPH["dpopkit.server.grants"]


def test_no_import_cycles() -> None:
    """No dpopkit module imports another in a cycle, at module level or inside a function."""
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("role", "other"),
    [("dpopkit.resource", "dpopkit.server"), ("dpopkit.server", "dpopkit.resource")],
)
def test_roles_do_not_import_each_other(role: str, other: str) -> None:
    """The resource server and the authorization server never import each other."""
    crossing = [(s, t) for s, t in _edges(role) if _inside(t, other)]
    assert not crossing, crossing


def test_core_imports_only_core_and_errors() -> None:
    """``dpopkit.core`` depends on nothing of dpopkit but itself and ``dpopkit.errors``."""
    outside = [
        (s, t)
        for s, t in _edges("dpopkit.core")
        if not _inside(t, "dpopkit.core") and t != "dpopkit.errors"
    ]
    assert not outside, outside


#: The authorization server's layers, lowest first: a module imports only its own layer or
#: lower ones (the server package docstring describes them). A new module needs a layer.
SERVER_LAYERS: tuple[tuple[str, ...], ...] = (
    # request input, settings, keys, throttles, users, client metadata, the browser app
    (
        "settings",
        "parsing",
        "form",
        "redirects",
        "jwt",
        "throttle",
        "users",
        "client_metadata",
        "spa",
    ),
    ("targets", "proofs", "clientauth", "minting"),  # the steps of the core
    ("core", "authorization_request"),  # the service core; the rules /par and /authorize share
    ("grants", "endpoints"),  # one module per grant, one per endpoint
    ("service", "authorize", "registration"),  # TokenService; earlier import paths
    ("app", "config", ""),  # the ASGI app, ``dpopkit serve`` and the package itself
)


def _server_layer(module: str) -> int:
    relative = module.removeprefix("dpopkit.server").removeprefix(".")
    top = relative.partition(".")[0]
    for level, names in enumerate(SERVER_LAYERS):
        if top in names:
            return level
    raise AssertionError(f"{module} has no layer in SERVER_LAYERS")


def test_server_imports_point_down() -> None:
    """Inside ``dpopkit.server`` every import points to the same layer or a lower one."""
    upward = [
        (s, t)
        for s, t in _edges("dpopkit.server")
        if _inside(t, "dpopkit.server") and _server_layer(t) > _server_layer(s)
    ]
    assert not upward, upward


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for relative, text in {"__init__.py": "", **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        pytest.param(
            {"a.py": "import pkg.b\n", "b.py": "from pkg import a\n"},
            ["pkg.a", "pkg.b", "pkg.a"],
            id="module-level",
        ),
        pytest.param(
            {
                "a.py": "from pkg.b import thing\n",
                "b.py": "def thing():\n    from pkg.sub.c import other\n",
                "sub/__init__.py": "",
                "sub/c.py": "from ..a import x\n",
            },
            ["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"],
            id="function-local-and-relative",
        ),
    ],
)
def test_detector_reports_cycles(tmp_path: Path, files: dict[str, str], cycle: list[str]) -> None:
    """The checker itself finds a cycle, also through a function-local or relative import."""
    assert find_cycles(build_graph(_package(tmp_path, files), "pkg")) == [cycle]


def test_detector_ignores_type_checking_imports(tmp_path: Path) -> None:
    """An import under ``if TYPE_CHECKING:`` never runs and is no edge; its else branch is."""
    files = {
        "a.py": "from pkg import b\n",
        "b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg import a\nelse:\n    import pkg.c\n"
        ),
        "c.py": "",
    }
    graph = build_graph(_package(tmp_path, files), "pkg")
    assert graph["pkg.b"] == {"pkg.c"}
    assert find_cycles(graph) == []
