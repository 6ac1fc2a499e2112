"""The CSC copy: exact for integer and float layers, chosen by values read, equal to the CSR path."""

from __future__ import annotations

import functools

import anndata as ad
import numpy as np
import pytest

import lancell.ingest.csc_choice as csc_choice
import lancell.ingest.write_transaction as write_transaction
import lancell.query.reconstruct as reconstruct_module
import lancell.storage.csc as csc_module
import lancell.storage.csc_blocks as csc_blocks_module
from lancell.errors import DatasetNotFoundError, GroupNotFoundError, StoreError
from lancell.ingest.add_csc import add_csc, datasets_without_csc, layers_without_csc
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import groups
from lancell.storage.groups import ATLAS_ID_ATTR, GroupGeometry
from lancell.tables.schema import DatasetRecord


def _ingest(atlas, adata, uid: str, **kwargs):
    """Ingest ``adata`` as dataset ``uid`` into the counts layer."""
    return add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
        **kwargs,
    )


@pytest.fixture
def spy(monkeypatch):
    calls = []
    original = reconstruct_module.read_csc_features

    def counting(*args, **kwargs):
        calls.append(args[2].path.rsplit("/", 1)[-1])  # the layer of the values array read
        return original(*args, **kwargs)

    monkeypatch.setattr(reconstruct_module, "read_csc_features", counting)
    return calls


@pytest.mark.parametrize("uid", ["celltypist", "mouse"])
def test_feature_reads_via_csc_equal_reference_in_requested_order(atlas, celltypist, mouse, spy, uid):
    adata = {"celltypist": celltypist, "mouse": mouse}[uid]
    _ingest(atlas, adata, uid, csc=True)
    rng = np.random.default_rng(1)
    genes = list(rng.choice(adata.var_names, 20, replace=False))
    query = atlas.query().where(f"dataset_uid = '{uid}'").features(genes, "gene_expression")
    out = query.to_anndata()
    assert spy == ["counts"]  # 20 genes read fewer values through the CSC copy
    assert list(out.var_names) == genes
    expected = adata[:, genes].X
    expected = expected.toarray() if hasattr(expected, "toarray") else expected
    np.testing.assert_array_equal(out.X.toarray(), expected)
    subset = query.where("uid LIKE '%1'").to_anndata()  # a cell subset, still by feature
    rows = [n.split(":", 1)[1] for n in subset.obs_names]
    np.testing.assert_array_equal(
        subset.X.toarray(),
        np.asarray(adata[rows, genes].X.todense() if uid == "celltypist" else adata[rows, genes].X),
    )


def test_csr_path_when_csc_costs_more_and_add_csc_later(atlas, celltypist, spy):
    _ingest(atlas, celltypist, "ct", csc=False)
    assert "csc_layers" not in atlas.core.group_attrs(atlas.list_datasets()["zarr_group"][0])
    column_nnz = np.diff(celltypist.X.tocsc().indptr)
    genes = list(celltypist.var_names[np.argsort(-column_nnz)[:5]])  # the five most often detected genes
    before = atlas.query().where("dataset_uid = 'ct'").features(genes, "gene_expression").to_anndata()
    assert spy == []
    add_csc(atlas, "ct")
    after = atlas.query().where("dataset_uid = 'ct'").features(genes, "gene_expression").to_anndata()
    assert spy == ["counts"]
    assert (after.X != before.X).nnz == 0
    one_cell = atlas.query().where("uid = 'ct:Cell_3'").features(genes, "gene_expression").to_anndata()
    assert len(spy) == 1  # one cell's row is cheaper than 5 whole columns
    np.testing.assert_array_equal(one_cell.X.toarray(), celltypist[["Cell_3"], genes].X.toarray())


@pytest.mark.parametrize("threshold", [1_027_859, 1_027_860])
def test_default_csc_follows_stored_values(atlas, celltypist, monkeypatch, threshold):
    assert celltypist.X.nnz == 1_027_859
    monkeypatch.setattr(csc_choice, "CSC_MIN_VALUES", threshold)
    record = _ingest(atlas, celltypist, "ct")
    layers = atlas.core.group_attrs(record.zarr_group).get("csc_layers")
    assert layers == (["counts"] if threshold <= celltypist.X.nnz else None)


