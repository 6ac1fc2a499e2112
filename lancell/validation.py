"""Consistency checks of an atlas: tables against each other and against the zarr groups' attributes."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import obstore
import pyarrow as pa
import pyarrow.compute as pc
import zarr

from lancell.cell_tallies import cell_tallies, value_counts
from lancell.errors import (
    CodecError,
    DatasetNotFoundError,
    ShardFormatError,
    require_text,
    require_type,
)
from lancell.layer_entries import recorded_layers
from lancell.storage.groups import FORMAT_VERSION, other_atlas
from lancell.storage.offsets import missing_chunk_keys
from lancell.storage.reader import array_reader, written_whole
from lancell.storage.shard_layout import parse_layout
from lancell.storage.store_failures import lance_removed, one_line
from lancell.storage.stores import read_json
from lancell.tables.layout_numbering import layouts_off_the_registry
from lancell.tables.registry import sql_literal

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["find_problems", "validate_atlas"]

_ATTEMPTS = 5  # reads of a live atlas whose pinned table versions were pruned meanwhile
_UNREADABLE = "a table cannot be read, a data file of its version is missing: "

log = logging.getLogger(__name__)


def _read_for_dataset(relative: str, layers: Collection[str], csc_layers: Collection[str]) -> bool:
    """Whether readers of the committed dataset read the array at ``relative`` (a path in its group): not a
    layer being added (the group names it before the record does) nor a CSC copy being (re)built (its
    ``csc_layers`` attribute is set last)."""
    parts = relative.split("/")
    if parts[0] == "csc" and not csc_layers:
        return False
    if len(parts) >= 2 and parts[-2] == "layers":
        return parts[-1] in layers and (parts[0] != "csc" or parts[-1] in csc_layers)
    return True


def _listing(core: AtlasCore, group: str) -> set[str]:
    """The keys of every object under zarr group ``group`` (one listing)."""
    return {meta["path"] for batch in obstore.list(core.store, prefix=f"{group}/") for meta in batch}


def _read_arrays(attrs: dict[str, Any], layers: Collection[str]) -> list[str]:
    """The arrays (paths in the group) readers of the committed dataset read: a sparse group's CSR offsets,
    indices and each of ``layers`` (and the CSC copy's, for the layers it holds: ``csc_layers``), a dense
    group's ``layers``."""
    encoding = attrs.get("lancell-encoding")
    if encoding == "dense_matrix":
        return [f"layers/{layer}" for layer in layers]
    if encoding != "csr_matrix":
        return []
    copied = [layer for layer in layers if layer in (attrs.get("csc_layers") or ())]
    return [
        "csr/indptr",
        "csr/indices",
        *(f"csr/layers/{layer}" for layer in layers),
        *(["csc/indptr", "csc/indices"] if copied else []),
        *(f"csc/layers/{layer}" for layer in copied),
    ]


def _expected_shape(relative: str, attrs: dict[str, Any]) -> tuple[int, ...] | None:
    """The shape the group's attributes give the value array at ``relative`` (None: not a value array)."""
    parts = relative.split("/")
    sizes = [attrs.get(key) for key in ("nnz", "n_cells", "n_features")]
    if not all(isinstance(size, int) and not isinstance(size, bool) for size in sizes):
        return None  # (attributes that are no counts: compared with the record, and reported, elsewhere)
    nnz, n_cells, n_features = sizes
    if attrs.get("lancell-encoding") == "csr_matrix":
        if parts[0] in ("csr", "csc") and (parts[1:] == ["indices"] or parts[1:2] == ["layers"]):
            return (nnz,)
        return None
    if parts[:1] == ["layers"] and len(parts) == 2:
        return (n_cells, n_features)
    return None


def _missing_shards(
    core: AtlasCore, group: str, attrs: dict[str, Any], layers: Collection[str], listed: set[str]
) -> list[str]:
    """What is missing from the arrays of zarr group ``group``: its objects (``listed``) compared with the
    shard keys each array's ``zarr.json`` implies (:meth:`.ShardLayout.shard_key`), and a value array whose
    length is not the group's ``nnz`` (or a dense layer not ``n_cells`` x ``n_features``).

    Only arrays that readers of the committed dataset read (``layers``: the layers its record lists) and
    every shard of which the writer stored (:func:`~lancell.storage.reader.written_whole`: a missing object
    is damage, not fill values), and offsets arrays that say every chunk was written
    (:mod:`lancell.storage.offsets`), are compared; each array's ``zarr.json`` is read once.
    """
    nodes = {key.removesuffix("/zarr.json") for key in listed if key.endswith("/zarr.json")}
    arrays = sorted(n for n in nodes if n != group and not any(o.startswith(f"{n}/") for o in nodes))
    found = [
        f"array {relative!r} is missing from the store (no zarr.json): readers of the dataset read it"
        for relative in _read_arrays(attrs, layers)
        if f"{group}/{relative}" not in nodes
    ]
    for path in arrays:
        relative = path.removeprefix(f"{group}/")
        if not _read_for_dataset(relative, layers, attrs.get("csc_layers") or ()):
            continue
        try:
            meta = read_json(core.store, f"{path}/zarr.json")
        except ValueError as exc:  # not JSON
            meta = exc
        if not isinstance(meta, dict):
            found.append(f"array {relative!r}: its zarr.json is not a JSON object ({str(meta)[:200]})")
            continue
        if meta.get("node_type") == "group":  # (a group whose arrays are all gone: named above)
            continue
        expected = _expected_shape(relative, attrs)
        if expected is not None and meta.get("shape") != list(expected):  # (reads would end out of bounds)
            found.append(
                f"array {relative!r} has shape {meta.get('shape')}, the group's attributes say "
                f"{list(expected)}"
            )
            continue
        offsets = missing_chunk_keys(meta, path, listed)  # an offsets array that says every chunk is written
        if offsets is not None:
            missing, n_chunks = offsets
            if missing:
                found.append(
                    f"array {relative!r}: {len(missing)} of its {n_chunks} chunk objects are missing from "
                    f"the store, e.g. {missing[0]!r}"
                )
            continue
        try:
            layout = parse_layout(meta, path)
            if not written_whole(attrs, layout):
                continue
        except ShardFormatError:  # older offsets, read through zarr-python: a missing chunk may be fill
            continue
        n_shards = -(-layout.shape[0] // layout.shard_shape[0])
        missing = [key for key in (layout.shard_key(path, i) for i in range(n_shards)) if key not in listed]
        if missing:
            found.append(
                f"array {relative!r}: {len(missing)} of its {n_shards} shard objects are missing from the "
                f"store, e.g. {missing[0]!r}"
            )
    return found


def _damaged_chunks(
    core: AtlasCore, group: str, attrs: dict[str, Any], layers: Collection[str], listed: set[str]
) -> list[str]:
    """The first damaged shard of each array the dataset's readers read: every shard stored (in ``listed``)
    read whole and decoded, so each chunk's CRC32C and encoding are checked (a flipped bit, a truncated
    object); the missing ones are :func:`_missing_shards`'. Costs one read of the dataset's arrays."""
    found = []
    for relative, node in core.zarr_root[group].members(max_depth=None):
        if not isinstance(node, zarr.Array) or not _read_for_dataset(
            relative, layers, attrs.get("csc_layers") or ()
        ):
            continue
        expected = _expected_shape(relative, attrs)
        if expected is not None and node.shape != expected:  # (reported by _missing_shards)
            continue
        try:
            reader = array_reader(node)
        except ShardFormatError as exc:
            found.append(f"array {relative!r} cannot be read: {exc}")
            continue
        if reader is None:  # read by zarr-python (offsets, older arrays): its own codecs' checks
            try:
                node[...]
            except (ValueError, CodecError) as exc:
                found.append(f"array {relative!r} is damaged: {exc}")
            continue
        for shard in range(reader.n_shards):
            if reader.layout.shard_key(reader.path, shard) not in listed:
                continue
            try:
                reader.read_shard(shard)
            except CodecError as exc:
                found.append(f"array {relative!r}: shard {shard} is damaged: {exc}")
                break
    return found


def _layouts_off_the_registry(core: AtlasCore, datasets: pa.Table, layouts: pa.Table) -> list[str]:
    """The layouts of ``datasets`` that record a feature their space's registry does not hold under the
    same global index (:mod:`lancell.tables.layout_numbering`)."""
    problems = []
    for space in sorted(set(datasets.column("feature_space").to_pylist()) & set(core.feature_spaces)):
        used = datasets.filter(pc.equal(datasets.column("feature_space"), space)).column("layout_uid")
        rows = layouts.filter(pc.is_in(layouts.column("layout_uid"), value_set=pc.unique(used)))
        for layout, (count, example) in layouts_off_the_registry(core, space, rows).items():
            held = example["registered_index"]
            problems.append(
                f"layout {layout!r} ({space}): {count} features are not in the registry under the global "
                f"index it records, e.g. {example['feature_uid']!r} (layout {example['global_index']}, "
                f"registry {'none: not registered' if held is None else held}); its datasets read other "
                "features' values under these names (the registry edited, or a layout an older lancell "
                "shared between feature spaces): delete them and ingest them again"
            )
    return problems


def validate_atlas(core: AtlasCore, dataset_uid: str | None = None, *, checksums: bool = False) -> list[str]:
    """:func:`find_problems` of one state of ``core``'s tables (:meth:`AtlasCore.read_view`).

    A live handle whose pinned table versions lost a data file while it read them (another process's
    ``optimize(cleanup_older_than=...)`` pruned them) reads again at the current versions, up to
    ``_ATTEMPTS`` times; a data file missing from versions that are still current is damage, listed.
    """
    for _ in range(_ATTEMPTS):
        view = core.read_view()
        problems = find_problems(view, dataset_uid, checksums=checksums)
        unreadable = any(problem.startswith(_UNREADABLE) for problem in problems)
        if not unreadable or view is core or view.tables.pinned == core.tables.consistent_versions():
            return problems
    return problems


def find_problems(core: AtlasCore, dataset_uid: str | None = None, *, checksums: bool = False) -> list[str]:
    """Return a list of human-readable inconsistencies (empty when the atlas is consistent); see
    :func:`_check`. A table data file missing from the versions read is listed (the checks that need the
    table are left out), not raised."""
    problems: list[str] = []
    try:
        _check(core, dataset_uid, checksums, problems)
    except (OSError, RuntimeError, ValueError) as exc:  # (StoreError included; Lance's own errors)
        if not lance_removed(exc):
            raise
        problems.append(_UNREADABLE + one_line(exc))
    return problems


def _check(core: AtlasCore, dataset_uid: str | None, checksums: bool, problems: list[str]) -> None:
    """Append to ``problems`` the human-readable inconsistencies of the atlas.

    With ``dataset_uid``, only that dataset is checked (its record, group, layout, the cells it owns or
    points into, their uids' uniqueness) besides the registries: the cost is that of the dataset, not of the
    atlas.

    Checks: every dataset's zarr group exists with matching attributes (and carries this atlas's id, when the
    group and the atlas record one, and stores every layer the record lists), holds every shard object of the
    arrays its readers read (one listing of the group) and its layout is stored; cell counts per dataset
    equal the dataset records; no cell belongs to an unknown dataset; cell uids are unique; registry uids
    and global indices are unique and assigned, and each dataset's layout records its features at the
    global indices the registry holds. Cell rows and pointers no dataset record commits
    (an interrupted ingestion) are invisible debris, not problems (see :mod:`lancell.tables.visibility`).
    With ``checksums``, every chunk those arrays store is also read and checked against its CRC32C (the cost
    of reading the datasets checked).
    """
    tables = core.tables
    datasets = tables.datasets.to_arrow()
    scope = None
    if dataset_uid is not None:
        require_type("dataset_uid", dataset_uid, str, "a dataset uid (a str) or None")
        require_text("dataset_uid", dataset_uid)
        datasets = datasets.filter(pc.equal(datasets.column("uid"), dataset_uid))
        if not datasets.num_rows:
            raise DatasetNotFoundError(f"dataset {dataset_uid!r} is not in the atlas")
        owners = {dataset_uid, datasets.column("cells_of")[0].as_py() or dataset_uid}  # a modality's cells
        scope = " OR ".join(f"dataset_uid = {sql_literal(uid)}" for uid in sorted(owners))
    try:
        counts, per_group, uids_unique = cell_tallies(core, scope)
    except (OSError, RuntimeError, ValueError) as exc:  # (the other checks still run)
        if not lance_removed(exc):
            raise
        problems.append(_UNREADABLE + one_line(exc))
        counts, per_group, uids_unique = None, None, True
    layouts = tables.layouts.to_arrow()
    layout_sizes = value_counts(layouts.column("layout_uid"))
    known = set()
    for row in datasets.to_pylist():
        uid = row["uid"]
        if not row.get("cells_of"):
            known.add(uid)
        if per_group is not None and per_group.get(row["zarr_group"], 0) != row["n_cells"]:
            problems.append(
                f"dataset {uid!r}: record says {row['n_cells']} cells, "
                f"{per_group.get(row['zarr_group'], 0)} cells point into {row['zarr_group']!r}"
            )
        if layout_sizes.get(row["layout_uid"]) != row["n_features"]:
            problems.append(f"dataset {uid!r}: layout {row['layout_uid']!r} missing or of the wrong size")
        try:
            attrs = core.group_attrs(row["zarr_group"], reopen=True)  # as stored now, not as first opened
        except ShardFormatError as exc:
            problems.append(f"dataset {uid!r}: {exc}")
            continue
        if attrs is None:
            problems.append(f"dataset {uid!r}: zarr group {row['zarr_group']!r} is missing")
            continue
        if (owner := other_atlas(attrs, core.atlas_id)) is not None:
            problems.append(
                f"dataset {uid!r}: zarr group {row['zarr_group']!r} belongs to another atlas "
                f"(its attributes name atlas {owner!r}, this atlas is {core.atlas_id!r})"
            )
        if attrs.get("lancell_format") != FORMAT_VERSION:
            problems.append(f"dataset {uid!r}: zarr group format {attrs.get('lancell_format')!r}")
        unstored = [layer for layer in row.get("layers") or () if layer not in attrs.get("layers", {})]
        if unstored:
            problems.append(f"dataset {uid!r}: record lists layers {unstored} its zarr group does not store")
        for key in ("n_cells", "nnz", "layout_uid", "feature_space"):
            if attrs.get(key) != row[key]:
                problems.append(
                    f"dataset {uid!r}: zarr attr {key}={attrs.get(key)!r}, record has {row[key]!r}"
                )
        layers = recorded_layers(row.get("layers"), attrs)
        listed = _listing(core, row["zarr_group"])
        problems += [
            f"dataset {uid!r}: {p}" for p in _missing_shards(core, row["zarr_group"], attrs, layers, listed)
        ]
        if checksums:
            damaged = _damaged_chunks(core, row["zarr_group"], attrs, layers, listed)
            problems += [f"dataset {uid!r}: {p}" for p in damaged]
    dangling = sorted(set(per_group or ()) - set(datasets.column("zarr_group").to_pylist()))
    # an attachment interrupted before its commit: readers treat these cells as unmeasured
    if dangling and dataset_uid is None:  # (scoped, the cells' other modalities' groups are not listed)
        log.warning("cells point into zarr groups without a dataset record (vacuum() detaches): %s", dangling)
    orphans = sorted(set(counts or ()) - known)
    if orphans and dataset_uid is None:
        problems.append(f"cells of unknown datasets {orphans[:5]} (debris of an interrupted ingest?)")
    if not uids_unique:
        problems.append("cell uids are not unique")
    problems += _layouts_off_the_registry(core, datasets, layouts)
    for space in core.feature_spaces:
        registry = tables.registry(space).to_arrow().select(["uid", "global_index"])
        if pc.count_distinct(registry.column("uid")).as_py() != registry.num_rows:
            problems.append(f"registry {space!r}: feature uids are not unique")
        index = registry.column("global_index")
        if index.null_count:
            problems.append(f"registry {space!r}: {index.null_count} features without global_index")
        elif pc.count_distinct(index).as_py() != registry.num_rows:
            problems.append(f"registry {space!r}: global_index values are not unique")
