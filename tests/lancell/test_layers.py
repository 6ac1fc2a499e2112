"""Several layers per dataset: counts and normalized values stored together on one sparsity pattern."""

from __future__ import annotations

import shutil
import tracemalloc
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import table_calls

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import (
    DuplicateContentError,
    IngestError,
    LancellWarning,
    ShapeMismatchError,
    StoreError,
    UnmeasuredDataError,
)
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.layer_entries import layer_entries
from lancell.tables.schema import DatasetRecord


def _two_layers(celltypist: ad.AnnData, cells: slice) -> ad.AnnData:
    """X log-normalized float32 and layers["counts"] integer, on the same entries."""
    adata = celltypist[cells].copy()
    adata.obs = adata.obs[[]]
    counts = sp.csr_matrix(adata.X).astype(np.int64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    normalized = sp.csr_matrix(sp.diags(1e4 / totals) @ counts)
    normalized.data = np.log1p(normalized.data)
    adata.X = normalized.astype(np.float32)
    adata.layers["counts"] = counts
    return adata


def _ingest(atlas: RaggedAtlas, adata: ad.AnnData, uid: str, **kwargs) -> DatasetRecord:
    return add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
        **kwargs,
    )


def _assert_same(got: sp.spmatrix, want: sp.spmatrix, kind: str) -> None:
    got, want = sp.csr_matrix(got), sp.csr_matrix(want).sorted_indices()
    assert got.dtype.kind == kind
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data.astype(got.dtype))


def _stored_order(atlas: RaggedAtlas, uid: str, matrix) -> ad.AnnData:
    """``matrix``, whose rows and columns follow dataset ``uid``'s stored order, named (a plain matrix is
    refused for a dataset whose input listed its features in another order)."""
    out = atlas.query().where(dataset_uid=uid).layers("gene_expression", "counts").to_anndata()
    obs = pd.DataFrame(index=out.obs_names.str.split(":", n=1).str[1])
    return ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=out.var_names))


def _query(atlas: RaggedAtlas, layers, policy: str = "error"):
    return atlas.query().layers("gene_expression", layers).on_unmeasured(policy)


LAYERS = {"log_normalized": "X", "counts": "counts"}


def test_two_layers_round_trip_from_to_anndata_and_to_batches(atlas, celltypist):
    adata = _two_layers(celltypist, slice(0, 300))
    record = _ingest(atlas, adata, "two", layers=LAYERS)
    assert record.layer == "log_normalized" and record.layers == ["log_normalized", "counts"]
    out = _query(atlas, ["log_normalized", "counts"]).to_anndata()
    order = np.argsort(out.var["global_index"].to_numpy())  # single dataset: columns in stored order
    stored = adata[:, out.var_names]
    assert list(out.layers) == ["counts"]
    _assert_same(out.X, stored.X, "f")
    _assert_same(out.layers["counts"], stored.layers["counts"], "i")
    assert (order == np.arange(order.size)).all()
    batches = list(_query(atlas, ["counts", "log_normalized"]).to_batches(batch_size=128))
    assert [b.n_obs for b in batches] == [128, 128, 44]
    _assert_same(sp.vstack([b.X for b in batches]), stored.layers["counts"], "i")
    _assert_same(sp.vstack([b.layers["log_normalized"] for b in batches]), stored.X, "f")
    one = _query(atlas, "counts").to_anndata()
    assert not one.layers and one.uns["lancell"]["layers"] == ["counts"]
    _assert_same(one.X, stored.layers["counts"], "i")


def test_union_of_counts_only_and_two_layer_datasets(atlas, celltypist):
    _ingest(atlas, _two_layers(celltypist, slice(0, 100)), "two", layers=LAYERS)
    counts_only = celltypist[100:160].copy()
    counts_only.obs = counts_only.obs[[]]
    _ingest(atlas, counts_only, "one", zarr_layer="counts")
    both = _query(atlas, "counts").to_anndata()
    assert both.obs["dataset_uid"].value_counts().to_dict() == {"two": 100, "one": 60}
    with pytest.raises(
        UnmeasuredDataError,
        match=r"60 of the 160 selected cells did not measure layer "
        r"'log_normalized'.*dataset 'one': 60 cells \(their group has no layer",
    ):
        _query(atlas, "log_normalized").to_anndata()
    with pytest.raises(UnmeasuredDataError, match="layer 'log_normalized'"):
        _query(atlas, ["counts", "log_normalized"]).to_anndata()
    dropped = _query(atlas, ["counts", "log_normalized"], "drop").to_anndata()
    assert dropped.n_obs == 100 and set(dropped.obs["dataset_uid"]) == {"two"}
    kept = _query(atlas, ["counts", "log_normalized"], "keep").to_anndata()
    assert kept.n_obs == 160
    one = (kept.obs["dataset_uid"] == "one").to_numpy()
    assert kept.layers["log_normalized"][one].nnz == 0
    _assert_same(kept.X[one], counts_only[:, kept.var_names].X, "i")
    assert kept.uns["lancell"]["layer_datasets"] == {"counts": ["one", "two"], "log_normalized": ["two"]}
    assert kept.varm["presence"]["one"].any()  # X is counts: measured by both
    # a float layer no selected cell's dataset stores keeps its float dtype (it read as int64)
    only_one = _query(atlas, ["counts", "log_normalized"], "keep").where(dataset_uid="one")
    assert only_one.to_anndata().layers["log_normalized"].dtype == np.float32
    assert only_one.to_cell_dataset("gene_expression", ["counts", "log_normalized"]).dtypes == {
        "counts": np.uint32,
        "log_normalized": np.float32,
    }
    none = _query(atlas, ["counts", "log_normalized"]).where(dataset_uid="nobody").to_anndata()
    assert none.n_obs == 0 and none.layers["log_normalized"].dtype == np.float32
    # an unrelated dataset's lost group is no matter of an empty answer (it raised GroupNotFoundError)
    (group,) = atlas.list_datasets().set_index("uid").loc[["two"], "zarr_group"]
    shutil.rmtree(Path(atlas.core.db_uri).parent / "arrays" / group)
    reopened = RaggedAtlas.open(atlas.core.db_uri)
    assert _query(reopened, ["counts", "log_normalized"]).where(dataset_uid="nobody").to_anndata().n_obs == 0


