"""``validate()`` finds shard objects missing from a dataset's arrays and arrays of another shape, which its
reads refuse, and layouts off the registry, which its reads would misname.

Every shard of a dataset's values and indices arrays is written (``lancell.storage.reader.written_whole``), so
a missing one is damage: the reads raise ``ShardFormatError``; validate() (and with it snapshot() and the
Dagster ``dataset_consistent`` check) said nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.errors import ShardFormatError, ValidationError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import groups
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

GENES = [f"g{i}" for i in range(20)]


class Gene(FeatureBaseSchema):
    pass


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None
    expression_dense: DenseZarrPointer | None = None


@pytest.fixture
def atlas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RaggedAtlas:
    """Dataset ``s``: 30 cells in sparse shards of 32 values (about 13 shards); ``d``: the same, dense."""
    monkeypatch.setattr(groups, "DEFAULT_GEOMETRY", groups.GroupGeometry(sparse_chunk=8, sparse_shard=32))
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene, "expression_dense": Gene},
    )
    for space in ("gene_expression", "expression_dense"):
        atlas.register_features(space, pd.DataFrame({"uid": GENES}))
    x = sp.csr_matrix((np.arange(30 * 20).reshape(30, 20) % 3).astype(np.int32))
    for uid, space in (("s", "gene_expression"), ("d", "expression_dense")):
        obs = pd.DataFrame(index=[f"{uid}{i}" for i in range(30)])
        add_from_anndata(
            atlas,
            ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=GENES)),
            feature_space=space,
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            progress=False,
        )
    return atlas


def _group(atlas: RaggedAtlas, uid: str) -> str:
    datasets = atlas.list_datasets()
    return datasets.loc[datasets["uid"] == uid, "zarr_group"].item()


def test_missing_shard_objects_are_reported_per_array(atlas: RaggedAtlas, tmp_path: Path):
    assert atlas.validate() == []
    sparse, dense = _group(atlas, "s"), _group(atlas, "d")
    arrays = tmp_path / "arrays"
    n_shards = len(list((arrays / sparse / "csr/indices/c").iterdir()))
    assert n_shards > 2
    (arrays / sparse / "csr/indices/c/2").unlink()
    for shard in (arrays / sparse / "csr/layers/counts/c").iterdir():
        shard.unlink()
    (arrays / dense / "layers/counts/c/0/0").unlink()
    expected_s = [
        f"dataset 's': array 'csr/indices': 1 of its {n_shards} shard objects are missing from the store, "
        f"e.g. '{sparse}/csr/indices/c/2'",
        f"dataset 's': array 'csr/layers/counts': {n_shards} of its {n_shards} shard objects are missing "
        f"from the store, e.g. '{sparse}/csr/layers/counts/c/0'",
    ]
    expected_d = [
        "dataset 'd': array 'layers/counts': 1 of its 1 shard objects are missing from the store, "
        f"e.g. '{dense}/layers/counts/c/0/0'"
    ]
    assert sorted(atlas.validate()) == sorted(expected_s + expected_d)
    assert atlas.validate(dataset_uid="s") == expected_s
    assert atlas.validate(dataset_uid="d") == expected_d
    with pytest.raises(ValidationError, match="1 of its 1 shard objects are missing"):
        atlas.snapshot()
    for uid in ("s", "d"):  # what validate() reports is what the reads refuse
        space = {"s": "gene_expression", "d": "expression_dense"}[uid]
        with pytest.raises(ShardFormatError, match="the shard object is missing"):
            atlas.query().where(f"dataset_uid = '{uid}'").feature_space(space).to_anndata()


@pytest.mark.parametrize("removed", ["folder", "zarr.json"])
def test_an_array_readers_read_that_is_gone_is_reported(atlas: RaggedAtlas, tmp_path: Path, removed: str):
    """An array's folder (or its zarr.json) removed by hand: validate() listed only the arrays whose
    zarr.json it found, so it (and snapshot(), and the Dagster check) passed, while reads failed."""
    import shutil

    arrays = tmp_path / "arrays"
    sparse, dense = arrays / _group(atlas, "s"), arrays / _group(atlas, "d")
    for array in (sparse / "csr/indices", sparse / "csr/layers/counts", dense / "layers/counts"):
        if removed == "folder":
            shutil.rmtree(array)
        else:
            (array / "zarr.json").unlink()
    gone = "is missing from the store (no zarr.json): readers of the dataset read it"
    assert sorted(atlas.validate()) == [
        f"dataset 'd': array 'layers/counts' {gone}",
        f"dataset 's': array 'csr/indices' {gone}",
        f"dataset 's': array 'csr/layers/counts' {gone}",
    ]
    with pytest.raises(ValidationError, match="'csr/indices' is missing"):
        atlas.snapshot()


def test_the_arrays_of_a_layer_being_added_are_not_compared(atlas: RaggedAtlas):
    """add_layer writes the layer's array before the record names it: its shards are still being written."""
    group = atlas.core.zarr_root[_group(atlas, "s")]
    indices = group["csr/indices"]
    groups.create_value_array(
        group["csr/layers"], "pending", indices.shape, np.dtype("float32"), indices.chunks, indices.shards
    )  # no shard stored yet
    group.attrs["layers"] = {
        **group.attrs["layers"],
        "pending": "float32",
    }  # as add_layer does, before commit
    assert atlas.validate() == []


