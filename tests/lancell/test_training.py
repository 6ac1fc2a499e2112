"""The built-in classifier trains only on cells measured in its layer and refuses when there are none."""

from __future__ import annotations

import pytest

from lancell.atlas import RaggedAtlas
from lancell.errors import QueryError, UnmeasuredDataError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord
from lancell.training import train_cell_type_classifier, training_inputs


def _add(atlas: RaggedAtlas, uid: str, adata, layer: str) -> None:
    add_from_anndata(
        atlas, adata, feature_space="gene_expression", zarr_layer=layer, dataset_record=DatasetRecord(uid=uid)
    )


@pytest.fixture
def counts_only(atlas: RaggedAtlas, celltypist) -> RaggedAtlas:
    """120 labelled celltypist cells stored as counts only (no log_normalized layer)."""
    part = celltypist[:120].copy()
    part.obs["cell_type"] = "T cell"
    _add(atlas, "ct", part, "counts")
    return atlas


def test_trains_only_on_cells_measured_in_its_layer(counts_only, pbmc):
    _add(counts_only, "pb", pbmc[:200].copy(), "log_normalized")
    report = train_cell_type_classifier(counts_only, epochs=1)
    assert report.cells_per_dataset == {"pb": 200}
    assert report.unmeasured_per_dataset == {"ct": 120}
    assert report.datasets == ["pb"] and report.n_train + report.n_test == 200
    assert report.n_features == 765  # the PBMC panel only
    assert report.classes == sorted(pbmc[:200].obs["cell_type"].astype(str).unique())


def test_refuses_when_no_cell_is_measured(counts_only):
    message = (
        "no cell with a 'cell_type' label is measured in layer 'log_normalized' of 'gene_expression' "
        "(labelled cells per dataset without it: {'ct': 120}); nothing to train on: pass a layer the "
        "datasets store (lancell.training.training_inputs picks one)"
    )
    with pytest.raises(UnmeasuredDataError) as raised:
        train_cell_type_classifier(counts_only, epochs=1)
    assert str(raised.value) == message


def test_a_misspelled_label_column_is_named(counts_only):
    """It was reported as a filter the caller never wrote, where('celltype IS NOT NULL')."""
    with pytest.raises(QueryError, match=r"label_column 'celltype' is not a cell column \(cell columns: \["):
        train_cell_type_classifier(counts_only, label_column="celltype", epochs=1)


def test_the_batches_hash_tells_other_cells_labels_and_values_apart(atlas, pbmc):
    """It hashed the batches' positions only: two snapshots of as many other cells had one hash."""
    first = pbmc[:100].copy()
    _add(atlas, "one", first, "log_normalized")
    versions = [atlas.snapshot()]
    atlas.delete_dataset("one")
    doubled = first.copy()
    doubled.X = doubled.X * 2  # the same cells (uids) and labels, other values
    _add(atlas, "one", doubled, "log_normalized")
    versions.append(atlas.snapshot())
    atlas.delete_dataset("one")
    relabelled = first.copy()
    relabelled.obs["cell_type"] = relabelled.obs["cell_type"].astype(str).to_numpy()[::-1]
    _add(atlas, "one", relabelled, "log_normalized")
    versions.append(atlas.snapshot())
    atlas.delete_dataset("one")
    _add(atlas, "two", pbmc[100:200].copy(), "log_normalized")  # as many other cells
    versions.append(atlas.snapshot())

    def trained(version: int) -> str:
        snapshot = RaggedAtlas.checkout(atlas.db_uri, version)
        return train_cell_type_classifier(snapshot, epochs=1).batches_sha256

    hashes = [trained(version) for version in versions]
    assert len(set(hashes)) == 4
    assert trained(versions[0]) == hashes[0]  # the same snapshot and seed: the same batches


def test_training_inputs_follow_the_layers_the_datasets_store(counts_only, pbmc):
    assert training_inputs(counts_only) == ("counts", True)  # integers: scaled and log1p-ed
    assert training_inputs(counts_only, normalize=False) == ("counts", False)
    _add(counts_only, "pb", pbmc[:50].copy(), "log_normalized")
    assert training_inputs(counts_only) == ("log_normalized", False)  # floats, read as stored
    with pytest.raises(UnmeasuredDataError, match=r"no dataset of 'gene_expression' stores layer 'spliced'"):
        training_inputs(counts_only, layer="spliced")
    report = train_cell_type_classifier(counts_only, layer="counts", normalize=True, epochs=1)
    assert report.cells_per_dataset == {"ct": 120}
