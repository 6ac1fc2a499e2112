"""A location that looks like a mistyped URL (``s3:/bucket/db``, one slash) is refused as such, before
anything is made: lancell took it for a local path and made ``./s3:/...`` folders, then LanceDB, reading it as
an S3 URL, failed with a raw message."""

from __future__ import annotations

from pathlib import Path

import pytest

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.cli import main
from lancell.errors import StoreError
from lancell.storage.stores import is_local, local_path, open_store


@pytest.mark.parametrize(
    ("location", "meant"),
    [
        ("s3:/lancell/typo/db", "s3://lancell/typo/db"),
        ("gs:/bucket/db", "gs://bucket/db"),
        ("s3:lancell/db", "s3://lancell/db"),  # a known scheme without any slash
        ("file:/data/db", "file:///data/db"),
        ("minio:/bucket/db", "minio://bucket/db"),  # any scheme of letters with one slash
    ],
)
def test_a_mistyped_url_is_refused_before_anything_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, location: str, meant: str
):
    monkeypatch.chdir(tmp_path)
    refused = rf"location '{location}' looks like a mistyped URL \(a URL takes two slashes: {meant}\)"
    with pytest.raises(StoreError, match=refused):
        is_local(location)
    with pytest.raises(StoreError, match=refused):
        open_store(location)
    with pytest.raises(StoreError, match=refused):
        RaggedAtlas.create(location, "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature})
    with pytest.raises(StoreError, match=refused):
        RaggedAtlas.create(
            str(tmp_path / "db"),
            "cells",
            CellSchema,
            store=location,
            registry_schemas={"gene_expression": GeneFeature},
        )
    with pytest.raises(StoreError, match=refused):
        RaggedAtlas.open(location)
    assert list(tmp_path.iterdir()) == []


def test_a_local_path_holding_a_question_mark_is_refused_before_anything_is_made(tmp_path: Path):
    """Lance read '?x=1' as a URL's query: the atlas was created, then its tables were not found (Lance's
    ValueError at the first register_features)."""
    location = str(tmp_path / "run?x=1" / "db")
    with pytest.raises(StoreError, match=r"local path '.*run\?x=1/db' contains '\?'"):
        RaggedAtlas.create(location, "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature})
    assert main(["init", location]) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_file_url_keeps_the_whole_atlas_in_its_one_folder(tmp_path: Path):
    """Lance does not decode a file:// URL's percent-escapes: its tables went to 'a%20b' while lancell's own
    files went to 'a b'; a '?' in such a URL made the same untyped failure as in a path."""
    import pandas as pd

    with pytest.raises(StoreError, match=r"contains '\?'"):
        RaggedAtlas.create(
            (tmp_path / "q").as_uri() + "?x=1/db",
            "cells",
            CellSchema,
            registry_schemas={"gene_expression": GeneFeature},
        )
    uri = (tmp_path / "a b" / "db").as_uri()
    assert "%20" in uri
    atlas = RaggedAtlas.create(uri, "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature})
    atlas.register_features("gene_expression", pd.DataFrame({"uid": ["G1"], "gene_symbol": ["G1"]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a b"]
    assert (tmp_path / "a b" / "db" / "_feature_spaces.lance").is_dir()
    assert len(RaggedAtlas.open(str(tmp_path / "a b" / "db")).feature_registry("gene_expression")) == 1


def test_lancell_init_refuses_a_mistyped_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "s3:/lancell/typo/db"]) == 1
    error = capsys.readouterr().err
    assert "looks like a mistyped URL (a URL takes two slashes: s3://lancell/typo/db)" in error
    assert list(tmp_path.iterdir()) == []


def test_local_paths_that_only_resemble_a_url_are_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for location in ("C:/data/db", "atlas:v2/db", "./s3:/lancell/db", "data/s3:/db", "file:///data/db"):
        assert is_local(location), location
    assert local_path("./s3:/lancell/db") == tmp_path / "s3:" / "lancell" / "db"
    assert not is_local("s3://lancell/db")
