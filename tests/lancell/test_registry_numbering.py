"""Numbering features added to a registry by hand (``assign_global_indices``, also run by ``optimize``)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.errors import FeatureRegistryError, QueryError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.layout_numbering import NUMBERED_LAYOUTS
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


X = np.array([[1, 2], [0, 3], [4, 0]], dtype=np.int32)


@pytest.fixture
def atlas(tmp_path: Path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": ["G0", "G1"], "gene_symbol": ["a", "b"]}))
    add_from_anndata(
        atlas,
        ad.AnnData(
            sp.csr_matrix(X), obs=pd.DataFrame(index=["c0", "c1", "c2"]), var=pd.DataFrame(index=["G0", "G1"])
        ),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d1"),
        progress=False,
    )
    return atlas


def _add_by_hand(atlas: RaggedAtlas, uid: str) -> None:
    rows = {"uid": [uid], "global_index": pa.array([None], pa.int64()), "gene_symbol": ["by hand"]}
    atlas.core.tables.registry("gene_expression").add(pa.table(rows))


def _numbers(atlas: RaggedAtlas) -> list[tuple[str, object]]:
    registry = atlas.feature_registry("gene_expression").sort_values(["uid", "gene_symbol"])
    return list(zip(registry["uid"], registry["global_index"].astype("Int64").tolist(), strict=True))


def test_a_feature_added_by_hand_gets_the_next_number(atlas: RaggedAtlas):
    _add_by_hand(atlas, "G2")
    # (it was reported as not in the registry, which lists it)
    with pytest.raises(QueryError, match=r"features \['G2'\] are registered without a global index yet"):
        atlas.query().features(["G2"], "gene_expression").to_anndata()
    with pytest.raises(QueryError, match=r"1 features are not in the 'gene_expression' registry: \['G9'\]; "):
        atlas.query().features(["G9", "G2"], "gene_expression").to_anndata()
    assert atlas.assign_global_indices() == {"gene_expression": 1}
    assert _numbers(atlas) == [("G0", 0), ("G1", 1), ("G2", 2)]
    out = atlas.query().layers("gene_expression", "counts").all_features("gene_expression").to_anndata()
    np.testing.assert_array_equal(out.X.toarray(), np.c_[X, np.zeros(3, np.int32)])


def test_a_row_repeating_a_registered_uid_is_refused_and_numbers_nothing(atlas: RaggedAtlas):
    """Numbering by uid gave the registered G1 (which dataset d1's layout points to) a new number: its
    column read as zeros under all_features(), a union query failed with a builtin ValueError."""
    _add_by_hand(atlas, "G1")
    before = _numbers(atlas)
    for call in (atlas.assign_global_indices, atlas.optimize):
        with pytest.raises(FeatureRegistryError, match=r"holds uids \['G1'\] more than once"):
            call()
    assert _numbers(atlas) == before
    registry = atlas.core.tables.registry("gene_expression")
    registry.delete("gene_symbol = 'by hand'")
    assert atlas.assign_global_indices() == {"gene_expression": 0}
    np.testing.assert_array_equal(
        atlas.query().layers("gene_expression", "counts").to_anndata().X.toarray(), X
    )


class TwoSpaces(LancellBaseSchema):
    rna: SparseZarrPointer | None = None
    rna2: SparseZarrPointer | None = None


def test_one_panel_in_two_feature_spaces_numbered_otherwise_reads_its_own_genes(tmp_path: Path) -> None:
    """A layout was named by its feature uids alone: a dataset of the second space took the first space's
    layout (other global indices) and read A's values under Z's name, B's under A's."""
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", TwoSpaces, registry_schemas={"rna": Gene, "rna2": Gene}
    )
    atlas.register_features("rna", pd.DataFrame({"uid": ["A", "B", "C"]}))
    atlas.register_features("rna2", pd.DataFrame({"uid": ["Z", "A", "B", "C"]}))  # numbered one further
    x = sp.csr_matrix(np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    for uid, space in (("d1", "rna"), ("d2", "rna2")):
        obs, var = pd.DataFrame(index=[f"{uid}_{i}" for i in range(2)]), pd.DataFrame(index=["A", "B", "C"])
        add_from_anndata(
            atlas, ad.AnnData(X=x, obs=obs, var=var), feature_space=space, zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid), progress=False,
        )  # fmt: skip
    assert atlas.validate() == []
    for space, uid in (("rna", "d1"), ("rna2", "d2")):
        out = atlas.query().feature_space(space).where(dataset_uid=uid).to_anndata()
        assert out.var_names.tolist() == ["A", "B", "C"] and np.array_equal(out.X.toarray(), x.toarray())
        one = atlas.query().where(dataset_uid=uid).features(["A"], space).to_anndata()
        assert one.X.toarray().ravel().tolist() == [1, 4]


def test_a_layout_an_older_lancell_shared_between_two_spaces_is_refused_by_queries(
    tmp_path: Path, monkeypatch
) -> None:
    """Atlases written before the layout uid hashed the global indices keep the shared layout: validate()
    reported it, but queries still read A's values under Z's name."""
    import hashlib

    import lancell.ingest.plan

    def by_uids_alone(feature_uids, global_index):  # the layout uid as lancell named it then
        return hashlib.sha256("\x1f".join(feature_uids).encode()).hexdigest()[:24]

    RaggedAtlas.create(str(tmp_path / "db"), "cells", TwoSpaces, registry_schemas={"rna": Gene, "rna2": Gene})
    meta_path = tmp_path / "db" / "_lancell" / "atlas.json"  # an atlas of then records no numbered layouts
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != NUMBERED_LAYOUTS}))
    atlas = RaggedAtlas.open(str(tmp_path / "db"))
    atlas.register_features("rna", pd.DataFrame({"uid": ["A", "B", "C"]}))
    atlas.register_features("rna2", pd.DataFrame({"uid": ["Z", "A", "B", "C"]}))
    x = sp.csr_matrix(np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    with monkeypatch.context() as patched:
        patched.setattr(lancell.ingest.plan, "layout_uid_for", by_uids_alone)
        for uid, space in (("d1", "rna"), ("d2", "rna2")):
            obs, var = (
                pd.DataFrame(index=[f"{uid}_{i}" for i in range(2)]),
                pd.DataFrame(index=["A", "B", "C"]),
            )
            add_from_anndata(
                atlas, ad.AnnData(X=x, obs=obs, var=var), feature_space=space, zarr_layer="counts",
                dataset_record=DatasetRecord(uid=uid), progress=False,
            )  # fmt: skip
    problems = atlas.validate()
    assert len(problems) == 1 and "(rna2)" in problems[0] and "ingest them again" in problems[0]
    # the first space's dataset reads right; the second's is refused, alone or with it
    out = atlas.query().feature_space("rna").where(dataset_uid="d1").to_anndata()
    assert out.var_names.tolist() == ["A", "B", "C"] and np.array_equal(out.X.toarray(), x.toarray())
    for query in (
        atlas.query().feature_space("rna2"),
        atlas.query().where(dataset_uid="d2").features(["A"], "rna2"),
        RaggedAtlas.open(atlas.db_uri, read_only=True).query().feature_space("rna2"),
    ):
        with pytest.raises(QueryError, match=r"'d2' \(rna2\) use a feature layout that an older lancell"):
            query.to_anndata()
    # the first space's datasets deleted, the layout is used by one space only: still refused
    atlas.delete_dataset("d1")
    atlas.vacuum(grace=timedelta(0))
    with pytest.raises(QueryError, match=r"'d2' \(rna2\) use a feature layout that an older lancell"):
        RaggedAtlas.open(atlas.db_uri).query().feature_space("rna2").to_anndata()
    # the remedy the message names
    atlas.delete_dataset("d2")
    obs, var = pd.DataFrame(index=["d2_0", "d2_1"]), pd.DataFrame(index=["A", "B", "C"])
    add_from_anndata(
        atlas, ad.AnnData(X=x, obs=obs, var=var), feature_space="rna2", zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d2"), progress=False,
    )  # fmt: skip
    assert atlas.validate() == []
    one = atlas.query().where(dataset_uid="d2").features(["A"], "rna2").to_anndata()
    assert one.X.toarray().ravel().tolist() == [1, 4]


def test_an_older_lancell_writing_into_a_new_atlas_is_still_caught_and_hand_rows_are_no_mismatch(
    tmp_path: Path, monkeypatch
) -> None:
    """The new atlas's marker skipped the check, but an older lancell (same format) still wrote shared
    layouts into it; and without the marker, a registry row added by hand without a global index, repeating
    a registered uid, made a correct dataset refused ("delete those datasets")."""
    import hashlib

    import lancell.ingest.plan

    def by_uids_alone(feature_uids, global_index):
        return hashlib.sha256("\x1f".join(feature_uids).encode()).hexdigest()[:24]

    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", TwoSpaces, registry_schemas={"rna": Gene, "rna2": Gene}
    )
    atlas.register_features("rna", pd.DataFrame({"uid": ["A", "B", "C"]}))
    atlas.register_features("rna2", pd.DataFrame({"uid": ["Z", "A", "B", "C"]}))
    x = sp.csr_matrix(np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    with monkeypatch.context() as patched:
        patched.setattr(lancell.ingest.plan, "layout_uid_for", by_uids_alone)
        for uid, space in (("d1", "rna"), ("d2", "rna2")):
            obs = pd.DataFrame(index=[f"{uid}_{i}" for i in range(2)])
            var = pd.DataFrame(index=["A", "B", "C"])
            add_from_anndata(
                atlas, ad.AnnData(X=x, obs=obs, var=var), feature_space=space, zarr_layer="counts",
                dataset_record=DatasetRecord(uid=uid), progress=False,
            )  # fmt: skip
    with pytest.raises(QueryError, match=r"'d2' \(rna2\) use a feature layout"):
        atlas.query().feature_space("rna2").to_anndata()

    plain = RaggedAtlas.create(
        str(tmp_path / "plain"), "cells", TwoSpaces, registry_schemas={"rna": Gene, "rna2": Gene}
    )
    meta_path = tmp_path / "plain" / "_lancell" / "atlas.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({key: value for key, value in meta.items() if key != NUMBERED_LAYOUTS}))
    plain = RaggedAtlas.open(str(tmp_path / "plain"))
    plain.register_features("rna", pd.DataFrame({"uid": ["A", "B", "C"]}))
    obs, var = pd.DataFrame(index=["c0", "c1"]), pd.DataFrame(index=["A", "B", "C"])
    add_from_anndata(
        plain, ad.AnnData(X=x, obs=obs, var=var), feature_space="rna", zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"), progress=False,
    )  # fmt: skip
    registry = plain.core.tables.registry("rna")
    registry.add(pa.Table.from_pylist([{"uid": "A", "global_index": None}], schema=registry.schema))
    out = plain.query().feature_space("rna").to_anndata()
    assert out.var_names.tolist() == ["A", "B", "C"] and np.array_equal(out.X.toarray(), x.toarray())
