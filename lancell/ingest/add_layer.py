"""Add a layer to a stored dataset: atomic, and visible from the next table version on.

A snapshot pins table versions, so what makes a layer visible is the dataset record's ``layers`` column, not
the group: :func:`add_layer` writes the new values array (and its CSC copy) into the group beside the
existing ones, records its dtype in the group attributes, and then updates the record (the commit point,
docs/integrity.md "Crash safety"). Readers list a group's layers from the record they see
(:mod:`lancell.query.plan`), so a snapshot taken before never sees the layer. Debris of an interrupted call
(arrays and attributes no record names) is invisible, and the next call of that layer removes it before it
writes, unless a snapshot pins a record that names it (a call interrupted after its record's update
committed, and a snapshot taken in that instant): those arrays are never written again.

A sparse layer is stored on the dataset's stored pattern (``csr/indices``,
:mod:`lancell.ingest.layer_blocks`): its entries must lie on it; where it has none it stores a zero and is
listed in the group's ``zero_fill``.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import anndata as ad
import h5py
import numpy as np
import pyarrow.compute as pc
import scipy.sparse as sp

from lancell.errors import (
    DatasetNotFoundError,
    IngestError,
    LancellWarning,
    ShapeMismatchError,
    caller_outside_lancell,
    require_text,
    require_type,
)
from lancell.ingest.blocks import checked_values, dense_place, stored_csr_blocks
from lancell.ingest.plan import check_measured
from lancell.ingest.sources import matrix_source, stored_dtype
from lancell.storage.csc import write_csc
from lancell.storage.deletion import delete_prefix
from lancell.storage.groups import create_value_array
from lancell.storage.offsets import read_offsets
from lancell.storage.reader import read_element_ranges
from lancell.storage.shard_buffer import ShardBuffer
from lancell.storage.store_failures import StoreFailures, one_line, store_error, store_failed
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.pinned_table import lance_sql
from lancell.tables.registry import read_global_indices, sql_literal
from lancell.tables.schema import obs_name_of
from lancell.tables.versions import pinned_tables
from lancell.tables.visibility import dataset_lock_name

if TYPE_CHECKING:
    from collections.abc import Callable

    import obstore.store as obs_store
    import zarr

    from lancell.atlas import RaggedAtlas

__all__ = ["add_layer"]

log = logging.getLogger(__name__)


def add_layer(
    atlas: RaggedAtlas, dataset_uid: str, name: str, matrix: ad.AnnData | np.ndarray | sp.spmatrix
) -> list[str]:
    """Store ``matrix`` as layer ``name`` of dataset ``dataset_uid``; return the dataset's layers.

    Parameters
    ----------
    atlas
        A writable atlas.
    dataset_uid
        A committed dataset.
    name
        The new layer (allowed by the dataset's feature space, not stored yet).
    matrix
        Cells x features: an AnnData whose obs names are the dataset's (any order; or its cell uids,
        ``<dataset>:<name>``, as a query result names them) and whose var names are the uids of its
        features (any order), or a matrix (numpy, scipy sparse) whose rows and columns follow
        the dataset's stored order (that of ``query().where(dataset_uid=...).to_anndata()`` on the dataset
        alone), for a dataset whose input listed its features in that order (increasing global index; else
        its columns could follow either order, and a plain matrix is refused: name them with an AnnData).
        Integers are stored as ``uint32`` (BP-128), floats as ``float32`` (zstd). Explicit zeros off
        the stored pattern are the same matrix and are not stored.

    Raises
    ------
    IngestError
        An unknown dataset, a layer already stored or not allowed, cells or features that do not match, a
        plain matrix for a dataset stored in another feature order than its input's,
        values off the stored pattern or invalid (``DataValueError``), an atlas whose dataset table predates
        several layers (nowhere to record one); the atlas is unchanged.
    ArgumentError
        ``dataset_uid`` or ``name`` is not a str.
    LockLostError
        Another process took the dataset's lock over (this one paused past its lease): it stops before its
        next store and rolls nothing back (the arrays may be the other call's by then).
    """
    require_type("dataset_uid", dataset_uid, str, "a dataset uid (a str)")
    require_type("name", name, str, "a layer name (a str)")
    require_text("dataset_uid", dataset_uid)
    atlas.core.require_writable()
    if "layers" not in atlas.core.dataset_arrow.names:
        raise IngestError(
            f"add_layer: dataset {dataset_uid!r}: this atlas's dataset table has no 'layers' column (an "
            "older lancell wrote it), so no new layer can be recorded; ingest the dataset with all its layers"
        )
    space = resolve_feature_space(atlas.feature_spaces, _record(atlas, dataset_uid)["feature_space"])
    space.check_layer(name)
    if isinstance(matrix, ad.AnnData):
        check_measured(matrix, dataset_uid, dataset_uid)  # (its unmeasured zeros would become measured)
        if matrix.layers:
            warnings.warn(
                f"add_layer: dataset {dataset_uid!r}: layer {name!r} is the AnnData's X; its layers "
                f"{list(matrix.layers)} are not stored (give each as the X of an AnnData of its own)",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
    with atlas.core.lock(dataset_lock_name(dataset_uid), about=f"dataset {dataset_uid!r}") as lease:
        record = _record(atlas, dataset_uid)  # read under the lock: another add_layer may have committed
        group_name = record["zarr_group"]
        atlas.group_claims.require_own(group_name, dataset_uid)
        with StoreFailures(f"add_layer: dataset {dataset_uid!r}: opening its zarr group {group_name!r}"):
            group = atlas.core.zarr_root[group_name]  # opened now: a cached copy may predate a layer
            attrs = dict(group.attrs)  # what the roll-back restores
        layers = list(record["layers"])
        if name in layers:
            raise IngestError(f"dataset {dataset_uid!r} already stores layer {name!r} (it has {layers})")
        if name in attrs.get("layers", {}) and (pinned := _snapshots_listing(atlas, record, name)):
            raise IngestError(
                f"add_layer: dataset {dataset_uid!r}: layer {name!r} was left stored by an add_layer "
                f"interrupted after its record listed it, and snapshots {pinned} read it: it is not written "
                "again (their reads would change); add the layer under another allowed name, or delete the "
                "dataset and ingest it again"
            )
        if _mentioned(attrs, name):  # debris of an interrupted call that no record or snapshot lists: it goes
            attrs = _without(attrs, name)  # first (its dtype would be checked against the new values')
            _roll_back(group, attrs, name, atlas.core.store)
        source = matrix_source(dataset_uid, _aligned(atlas, record, attrs, matrix))
        where = f"uid = {sql_literal(dataset_uid)} AND zarr_group = {sql_literal(group_name)}"
        # whether the record may list the layer (an interrupt may follow its update's commit): then only the
        # record is rolled back (the unlisted arrays are invisible; the next add_layer overwrites them)
        listing = False
        try:
            # every array's creation and every shard store checks the lease first: a call paused past it (a
            # suspended machine) stops before it writes over the arrays of the call that took the dataset over
            lease.check()
            padded = _write_values(group, dataset_uid, name, source, space.kind, lease.check)
            if space.kind == "sparse" and attrs.get("csc_layers"):
                lease.check()
                write_csc(group, [name], indices=False, guard=lease.check)
            listed = {"layers": {**attrs.get("layers", {}), name: stored_dtype(source).name}}
            if padded:
                listed["zero_fill"] = sorted({*attrs.get("zero_fill", []), name})
            lease.check()
            group.update_attributes(
                listed
            )  # one write: no reader sees the layer listed without its zero fill
            lease.check()
            listing = True
            updated = atlas.core.tables.datasets.update(where=where, values={"layers": [*layers, name]})
            if updated.rows_updated != 1:  # deleted meanwhile (a guard: deletion holds the lock too)
                raise DatasetNotFoundError(f"add_layer: dataset {dataset_uid!r} was deleted meanwhile")
        except BaseException as exc:
            if lease.taken_over():  # the arrays and the record may be another call's now: left alone
                log.error("add_layer %s of %s lost its lock: nothing rolled back", name, dataset_uid)
            elif not listing:
                _roll_back(group, attrs, name, atlas.core.store)
            else:  # the record may list it (and a snapshot taken meanwhile pin that): the layer stays whole
                try:
                    atlas.core.tables.datasets.update(where=where, values={"layers": layers})
                except Exception as undo:
                    log.error(
                        "add_layer %s of %s: the record may list the layer: %s",
                        name,
                        dataset_uid,
                        one_line(undo),
                    )
            if store_failed(exc):  # the zarr store's (obstore's) or LanceDB's (as guarded): typed, named
                raise store_error(exc, f"add_layer: dataset {dataset_uid!r}, layer {name!r}") from exc
            raise
        finally:
            atlas.core.forget_nodes()  # this handle's opened groups predate the layer
    log.info("added layer %s to dataset %s", name, dataset_uid)
    return [*layers, name]


def _snapshots_listing(atlas: RaggedAtlas, record: dict[str, object], name: str) -> list[int]:
    """The snapshots whose record of ``record``'s dataset (in its zarr group) lists layer ``name``."""
    where = f"uid = {sql_literal(record['uid'])} AND zarr_group = {sql_literal(record['zarr_group'])}"
    found = []
    for version, pinned in pinned_tables(atlas.core.tables.db).items():
        datasets = atlas.core.pinned_view(pinned).tables.datasets.to_lance()
        if "layers" not in datasets.schema.names:
            continue
        listed = datasets.to_table(columns=["layers"], filter=lance_sql(where)).column("layers").to_pylist()
        if any(name in (layers or []) for layers in listed):
            found.append(version)
    return found


def _record(atlas: RaggedAtlas, uid: str) -> dict[str, object]:
    """Dataset ``uid``'s record as the dataset table holds it now."""
    where = f"uid = {sql_literal(uid)}"
    rows = atlas.core.tables.datasets.search().where(where).to_arrow().to_pylist()
    if not rows:
        raise DatasetNotFoundError(f"add_layer: no dataset {uid!r} in the atlas")
    return rows[0]


def _aligned(atlas: RaggedAtlas, record: object, attrs: dict[str, object], matrix: object) -> object:
    """``matrix`` with rows and columns in the dataset's stored order: an AnnData reordered by name, a plain
    matrix from the query's row order (which attaching a modality changes) to the stored rows; a plain matrix
    is refused for a dataset whose input listed its features in another order (group attribute
    ``var_reordered``: the input's own layer would put values under other features), and for a group
    written before that attribute."""
    uid, n_cells, n_features = record["uid"], int(record["n_cells"]), int(record["n_features"])
    space = record["feature_space"]
    cells = (
        atlas.query()
        .where(f"{space}.zarr_group = {sql_literal(record['zarr_group'])}")
        .select("dataset_uid")  # (uid and pointers are always kept: no other obs column is read)
        .to_arrow()
        .select(["uid", space])
    )
    row_field = "zarr_row" if "zarr_row" in {f.name for f in cells.schema.field(space).type} else "position"
    stored_rows = pc.struct_field(cells.column(space), row_field).to_numpy()  # of each cell, in query order
    if isinstance(matrix, ad.AnnData):
        names = np.empty(n_cells, dtype=object)
        names[stored_rows] = [obs_name_of(u) for u in cells.column("uid").to_pylist()]
        global_index = read_global_indices(atlas.core, [record["layout_uid"]])[record["layout_uid"]]
        by_index = atlas.feature_registry(space).set_index("global_index")["uid"]
        uids = by_index.reindex(global_index).to_numpy()
        if not matrix.obs_names.is_unique or not matrix.var_names.is_unique:
            raise ShapeMismatchError(
                f"dataset {uid!r}: the AnnData's obs names and var names must be unique: its var names are "
                "taken as the feature uids (a file whose uids are in a var column, e.g. gene_ids: "
                "adata.var_names = adata.var['gene_ids'])"
            )
        if matrix.X is None:
            raise ShapeMismatchError(f"dataset {uid!r}: the AnnData has no X")
        row_of, col_of = matrix.obs_names.get_indexer(names), matrix.var_names.get_indexer(uids)
        if (row_of < 0).any():  # a query result names its cells by their uids, <dataset>:<name>
            cell_uids = np.empty(n_cells, dtype=object)
            cell_uids[stored_rows] = cells.column("uid").to_pylist()
            by_uid = matrix.obs_names.get_indexer(cell_uids)
            if (by_uid >= 0).sum() > (row_of >= 0).sum():  # (named so: told in those names)
                names, row_of = cell_uids, by_uid
        if (row_of < 0).any() or (col_of < 0).any() or matrix.shape != (n_cells, n_features):
            other_cells = matrix.obs_names[np.setdiff1d(np.arange(matrix.n_obs), row_of[row_of >= 0])]
            other_features = matrix.var_names[~matrix.var_names.isin(uids)]
            found = [
                f"{what} {list(which[:3])}"
                for what, which in (
                    ("it lacks cells", names[row_of < 0]),
                    ("it lacks features", uids[col_of < 0]),
                    ("it has other cells", other_cells),
                    ("it has other features", other_features),
                )
                if len(which)
            ]
            hint = (
                f" (a union query's: query the dataset alone, query().where(dataset_uid={uid!r}), or keep "
                f"its cells and measured features, adata[adata.obs['dataset_uid'] == {uid!r}]"
                f"[:, adata.varm['presence'][{uid!r}]])"
                if "presence" in matrix.varm
                and (len(other_features) or _cells_of_other_datasets(matrix, uid))
                else ""
            )
            raise ShapeMismatchError(
                f"dataset {uid!r}: the AnnData's {matrix.shape} obs x var must be the dataset's {n_cells} "
                f"cells x {n_features} features: {'; '.join(found) or 'repeated names'}{hint}"
            )
        return _reordered(matrix.X, row_of, col_of)
    if not isinstance(matrix, np.ndarray | sp.spmatrix | sp.sparray):
        raise IngestError(
            f"dataset {uid!r}: a layer is an AnnData, a numpy array or a scipy sparse matrix, "
            f"not {type(matrix).__name__}"
        )
    if tuple(matrix.shape) != (n_cells, n_features):
        raise ShapeMismatchError(
            f"dataset {uid!r}: the layer has shape {tuple(matrix.shape)}, the dataset {(n_cells, n_features)}"
        )
    _check_plain_columns(uid, attrs.get("var_reordered"))
    if (stored_rows != np.arange(n_cells)).any():  # query order -> stored order
        matrix = matrix[np.argsort(stored_rows)]
    return matrix


def _reordered(x: object, row_of: np.ndarray, col_of: np.ndarray) -> object:
    """``x[row_of][:, col_of]``, leaving out a reordering that keeps every row (or column) where it is: a
    matrix already in the stored order is not copied (scipy copied a 766 MB layer twice, 1.8 GB at the
    peak). A backed matrix is read whole either way."""
    if isinstance(x, h5py.Dataset):  # a backed dense X (h5py takes rows in increasing order only)
        x = x[()]
    in_memory = isinstance(x, np.ndarray | sp.spmatrix | sp.sparray)
    if not in_memory or not np.array_equal(row_of, np.arange(row_of.size)):
        x = x[row_of]
    if not np.array_equal(col_of, np.arange(col_of.size)):
        x = x[:, col_of]
    return x


def _cells_of_other_datasets(matrix: ad.AnnData, uid: str) -> bool:
    """Whether a query result ``matrix`` holds cells of other datasets than ``uid``."""
    held = matrix.obs["dataset_uid"] if "dataset_uid" in matrix.obs.columns else None
    return held is not None and bool((held.astype(str) != uid).any())


def _check_plain_columns(uid: str, reordered: object) -> None:
    """Refuse a plain matrix for a dataset whose features are stored in another order than its input listed
    them, or whose group does not record whether they are (a plain matrix then put values under other
    features: an older lancell reordered them without saying so)."""
    remedy = (
        "give the layer as an AnnData naming its cells and features: the query result "
        f"atlas.query().where(dataset_uid={uid!r}).to_anndata() with its X replaced by the layer in that "
        "order, or an AnnData whose var names are the feature uids (the registry's uid)"
    )
    if reordered is True:
        raise IngestError(
            f"add_layer: dataset {uid!r}: its input listed its features in another order than they are "
            f"stored (increasing global index): a plain matrix could follow either order; {remedy}"
        )
    if reordered is not False:
        raise IngestError(
            f"add_layer: dataset {uid!r} was stored by a lancell that did not record whether its features "
            f"were reordered (stored by increasing global index): a plain matrix could follow either order; "
            f"{remedy}"
        )


def _write_values(
    group: zarr.Group, dataset: str, name: str, source: object, kind: str, guard: Callable[[], None]
) -> bool:
    """Write the layer's values array (``guard`` called before each shard is stored); return whether it pads
    the stored pattern with zeros."""
    dtype = stored_dtype(source)
    if kind == "dense":
        stored = group["layers"][next(iter(group["layers"].array_keys()))]
        with ShardBuffer(
            create_value_array(group["layers"], name, stored.shape, dtype, stored.chunks, stored.shards),
            stored.shards[0],
            guard,
        ) as out:
            for row0, block in source.dense_blocks():
                place = dense_place(row0, block.shape[1])
                out.append(checked_values(dataset, name, block.ravel(), row0, place).reshape(block.shape))
            out.close()
        return False
    indices, indptr = group["csr/indices"], read_offsets(group["csr/indptr"], group.attrs, "csr")
    padded = False
    with ShardBuffer(
        create_value_array(group["csr/layers"], name, indices.shape, dtype, indices.chunks, indices.shards),
        indices.shards[0],
        guard,
    ) as out:
        for row0, block_indptr, columns, values in stored_csr_blocks(source, name, None):
            stop = row0 + block_indptr.size - 1
            pattern, lengths = read_element_ranges(indices, indptr[row0:stop], indptr[row0 + 1 : stop + 1])
            n_features = source.shape[1]
            stored_keys = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths) * n_features + pattern
            keys = (
                np.repeat(np.arange(lengths.size, dtype=np.int64), np.diff(block_indptr)) * n_features
                + columns
            )
            keep = values != 0
            keys, values = keys[keep], values[keep]
            position = np.searchsorted(stored_keys, keys)
            found = stored_keys[np.minimum(position, stored_keys.size - 1)] if stored_keys.size else keys + 1
            off = (position >= stored_keys.size) | (found != keys)
            if off.any():
                first = int(keys[off][0])
                raise IngestError(
                    f"dataset {dataset!r}, layer {name!r}: cell row {row0 + first // n_features}, feature "
                    f"{first % n_features} (stored order) holds a value where the stored layers have "
                    "none; a layer added later must lie on the dataset's stored sparsity pattern"
                )
            full = np.zeros(stored_keys.size, dtype=dtype)
            full[position] = values
            padded |= keys.size < stored_keys.size
            out.append(full)
        out.close()
    return padded


