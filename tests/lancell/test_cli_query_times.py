"""``lancell query`` writes a cell schema's date and time columns as ISO 8601 text, with a warning: .h5ad
files cannot hold them (the command failed in anndata's writer and wrote nothing)."""

from __future__ import annotations

import datetime as dt

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell import cli
from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class Gene(FeatureBaseSchema):
    pass


class TimedCell(LancellBaseSchema):
    when: dt.datetime | None = None
    day: dt.date | None = None
    rna: SparseZarrPointer | None = None


def test_dates_and_times_are_written_as_iso_text(tmp_path, capsys) -> None:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        TimedCell,
        store=str(tmp_path / "arrays"),
        registry_schemas={"rna": Gene},
    )
    atlas.register_features("rna", pd.DataFrame({"uid": ["a", "b"]}))
    obs = pd.DataFrame(
        {"when": pd.to_datetime(["2020-01-01 10:30", None]), "day": [dt.date(2020, 1, 2), None]},
        index=["c0", "c1"],
    )
    adata = ad.AnnData(
        X=sp.csr_matrix(np.eye(2, dtype=np.int32)), obs=obs, var=pd.DataFrame(index=["a", "b"])
    )
    add_from_anndata(
        atlas,
        adata,
        feature_space="rna",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"),
        progress=False,
    )
    out = tmp_path / "out.h5ad"
    assert cli.main(["query", atlas.db_uri, "-o", str(out)]) == 0
    assert "warning: obs columns ['when', 'day'] hold dates or times" in capsys.readouterr().err
    written = ad.read_h5ad(out).obs
    assert written["when"].tolist()[0] == "2020-01-01T10:30:00" and pd.isna(written["when"].iloc[1])
    assert written["day"].tolist()[0] == "2020-01-02" and pd.isna(written["day"].iloc[1])
