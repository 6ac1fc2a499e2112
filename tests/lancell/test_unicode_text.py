"""Text that UTF-8 cannot store, names alike in another Unicode form, and characters no one sees: each gets a
typed error that shows what it is, before anything is written."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.errors import (
    ArgumentValueError,
    FeatureRegistryError,
    IngestError,
    QueryError,
    SnapshotLabelError,
)
from lancell.ingest.add_csc import add_csc
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.standardize.genes import GeneReference
from lancell.tables.schema import DatasetRecord, check_dataset_uid
from resources.models import check_label
from tests.helpers import visible_state

SURROGATE = "ds\udcff"  # how Python decodes the byte 0xff of a name that is not UTF-8
GENES = ["CAF\u00c9", "KRT", "ACTB"]  # (É composed: NFC)


def _adata(prefix: str) -> ad.AnnData:
    x = sp.random(12, 3, density=0.6, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 5)
    obs = pd.DataFrame(index=[f"{prefix}{i}" for i in range(12)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture
def small(atlas: RaggedAtlas) -> RaggedAtlas:
    """The conftest atlas with three more genes, one dataset of them."""
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))
    add_from_anndata(
        atlas,
        _adata("c"),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="ds"),
        progress=False,
    )
    return atlas


def _table_tags(atlas: RaggedAtlas) -> dict[str, list[str]]:
    return {name: sorted(table.tags.list()) for name, table in atlas.core.tables.handles.items()}


def test_a_note_utf8_cannot_store_is_refused_before_any_tag(small: RaggedAtlas) -> None:
    tags = _table_tags(small)
    with pytest.raises(ArgumentValueError, match=r"note 'rel\\udcff' is not text UTF-8 can store"):
        small.snapshot(note="rel\udcff")
    assert _table_tags(small) == tags  # no snapshot-0 tag without its snapshot
    assert small.snapshot(note="rel") == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda atlas: atlas.validate(SURROGATE),
        lambda atlas: atlas.delete_dataset(SURROGATE),
        lambda atlas: atlas.group_attributes(SURROGATE),
        lambda atlas: add_csc(atlas, SURROGATE),
        lambda atlas: add_layer(atlas, SURROGATE, "more", _adata("c").X),
    ],
    ids=["validate", "delete_dataset", "group_attributes", "add_csc", "add_layer"],
)
def test_a_dataset_uid_utf8_cannot_store_is_an_argument_error(small: RaggedAtlas, call: object) -> None:
    before = visible_state(small)
    with pytest.raises(ArgumentValueError, match=r"'ds\\udcff' is not text UTF-8 can store: character 2"):
        call(small)
    assert visible_state(small) == before


def test_a_filter_on_such_a_dataset_uid_is_a_query_error(small: RaggedAtlas) -> None:
    with pytest.raises(QueryError, match="dataset_uid 'ds"):
        small.query().where(dataset_uid=[SURROGATE, "ds"]).to_anndata()


def test_record_fields_and_obs_columns_utf8_cannot_store_are_refused_before_writing(
    small: RaggedAtlas,
) -> None:
    before = visible_state(small)
    record = DatasetRecord(uid="ds2", name="x\udcff")
    with pytest.raises(IngestError, match=r"dataset 'ds2': DatasetRecord field name 'x\\udcff'"):
        add_from_anndata(
            small, _adata("d"), feature_space="gene_expression", zarr_layer="counts", dataset_record=record
        )
    adata = _adata("d")
    adata.obs["note\udcff"] = "x"  # undeclared: the record would list it as dropped
    with pytest.raises(IngestError, match=r"dataset 'ds3': obs column 'note\\udcff'"):
        add_from_anndata(
            small,
            adata,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=DatasetRecord(uid="ds3"),
        )
    assert visible_state(small) == before
    assert small.validate() == []


def test_names_that_are_bytes_not_utf8_are_refused(small: RaggedAtlas) -> None:
    before = visible_state(small)
    adata = _adata("d")
    adata.obs_names = pd.Index([b"\xffA", *(f"d{i}".encode() for i in range(1, 12))], dtype=object)
    with pytest.raises(IngestError, match=r"obs names: b'\\xffA' \(position 0\) is bytes that are not UTF-8"):
        add_from_anndata(small, adata, feature_space="gene_expression", zarr_layer="counts")
    adata = _adata("e")
    adata.var_names = pd.Index([b"G\xff", b"KRT", b"ACTB"], dtype=object)
    with pytest.raises(IngestError, match=r"var names: b'G\\xff' \(position 0\)"):
        add_from_anndata(small, adata, feature_space="gene_expression", zarr_layer="counts")
    with pytest.raises(FeatureRegistryError, match=r"feature uids: b'G\\xff'"):
        small.register_features(
            "gene_expression",
            pd.DataFrame({"uid": pd.Series([b"G\xff"], dtype=object), "gene_symbol": ["G"]}),
        )
    assert visible_state(small) == before


def test_an_unknown_feature_name_in_another_unicode_form_is_shown_with_its_escapes(
    small: RaggedAtlas,
) -> None:
    decomposed = "CAFE\u0301"  # looks like the registered CAFÉ
    for case_sensitive in (True, False):
        query = small.query().features([decomposed], "gene_expression", case_sensitive=case_sensitive)
        with pytest.raises(QueryError) as raised:
            query.to_anndata()
        said = str(raised.value)
        assert r"('CAFE\u0301') is 'CAFÉ' ('CAF\xc9') in another Unicode form" in said
        assert "case_sensitive=False" not in said  # (it would not match either)
    with pytest.raises(
        QueryError, match="ignoring case, '\u212aRT' \\('\\\\u212aRT'\\) is 'KRT'"
    ):  # Kelvin sign
        small.query().features(["\u212aRT"], "gene_expression").to_anndata()
    counts = small.query().features(["CAF\u00c9"], "gene_expression").to_anndata()
    assert counts.var_names.tolist() == ["CAF\u00c9"]


def test_characters_that_do_not_print_are_named() -> None:
    with pytest.raises(IngestError, match="contains U\\+00A0 NO-BREAK SPACE"):
        check_dataset_uid("ds\xa0x", owns_cells=True)
    with pytest.raises(IngestError, match="contains U\\+200B ZERO WIDTH SPACE"):
        check_dataset_uid("d\u200bs", owns_cells=True)
    with pytest.raises(SnapshotLabelError, match="holds U\\+FEFF ZERO WIDTH NO-BREAK SPACE"):
        check_label("\ufeffrelease")
    with pytest.raises(SnapshotLabelError, match="is not text UTF-8 can store"):
        check_label("rel\udcff")


def test_gene_ids_take_ascii_digits_only() -> None:
    """Python's ``\\d`` takes any Unicode digit: full-width ones made a "retired" Ensembl id of TP53's."""
    resolved = GeneReference.load("Homo sapiens").resolve(
        [
            "ENSG00000141510",
            "ENSG\uff10\uff10\uff10\uff10\uff10\uff11\uff14\uff11\uff15\uff11\uff10",
            "ENSG00000141510.\u0661",
        ]
    )
    assert resolved["match"].tolist() == ["id", "unresolved", "unresolved"]
    assert resolved["ensembl_id"].tolist()[1:] == [None, None]


def test_named_characters_names_what_does_not_show() -> None:
    from lancell.tables.names import named_characters

    assert named_characters("b:a") == "':', 'a', 'b'"
    assert named_characters("\ue000\u0301\t") == (
        "U+0009 (control character), U+0301 COMBINING ACUTE ACCENT, U+E000 (private-use character)"
    )