def _mentioned(attrs: dict, name: str) -> bool:
    """Whether a group's attributes name layer ``name``."""
    return name in attrs.get("layers", {}) or any(
        name in attrs.get(key, []) for key in ("zero_fill", "csc_layers")
    )


def _without(attrs: dict, name: str) -> dict:
    """A group's attributes without layer ``name``."""
    kept = dict(attrs)
    if "layers" in kept:
        kept["layers"] = {layer: dtype for layer, dtype in kept["layers"].items() if layer != name}
    for key in ("zero_fill", "csc_layers"):
        if key in kept:
            kept[key] = [layer for layer in kept[key] if layer != name]
    return kept


def _roll_back(group: zarr.Group, attrs: dict, name: str, store: obs_store.ObjectStore) -> None:
    """Restore the group's attributes and delete the layer's arrays from ``store`` (the group's; folders
    left empty on a local disk go too, which zarr lists as unknown members); logged if the store refuses."""
    try:
        restored = {key: attrs[key] for key in ("layers", "zero_fill", "csc_layers") if key in attrs}
        if any(group.attrs.get(key) != value for key, value in restored.items()):  # (else: no write)
            group.update_attributes(restored)
        for parent in ("csr/layers", "csc/layers", "layers"):
            delete_prefix(store, f"{group.path}/{parent}/{name}")
    except Exception as exc:  # whatever the store raises: the caller's own error stands
        log.error(
            "roll-back of layer %s left debris (invisible; the next add_layer overwrites it): %s",
            name,
            one_line(exc),
        )