@pytest.mark.parametrize("buckets", ["512 features", "256 features"])
@pytest.mark.parametrize("source", ["stored, after ingestion", "kept blocks", "read back while ingesting"])
def test_csc_built_in_several_feature_ranges(atlas, celltypist, monkeypatch, source, buckets):
    monkeypatch.setattr(groups, "DEFAULT_GEOMETRY", GroupGeometry(sparse_shard=4_096 * 16))  # 16 shards
    if buckets == "256 features":  # celltypist's ~1,839 values a row fall short of 16 per 256-feature bucket
        monkeypatch.setattr(csc_blocks_module, "_RUN_VALUES", 1)
    built = []
    monkeypatch.setattr(
        csc_blocks_module.CsrBlocks, "done", _recording(csc_blocks_module.CsrBlocks.done, built)
    )
    several_passes = functools.partial(csc_module.write_csc, budget=50_000)  # about 20 passes over the rows
    if source != "stored, after ingestion":
        monkeypatch.setattr(write_transaction, "write_csc", several_passes)
    if source == "read back while ingesting":
        monkeypatch.setattr(write_transaction, "CSC_BUDGET", 0)  # keeps no block
    record = _ingest(atlas, celltypist, "ct", csc=source != "stored, after ingestion")
    group = atlas.core.zarr_root[record.zarr_group]
    if source == "stored, after ingestion":
        several_passes(group, ["counts"])
    registry = atlas.feature_registry("gene_expression").set_index("uid")["global_index"]
    stored_order = np.argsort(registry.loc[celltypist.var_names].to_numpy(), kind="stable")  # as ingested
    csc = celltypist.X[:, stored_order].tocsc()
    np.testing.assert_array_equal(group["csc/indptr"][:], csc.indptr)
    np.testing.assert_array_equal(group["csc/indices"][:], csc.indices)
    np.testing.assert_array_equal(group["csc/layers/counts"][:], csc.data)
    assert group["csc/layers/counts"].dtype == np.uint32
    widest = {int(np.diff(blocks.bounds).max()) for blocks in built}  # equal buckets of at most that many
    assert all(256 - 8 < w <= 256 if buckets == "256 features" else 512 - 8 < w <= 512 for w in widest)


def _recording(done, built):
    """``CsrBlocks.done`` that also records the blocks it is called on."""

    def recording(self):
        built.append(self)
        return done(self)

    return recording


def _csc_indices_objects(atlas, zarr_group: str) -> dict[str, int]:
    """The stored objects of a group's ``csc/indices`` with their modification times (ns)."""
    folder = atlas.store.prefix / zarr_group / "csc" / "indices"
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _five_genes(celltypist) -> list[str]:
    column_nnz = np.diff(celltypist.X.tocsc().indptr)
    return list(celltypist.var_names[np.argsort(-column_nnz)[:5]])  # the five most often detected genes


def test_add_csc_writes_a_copy_once(atlas, celltypist):
    record = _ingest(atlas, celltypist, "ct", csc=False)
    assert add_csc(atlas, "ct") == ["counts"]
    assert atlas.core.group_attrs(record.zarr_group)["csc_layers"] == ["counts"]
    written = _csc_indices_objects(atlas, record.zarr_group)
    assert written
    assert add_csc(atlas, "ct") == []  # every layer has its copy: nothing is rewritten
    assert _csc_indices_objects(atlas, record.zarr_group) == written