def test_a_layer_with_explicit_zeros_on_the_shared_entries_keeps_them(atlas, celltypist):
    adata = _two_layers(celltypist, slice(0, 80))
    adata.X.data[::7] = 0  # explicit zeros where counts has values: the same pattern
    nnz = adata.X.nnz
    _ingest(atlas, adata, "zeros", layers=LAYERS)
    group = atlas.core.group_attrs(atlas.list_datasets()["zarr_group"][0])
    assert group["zero_fill"] == [] and group["nnz"] == nnz
    out = _query(atlas, ["log_normalized", "counts"]).to_anndata()
    stored = adata[:, out.var_names]
    assert out.X.nnz == nnz
    _assert_same(out.X, stored.X, "f")
    _assert_same(out.layers["counts"], stored.layers["counts"], "i")


def test_layers_with_their_own_patterns_are_stored_on_the_union(atlas, celltypist):
    adata = _two_layers(celltypist, slice(0, 80))
    x = adata.X.tolil()
    x[0, 0], x[1, 5] = 1.5, 2.5  # entries counts does not have
    x = sp.csr_matrix(x)
    x.data[x.data < 1.0] = 0
    x.eliminate_zeros()  # and fewer entries than counts
    adata.X = x.astype(np.float32)
    union = (abs(sp.csr_matrix(adata.X)) + abs(sp.csr_matrix(adata.layers["counts"]))).nnz
    _ingest(atlas, adata, "own", layers=LAYERS)
    attrs = atlas.core.group_attrs(atlas.list_datasets()["zarr_group"][0])
    assert attrs["nnz"] == union and attrs["zero_fill"] == ["log_normalized", "counts"]
    out = _query(atlas, ["log_normalized", "counts"]).to_anndata()
    stored = adata[:, out.var_names]
    _assert_same(out.X, stored.X, "f")
    _assert_same(out.layers["counts"], stored.layers["counts"], "i")
    record = atlas.dataset_schema(**atlas.list_datasets().iloc[0].to_dict())
    assert layer_entries(atlas.core, record) == {  # each layer's own entries, not the union's padding
        "log_normalized": {"dtype": "float32", "nnz": out.X.nnz},
        "counts": {"dtype": "uint32", "nnz": out.layers["counts"].nnz},
    }


def test_a_layer_another_handle_added_gives_its_dtype_to_cells_without_it(atlas, celltypist):
    """A handle that had read a group before another handle added a float layer to it read that layer as
    int64 over cells of datasets without it (its cached attributes lacked the layer)."""
    adata = celltypist[0:20].copy()
    adata.obs = adata.obs[[]]
    _ingest(atlas, adata, "a", zarr_layer="counts")
    other = celltypist[20:30].copy()
    other.obs = other.obs[[]]
    _ingest(atlas, other, "b", zarr_layer="counts")
    early = RaggedAtlas.open(atlas.core.db_uri)
    assert early.query().layers("gene_expression", "counts").to_anndata().n_obs == 30  # its groups read
    out = atlas.query().where(dataset_uid="a").to_anndata()  # the stored order of cells and features
    halves = sp.csr_matrix(adata[out.obs_names.str.split(":").str[1], out.var_names].X, dtype=np.float32) / 2
    add_layer(atlas, "a", "log_normalized", _stored_order(atlas, "a", halves))
    only_b = _query(early, ["counts", "log_normalized"], "keep").where(dataset_uid="b").to_anndata()
    assert only_b.layers["log_normalized"].dtype == np.float32


