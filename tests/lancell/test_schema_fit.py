"""Schemas that do not fit the atlas are refused where they are given, never met as silent drops or as
pyarrow / pydantic errors at the first write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lancedb.pydantic import Vector

from lancell.atlas import RaggedAtlas
from lancell.errors import QueryError, SchemaError
from lancell.tables import schema as schema_module
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class Gene(FeatureBaseSchema):
    pass


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


class Tissue(DatasetRecord):
    tissue: str | None = None


class TissueAsNumber(DatasetRecord):
    tissue: int | None = None


class Donor(DatasetRecord):
    donor: str


def _create(root: Path, cells: type[LancellBaseSchema] = Cells, **kwargs) -> RaggedAtlas:
    return RaggedAtlas.create(
        str(root / "db"),
        "cells",
        cells,
        store=str(root / "arrays"),
        registry_schemas={"gene_expression": Gene},
        **kwargs,
    )


def test_a_dataset_schema_whose_own_fields_the_table_lacks_or_types_otherwise_is_refused(tmp_path: Path):
    """open(dataset_schema=Tissue) on an atlas created with DatasetRecord ingested with Tissue(tissue="lung")
    silently (the record returned said "lung", the table had no such column); a retyped field failed in
    pyarrow, a required one in pydantic."""
    _create(tmp_path / "plain")
    for record, match in (
        (Tissue, r"fields \['tissue'\] the table lacks"),
        (Donor, r"fields \['donor'\] the table lacks"),
    ):
        with pytest.raises(SchemaError, match=f"dataset schema {record.__name__} does not match .* {match}"):
            RaggedAtlas.open(str(tmp_path / "plain" / "db"), dataset_schema=record)
    _create(tmp_path / "tissue", dataset_schema=Tissue)
    db = str(tmp_path / "tissue" / "db")
    assert RaggedAtlas.open(db, dataset_schema=Tissue).dataset_schema is Tissue
    RaggedAtlas.open(db)  # the base record reads any table
    with pytest.raises(SchemaError, match=r"tissue \(int64; the table stores string\)"):
        RaggedAtlas.open(db, dataset_schema=TissueAsNumber, read_only=True)


def test_cell_schema_fields_that_lancell_fills_or_search_adds_are_refused_at_create(tmp_path: Path):
    """obs_name redeclared as int made every ingestion fail in pyarrow; a column named distance doubled
    the search's own, and to_anndata() of a search failed with a bare KeyError."""

    class NumberedCells(Cells):
        obs_name: int | None = None

    class DistanceCells(Cells):
        distance: float | None = None

    with pytest.raises(SchemaError, match=r"field 'obs_name' .* must be an optional str, got int64"):
        _create(tmp_path / "a", NumberedCells)
    with pytest.raises(
        SchemaError, match=r"fields \['distance'\] take the names of the columns a search adds"
    ):
        _create(tmp_path / "b", DistanceCells)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_search_of_an_atlas_with_a_cell_column_named_like_its_results_is_refused(tmp_path, monkeypatch):
    """An atlas created before such names were refused: its searches name the clash instead of returning
    two ``score`` or ``distance`` columns."""

    class Scored(Cells):
        score: float | None = None
        emb: Vector(2) | None = None

    with monkeypatch.context() as patched:
        patched.setattr(schema_module, "SEARCH_RESULT_COLUMNS", ())
        atlas = _create(tmp_path, Scored)
    atlas.core.tables.cells.add(
        pd.DataFrame({"uid": ["c0"], "dataset_uid": ["d"], "score": [0.5], "emb": [np.zeros(2, np.float32)]})
    )
    query = atlas.query().search(np.ones(2, np.float32)).limit(1)
    with pytest.raises(QueryError, match=r"cell columns \['score'\] have the names of the columns a search"):
        query.to_pandas()
    assert query.select(["emb"]).count() == 0  # uncommitted rows are invisible; the query runs