def test_datasets_without_csc_lists_what_add_csc_would_write(atlas, celltypist, mouse):
    """Every sparse dataset lacking a copy of a layer, with those layers, whoever's its group is
    (``layers_without_csc`` refuses one this atlas cannot prove its own, as ``add_csc`` does)."""
    _ingest(atlas, celltypist, "ct", csc=False)
    record = _ingest(atlas, mouse, "mouse", csc=True)
    assert datasets_without_csc(atlas) == {"ct": ["counts"]}
    assert add_csc(atlas, "ct") == ["counts"]
    assert datasets_without_csc(atlas) == {}
    atlas.core.zarr_root[record.zarr_group].attrs["csc_layers"] = []  # a copy not recorded...
    atlas.core.zarr_root[record.zarr_group].attrs[ATLAS_ID_ATTR] = "another"  # ...in a group not its own
    assert datasets_without_csc(atlas) == {"mouse": ["counts"]}  # listed; add_csc would refuse it
    with pytest.raises(GroupNotFoundError, match="mouse"):
        layers_without_csc(atlas, "mouse")


def test_add_csc_adds_a_missing_layer_on_the_shared_indices(atlas, celltypist, spy):
    """A layer stored without a CSC copy (as an interrupted ``add_layer`` leaves it) gets its values only."""
    record = _ingest(atlas, celltypist, "ct", csc=True)
    halves = (celltypist.X.astype(np.float32) / 2).tocsr()
    add_layer(atlas, "ct", "normalized", ad.AnnData(X=halves, obs=celltypist.obs[[]], var=celltypist.var[[]]))
    group = atlas.core.zarr_root[record.zarr_group]
    assert group.attrs["csc_layers"] == ["counts", "normalized"]  # add_layer extends an existing copy
    group.attrs["csc_layers"] = ["counts"]  # as if interrupted before recording the new layer's copy
    written = _csc_indices_objects(atlas, record.zarr_group)
    assert add_csc(atlas, "ct") == ["normalized"]
    assert _csc_indices_objects(atlas, record.zarr_group) == written  # the shared indices stay as they were
    genes = _five_genes(celltypist)
    got = (
        atlas.query()
        .layers("gene_expression", "normalized")
        .where("dataset_uid = 'ct'")
        .features(genes, "gene_expression")
        .to_anndata()
    )
    assert spy == ["normalized"]  # read through the CSC copy
    rows = celltypist.obs_names.get_indexer([n.split(":", 1)[1] for n in got.obs_names])
    expected = halves[rows][:, celltypist.var_names.get_indexer(genes)].toarray()
    np.testing.assert_array_equal(got.X.toarray(), expected)


def test_a_layer_the_record_does_not_list_gets_no_copy(atlas, celltypist):
    """An add_layer killed after its group listed the layer, before its record did: add_csc listed and
    copied that debris as a layer of the dataset ("CSC copy of counts, normalized written")."""
    record = _ingest(atlas, celltypist, "ct", csc=False)
    group = atlas.core.zarr_root[record.zarr_group]
    group.attrs["layers"] = {**group.attrs["layers"], "normalized": "float32"}  # (its arrays never written)
    assert layers_without_csc(atlas, "ct") == ["counts"]
    assert datasets_without_csc(atlas) == {"ct": ["counts"]}
    assert add_csc(atlas, "ct") == ["counts"]
    assert atlas.core.group_attrs(record.zarr_group)["csc_layers"] == ["counts"]


def test_add_csc_of_an_unknown_dataset_is_a_typed_error(atlas):
    with pytest.raises(DatasetNotFoundError, match="'nope'") as raised:
        add_csc(atlas, "nope")
    assert isinstance(raised.value, KeyError)
    from lancell.errors import ArgumentError
    from lancell.ingest.add_layer import add_layer

    # a uid that is no str: a bare AttributeError (add_csc), "no dataset 3" (add_layer)
    for call in (lambda: add_csc(atlas, 3), lambda: add_layer(atlas, 3, "normalized", None)):
        with pytest.raises(ArgumentError, match="dataset_uid must be a dataset uid"):
            call()
    with pytest.raises(ArgumentError, match="name must be a layer name"):
        add_layer(atlas, "nope", 3, None)


def _tree(atlas, zarr_group: str) -> dict[str, bytes]:
    """Every stored object of a group with its bytes."""
    folder = atlas.store.prefix / zarr_group
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _full_disk(monkeypatch) -> None:
    """The CSC copy's offsets (written after its values) fail as on a full disk."""

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csc_module, "write_offsets", full)