def test_a_handle_that_read_a_killed_add_layers_attributes_reads_the_committed_layer(
    atlas, celltypist, monkeypatch
):
    """A handle that had read the group while an interrupted add_layer's attributes were there (the layer
    listed as integers, no zero fill) kept them once another call committed the layer as floats on half the
    pattern: the values came back truncated to integers, with the padding zeros as stored entries."""
    adata = celltypist[0:40].copy()
    adata.obs = adata.obs[[]]
    _ingest(atlas, adata, "a", zarr_layer="counts")
    early = RaggedAtlas.open(atlas.core.db_uri)
    out = atlas.query().where(dataset_uid="a").to_anndata()  # the stored order of cells and features
    stored = sp.csr_matrix(adata[out.obs_names.str.split(":").str[1], out.var_names].X, dtype=np.float32)
    whole = stored.copy()
    whole.data = np.arange(1, whole.nnz + 1, dtype=np.float32)
    half = stored.copy()
    half.data = np.where(np.arange(half.nnz) % 2, 0, half.data + 0.5).astype(np.float32)
    half.eliminate_zeros()
    datasets = atlas.core.tables.datasets
    with monkeypatch.context() as killed:  # the record's update never happens: the attributes stay
        killed.setattr(datasets, "update", lambda **kwargs: (_ for _ in ()).throw(OSError("killed")))
        with pytest.raises(OSError, match="killed"):
            add_layer(atlas, "a", "log_normalized", _stored_order(atlas, "a", whole.astype(np.int32)))
    assert early.query().where(dataset_uid="a").to_anndata().n_obs == 40  # it reads the group now
    add_layer(atlas, "a", "log_normalized", _stored_order(atlas, "a", half))
    read = _query(early, ["counts", "log_normalized"]).where(dataset_uid="a").to_anndata()
    read = read.layers["log_normalized"]
    assert read.dtype == np.float32 and read.nnz == half.nnz
    np.testing.assert_array_equal(read.toarray(), half.toarray())


def test_a_handle_that_opened_the_group_another_way_reads_a_layer_added_since(atlas, celltypist):
    """Opened by group_attributes() (or validate()) before the query planner, the group's nodes carried no
    record of the layers listed, and the layer another handle added was unmeasured to this one."""
    adata = celltypist[0:40].copy()
    adata.obs = adata.obs[[]]
    record = _ingest(atlas, adata, "a", zarr_layer="counts")
    early = RaggedAtlas.open(atlas.core.db_uri)
    assert "log_normalized" not in early.group_attributes(record.zarr_group)["layers"]
    out = atlas.query().where(dataset_uid="a").to_anndata()
    halves = sp.csr_matrix(adata[out.obs_names.str.split(":").str[1], out.var_names].X, dtype=np.float32) / 2
    add_layer(atlas, "a", "log_normalized", _stored_order(atlas, "a", halves))
    read = _query(early, ["counts", "log_normalized"]).where(dataset_uid="a").to_anndata()
    assert read.layers["log_normalized"].nnz == halves.nnz


def test_add_layer_is_visible_in_the_next_snapshot_only(atlas, celltypist):
    adata = _two_layers(celltypist, slice(0, 120))
    counts_only = adata.copy()
    counts_only.X = counts_only.layers.pop("counts")
    _ingest(atlas, counts_only, "late", zarr_layer="counts")
    before = atlas.snapshot()
    out = atlas.query().to_anndata()  # the stored order of the dataset's cells and features
    normalized = adata[out.obs_names.str.split(":").str[1], out.var_names].X
    assert add_layer(
        atlas, "late", "log_normalized", _stored_order(atlas, "late", sp.csr_matrix(normalized))
    ) == [
        "counts",
        "log_normalized",
    ]
    with pytest.raises(IngestError, match="already stores layer 'log_normalized'"):
        add_layer(atlas, "late", "log_normalized", normalized)
    after = atlas.snapshot()
    pinned = RaggedAtlas.checkout(atlas.db_uri, before)
    with pytest.raises(UnmeasuredDataError, match="layer 'log_normalized'"):
        pinned.query().layers("gene_expression", "log_normalized").to_anndata()
    assert pinned.query().to_anndata().uns["lancell"]["layers"] == ["counts"]  # inferred: one layer
    got = RaggedAtlas.checkout(atlas.db_uri, after).query()
    got = got.layers("gene_expression", ["log_normalized", "counts"]).to_anndata()
    stored = adata[:, got.var_names]
    _assert_same(got.X, stored.X, "f")
    _assert_same(got.layers["counts"], stored.layers["counts"], "i")
    assert atlas.list_datasets()["layers"][0].tolist() == ["counts", "log_normalized"]


def test_add_layer_lists_a_padded_layer_and_its_zero_fill_in_one_write(atlas, celltypist, monkeypatch):
    """zarr's ``attrs.update`` writes the group's zarr.json once per key: a reader between the two writes saw
    the layer listed without its zero fill, and read the padding zeros as measured values."""
    from zarr.core.group import AsyncGroup

    adata = celltypist[:40].copy()
    adata.obs = adata.obs[[]]
    record = _ingest(atlas, adata, "padded", zarr_layer="counts")
    fewer = sp.csr_matrix(adata.X, dtype=np.float32)
    fewer.data[::3] = 0  # a third of the stored entries hold no value: the layer is padded there
    fewer.eliminate_zeros()
    saved = []
    save = AsyncGroup._save_metadata

    async def recorded(group, *args, **kwargs):
        if group.path == record.zarr_group:
            saved.append(dict(group.metadata.attributes))
        return await save(group, *args, **kwargs)

    monkeypatch.setattr(AsyncGroup, "_save_metadata", recorded)
    add_layer(atlas, "padded", "log_normalized", ad.AnnData(X=fewer, obs=adata.obs, var=adata.var[[]]))
    listing = [attrs for attrs in saved if "log_normalized" in attrs.get("layers", {})]
    assert listing and all("log_normalized" in attrs.get("zero_fill", []) for attrs in listing)


