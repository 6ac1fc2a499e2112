"""Modalities attached to a dataset's cells, and the calls that meet them: add_layer, presence, MuData.

Attaching a modality rewrites the row order of its dataset's cells in the cell table, so a plain matrix given
in query order must still land on the right stored rows; two attachments of one feature space to disjoint
cells must never mark a feature measured where a cell has no data; a MuData whose later modality fails leaves
no part of it behind.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import visible_state
from mudata import MuData

from lancell.atlas import RaggedAtlas
from lancell.errors import ArgumentError, IngestError, QueryError, ShapeMismatchError
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.modalities import add_from_mudata, attach_modality
from lancell.query.reconstruct import presence_matrix
from lancell.tables.schema import (
    DatasetRecord,
    DenseZarrPointer,
    FeatureBaseSchema,
    LancellBaseSchema,
    SparseZarrPointer,
)

GENES = [f"G{i}" for i in range(12)]
PROTEINS = [f"P{i}" for i in range(4)]
PROGRAMS = [f"p{i}" for i in range(3)]


class Feature(FeatureBaseSchema):
    pass


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None
    protein: SparseZarrPointer | None = None
    programs: DenseZarrPointer | None = None


@pytest.fixture
def atlas(tmp_path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Feature, "protein": Feature, "programs": Feature},
        layers={"gene_expression": ["counts"], "protein": ["counts"], "programs": ["scores", "other"]},
    )
    for space, uids in (("gene_expression", GENES), ("protein", PROTEINS), ("programs", PROGRAMS)):
        atlas.register_features(space, pd.DataFrame({"uid": uids}))
    return atlas


def _adata(x: np.ndarray | sp.spmatrix, cells: list[str], features: list[str]) -> ad.AnnData:
    return ad.AnnData(X=x, obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=features))


def _ingest_programs(atlas: RaggedAtlas, n: int = 20) -> np.ndarray:
    x = np.arange(1, n * len(PROGRAMS) + 1, dtype=np.float32).reshape(n, len(PROGRAMS))
    cells = [f"c{i}" for i in range(n)]
    add_from_anndata(
        atlas,
        _adata(x, cells, PROGRAMS),
        feature_space="programs",
        zarr_layer="scores",
        dataset_record=DatasetRecord(uid="d"),
        progress=False,
    )
    return x


def _attach(atlas: RaggedAtlas, cells: list[str], proteins: list[str], uid: str) -> None:
    attach_modality(
        atlas,
        _adata(sp.csr_matrix(np.full((len(cells), len(proteins)), 7, np.int32)), cells, proteins),
        cells_of="d",
        feature_space="protein",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
    )


def test_a_plain_layer_in_query_order_lands_on_its_cells_after_an_attachment(atlas):
    x = _ingest_programs(atlas)
    _attach(atlas, ["c3", "c11", "c7", "c0", "c15"], PROTEINS, "d-protein")
    query = atlas.query().where("dataset_uid = 'd'").feature_space("programs")
    names = [name.split(":", 1)[1] for name in query.to_anndata().obs_names]
    assert names != sorted(names, key=lambda name: int(name[1:]))  # attaching changed the row order
    add_layer(atlas, "d", "other", 10 * x[[int(name[1:]) for name in names]])  # rows in query order
    out = query.layers("programs", ["scores", "other"]).to_anndata()
    np.testing.assert_array_equal(out.layers["other"], 10 * np.asarray(out.X))
    assert atlas.validate() == []


def test_add_layer_refuses_an_anndata_with_repeated_names_or_no_x_and_other_inputs(atlas):
    x = _ingest_programs(atlas, n=4)
    before = visible_state(atlas)
    cells = [f"c{i}" for i in range(4)]
    repeated = [
        _adata(x, ["c0", "c0", "c2", "c3"], PROGRAMS),
        _adata(x, cells, ["p0", "p0", "p2"]),
    ]
    for matrix in repeated:
        with pytest.raises(ShapeMismatchError, match="must be unique"):
            add_layer(atlas, "d", "other", matrix)
    with pytest.raises(ShapeMismatchError, match="has no X"):
        add_layer(
            atlas, "d", "other", ad.AnnData(obs=pd.DataFrame(index=cells), var=pd.DataFrame(index=PROGRAMS))
        )
    with pytest.raises(IngestError, match="not list"):
        add_layer(atlas, "d", "other", x.tolist())
    after = visible_state(atlas)
    after.pop("_feature_layouts"), before.pop("_feature_layouts")  # a panel's layout is kept for reuse
    assert after == before
    add_layer(atlas, "d", "other", _adata(2 * x, cells, PROGRAMS))  # an AnnData into a dense space
    out = atlas.query().feature_space("programs").layers("programs", ["scores", "other"]).to_anndata()
    np.testing.assert_array_equal(out.layers["other"], 2 * np.asarray(out.X))


def test_two_attachments_to_disjoint_cells_never_mark_a_feature_measured_without_data(atlas):
    add_from_anndata(
        atlas,
        _adata(sp.csr_matrix(np.ones((4, len(GENES)), np.int32)), [f"c{i}" for i in range(4)], GENES),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"),
        progress=False,
    )
    _attach(atlas, ["c0", "c1"], ["P0", "P1"], "d-a")
    _attach(atlas, ["c2", "c3"], ["P2", "P3"], "d-b")
    out = atlas.query().feature_space("protein").to_anndata()
    measured = presence_matrix(out).toarray()
    assert not (measured & (out.X.toarray() == 0)).any()  # presence is per dataset: the panels' intersection


def test_a_mudata_whose_second_modality_fails_leaves_nothing(atlas):
    before = visible_state(atlas)
    cells = [f"c{i}" for i in range(4)]
    rna = _adata(sp.csr_matrix(np.ones((4, len(GENES)), np.int32)), cells, GENES)
    protein = _adata(sp.csr_matrix(np.ones((2, len(PROTEINS)), np.int32)), ["c0", "stranger"], PROTEINS)
    mdata = MuData({"rna": rna, "prot": protein})
    with pytest.raises(IngestError, match="stranger"):
        add_from_mudata(
            atlas,
            mdata,
            {"rna": ("gene_expression", "counts"), "prot": ("protein", "counts")},
            dataset_record=DatasetRecord(uid="m"),
            progress=False,
        )
    after = visible_state(atlas)
    after.pop("_feature_layouts"), before.pop("_feature_layouts")  # a panel's layout is kept for reuse
    assert after == before


def test_to_mudata_reads_the_layers_chosen_for_each_space(atlas):
    """Two spaces whose datasets store different layers could not be read together (``layers()`` chooses
    for one space), and ``to_mudata("protein")`` read the string as the spaces 'p', 'r', ..."""
    _ingest_programs(atlas)  # dataset d: programs "scores"
    other = np.full((4, len(PROGRAMS)), 2.5, np.float32)
    add_from_anndata(
        atlas,
        _adata(other, [f"e{i}" for i in range(4)], PROGRAMS),
        feature_space="programs",
        zarr_layer="other",
        dataset_record=DatasetRecord(uid="e"),
        progress=False,
    )
    _attach(atlas, ["c1", "c2"], PROTEINS, "d-protein")
    query = atlas.query().on_unmeasured("drop")
    with pytest.raises(QueryError, match="different layers"):
        query.to_mudata()
    out = query.to_mudata(layers={"programs": "other", "protein": ["counts"]})
    assert out["programs"].n_obs == 4 and out["protein"].n_obs == 2
    np.testing.assert_array_equal(np.asarray(out["programs"].X), other)
    assert out["protein"].X.toarray().tolist() == [[7] * len(PROTEINS)] * 2
    with pytest.raises(QueryError, match=r"\['rna'\] are not among the spaces read"):
        query.to_mudata(layers={"rna": "counts"})
    with pytest.raises(QueryError, match=r"reads \['other'\] of 'programs', layers\(\) chose \['scores'\]"):
        query.layers("programs", "scores").to_mudata(layers={"programs": "other"})
    with pytest.raises(ArgumentError, match=r"got the string 'protein' \(for one space: \['protein'\]\)"):
        query.to_mudata("protein")
    for named in ([], ["programs", "programs"]):  # every space was read, one modality returned
        with pytest.raises(ArgumentError, match="must name distinct feature spaces"):
            query.to_mudata(named)


def test_an_attachment_names_its_cells_as_their_rows_do(atlas):
    """Cell rows name a cell ``<dataset>:<obs name as text>``; an attachment built its uids with an f-string,
    so obs names read as bytes (``b"c1"``) named no cell (``d:b'c1'``) and the attachment was refused."""
    _ingest_programs(atlas)
    proteins = _adata(sp.csr_matrix(np.full((2, len(PROTEINS)), 7, np.int32)), ["c1", "c2"], PROTEINS)
    proteins.obs_names = pd.Index([b"c1", b"c2"], dtype=object)
    attach_modality(
        atlas, proteins, cells_of="d", feature_space="protein", zarr_layer="counts", progress=False
    )
    assert atlas.query().where("protein IS NOT NULL").to_pandas()["uid"].tolist() == ["d:c1", "d:c2"]
