"""The import graph of ``lancell/`` has no cycle, and the lower rooms import nothing above them.

Every ``import`` and ``from ... import`` of a lancell module is an edge, at module level or inside a function,
except those under ``if TYPE_CHECKING:`` (never executed: annotations only). Those type-only references may
point upward, and the ones that do are listed here, so a new one is a decision, not an accident.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# the storage room (lancell/storage/): codecs, shard index/layout/decode/read/write, group layout, CSC layout
STORAGE_MAY_USE = {"lancell.errors", "lancell.cores"}  # typed errors; the usable cores

# the tables room (lancell/tables/): LanceDB tables, schemas, registry, versions, locks; below ingest, query
# the core: an annotation only (below); processes: how a lock holder is named (a leaf, like cores)
TABLES_MAY_USE = {"lancell.errors", "lancell.cores", "lancell.core", "lancell.processes"}

# upward references for annotations only: the query names the atlas facade that builds it, the loader the
# query and atlas it is built from (the query imports the loader at run time, inside ``to_cell_dataset``)
TYPE_ONLY_UPWARD = {
    ("lancell.query.atlas_query", "lancell.atlas"),
    ("lancell.query.terminals", "lancell.atlas"),
    ("lancell.dataloader.dataset", "lancell.atlas"),
    ("lancell.dataloader.dataset", "lancell.query.atlas_query"),
}


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _parsed(source: str, attempts: int = 3) -> ast.Module:
    """``ast.parse(source)``, again after CPython 3.11's "AST constructor recursion depth mismatch": its AST
    conversion keeps one depth counter per interpreter, which another thread of the test process parsing at
    the same moment upsets (CPython issue 106905; one suite run in ~20 failed this way)."""
    for _ in range(attempts - 1):
        try:
            return ast.parse(source)
        except SystemError:
            continue
    return ast.parse(source)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Modules ``path`` imports at run time, and under ``TYPE_CHECKING`` only."""
    tree = _parsed(path.read_text())
    type_only_nodes: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only_nodes |= {id(sub) for stmt in node.body for sub in ast.walk(stmt)}
    runtime: set[str] = set()
    type_only: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        else:
            continue
        # importing ``lancell.a.b`` first runs the package ``lancell.a`` (its ``__init__``)
        parents = {".".join(name.split(".")[:i]) for name in names for i in range(2, name.count(".") + 1)}
        (type_only if id(node) in type_only_nodes else runtime).update(names | parents)
    return runtime, type_only


Graph = dict[str, set[str]]


def _graphs() -> tuple[Graph, Graph]:
    """``(run-time edges, type-only edges)``: module -> the lancell modules it imports."""
    modules = _modules("lancell")
    runtime: Graph = {}
    type_only: Graph = {}
    for name, path in modules.items():
        at_run, typed = _imports(path)
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}  # already running
        at_run, typed = at_run - own, typed - own
        runtime[name] = at_run & modules.keys() - {name}
        type_only[name] = typed & modules.keys() - {name} - runtime[name]
    return runtime, type_only


def _cycle(graph: Graph) -> list[str]:
    """One cycle of ``graph``, or [] when it has none."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return []


def test_no_import_cycle_inside_lancell():
    runtime, _ = _graphs()
    assert _cycle(runtime) == []


def test_type_only_references_close_no_cycle_but_the_listed_ones():
    runtime, type_only = _graphs()
    for source, target in TYPE_ONLY_UPWARD:  # each listed edge is still type-only (else it is a real cycle)
        assert target in type_only[source], (source, target)
    listed = {name: {t for t in type_only[name] if (name, t) not in TYPE_ONLY_UPWARD} for name in runtime}
    assert _cycle({name: runtime[name] | listed[name] for name in runtime}) == []
    query = "lancell.query.atlas_query"
    with_query_atlas = {**runtime, query: runtime[query] | {"lancell.atlas"}}
    assert _cycle(with_query_atlas) != []  # the check can fail: that listed edge would close a cycle


def test_storage_imports_nothing_above_it():
    modules = _modules("lancell")
    storage = {name for name in modules if name.split(".")[:2] == ["lancell", "storage"]}
    assert "lancell.storage.shard_decode" in storage
    for name in storage:
        runtime, typed = _imports(modules[name])
        above = {m for m in (runtime | typed) & modules.keys() if m not in storage | STORAGE_MAY_USE}
        assert above == set(), name


def test_kernels_import_nothing_of_lancell_and_no_io():
    for name, path in _modules("kernels").items():
        runtime, typed = _imports(path)
        outside = {m for m in runtime | typed if m.split(".")[0] in {"lancell", "zarr", "lance", "lancedb"}}
        assert outside == set(), name


def _room(modules: dict[str, str | Path], room: str) -> set[str]:
    return {name for name in modules if name.split(".")[:2] == ["lancell", room]}


def test_tables_import_only_storage_below_them():
    modules = _modules("lancell")
    tables, storage = _room(modules, "tables"), _room(modules, "storage")
    assert "lancell.tables.registry" in tables
    for name in tables:
        runtime, typed = _imports(modules[name])
        above = {m for m in (runtime | typed) & modules.keys() if m not in tables | storage | TABLES_MAY_USE}
        assert above == set(), name
        assert "lancell.core" not in runtime, name  # the handle is passed in, never imported at run time


def test_a_package_import_counts_its_init():
    runtime, _ = _imports(ROOT / "lancell" / "ingest" / "add_csc.py")
    assert {"lancell.tables", "lancell.tables.registry", "lancell.storage"} <= runtime