def test_a_handle_that_read_a_group_sees_a_layer_another_handle_added_since(atlas, celltypist):
    """Its cached group attributes predated the layer: group_attributes() did not list it, and
    training_inputs took the integer layer for a float one (not normalized)."""
    from lancell.training import training_inputs

    adata = celltypist[:40].copy()
    adata.obs = adata.obs[[]]
    record = _ingest(atlas, adata, "late", zarr_layer="log_normalized")
    reader = RaggedAtlas.open(atlas.db_uri)
    reader.query().layers("gene_expression", "log_normalized").to_anndata()  # the group opened
    assert set(reader.group_attributes(record.zarr_group)["layers"]) == {"log_normalized"}
    counts = ad.AnnData(X=sp.csr_matrix(adata.X).astype(np.int64), obs=adata.obs, var=adata.var[[]])
    add_layer(atlas, "late", "counts", counts)
    assert reader.group_attributes(record.zarr_group)["layers"]["counts"] == "uint32"
    assert training_inputs(reader, "gene_expression", layer="counts") == ("counts", True)
    assert (
        layer_entries(reader.core, reader.dataset_schema(**reader.list_datasets().iloc[0].to_dict()))[
            "counts"
        ]["dtype"]
        == "uint32"
    )


def test_add_layer_refuses_values_off_the_stored_pattern_and_changes_nothing(atlas, celltypist):
    counts_only = celltypist[:50].copy()
    counts_only.obs = counts_only.obs[[]]
    record = _ingest(atlas, counts_only, "late", zarr_layer="counts")
    x = np.zeros(counts_only.shape, np.float32)
    stored = atlas.query().to_anndata().X  # the dataset's stored order
    x[3, np.flatnonzero(stored[3].toarray().ravel() == 0)[0]] = 1.0
    attrs = dict(atlas.core.group_attrs(record.zarr_group))
    with pytest.raises(
        IngestError,
        match=r"cell row 3, feature \d+ \(stored order\) holds a value where the stored layers have none",
    ):
        add_layer(atlas, "late", "log_normalized", _stored_order(atlas, "late", x))
    assert atlas.core.group_attrs(record.zarr_group) == attrs
    assert "log_normalized" not in atlas.core.zarr_root[f"{record.zarr_group}/csr/layers"]
    # nor its empty folder, which zarr listed as an unknown member ("Object at log_normalized is not
    # recognized as a component of a Zarr hierarchy" at each validate)
    assert not (
        Path(atlas.core.store.prefix) / record.zarr_group / "csr" / "layers" / "log_normalized"
    ).exists()
    assert atlas.list_datasets()["layers"][0].tolist() == ["counts"]


def test_add_layer_to_a_dataset_without_values_refuses_values_typed(atlas, celltypist):
    """A dataset whose counts are all zeros stores no pattern: a layer's value raised a bare IndexError."""
    empty = celltypist[:4].copy()
    empty.obs = empty.obs[[]]
    empty.X = sp.csr_matrix(empty.shape, dtype=np.int32)
    record = _ingest(atlas, empty, "no_values", zarr_layer="counts")
    x = np.zeros(empty.shape, np.float32)
    x[2, 5] = 1.0
    with pytest.raises(IngestError, match=r"cell row 2, feature \d+ \(stored order\) holds a value where"):
        add_layer(atlas, "no_values", "log_normalized", _stored_order(atlas, "no_values", x))
    assert "log_normalized" not in atlas.core.zarr_root[f"{record.zarr_group}/csr/layers"]
    zeros = _stored_order(atlas, "no_values", np.zeros(empty.shape, np.float32))
    assert add_layer(atlas, "no_values", "log_normalized", zeros) == [
        "counts",
        "log_normalized",
    ]


def test_an_interrupt_after_add_layer_commits_rolls_it_back_whole(atlas, celltypist, monkeypatch):
    """A Ctrl-C after the record's update committed removed the layer's arrays while the record listed
    it: every read of the layer then failed."""
    counts_only = celltypist[:50].copy()
    counts_only.obs = counts_only.obs[[]]
    _ingest(atlas, counts_only, "late", zarr_layer="counts")

    def update(table, *args, **kwargs):
        result = table.update(*args, **kwargs)
        if "log_normalized" in kwargs["values"]["layers"]:
            raise KeyboardInterrupt
        return result

    x = ad.AnnData(X=counts_only.X.astype(np.float32), obs=counts_only.obs, var=counts_only.var)
    with table_calls("datasets", update=update), pytest.raises(KeyboardInterrupt):
        add_layer(atlas, "late", "log_normalized", x)
    assert atlas.list_datasets()["layers"][0].tolist() == ["counts"]  # the arrays stay, unlisted: a
    assert atlas.validate() == []  # snapshot taken in the instant the record listed them reads them
    assert add_layer(atlas, "late", "log_normalized", x) == ["counts", "log_normalized"]
    out = atlas.query().layers("gene_expression", "log_normalized").to_anndata()
    assert (out.X != atlas.query().layers("gene_expression", "counts").to_anndata().X).nnz == 0


