"""A dataset whose zarr group is missing, or belongs to another atlas, is an error in every read path."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from lancell.atlas import RaggedAtlas
from lancell.errors import GroupNotFoundError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord

SPACE = "gene_expression"

READERS = {
    "to_anndata": lambda q: q.to_anndata(),
    "to_batches": lambda q: next(q.to_batches(10)),
    "to_mudata": lambda q: q.to_mudata([SPACE]),
    "loader": lambda q: q.to_cell_dataset(SPACE, "counts"),
}


@pytest.fixture
def two_datasets(atlas: RaggedAtlas, celltypist, tmp_path: Path) -> tuple[RaggedAtlas, Path, str]:
    """Datasets ``a`` and ``b`` (40 celltypist cells each); returns the atlas, its store root, b's group."""
    for uid, part in (("a", celltypist[:40]), ("b", celltypist[40:80])):
        add_from_anndata(
            atlas,
            part.copy(),
            feature_space=SPACE,
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    records = atlas.list_datasets().set_index("uid")
    return atlas, tmp_path / "arrays", str(records.loc["b", "zarr_group"])


@pytest.mark.parametrize("reader", sorted(READERS))
def test_missing_group_raises_in_every_read_path(two_datasets, reader):
    atlas, arrays, group = two_datasets
    shutil.rmtree(arrays / group)
    fresh = RaggedAtlas.open(atlas.db_uri)
    message = f"dataset 'b': zarr group '{group}' is missing from the store"
    with pytest.raises(GroupNotFoundError, match=re.escape(message)):
        READERS[reader](fresh.query())
    assert f"dataset 'b': zarr group {group!r} is missing" in fresh.validate()  # reported, not raised
    assert fresh.query().where("dataset_uid = 'a'").to_anndata().n_obs == 40  # other datasets still read


@pytest.mark.parametrize("reader", sorted(READERS))
def test_group_of_another_atlas_raises_in_every_read_path(two_datasets, reader):
    atlas, arrays, group = two_datasets
    zarr.open_group(str(arrays / group), mode="r+").attrs["lancell_atlas_id"] = "another-atlas"
    fresh = RaggedAtlas.open(atlas.db_uri)
    message = f"dataset 'b': zarr group '{group}' in the store"
    with pytest.raises(GroupNotFoundError, match=re.escape(message) + ".*belongs to another atlas"):
        READERS[reader](fresh.query())


def test_group_removed_after_the_loader_was_built_raises_on_read(two_datasets):
    atlas, arrays, group = two_datasets
    dataset = atlas.query().to_cell_dataset(SPACE, "counts")
    shutil.rmtree(arrays / group)
    clone = pickle.loads(pickle.dumps(dataset))  # a worker's copy: opens the store afresh
    with pytest.raises(GroupNotFoundError, match=re.escape(f"dataset 'b': zarr group '{group}' is missing")):
        clone.__getitems__(np.arange(80))
