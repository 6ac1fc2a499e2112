"""A 10x HDF5 file's members are checked as an ``.h5ad``'s are: a member of the wrong shape or type is a
``TenxFormatError`` (a 2-D ``data`` was an untyped error mid-stream, fractional ``indices`` were truncated
onto another gene), h5py's own UTF-8 strings are read, and a file of several genomes needs ``genome=`` (a
barnyard run's mouse genes and cells were stored under the organism given for the human ones)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import visible_state

from lancell.atlas import RaggedAtlas
from lancell.errors import TenxFormatError
from lancell.ingest.tenx import add_from_10x
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

IDS = ["ENSG00000000003", "ENSG00000000005", "ENSMUSG00000000001"]


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _h5(path: Path, **members: object) -> Path:
    """A v3 file of 2 cells x 3 features (cell 0: 5 at feature 0; cell 1: 6 at feature 2), ``members``
    replacing its own (``genome``: the features' genomes)."""
    genomes = members.pop("genome", ["GRCh38"] * 3)
    own = {
        "barcodes": np.array([b"AAACCC-1", b"GGGTTT-1"]),
        "data": np.array([5, 6], np.int32),
        "indices": np.array([0, 2], np.int64),
        "indptr": np.array([0, 1, 2], np.int64),
        "shape": np.array([3, 2], np.int32),
    }
    with h5py.File(path, "w") as f:
        matrix = f.create_group("matrix")
        for name, value in {**own, **members}.items():
            matrix[name] = value
        features = matrix.create_group("features")
        features["id"] = np.array(IDS, dtype="S")
        features["name"] = np.array(["TSPAN6", "TNMD", "Gnai3"], dtype="S")
        features["feature_type"] = np.array([b"Gene Expression"] * 3)
        features["genome"] = np.array(genomes, dtype="S")
    return path


@pytest.fixture
def atlas(tmp_path: Path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", Cells, store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )  # fmt: skip
    atlas.register_features("gene_expression", pd.DataFrame({"uid": IDS}))
    return atlas


def _stored(atlas: RaggedAtlas, uid: str) -> np.ndarray:
    out = atlas.query().where(dataset_uid=uid).to_anndata()
    return out[:, [i for i in IDS if i in out.var_names]].X.toarray()


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"data": np.array([[5], [6]], np.int32)}, r"/matrix/data is a 2-D int32 array, not a 1-D array"),
        (
            {"indices": np.array([0.0, 1.9])},
            r"/matrix/indices is a 1-D float64 array, not a 1-D array of int",
        ),
        ({"indptr": np.array([0.0, 1.0, 2.0])}, r"/matrix/indptr is a 1-D float64 array"),
        # (each row's text was one name: "(np.str_('AAACCC-1'),)")
        ({"barcodes": np.array([[b"AAACCC-1"], [b"GGGTTT-1"]])}, r"/matrix/barcodes is a 2-D array"),
    ],
)
def test_a_member_of_the_wrong_shape_or_type_is_refused(
    tmp_path: Path, atlas: RaggedAtlas, members: dict, message: str
) -> None:
    path = _h5(tmp_path / "bad.h5", **members)
    before = visible_state(atlas, versions=True)
    with pytest.raises(TenxFormatError, match=rf"^{path}: {message}"):
        add_from_10x(atlas, path, dataset_record=DatasetRecord(uid="bad"), progress=False)
    assert visible_state(atlas, versions=True) == before


def test_variable_length_utf8_strings_are_read(tmp_path: Path, atlas: RaggedAtlas) -> None:
    barcodes = np.array(["AAACCC-1", "GGGÇTT-1"], dtype=object)
    path = tmp_path / "utf8.h5"
    _h5(path)
    with h5py.File(path, "r+") as f:  # as h5py writes str by default (it was "'ascii' codec can't decode")
        del f["matrix/barcodes"]
        f["matrix"].create_dataset("barcodes", data=barcodes, dtype=h5py.string_dtype())
        del f["matrix/features/name"]  # fixed-length, declared ASCII, holding UTF-8 (as Cell Ranger writes)
        f["matrix/features/name"] = np.array([n.encode() for n in ("TSPAN6", "CD45RA_TotalSeq™", "Gnai3")])
    add_from_10x(atlas, path, dataset_record=DatasetRecord(uid="utf8"), progress=False)
    assert atlas.query().to_pandas()["obs_name"].tolist() == list(barcodes)
    assert np.array_equal(_stored(atlas, "utf8"), [[5, 0, 0], [0, 0, 6]])


def test_a_file_of_several_genomes_needs_one_chosen(tmp_path: Path, atlas: RaggedAtlas) -> None:
    path = _h5(tmp_path / "barnyard.h5", genome=["GRCh38", "GRCh38", "mm10"])
    before = visible_state(atlas, versions=True)
    with pytest.raises(TenxFormatError, match=r"several genomes \['GRCh38', 'mm10'\]; pass genome="):
        add_from_10x(atlas, path, dataset_record=DatasetRecord(uid="b"), progress=False)
    assert visible_state(atlas, versions=True) == before
    add_from_10x(atlas, path, dataset_record=DatasetRecord(uid="b"), progress=False, genome="GRCh38")
    assert np.array_equal(_stored(atlas, "b"), [[5, 0], [0, 0]])  # the mouse gene is not stored


def test_float16_values_are_refused_and_big_endian_ones_read(tmp_path: Path, atlas: RaggedAtlas) -> None:
    """Both were scipy's bare ValueError ("Output dtype not compatible", "does not support dtype >i4")."""
    path = _h5(tmp_path / "half.h5", data=np.array([5, 6], np.float16))
    before = visible_state(atlas, versions=True)
    with pytest.raises(TenxFormatError, match=r"unsupported value dtype float16 in /matrix/data"):
        add_from_10x(atlas, path, dataset_record=DatasetRecord(uid="half"), progress=False)
    assert visible_state(atlas, versions=True) == before
    for dtype in (">i4", ">f4"):
        uid = "big" + dtype[1:]
        path = _h5(tmp_path / f"{uid}.h5", data=np.array([5, 6], dtype))
        add_from_10x(atlas, path, dataset_record=DatasetRecord(uid=uid), progress=False)
        assert np.array_equal(_stored(atlas, uid), [[5, 0, 0], [0, 0, 6]])