def test_a_layer_a_snapshot_read_in_an_interrupted_add_layer_is_not_written_again(
    atlas, celltypist, monkeypatch
):
    """An add_layer interrupted after its record listed the layer leaves its arrays, which the next call
    overwrote: a snapshot taken in that instant (another process) then read the second call's values."""
    counts_only = celltypist[:50].copy()
    counts_only.obs = counts_only.obs[[]]
    _ingest(atlas, counts_only, "late", zarr_layer="counts")
    taken = []

    def update(table, *args, **kwargs):
        result = table.update(*args, **kwargs)
        if "log_normalized" in kwargs["values"]["layers"]:
            taken.append(RaggedAtlas.open(atlas.db_uri).snapshot())
            raise KeyboardInterrupt
        return result

    x = ad.AnnData(X=counts_only.X.astype(np.float32), obs=counts_only.obs, var=counts_only.var)
    with table_calls("datasets", update=update), pytest.raises(KeyboardInterrupt):
        add_layer(atlas, "late", "log_normalized", x)
    pinned = RaggedAtlas.checkout(atlas.db_uri, taken[0])
    before = pinned.query().layers("gene_expression", "log_normalized").to_anndata()
    other = x.copy()
    other.X = other.X * 2
    with pytest.raises(
        IngestError, match=rf"layer 'log_normalized' was left stored .* snapshots \[{taken[0]}\]"
    ):
        add_layer(atlas, "late", "log_normalized", other)
    again = RaggedAtlas.checkout(atlas.db_uri, taken[0]).query()
    assert (again.layers("gene_expression", "log_normalized").to_anndata().X != before.X).nnz == 0
    assert add_layer(atlas, "late", "scaled", other) == ["counts", "scaled"]


def test_debris_of_a_killed_add_layer_takes_values_of_another_dtype(atlas, celltypist):
    """Killed before its record listed the layer, add_layer left the layer's dtype in the group's attributes
    (and its CSC copy): every later add_layer of that name with integers failed with ShardFormatError."""
    counts_only = celltypist[:50].copy()
    counts_only.obs = counts_only.obs[[]]
    record = _ingest(atlas, counts_only, "late", zarr_layer="counts", csc=True)
    floats = ad.AnnData(X=counts_only.X.astype(np.float32), obs=counts_only.obs, var=counts_only.var)
    add_layer(atlas, "late", "normalized", floats)
    atlas.core.tables.datasets.update(where="uid = 'late'", values={"layers": ["counts"]})  # as if killed
    assert atlas.core.group_attrs(record.zarr_group)["layers"]["normalized"] == "float32"  # the debris
    doubled = ad.AnnData(X=counts_only.X * 2, obs=counts_only.obs, var=counts_only.var)
    assert add_layer(atlas, "late", "normalized", doubled) == ["counts", "normalized"]
    got = atlas.query().layers("gene_expression", ["normalized", "counts"]).to_anndata()
    assert got.X.dtype.kind in "iu" and (got.X != got.layers["counts"] * 2).nnz == 0
    genes = got.var_names[:3].tolist()  # the feature-major copy holds the new values too
    by_feature = atlas.query().features(genes, "gene_expression").layers("gene_expression", "normalized")
    assert (by_feature.to_anndata().X != got[:, genes].X).nnz == 0
    assert atlas.validate(checksums=True) == []


def test_add_layer_says_which_group_the_store_failed_to_open(atlas, celltypist, monkeypatch):
    """A store failure opening the dataset's group (before anything is written) was obstore's own error."""
    counts_only = celltypist[:50].copy()
    counts_only.obs = counts_only.obs[[]]
    record = _ingest(atlas, counts_only, "late", zarr_layer="counts")
    root = type(atlas.core.zarr_root)

    def unreachable(self, path):
        raise OSError("connection refused")

    monkeypatch.setattr(root, "__getitem__", unreachable)
    with pytest.raises(
        StoreError, match=f"add_layer: dataset 'late': opening its zarr group '{record.zarr_group}'"
    ):
        add_layer(atlas, "late", "log_normalized", np.ones(counts_only.shape, np.float32))
    monkeypatch.undo()
    assert atlas.list_datasets()["layers"][0].tolist() == ["counts"]


def test_two_layer_bytes_are_one_layer_plus_the_second_values(tmp_path, atlas, celltypist):
    """Indices (CSR and CSC) and indptr are stored once: the second layer adds its values arrays only."""
    adata = _two_layers(celltypist, slice(0, 400))
    one = _ingest(atlas, adata, "one", layers={"counts": "counts"})
    two = _ingest(atlas, adata, "two", layers={"counts": "counts", "log_normalized": "X"})

    def size(*parts: str) -> int:
        return sum(f.stat().st_size for f in (tmp_path / "arrays").joinpath(*parts).rglob("*") if f.is_file())

    assert atlas.core.group_attrs(two.zarr_group)["csc_layers"] == ["counts", "log_normalized"]
    second = size(two.zarr_group, "csr", "layers", "log_normalized") + size(
        two.zarr_group, "csc", "layers", "log_normalized"
    )
    assert size(two.zarr_group, "csr", "indices") == size(one.zarr_group, "csr", "indices")
    assert size(two.zarr_group) <= 1.1 * (size(one.zarr_group) + second)


