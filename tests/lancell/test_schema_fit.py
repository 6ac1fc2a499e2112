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
from lancell.tables import atlas_meta
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
    plain = str(tmp_path / "plain" / "db")
    assert RaggedAtlas.open(plain, dataset_schema=Tissue, read_only=True).list_datasets().empty  # reads
    with pytest.raises(SchemaError, match=r"fields \['donor'\] the table lacks"):  # no record could be built
        RaggedAtlas.open(plain, dataset_schema=Donor, read_only=True)
    with pytest.raises(SchemaError, match=r"tissue \(int64; the table stores string\)"):
        RaggedAtlas.open(db, dataset_schema=TissueAsNumber, read_only=True)


class NameAsNumber(DatasetRecord):
    name: int | None = None


def test_a_dataset_record_the_table_would_not_store_as_given_is_refused_before_anything_is_written(
    tmp_path: Path,
):
    """The record given to an ingestion was never checked against the table: Tissue(tissue="lung") into an
    atlas of plain records lost "lung", a float into an int column was truncated, text into a list column
    split into letters, a column the table requires failed in Lance after the matrix was written."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from lancell.ingest.from_anndata import add_from_anndata

    adata = ad.AnnData(sp.csr_matrix(np.eye(3, dtype=np.float32)), var=pd.DataFrame(index=["a", "b", "c"]))
    adata.obs_names = ["x", "y", "z"]

    def ingest(atlas: RaggedAtlas, record: DatasetRecord) -> None:
        atlas.register_features("gene_expression", pd.DataFrame({"uid": ["a", "b", "c"]}))
        add_from_anndata(
            atlas, adata, feature_space="gene_expression", zarr_layer="counts", dataset_record=record,
            progress=False,
        )  # fmt: skip

    plain = _create(tmp_path / "plain")
    with pytest.raises(SchemaError, match=r"fields \['tissue'\] the table lacks"):
        ingest(plain, Tissue(uid="d", tissue="lung"))
    with pytest.raises(SchemaError, match=r"name \(int64; the table stores string\)"):
        ingest(plain, NameAsNumber(uid="d", name=3))
    donors = _create(tmp_path / "donors", dataset_schema=Donor)
    reopened = RaggedAtlas.open(donors.db_uri)  # records of the base class: no donor
    with pytest.raises(SchemaError, match=r"lacks \['donor'\], which the atlas's dataset table requires"):
        ingest(reopened, DatasetRecord(uid="d"))
    for atlas in (plain, reopened):
        assert atlas.list_datasets().empty and atlas.core.tables.cells.count_rows() == 0
    ingest(reopened, Donor(uid="d", donor="D1"))
    assert reopened.list_datasets()["donor"].tolist() == ["D1"]


def test_a_10x_output_landed_for_a_record_that_does_not_fit_registers_nothing(tmp_path: Path, capsys):
    """lancell ingest of a 10x .h5 registered its 507 features, then the record was refused."""
    from lancell import cli
    from lancell.bundled import DATA_DIR, CellSchema, GeneFeature

    db = str(tmp_path / "db")
    RaggedAtlas.create(
        db, "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature}, dataset_schema=Donor
    )
    path = DATA_DIR / "10x_v3" / "filtered_feature_bc_matrix.h5"
    assert cli.main(["ingest", db, str(path), "--organism", "Homo sapiens"]) == 1
    assert "lacks ['donor'], which the atlas's dataset table requires" in capsys.readouterr().err
    assert RaggedAtlas.open(db, dataset_schema=Donor).feature_registry("gene_expression").empty


def test_enum_list_and_retyped_global_index_fields_are_refused_at_create(tmp_path: Path):
    """An Enum field stored any label (and made every query fail once optimize() joined its fragments'
    dictionaries), a list field stored "CD4" as its letters, a str global_index failed at the first
    register_features."""
    import enum

    from lancell.tables.registry import sql_literal

    class Color(str, enum.Enum):  # noqa: UP042 (the mixin whose str() is 'Color.red')
        red = "red"

    class EnumCells(Cells):
        color: Color | None = None

    class ListCells(Cells):
        tags: list[str] | None = None

    class EnumGene(Gene):
        kind: Color | None = None

    class TextIndexGene(FeatureBaseSchema):
        global_index: str | None = None

    for cells, match in ((EnumCells, r"fields \['color'\] are Enums"), (ListCells, r"\['tags'\] are lists")):
        with pytest.raises(SchemaError, match=match):
            _create(tmp_path / cells.__name__, cells)
    for gene, match in ((EnumGene, r"\['kind'\] are Enums"), (TextIndexGene, "'global_index'.*got string")):
        with pytest.raises(SchemaError, match=match):
            db = str(tmp_path / gene.__name__ / "db")
            RaggedAtlas.create(db, "cells", Cells, registry_schemas={"gene_expression": gene})
    assert sql_literal(Color.red) == "'red'"  # where(cell_type=Color.red) on a str field matched nothing


def test_a_field_name_holding_a_dot_is_a_schema_error_and_writes_nothing(tmp_path: Path):
    """R's obs column names (n.genes) made create() fail with Lance's RuntimeError, leaving a folder."""
    from pydantic import create_model

    dotted = create_model("Dotted", __base__=Cells, **{"n.genes": (int | None, None)})
    with pytest.raises(SchemaError, match=r"cell schema Dotted: field names \['n\.genes'\] contain '\.'"):
        _create(tmp_path / "a", dotted)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*"))


def test_an_atlas_created_with_an_enum_field_opens_with_its_schema_or_a_str_field(
    tmp_path: Path, monkeypatch
):
    """Refused at create now; an atlas created before could not be opened with its own dataset schema, nor
    with the str field the refusal advised."""
    import enum

    import pyarrow as pa

    import lancell.tables.schema_fit as schemas

    class Tech(str, enum.Enum):  # noqa: UP042 (the mixin users write)
        tenx = "10x"

    class Rec(DatasetRecord):
        technology: Tech | None = None

    class RecText(DatasetRecord):
        technology: str | None = None

    with pytest.raises(SchemaError, match=r"\['technology'\] are Enums"):
        _create(tmp_path / "refused", dataset_schema=Rec)
    with monkeypatch.context() as before:  # an atlas created before the refusal
        before.setattr(schemas, "refuse_enum_fields", lambda *args: None)
        atlas = _create(tmp_path / "old", dataset_schema=Rec)
    assert pa.types.is_dictionary(atlas.core.dataset_arrow.field("technology").type)
    for record in (Rec, RecText):
        assert RaggedAtlas.open(atlas.db_uri, dataset_schema=record).dataset_schema is record


def test_an_old_enum_cell_field_reads_after_optimize(tmp_path: Path, monkeypatch):
    """Compaction joined the fragments' dictionaries (red, blue, blue, red): pandas refused them as
    categories, and to_anndata, to_pandas and count(group_by=...) failed."""
    import enum

    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    import lancell.tables.schema_fit as schemas
    from lancell.ingest.from_anndata import add_from_anndata

    class Color(str, enum.Enum):  # noqa: UP042 (the mixin users write)
        red = "red"
        blue = "blue"

    class ColorCells(Cells):
        color: Color | None = None

    with monkeypatch.context() as before:  # an atlas created before Enum fields were refused
        before.setattr(schemas, "refuse_enum_fields", lambda *args: None)
        atlas = _create(tmp_path, ColorCells)
    atlas.register_features("gene_expression", pd.DataFrame({"uid": ["a", "b"]}))
    for uid, colors in (("d1", ["red", "blue"]), ("d2", ["blue", "blue"])):
        obs = pd.DataFrame({"color": colors}, index=["x", "y"])
        adata = ad.AnnData(
            sp.csr_matrix(np.eye(2, dtype=np.float32)), obs=obs, var=pd.DataFrame(index=["a", "b"])
        )
        record = DatasetRecord(uid=uid)
        add_from_anndata(atlas, adata, feature_space="gene_expression", zarr_layer="counts",
                         dataset_record=record, progress=False, on_duplicate="allow")  # fmt: skip
    atlas.optimize()
    assert sorted(atlas.query().to_anndata().obs["color"]) == ["blue", "blue", "blue", "red"]
    assert atlas.query().count(group_by="color").to_dict() == {"blue": 3, "red": 1}


def test_cell_schema_fields_that_lancell_fills_or_search_adds_are_refused_at_create(tmp_path: Path):
    """obs_name redeclared as int made every ingestion fail in pyarrow; a column named distance doubled
    a vector search's own, and to_anndata() of a search failed with a bare KeyError. A field named like a
    search column is fine in an atlas those searches cannot run on."""

    class NumberedCells(Cells):
        obs_name: int | None = None

    class DistanceCells(Cells):
        distance: float | None = None
        emb: Vector(2) | None = None

    class ScoredCells(Cells):
        score: float | None = None
        note: str | None = None

    with pytest.raises(SchemaError, match=r"field 'obs_name' .* must be an optional str, got int64"):
        _create(tmp_path / "a", NumberedCells)
    with pytest.raises(
        SchemaError, match=r"fields \['distance'\] take the names of the columns its searches"
    ):
        _create(tmp_path / "b", DistanceCells)
    with pytest.raises(SchemaError, match=r"fields \['score'\] take the names"):
        _create(tmp_path / "c", ScoredCells, fts_columns=["note"])
    assert not any((tmp_path / name).exists() for name in "abc")
    _create(tmp_path / "d", ScoredCells)  # no text search: a QC score is a score


def test_a_search_of_an_atlas_with_a_cell_column_named_like_its_results_is_refused(tmp_path, monkeypatch):
    """An atlas created before such names were refused: a search names the clash instead of returning two
    ``distance`` (vector) or ``score`` (text, hybrid) columns; a search that adds another name runs."""

    class Older(Cells):
        distance: float | None = None
        score: float | None = None
        note: str | None = None
        emb: Vector(2) | None = None

    with monkeypatch.context() as patched:
        patched.setattr(atlas_meta, "SEARCH_RESULT_COLUMN", {"vector": "_", "fts": "_", "hybrid": "_"})
        atlas = _create(tmp_path, Older, fts_columns=["note"])
    probe = np.ones(2, np.float32)
    with pytest.raises(
        QueryError, match=r"cell column 'distance' has the name of the column this search adds"
    ):
        atlas.query().search(probe).limit(1).to_pandas()
    with pytest.raises(QueryError, match=r"cell column 'score' has the name"):
        atlas.query().search("word").to_pandas()
    assert atlas.query().search(probe).limit(1).select(["note"]).to_pandas().empty
    with pytest.raises(QueryError, match="INVERTED index"):  # it runs (and finds no index: nothing ingested)
        atlas.query().search("word").select(["distance"]).to_pandas()


def test_defaults_and_constraints_lancell_would_not_apply_are_refused_at_create(tmp_path: Path):
    """Cells and registry rows come from data frames, never built as the model: a default was ignored (a
    dataset without the column stored null, or was refused for a required field) and Field(ge=0) or
    conint stored -5 without a word. A dataset schema's are applied (records are built as the model)."""
    from typing import Annotated

    from pydantic import Field, conint

    class HumanCells(Cells):
        organism: str | None = "Homo sapiens"

    class AssayCells(Cells):
        assay: str = "10x 3' v3"

    class CountedCells(Cells):
        n_counts: Annotated[int, Field(ge=0)]
        fraction: float | None = Field(None, ge=0, le=1)

    class BoundedCells(Cells):
        n_genes: conint(ge=0)

    class KindGene(Gene):
        kind: str | None = "protein_coding"

    class DefaultedDataset(DatasetRecord):
        tissue: str = "blood"
        donors: int = Field(1, ge=1)

    refused = (
        (HumanCells, r"cell schema HumanCells: fields declare defaults .*\(organism = 'Homo sapiens'\)"),
        (AssayCells, r"defaults .*\(assay = \"10x 3' v3\"\)"),
        (
            CountedCells,
            r"constraints lancell does not check \(n_counts: Ge\(ge=0\); fraction: Ge\(ge=0\), Le",
        ),
        (BoundedCells, r"constraints .*\(n_genes: Interval\(gt=None, ge=0"),
    )
    for cells, match in refused:
        with pytest.raises(SchemaError, match=match):
            _create(tmp_path / cells.__name__, cells)
        assert not (tmp_path / cells.__name__).exists()
    with pytest.raises(SchemaError, match=r"registry schema KindGene: .*\(kind = 'protein_coding'\)"):
        RaggedAtlas.create(
            str(tmp_path / "kind" / "db"), "cells", Cells, registry_schemas={"gene_expression": KindGene}
        )
    atlas = _create(tmp_path / "dataset", dataset_schema=DefaultedDataset)
    assert atlas.list_datasets().empty

    class NotedCells(Cells):  # notes, strict mode and a missing default constrain no value
        cell_type: Annotated[str, "the annotators' label"]
        n_genes: int = Field(strict=True)
        donor: str | None = pd.NA

    _create(tmp_path / "noted", NotedCells)