def test_an_array_whose_shape_differs_from_the_groups_attributes_is_reported(
    atlas: RaggedAtlas, tmp_path: Path
):
    """A value array cut short in its zarr.json passed validate(checksums=True), snapshot() and the Dagster
    checks, while every read of the dataset failed out of bounds."""
    sparse, dense = _group(atlas, "s"), _group(atlas, "d")
    for group, array, shape in ((sparse, "csr/indices", [300]), (dense, "layers/counts", [30, 19])):
        meta_path = tmp_path / "arrays" / group / array / "zarr.json"
        meta = json.loads(meta_path.read_text())
        meta["shape"] = shape
        meta_path.write_text(json.dumps(meta))
    nnz = atlas.list_datasets().set_index("uid").loc["s", "nnz"]
    assert atlas.validate(checksums=True) == [
        f"dataset 's': array 'csr/indices' has shape [300], the group's attributes say [{nnz}]",
        "dataset 'd': array 'layers/counts' has shape [30, 19], the group's attributes say [30, 20]",
    ]
    with pytest.raises(ValidationError, match="has shape"):
        atlas.snapshot()


def test_a_layout_off_the_registry_is_reported(atlas: RaggedAtlas):
    """Two registry rows' global indices swapped (or one deleted): validate() said nothing, and queries read
    g0's values under g1's name (a deleted one's column was named 'nan')."""
    registry = atlas.core.tables.registry("gene_expression")
    registry.update(where="uid = 'g0'", values={"global_index": -1})
    registry.update(where="uid = 'g1'", values={"global_index": 0})
    registry.update(where="uid = 'g0'", values={"global_index": 1})
    layout = atlas.list_datasets().set_index("uid").loc["s", "layout_uid"]
    swapped = (
        f"layout {layout!r} (gene_expression): 2 features are not in the registry under the global index it "
        "records, e.g. 'g0' (layout 0, registry 1); its datasets read other features' values under these "
        "names (the registry edited, or a layout an older lancell shared between feature spaces): delete "
        "them and ingest them again"
    )
    assert atlas.validate() == [swapped]
    assert atlas.validate(dataset_uid="s") == [swapped] and atlas.validate(dataset_uid="d") == []
    registry.delete("uid = 'g0' OR uid = 'g1'")
    registry.add(pd.DataFrame({"uid": ["g1"], "global_index": [1]}))
    assert atlas.validate() == [
        f"layout {layout!r} (gene_expression): 1 features are not in the registry under the global index it "
        "records, e.g. 'g0' (layout 0, registry none: not registered); its datasets read other features' "
        "values under these names (the registry edited, or a layout an older lancell shared between feature "
        "spaces): delete them and ingest them again"
    ]


def test_damaged_records_and_attributes_are_listed_not_raised(atlas: RaggedAtlas, tmp_path: Path):
    """A record naming an unknown feature space raised KeyError, a group's nnz of null TypeError: validate()
    is the diagnosis tool, and listed both before its layout and shape checks."""
    atlas.core.tables.datasets.update(where="uid = 's'", values={"feature_space": "nope"})
    meta_path = tmp_path / "arrays" / _group(atlas, "d") / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["nnz"] = None
    meta_path.write_text(json.dumps(meta))
    assert sorted(RaggedAtlas.open(str(tmp_path / "db")).validate()) == [
        "dataset 'd': zarr attr nnz=None, record has 600",
        "dataset 's': zarr attr feature_space='gene_expression', record has 'nope'",
    ]