def test_a_handle_opened_before_another_add_layer_keeps_and_reads_that_layer(atlas, celltypist):
    """A handle that read a dataset before another handle added a layer to it: its own add_layer (failed or
    not) used to write its stale copy of the group's attributes back, and the other layer was lost for every
    reader and snapshot (validate() said nothing); its queries reported the new layer unmeasured."""
    adata = _two_layers(celltypist, slice(0, 80))
    counts_only = adata.copy()
    counts_only.X = counts_only.layers.pop("counts")
    _ingest(atlas, counts_only, "d", zarr_layer="counts")
    stale, reader = RaggedAtlas.open(atlas.db_uri), RaggedAtlas.open(atlas.db_uri)
    order = stale.query().to_anndata()  # opens (and keeps) the dataset's group
    reader.query().to_anndata()
    normalized = sp.csr_matrix(adata[order.obs_names.str.split(":").str[1], order.var_names].X)
    add_layer(atlas, "d", "log_normalized", _stored_order(atlas, "d", normalized))
    pinned = atlas.snapshot()
    _assert_same(reader.query().layers("gene_expression", "log_normalized").to_anndata().X, normalized, "f")
    off_pattern = np.ones(counts_only.shape, np.float32)
    with pytest.raises(IngestError, match="holds a value where the stored layers have none"):
        add_layer(stale, "d", "scaled", _stored_order(atlas, "d", off_pattern))
    add_layer(stale, "d", "normalized", _stored_order(atlas, "d", normalized / 2))
    got = stale.query().layers("gene_expression", "log_normalized").to_anndata()
    _assert_same(got.X, normalized, "f")
    for reader in (RaggedAtlas.checkout(atlas.db_uri, pinned), RaggedAtlas.open(atlas.db_uri)):
        assert reader.validate() == []
        got = reader.query().layers("gene_expression", "log_normalized").to_anndata()
        _assert_same(got.X, normalized, "f")
    got = (
        RaggedAtlas.open(atlas.db_uri)
        .query()
        .layers("gene_expression", ["normalized", "counts"])
        .to_anndata()
    )
    _assert_same(got.X, normalized / 2, "f")


def test_validate_reports_a_listed_layer_the_group_does_not_store(atlas, celltypist):
    adata = celltypist[:40].copy()
    adata.obs = adata.obs[[]]
    record = _ingest(atlas, adata, "d", zarr_layer="counts")
    stored = sp.csr_matrix(atlas.query().to_anndata().X, dtype=np.float32)
    add_layer(atlas, "d", "log_normalized", _stored_order(atlas, "d", stored))
    group = atlas.core.zarr_root[record.zarr_group]
    group.attrs["layers"] = {"counts": "uint32"}  # the damage a stale handle's add_layer used to do
    problems = atlas.validate()
    assert problems == ["dataset 'd': record lists layers ['log_normalized'] its zarr group does not store"]


def test_adata_raw_is_not_a_layer_and_is_warned_as_not_stored(atlas, celltypist):
    """``.raw`` (scanpy's counts next to a normalized X) was dropped without a word, and naming it as a
    layer said only that it is not in adata.layers."""
    adata = celltypist[:50].copy()
    adata.raw = adata
    with pytest.raises(IngestError, match=r"adata.raw is not a layer: to store it, copy it into a layer"):
        _ingest(atlas, adata, "r", layers={"counts": "raw"})
    subset = adata[:, :100].copy()  # scanpy's highly variable genes: raw keeps every gene
    warned = rf"dataset 'r': adata.raw \(50 x {adata.n_vars}\) is not stored .* ingest adata.raw.to_adata\(\)"
    with pytest.warns(LancellWarning, match=warned):
        _ingest(atlas, subset, "r", zarr_layer="counts")
    assert atlas.list_datasets()["uid"].tolist() == ["r"]
    recipe = celltypist[:50].copy()  # the documented recipe: raw's values copied into a stored layer
    recipe.raw = recipe
    recipe.layers["counts"] = recipe.raw.X
    recipe.X = recipe.X.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)  # nothing is lost: no warning says it is
        warnings.filterwarnings("ignore", "dataset 'recipe': obs columns", LancellWarning)
        _ingest(atlas, recipe, "recipe", layers={"counts": "counts", "normalized": "X"})


def test_matrices_and_obsm_left_out_are_warned_as_not_stored(atlas, celltypist):
    """Layers the call did not name, an X no stored layer reads and obsm entries were dropped without a word
    (adata.raw and obs columns were warned of)."""
    adata = _two_layers(celltypist, slice(0, 40))
    adata.layers["spliced"] = adata.layers["counts"].copy()
    adata.obsm["X_umap"] = np.zeros((adata.n_obs, 2), np.float32)
    warned = (
        r"dataset 'left': not stored: matrices \['X', 'spliced'\] \(layers=, lancell ingest --layers "
        r"STORED=SOURCE\); obsm \['X_umap'\] \(obsm_columns=.*name them to store them"
    )
    with pytest.warns(LancellWarning, match=warned):
        _ingest(atlas, adata, "left", layers={"counts": "counts"})
    whole = _two_layers(celltypist, slice(40, 60))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)  # every matrix stored: no word
        _ingest(atlas, whole, "whole", layers=LAYERS)


