"""The input's obs index is kept as the ``obs_name`` cell column (AnnData, backed files and 10x barcodes), and
atlases created before the column existed still open, ingest, query and snapshot without it."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import lancedb
import numpy as np
import pandas as pd
import pytest

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, CellSchema, GeneFeature, gene_features, ingest_bundled
from lancell.errors import DroppedColumnsWarning
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.tenx import add_from_10x, read_10x_h5
from lancell.tables.schema import (
    OBS_NAME,
    DatasetRecord,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

V3_H5 = Path(__file__).resolve().parents[2] / "data" / "10x_v3" / "filtered_feature_bc_matrix.h5"
PBMC, CELLTYPIST = BUNDLED[0], BUNDLED[1]


def _atlas(root: Path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        CellSchema,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features("gene_expression", gene_features(BUNDLED[:2]))
    return atlas


def _old_format_atlas(root: Path) -> None:
    """An atlas whose cell table has every column but ``obs_name``, as created before the column existed."""
    _atlas(root)
    table = lancedb.connect(str(root / "db")).open_table("cells")
    table.drop_columns([OBS_NAME])
    assert OBS_NAME not in table.schema.names


def _ingest_pbmc(atlas: RaggedAtlas, adata: ad.AnnData) -> DatasetRecord:
    return add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="log_normalized",
        dataset_record=DatasetRecord(uid="pbmc68k"),
        progress=False,
    )


def test_obs_name_is_the_input_obs_index(tmp_path: Path) -> None:
    atlas = _atlas(tmp_path)
    assert atlas.cell_arrow_schema.names[:3] == ["uid", "dataset_uid", OBS_NAME]
    ingest_bundled(atlas, PBMC)  # in memory
    ingest_bundled(atlas, CELLTYPIST, backed=True)  # streamed from the file
    out = atlas.query().where("dataset_uid = 'celltypist_sample'").layers("gene_expression", "counts")
    adata = out.to_anndata()
    expected = CELLTYPIST.read(backed=True).obs_names
    assert adata.obs[OBS_NAME].astype(str).tolist() == expected.tolist()
    assert adata.obs_names.tolist() == [f"celltypist_sample:{name}" for name in expected]
    names = PBMC.read().obs_names[[0, 5]].tolist()
    pbmc = atlas.query().where(obs_name=names).to_pandas()  # a filter like any obs column
    assert pbmc[OBS_NAME].tolist() == names and pbmc["uid"].tolist() == [f"pbmc68k:{n}" for n in names]
    assert atlas.validate() == []


def test_obs_name_of_10x_cells_is_the_barcode(tmp_path: Path) -> None:
    class Cells(LancellBaseSchema):
        gene_expression: SparseZarrPointer | None = None

    class Feature(FeatureBaseSchema):
        pass

    var = read_10x_h5(V3_H5).var
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Feature},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": var["gene_ids"].unique()}))
    add_from_10x(
        atlas,
        V3_H5,
        feature_types={"Gene Expression": "gene_expression"},
        dataset_record=DatasetRecord(uid="tenx"),
        progress=False,
    )
    rows = atlas.query().to_pandas()
    barcodes = read_10x_h5(V3_H5).obs_names
    assert rows[OBS_NAME].tolist() == barcodes.tolist()
    assert rows["uid"].tolist() == [f"tenx:{b}" for b in barcodes]


def test_an_obs_column_named_obs_name_is_dropped_and_warned(tmp_path: Path) -> None:
    atlas = _atlas(tmp_path)
    adata = PBMC.read()
    adata.obs[OBS_NAME] = "mine"
    with pytest.warns(DroppedColumnsWarning, match=r"obs columns \['obs_name'\]"):
        record = _ingest_pbmc(atlas, adata)
    assert record.dropped_obs_columns == [OBS_NAME]
    stored = atlas.query().select([OBS_NAME]).to_pandas()[OBS_NAME]
    assert stored.tolist() == PBMC.read().obs_names.tolist()


def test_an_atlas_without_the_column_opens_ingests_and_queries(tmp_path: Path) -> None:
    _old_format_atlas(tmp_path)
    atlas = RaggedAtlas.open(str(tmp_path / "db"))
    assert OBS_NAME not in atlas.cell_arrow_schema.names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is warned about: the obs names are in the uids
        ingest_bundled(atlas, PBMC)
    atlas.optimize()
    version = atlas.snapshot(note="old format")
    pinned = RaggedAtlas.checkout(str(tmp_path / "db"), version)
    adata = pinned.query().where(dataset_uid="pbmc68k").layers("gene_expression", "log_normalized")
    out = adata.to_anndata()
    assert OBS_NAME not in out.obs.columns
    assert out.obs_names.tolist() == [f"pbmc68k:{name}" for name in PBMC.read().obs_names]
    np.testing.assert_array_equal(out.X.toarray(), PBMC.read().X.toarray())
    assert list(out.obs.columns) == ["dataset_uid", "cell_type", "louvain", "n_counts", "organism"]
    assert pinned.validate() == []


def test_the_dagster_resource_serves_an_atlas_without_the_column(tmp_path: Path) -> None:
    from lancell.errors import SchemaError
    from resources.atlas import AtlasResource

    _old_format_atlas(tmp_path)
    resource = AtlasResource(db_uri=str(tmp_path / "db"), cell_schema="lancell.bundled:CellSchema")
    assert OBS_NAME not in resource.open().cell_arrow_schema.names
    lancedb.connect(str(tmp_path / "db")).open_table("cells").drop_columns(["louvain"])
    with pytest.raises(SchemaError, match=r"the cell table .*: fields \['louvain'\] the table lacks"):
        resource.open()
