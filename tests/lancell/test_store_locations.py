"""Local store locations that cannot be made, and store options a local path would ignore: typed errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import StoreError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.stores import check_options_used, open_store


def test_a_store_folder_under_a_regular_file_is_a_store_error(tmp_path: Path):
    """The folder's mkdir raised a raw NotADirectoryError (a Dagster run then recorded no check)."""
    (tmp_path / "not_a_dir").write_text("x")
    target = tmp_path / "not_a_dir" / "db"
    message = rf"cannot create the local store folder '{target}': Not a directory"
    with pytest.raises(StoreError, match=message):
        open_store(str(target))
    with pytest.raises(StoreError, match="cannot create the local store folder"):
        RaggedAtlas.create(
            str(target), "cells", CellSchema, registry_schemas={"gene_expression": GeneFeature}
        )
    assert (tmp_path / "not_a_dir").read_text() == "x"


def test_a_refused_mkdir_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(StoreError, match=r"'.*/arrays': Permission denied") as raised:
        open_store(str(tmp_path / "arrays"))
    assert isinstance(raised.value, OSError) and isinstance(raised.value.__cause__, PermissionError)


def test_store_options_for_local_paths_only_are_refused_naming_each():
    named = r"\['config.regionn', 'client_options.allow_http'\] would be ignored"
    with pytest.raises(StoreError, match=named):
        check_options_used(
            ["/data/db", "file:///data/arrays"],
            {"config": {"regionn": "x"}, "client_options": {"allow_http": "true"}},
        )
    check_options_used(["/data/db", "s3://b/arrays"], {"config": {"region": "x"}})  # the S3 store uses them
    check_options_used(["/data/db"], {"config": {}})
    check_options_used(["/data/db"], None)


def test_an_atlas_without_datasets_is_refused_another_store_for_writing(tmp_path: Path):
    """``--store`` naming another atlas's store on an atlas with no dataset yet was taken: the ingested group
    landed there, unrecorded, and every later open without it found the dataset's group missing."""

    def create(name: str) -> RaggedAtlas:
        return RaggedAtlas.create(
            str(tmp_path / name / "db"),
            "cells",
            CellSchema,
            registry_schemas={"gene_expression": GeneFeature},
        )

    create("a")
    create("b")
    other = str(tmp_path / "b" / "db" / "_zarr")
    with pytest.raises(StoreError, match=r"given is not the one the atlas records .* has no dataset"):
        RaggedAtlas.open(str(tmp_path / "a" / "db"), store=other)
    RaggedAtlas.open(str(tmp_path / "a" / "db"), store=other, read_only=True)  # reading harms nothing
    RaggedAtlas.open(str(tmp_path / "a" / "db"), store=str(tmp_path / "a" / "db" / "_zarr"))  # its own


def test_an_empty_atlas_copied_with_its_store_outside_opens_with_the_copied_store(tmp_path: Path):
    """The check above must not leave such a copy no store to write with: every open of it names one."""
    import shutil

    RaggedAtlas.create(
        str(tmp_path / "a" / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "a" / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    RaggedAtlas.open(str(tmp_path / "b" / "db"), store=str(tmp_path / "b" / "arrays"))
    with pytest.raises(StoreError, match="is a copy of the atlas at"):
        RaggedAtlas.open(str(tmp_path / "b" / "db"), store=str(tmp_path / "a" / "arrays"))


def test_every_entry_point_takes_paths_for_the_database_and_the_store(tmp_path: Path, pbmc):
    db, arrays = tmp_path / "db", tmp_path / "arrays"
    atlas = RaggedAtlas.create(
        db, "cells", CellSchema, store=arrays, registry_schemas={"gene_expression": GeneFeature}
    )
    assert atlas.db_uri == str(db) and (arrays / "zarr.json").is_file()
    frame = pd.DataFrame({"uid": pbmc.var_names, "gene_symbol": pbmc.var_names})
    atlas.register_features("gene_expression", frame)
    add_from_anndata(
        atlas, pbmc, feature_space="gene_expression", zarr_layer="log_normalized", progress=False
    )
    version = atlas.snapshot(note="paths")
    assert RaggedAtlas.open(db, store=arrays).list_datasets().shape[0] == 1
    assert RaggedAtlas.list_versions(db)["version"].tolist() == [version]
    assert RaggedAtlas.find_snapshot(db, "paths") == version
    for snapshot in (RaggedAtlas.checkout(db, version, store=arrays), RaggedAtlas.checkout_latest(db)):
        assert snapshot.query().to_anndata().n_obs == pbmc.n_obs