def test_add_layer_refuses_a_query_results_unmeasured_zeros_and_warns_of_its_layers(atlas, celltypist):
    """A dataset without a layer, read with on_unmeasured("keep") (all zeros, presence False), was stored
    as that layer, measured; an AnnData's layers were left out without a word."""
    _ingest(atlas, _two_layers(celltypist, slice(0, 30)), "both", layers=LAYERS)
    _ingest(atlas, _two_layers(celltypist, slice(30, 60)), "counts_only", layers={"counts": "counts"})
    unmeasured = _query(atlas, "log_normalized", "keep").where(dataset_uid="counts_only").to_anndata()
    assert unmeasured.X.nnz == 0 and unmeasured.uns["lancell"]["unmeasured_datasets"] == ["counts_only"]
    versions = atlas.core.tables.versions()
    with pytest.raises(IngestError, match=r"datasets \['counts_only'\] did not measure its layer"):
        add_layer(atlas, "counts_only", "log_normalized", unmeasured)
    assert atlas.core.tables.versions() == versions
    with pytest.raises(UnmeasuredDataError):  # still not measured
        _query(atlas, "log_normalized").where(dataset_uid="counts_only").to_anndata()
    counts = _query(atlas, "counts").where(dataset_uid="counts_only").to_anndata()  # measured: stored
    counts.layers["other"] = counts.X.copy()
    with pytest.warns(
        LancellWarning, match=r"layer 'log_normalized' is the AnnData's X; its layers \['other'\]"
    ):
        add_layer(atlas, "counts_only", "log_normalized", counts)


def test_a_duplicate_of_several_layers_names_them_all(atlas, celltypist):
    """Its message named the first layer only, though the content compared covers every layer."""
    _ingest(atlas, _two_layers(celltypist, slice(0, 30)), "first", layers=LAYERS)
    with pytest.raises(
        DuplicateContentError, match=r"obs names, layers \['log_normalized', 'counts'\], feat"
    ):
        _ingest(atlas, _two_layers(celltypist, slice(0, 30)), "again", layers=LAYERS)


def test_a_drop_that_leaves_out_every_selected_cell_is_warned(atlas, celltypist):
    """A layer no selected dataset stores (a mistyped allowed name), under "drop", was an empty answer
    without a word."""
    _ingest(atlas, _two_layers(celltypist, slice(0, 30)), "counts_only", layers={"counts": "counts"})
    warned = (
        r"on_unmeasured\('drop'\) left out all 30 selected cells.*\(layer 'log_normalized': dataset "
        r"'counts_only': 30 cells \(their group has no layer 'log_normalized'\)"
    )
    with pytest.warns(LancellWarning, match=warned):
        assert _query(atlas, "log_normalized", "drop").to_anndata().n_obs == 0
    # the terminals that read the measured rows only, and any under a limit, were silent
    limited = r"on_unmeasured\('drop'\) left out all 5 selected cells.*'counts_only': 5 cells"
    for said, read in (
        (limited, lambda q: q.limit(5).to_anndata().n_obs),
        (limited, lambda q: len(q.limit(5).to_pandas())),
        (limited, lambda q: q.limit(5).count()),
        (limited, lambda q: sum(batch.n_obs for batch in q.limit(5).to_batches(2))),
        (warned, lambda q: q.to_arrow().num_rows),
        (warned, lambda q: int(q.count(group_by="cell_type").sum())),
    ):
        with pytest.warns(LancellWarning, match=said):
            assert read(_query(atlas, "log_normalized", "drop")) == 0
    _ingest(atlas, _two_layers(celltypist, slice(30, 50)), "both", layers=LAYERS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)  # some cells kept: the documented drop, no word
        assert _query(atlas, "log_normalized", "drop").to_anndata().n_obs == 20
        assert _query(atlas, "log_normalized", "drop").limit(5).count() == 5


def test_a_plain_matrix_is_refused_for_a_dataset_whose_input_listed_its_features_in_another_order(tmp_path):
    """The file's own layer given as a plain matrix (columns G2, G0, G1 as in its var) was stored under the
    stored order G0, G1, G2: G0's normalized value was G2's, without a word."""
    from lancell.tables.schema import FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

    class Gene(FeatureBaseSchema):
        gene_symbol: str

    class Cell(LancellBaseSchema):
        gene_expression: SparseZarrPointer | None = None

    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", Cell, registry_schemas={"gene_expression": Gene}
    )
    genes = pd.DataFrame({"uid": ["G0", "G1", "G2"], "gene_symbol": ["a", "b", "c"]})
    atlas.register_features("gene_expression", genes)
    counts = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    normalized = np.log1p(counts).astype(np.float32)
    for uid, order in (("shuffled", ["G2", "G0", "G1"]), ("in_order", ["G0", "G1", "G2"])):
        adata = ad.AnnData(
            X=sp.csr_matrix(counts),
            obs=pd.DataFrame(index=["c0", "c1"]),
            var=pd.DataFrame(index=order),
            layers={"normalized": sp.csr_matrix(normalized)},
        )
        _ingest(atlas, adata, uid, zarr_layer="counts")
    attrs = atlas.core.group_attrs(atlas.list_datasets().set_index("uid").loc["shuffled", "zarr_group"])
    with pytest.raises(IngestError, match=r"'shuffled': its input listed its features in another order"):
        add_layer(atlas, "shuffled", "normalized", normalized)
    assert (
        atlas.core.group_attrs(atlas.list_datasets().set_index("uid").loc["shuffled", "zarr_group"]) == attrs
    )
    named = ad.AnnData(
        X=normalized, obs=pd.DataFrame(index=["c0", "c1"]), var=pd.DataFrame(index=["G2", "G0", "G1"])
    )
    add_layer(atlas, "shuffled", "normalized", named)
    add_layer(atlas, "in_order", "normalized", normalized)  # the input's order is the stored one
    out = _query(atlas, ["normalized", "counts"]).to_anndata()
    np.testing.assert_allclose(out.X.toarray(), np.log1p(out.layers["counts"].toarray()), rtol=1e-6)
    # a group an older lancell wrote records nothing: it reordered such inputs without saying so (a plain
    # matrix was warned of, then written under other features)
    adata.obs_names = ["c2", "c3"]
    _ingest(atlas, adata, "old", zarr_layer="counts")
    group = atlas.core.zarr_root[atlas.list_datasets().set_index("uid").loc["old", "zarr_group"]]
    group.attrs.put({key: value for key, value in group.attrs.asdict().items() if key != "var_reordered"})
    with pytest.raises(IngestError, match=r"'old' was stored by a lancell that did not record whether"):
        add_layer(RaggedAtlas.open(atlas.db_uri), "old", "normalized", normalized)


