"""Content fingerprints across formats: today's format 2 (XXH3-128) next to the format-1 (SHA-256) records of
an atlas written before it (``tests/data/atlas_07ff600``, by commit 07ff600).

While an atlas holds a format-1 fingerprint, ingestion hashes in both formats and finds the old record; the
new record stores format 2. A new atlas hashes in format 2 alone.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import obstore.store
import pandas as pd
import pytest

from lancell.atlas import RaggedAtlas
from lancell.errors import DuplicateContentError, DuplicateContentWarning
from lancell.ingest.fingerprint import FINGERPRINT_FORMAT, ContentHasher, formats_to_match
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord

ARCHIVE = Path(__file__).resolve().parents[1] / "data" / "atlas_07ff600"
EXPECTED = json.loads((ARCHIVE / "expected.json").read_text())["fingerprints"]
_spec = importlib.util.spec_from_file_location("atlas_07ff600_generate", ARCHIVE / "generate.py")
generate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = generate  # so pydantic resolves the schemas' annotations
_spec.loader.exec_module(generate)

INPUTS = {
    "one": (lambda: generate.synthetic("one", 1), {"zarr_layer": "counts"}),
    "two": (
        lambda: generate.synthetic("two", 2, normalized=True),
        {"layers": {"counts": "X", "normalized": "normalized"}},
    ),
}


@pytest.fixture
def legacy(tmp_path: Path) -> RaggedAtlas:
    """A fresh copy of the atlas with format-1 fingerprints."""
    shutil.copytree(ARCHIVE / "db", tmp_path / "db")
    db = str(tmp_path / "db")
    return RaggedAtlas.open(db, store=obstore.store.LocalStore(f"{db}/_zarr"))


def _ingest(atlas: RaggedAtlas, content: str, uid: str, on_duplicate: str = "error") -> DatasetRecord:
    make, how = INPUTS[content]
    return add_from_anndata(
        atlas,
        make(),
        feature_space="gene_expression",
        dataset_record=DatasetRecord(uid=uid),
        on_duplicate=on_duplicate,
        progress=False,
        **how,
    )


def test_the_archive_holds_format_1():
    assert FINGERPRINT_FORMAT == 2
    assert all(len(value) == 64 for value in EXPECTED.values())


@pytest.mark.parametrize("content", ["one", "two"])
def test_content_stored_under_format_1_is_still_found(legacy, content):
    assert formats_to_match(legacy.core) == (2, 1)
    datasets = legacy.list_datasets()
    before = (datasets["uid"].tolist(), legacy.query().count())
    with pytest.raises(
        DuplicateContentError, match=f"dataset 'again': the same content .* as dataset '{content}'"
    ):
        _ingest(legacy, content, "again")
    assert (legacy.list_datasets()["uid"].tolist(), legacy.query().count()) == before
    with pytest.warns(DuplicateContentWarning, match=f"already in the atlas as dataset '{content}'"):
        skipped = _ingest(legacy, content, "again", on_duplicate="skip")
    assert skipped.uid == content and skipped.content_fingerprint == EXPECTED[content]


def test_a_new_record_stores_format_2_and_both_formats_are_matched(legacy):
    again = _ingest(legacy, "one", "again", on_duplicate="allow")
    assert len(again.content_fingerprint) == 32 and again.content_fingerprint != EXPECTED["one"]
    # the old record and the new one each hold the content, in their own format
    with pytest.raises(DuplicateContentError, match=r"as dataset '(one|again)'"):
        _ingest(legacy, "one", "third")


def test_a_new_atlas_hashes_in_format_2_alone(tmp_path):
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        generate.CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": generate.GeneFeature},
    )
    atlas.register_features(
        "gene_expression", pd.DataFrame({"uid": generate.GENES, "gene_symbol": generate.GENES})
    )
    assert formats_to_match(atlas.core) == (2,)
    record = _ingest(atlas, "two", "two")
    assert len(record.content_fingerprint) == 32
    with pytest.raises(DuplicateContentError, match="as dataset 'two'"):
        _ingest(atlas, "two", "again")


def test_each_format_is_a_digest_of_the_same_streams():
    """Blocks fed once give both formats; one changed value changes both."""
    rng = np.random.default_rng(0)
    indptr = np.array([0, 3, 5], np.int64)
    indices = np.array([0, 4, 7, 1, 2], np.uint32)
    values = rng.integers(1, 9, 5).astype(np.uint32)
    names = pd.Index(["a", "b"])

    def fingerprints(vals: np.ndarray, formats: tuple[int, ...]) -> dict[int, str]:
        with ContentHasher("sparse", np.uint32, (2, 8), formats) as hasher:
            hasher.add_csr(indptr, indices, vals)
            return hasher.finish(
                obs_names=names, feature_space="s", layer="counts", feature_uids=list("abcdefgh")
            )

    both = fingerprints(values, (2, 1))
    assert both == fingerprints(values, (2,)) | fingerprints(values, (1,))
    assert [len(both[2]), len(both[1])] == [32, 64]
    changed = values.copy()
    changed[3] += 1
    assert all(a != b for a, b in zip(both.values(), fingerprints(changed, (2, 1)).values(), strict=True))
