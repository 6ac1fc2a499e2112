"""add_from_10x says what it does not store: feature types without a feature space, obs rows for barcodes
the matrix lacks; and refuses an obs frame that does not match the barcodes."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import visible_state

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError, LancellWarning
from lancell.ingest.tenx import add_from_10x
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

IDS = ["ENSG00000000001", "CD3_TotalSeqB", "guideA"]
TYPES = ["Gene Expression", "Antibody Capture", "CRISPR Guide Capture"]


class Feature(FeatureBaseSchema):
    gene_symbol: str | None = None


class Cells(LancellBaseSchema):
    donor: str | None = None
    gene_expression: SparseZarrPointer | None = None
    protein: SparseZarrPointer | None = None


def write_h5(path: Path, x: np.ndarray, ids: list[str], types: list[str], barcodes: list[str]) -> Path:
    """A Cell Ranger v3 HDF5 file of the cells x features counts ``x``."""
    genes_by_cells = sp.csc_matrix(x.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"] = genes_by_cells.data
        m["indices"] = genes_by_cells.indices.astype(np.int64)
        m["indptr"] = genes_by_cells.indptr.astype(np.int64)
        m["shape"] = np.array(genes_by_cells.shape, dtype=np.int32)
        features = m.create_group("features")
        features["id"] = np.array(ids, dtype="S")
        features["name"] = np.array(ids, dtype="S")
        features["feature_type"] = np.array(types, dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
    return path


def _atlas(root: Path, ids: list[str]) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(root / "db"),
        "cells",
        Cells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Feature, "protein": Feature},
    )
    for space in ("gene_expression", "protein"):
        atlas.register_features(space, pd.DataFrame({"uid": ids, "gene_symbol": ids}))
    return atlas


def test_a_feature_type_without_a_feature_space_is_warned_about(tmp_path):
    x = np.array([[1, 2, 3], [0, 4, 5]])
    h5 = write_h5(tmp_path / "crispr.h5", x, IDS, TYPES, ["A-1", "B-1"])
    atlas = _atlas(tmp_path, IDS[:2])
    with pytest.warns(
        LancellWarning, match=r"1 'CRISPR Guide Capture' features \(2 nonzero values\) not stored"
    ):
        records = add_from_10x(atlas, h5, dataset_record=DatasetRecord(uid="s"), progress=False)
    assert [(r.uid, r.nnz) for r in records] == [("s", 1), ("s/protein", 2)]


def test_obs_rows_for_other_barcodes_are_warned_about(tmp_path):
    h5 = write_h5(tmp_path / "x.h5", np.array([[1, 2], [3, 0]]), IDS[:2], TYPES[:1] * 2, ["A-1", "B-1"])
    atlas = _atlas(tmp_path, IDS[:2])
    obs = pd.DataFrame({"donor": ["dA", "dB", "dC"]}, index=["A-1", "B-1", "C-1"])
    with pytest.warns(LancellWarning, match=r"obs rows for 1 barcodes the matrix does not have .*'C-1'"):
        (record,) = add_from_10x(atlas, h5, obs=obs, dataset_record=DatasetRecord(uid="s"), progress=False)
    assert record.n_cells == 2
    stored = atlas.query().to_pandas().set_index("obs_name")["donor"].to_dict()
    assert stored == {"A-1": "dA", "B-1": "dB"}


def test_obs_columns_given_as_series_are_read_by_barcode(tmp_path):
    """A default-indexed Series given as an obs column was aligned by pandas to the barcodes and stored as
    nulls for every cell, silently."""
    h5 = write_h5(tmp_path / "two.h5", np.array([[1, 2], [3, 0]]), IDS[:2], TYPES[:1] * 2, ["A-1", "B-1"])
    atlas = _atlas(tmp_path, IDS[:2])
    before = visible_state(atlas)
    with pytest.raises(IngestError, match=r"no rows for 2 barcodes.*\['donor'\].*index it by barcode"):
        add_from_10x(atlas, h5, obs={"donor": pd.Series(["dA", "dB"])}, progress=False)
    with pytest.raises(IngestError, match=r"obs\['donor'\] is a mapping"):
        add_from_10x(atlas, h5, obs={"donor": {"A-1": "dA", "B-1": "dB"}}, progress=False)
    assert visible_state(atlas) == before
    by_barcode = pd.Series(["dB", "dA"], index=["B-1", "A-1"])
    add_from_10x(atlas, h5, obs={"donor": by_barcode}, progress=False)
    assert atlas.query().to_pandas().set_index("obs_name")["donor"].to_dict() == {"A-1": "dA", "B-1": "dB"}


def test_a_one_row_obs_frame_for_another_barcode_is_refused(tmp_path):
    h5 = write_h5(tmp_path / "one.h5", np.array([[1, 2]]), IDS[:2], TYPES[:1] * 2, ["A-1"])
    two = write_h5(tmp_path / "two.h5", np.array([[1, 2], [3, 0]]), IDS[:2], TYPES[:1] * 2, ["A-1", "B-1"])
    atlas = _atlas(tmp_path, IDS[:2])
    before = visible_state(atlas)
    with pytest.raises(IngestError, match=r"one row, for 'Z-1', and the matrix one cell, barcode 'A-1'"):
        add_from_10x(atlas, h5, obs=pd.DataFrame({"donor": ["dZ"]}, index=["Z-1"]), progress=False)
    with pytest.raises(IngestError, match=r"obs has no rows for 1 barcodes, e.g. \['B-1'\]"):
        add_from_10x(atlas, two, obs=pd.DataFrame({"donor": ["dA"]}, index=["A-1"]), progress=False)
    assert visible_state(atlas) == before
    with warnings.catch_warnings():
        warnings.simplefilter("error", LancellWarning)
        sample_row = pd.DataFrame({"donor": ["d1"]}, index=["GSM1"])  # not a barcode: repeated for every cell
        (record,) = add_from_10x(
            atlas, two, obs=sample_row, dataset_record=DatasetRecord(uid="s"), progress=False
        )
    assert set(atlas.query().to_pandas()["donor"]) == {"d1"} and record.n_cells == 2