def test_a_failed_add_csc_is_undone_and_can_be_run_again(atlas, celltypist, monkeypatch):
    """A write that fails leaves no partial copy behind (it was left, unlisted, until validate and vacuum)
    and is a ``StoreError`` naming the dataset; run again, the copy is written."""
    record = _ingest(atlas, celltypist, "ct", csc=False)
    before = _tree(atlas, record.zarr_group)
    with monkeypatch.context() as patched:
        _full_disk(patched)
        with pytest.raises(StoreError, match=r"dataset 'ct': its CSC copy was not written .* left on device"):
            add_csc(atlas, "ct")
    assert _tree(atlas, record.zarr_group) == before
    assert atlas.validate() == []
    assert add_csc(atlas, "ct") == ["counts"]


def test_a_failed_add_csc_of_one_layer_keeps_the_copied_ones(atlas, celltypist, monkeypatch):
    """Only the unlisted layer's values are deleted: the shared indices and the copied layer stay whole."""
    record = _ingest(atlas, celltypist, "ct", csc=True)
    halves = (celltypist.X.astype(np.float32) / 2).tocsr()
    add_layer(atlas, "ct", "normalized", ad.AnnData(X=halves, obs=celltypist.obs[[]], var=celltypist.var[[]]))
    group = atlas.core.zarr_root[record.zarr_group]
    group.attrs["csc_layers"] = ["counts"]  # as if interrupted before recording the new layer's copy
    del group["csc/layers"]["normalized"]
    before = _tree(atlas, record.zarr_group)
    with monkeypatch.context() as patched:  # indices=False writes no offsets: fail at the values instead
        patched.setattr(csc_module, "_write_buckets", _failing_after_values(csc_module._write_buckets))
        with pytest.raises(StoreError, match="'ct'"):
            add_csc(atlas, "ct")
    assert _tree(atlas, record.zarr_group) == before
    assert add_csc(atlas, "ct") == ["normalized"]


def _failing_after_values(write_buckets):
    """``write_buckets`` that fails as on a full disk once it has written everything."""

    def failing(*args, **kwargs):
        write_buckets(*args, **kwargs)
        raise OSError(28, "No space left on device")

    return failing


def test_a_failed_scatter_leaves_no_reader_thread(tmp_path, monkeypatch):
    """An error while the copy is scattered: the read of the spill file in flight is over and its thread gone
    when ``write_csc`` raises (its generator was left suspended, the thread alive with the traceback)."""
    import threading

    import scipy.sparse as sp
    import zarr

    monkeypatch.setattr(csc_blocks_module, "_PART_VALUES", 50)  # several parts a bucket
    matrix = sp.random(400, 300, density=0.1, format="csr", random_state=0)
    counts = np.ceil(matrix.data * 9).astype(np.uint32)
    blocks = csc_blocks_module.CsrBlocks(300, {"counts": np.dtype(np.uint32)}, spill=True)
    for row in range(0, 400, 20):
        part, lo, hi = matrix[row : row + 20], matrix.indptr[row], matrix.indptr[row + 20]
        indptr, indices = part.indptr.astype(np.int64), part.indices.astype(np.uint32)
        blocks.add(row, indptr, indices, {"counts": counts[lo:hi]})
    group = zarr.open_group(str(tmp_path / "group"), mode="w")
    group.attrs["n_features"] = 300
    group.create_group("csr").create_array("layers/counts", shape=(matrix.nnz,), dtype="uint32")
    scatter, calls = csc_module.scatter_runs, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("scatter failed")
        return scatter(*args)

    monkeypatch.setattr(csc_module, "scatter_runs", failing)
    with pytest.raises(RuntimeError, match="scatter failed") as failed:
        csc_module.write_csc(group, ["counts"], written=blocks, budget=10**6)
    assert failed.tb is not None  # (the traceback, held: so would a notebook's last error)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("lancell-csc-read")]
    blocks.close()
