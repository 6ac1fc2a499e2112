"""A lost or replaced chunk of an offsets array (``csr/indptr``, ``csc/indptr``) is an error, never zeros.

zarr reads a missing chunk object as fill values: a feature-filtered read through the CSC copy returned a
dataset's values as measured zeros, ``validate()`` said nothing, and ``add_csc`` / ``add_layer`` would have
built on offsets of zeros (:mod:`lancell.storage.offsets`).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr

from lancell.atlas import RaggedAtlas
from lancell.errors import ShardFormatError
from lancell.ingest.add_csc import add_csc
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.offsets import EVERY_CHUNK_WRITTEN, read_offsets, write_offsets
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

GENES = [f"g{i}" for i in range(40)]


class Gene(FeatureBaseSchema):
    pass


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _x(seed: int) -> sp.csr_matrix:
    return sp.random(60, len(GENES), density=0.2, random_state=seed, format="csr", dtype=np.float64).astype(
        np.int32
    ) + sp.random(60, len(GENES), density=0.1, random_state=seed + 1, format="csr").ceil().astype(np.int32)


def _adata(seed: int) -> ad.AnnData:
    obs = pd.DataFrame(index=[f"c{seed}_{i}" for i in range(60)])
    return ad.AnnData(X=_x(seed), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def atlas(tmp_path: Path) -> RaggedAtlas:
    """Dataset ``with_csc`` (CSR and CSC copies) and ``csr_only``."""
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    for seed, (uid, csc) in enumerate((("with_csc", True), ("csr_only", False))):
        add_from_anndata(
            atlas,
            _adata(seed),
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid),
            csc=csc,
            progress=False,
        )
    return atlas


def _group(atlas: RaggedAtlas, uid: str, tmp_path: Path) -> Path:
    datasets = atlas.list_datasets()
    return tmp_path / "arrays" / datasets.loc[datasets["uid"] == uid, "zarr_group"].item()


def _few_features(db: str) -> ad.AnnData:
    reader = RaggedAtlas.open(db, read_only=True)
    return (
        reader.query().layers("gene_expression", "counts").features(GENES[:3], "gene_expression").to_anndata()
    )


def test_a_lost_csc_offsets_chunk_is_an_error_and_validate_names_it(atlas: RaggedAtlas, tmp_path: Path):
    before = _few_features(str(tmp_path / "db"))
    assert before.X.nnz > 0
    chunk = _group(atlas, "with_csc", tmp_path) / "csc/indptr/c/0"
    chunk.rename(tmp_path / "aside")
    with pytest.raises(ShardFormatError, match=r"csc/indptr' does not hold the group's offsets .* to 0\)"):
        _few_features(str(tmp_path / "db"))
    (problem,) = RaggedAtlas.open(str(tmp_path / "db"), read_only=True).validate()
    assert "dataset 'with_csc'" in problem and "csc/indptr" in problem and "missing from the store" in problem
    (tmp_path / "aside").rename(chunk)
    after = _few_features(str(tmp_path / "db"))
    assert (after.X != before.X).nnz == 0


def test_older_offsets_without_the_mark_are_checked_by_their_values(atlas: RaggedAtlas, tmp_path: Path):
    """Offsets written before every chunk was (no mark): a lost chunk reads as zeros that end below nnz."""
    indptr = _group(atlas, "with_csc", tmp_path) / "csc/indptr"
    meta = json.loads((indptr / "zarr.json").read_text())
    del meta["attributes"][EVERY_CHUNK_WRITTEN]
    (indptr / "zarr.json").write_text(json.dumps(meta))
    assert _few_features(str(tmp_path / "db")).X.nnz > 0  # still read
    (indptr / "c/0").unlink()
    with pytest.raises(ShardFormatError, match=r"does not hold the group's offsets .* to 0\)"):
        _few_features(str(tmp_path / "db"))


def test_a_lost_csr_offsets_chunk_stops_add_csc_and_add_layer(atlas: RaggedAtlas, tmp_path: Path):
    group = _group(atlas, "csr_only", tmp_path)
    (group / "csr/indptr/c/0").unlink()
    problems = atlas.validate()
    assert len(problems) == 1 and "'csr/indptr'" in problems[0]
    versions = atlas.table_versions()
    listing = sorted(p.relative_to(group) for p in group.rglob("*"))
    with pytest.raises(ShardFormatError, match=r"csr/indptr"):
        add_csc(atlas, "csr_only")
    with pytest.raises(ShardFormatError, match=r"csr/indptr"):
        add_layer(atlas, "csr_only", "log_normalized", _x(1).astype(np.float32))
    assert atlas.table_versions() == versions
    assert sorted(p.relative_to(group) for p in group.rglob("*")) == listing


def test_offsets_of_zeros_are_written_chunk_by_chunk(tmp_path: Path):
    """zarr skips a chunk of fill values by default: offsets write every chunk, so none can be lost unseen."""
    offsets = np.concatenate([np.zeros(70_000, np.int64), np.arange(1, 101, dtype=np.int64)])
    parent = zarr.open_group(str(tmp_path / "g"), mode="w")
    write_offsets(parent, offsets)
    array = parent["indptr"]
    assert array.nchunks == 2 and array.nchunks_initialized == 2
    attrs = {"n_cells": offsets.size - 1, "nnz": 100}
    np.testing.assert_array_equal(read_offsets(array, attrs, "csr"), offsets)
    with pytest.raises(ShardFormatError, match="expected 70100 entries from 0 to nnz 99"):
        read_offsets(array, {**attrs, "nnz": 99}, "csr")
    (tmp_path / "g/indptr/c/0").unlink()
    with pytest.raises(ShardFormatError, match=r"chunk object 'indptr/c/0' is missing from the store"):
        read_offsets(zarr.open_group(str(tmp_path / "g"), mode="r")["indptr"], attrs, "csr")


def test_offsets_read_asks_the_store_nothing_more_unless_a_chunk_read_as_zeros(tmp_path, monkeypatch):
    """The existence check of a marked array's chunks costs a request only for chunks that read as zeros (a
    LIST per read was a request more for every feature read, and a refusal where listing is not allowed)."""
    asked = []
    real = zarr.storage.LocalStore.exists

    async def exists(self, key):
        asked.append(key)
        return await real(self, key)

    monkeypatch.setattr(zarr.storage.LocalStore, "exists", exists)
    parent = zarr.open_group(str(tmp_path / "g"), mode="w")
    write_offsets(parent, np.arange(70_100, dtype=np.int64))
    read_offsets(parent["indptr"], {"n_cells": 70_099, "nnz": 70_099}, "csr")
    assert asked == []
    write_offsets(parent, np.concatenate([np.zeros(65_536, np.int64), np.arange(1, 11, dtype=np.int64)]))
    read_offsets(parent["indptr"], {"n_cells": 65_545, "nnz": 10}, "csr")
    assert asked == ["indptr/c/0"]


@pytest.mark.parametrize("offsets", [[0, 5, 3, 9], [1, 5, 7, 9], [0, 2, 4]])
def test_offsets_that_decrease_start_elsewhere_or_have_another_length_are_refused(tmp_path: Path, offsets):
    parent = zarr.open_group(str(tmp_path / "g"), mode="w")
    write_offsets(parent, np.asarray(offsets, np.int64))
    with pytest.raises(ShardFormatError, match="does not hold the group's offsets"):
        read_offsets(parent["indptr"], {"n_features": 3, "nnz": 9}, "csc")