def test_a_query_result_names_its_cells_for_add_layer(atlas, celltypist):
    """A query result names its cells <dataset>:<name>: add_layer took only the file's names."""
    adata = celltypist[:30].copy()
    adata.obs = adata.obs[[]]
    _ingest(atlas, adata, "q", zarr_layer="counts")
    cells = atlas.query().where(dataset_uid="q").to_anndata()
    cells.X = sp.csr_matrix(cells.X, dtype=np.float32) / 2
    _ingest(atlas, celltypist[30:40, :500].copy(), "other", zarr_layer="counts")
    union = atlas.query().to_anndata()  # the union of two panels: other cells and features, named
    with pytest.raises(
        ShapeMismatchError, match=r"it has other cells \['other:.*adata\.varm\['presence'\]\['q'\]"
    ):
        add_layer(atlas, "q", "normalized", union)
    assert add_layer(atlas, "q", "normalized", cells[::-1]) == ["counts", "normalized"]  # any order
    got = _query(atlas, ["normalized", "counts"]).where(dataset_uid="q").to_anndata()
    _assert_same(got.X, sp.csr_matrix(got.layers["counts"], dtype=np.float32) / 2, "f")


def test_an_anndata_layer_in_any_order_is_stored_exactly_and_one_in_order_is_not_copied(tmp_path):
    """add_layer reordered an AnnData's X with X[rows][:, columns] always: scipy copied a layer already
    in the stored order twice (a 766 MB layer took 1.8 GB at the peak)."""
    rng = np.random.default_rng(3)
    x = sp.random(20_000, 300, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    x.data[:] = rng.integers(1, 9, x.nnz)
    cells, genes = [f"c{i}" for i in range(20_000)], [f"G{i}" for i in range(300)]
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    for uid in ("reordered", "in_order"):
        counts = ad.AnnData(
            X=x.astype(np.int32), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes)
        )
        _ingest(atlas, counts, uid, zarr_layer="counts", csc=False, on_duplicate="allow")
    normalized = x.copy()
    normalized.data = np.log1p(normalized.data)
    rows, columns = rng.permutation(20_000), rng.permutation(300)
    peaks = {}
    for uid, (r, c) in {"reordered": (rows, columns), "in_order": (slice(None), slice(None))}.items():
        layer = ad.AnnData(
            X=normalized[r][:, c],
            obs=pd.DataFrame(index=np.array(cells)[r]),
            var=pd.DataFrame(index=np.array(genes)[c]),
        )
        tracemalloc.start()
        try:
            add_layer(atlas, uid, "log_normalized", layer)
            peaks[uid] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        out = atlas.query().where(dataset_uid=uid).layers("gene_expression", "log_normalized").to_anndata()
        _assert_same(out.X, normalized, "f")
    x_bytes = normalized.data.nbytes + normalized.indices.nbytes
    assert peaks["in_order"] < peaks["reordered"] - x_bytes / 2


def test_a_backed_dense_layer_in_another_cell_order_is_stored(tmp_path):
    """A backed .h5ad's dense X with its cells in another order raised h5py's untyped TypeError ("Indexing
    elements must be in increasing order")."""
    rng = np.random.default_rng(6)
    x = rng.integers(0, 4, (50, 12)).astype(np.int32)
    cells, genes = [f"c{i}" for i in range(50)], [f"G{i}" for i in range(12)]
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    counts = ad.AnnData(X=sp.csr_matrix(x), obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=genes))
    _ingest(atlas, counts, "d", zarr_layer="counts")
    order = rng.permutation(50)
    normalized = np.log1p(x).astype(np.float32)
    layer = ad.AnnData(
        X=normalized[order], obs=pd.DataFrame(index=np.array(cells)[order]), var=pd.DataFrame(index=genes)
    )
    layer.write_h5ad(tmp_path / "layer.h5ad")
    add_layer(atlas, "d", "log_normalized", ad.read_h5ad(tmp_path / "layer.h5ad", backed="r"))
    out = atlas.query().layers("gene_expression", "log_normalized").to_anndata()
    np.testing.assert_array_equal(out.X.toarray(), np.where(x > 0, normalized, 0))
