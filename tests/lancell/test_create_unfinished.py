"""A creation that died before the metadata file: the next ``create`` at that location finishes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

import lancell.tables.atlas_meta as atlas_meta
from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema
from lancell.errors import AtlasExistsError, AtlasNotFoundError, SchemaError, StoreError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class Killed(BaseException):
    """The process dying at that point (no ``except Exception`` runs)."""


def _create(db: Path) -> RaggedAtlas:
    return RaggedAtlas.create(str(db), "cells", CellSchema, registry_schemas={"gene_expression": Gene})


def test_a_creation_killed_before_its_metadata_file_is_finished_by_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json = atlas_meta.write_json

    def die_at_metadata(store: object, path: str, *args: object, **kwargs: object) -> None:
        if path == atlas_meta.META_PATH:
            raise Killed
        write_json(store, path, *args, **kwargs)

    monkeypatch.setattr(atlas_meta, "write_json", die_at_metadata)
    with pytest.raises(Killed):
        _create(tmp_path / "db")
    monkeypatch.undo()
    assert (tmp_path / "db" / "cells.lance").exists()  # the tables were made

    with pytest.raises(AtlasNotFoundError, match=r"did not finish.*create it again"):
        RaggedAtlas.open(str(tmp_path / "db"))
    atlas = _create(tmp_path / "db")
    atlas.register_features("gene_expression", [Gene(uid="ENSG1", gene_symbol="A")])
    reopened = RaggedAtlas.open(str(tmp_path / "db"))
    assert reopened.feature_registry("gene_expression")["uid"].tolist() == ["ENSG1"]
    assert not (tmp_path / "db" / "_lancell" / "creating.json").exists()


def test_tables_of_another_program_are_not_taken_over(tmp_path: Path) -> None:
    # a LanceDB location with a table named like the atlas's but no lancell metadata: not ours to drop
    db = lancedb.connect(str(tmp_path / "db"))
    db.create_table("cells", data=pa.table({"x": [1, 2, 3]}))
    with pytest.raises(AtlasExistsError, match=r"tables \['cells'\] already exist"):
        _create(tmp_path / "db")
    assert lancedb.connect(str(tmp_path / "db")).open_table("cells").count_rows() == 3


def test_a_failed_creation_drops_what_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError("the store refused the write")

    monkeypatch.setattr(atlas_meta.zarr, "open_group", refused)
    with pytest.raises(StoreError, match=r"cannot create the atlas at .*refused the write"):
        _create(tmp_path / "db")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "db").iterdir() if p.name.endswith(".lance")) == []
    with pytest.raises(AtlasNotFoundError, match=r"no atlas at .*atlas.json is missing\)$"):
        RaggedAtlas.open(str(tmp_path / "db"))
    _create(tmp_path / "db")
    assert RaggedAtlas.open(str(tmp_path / "db")).list_datasets().empty


def test_a_metadata_write_whose_reply_was_lost_creates_the_atlas(tmp_path: Path, monkeypatch) -> None:
    """The metadata file landed and its reply was lost (S3): the creation was rolled back under it, leaving
    a location create() called taken and open() failed on with lancedb's ValueError."""
    write_json = atlas_meta.write_json

    def landed_then_lost(store, path, value, *, create=False):
        write_json(store, path, value, create=create)
        if path == atlas_meta.META_PATH:
            raise OSError("connection reset by peer")

    monkeypatch.setattr(atlas_meta, "write_json", landed_then_lost)
    atlas = _create(tmp_path / "db")
    monkeypatch.undo()
    assert RaggedAtlas.open(str(tmp_path / "db")).core.atlas_id == atlas.core.atlas_id


def test_a_marker_the_store_would_not_delete_leaves_the_atlas_created(tmp_path: Path, monkeypatch) -> None:
    """obstore's own error came out of create() for an atlas that was whole."""
    delete = atlas_meta.obstore.delete

    def refused(store, paths):
        if paths == atlas_meta.CREATING_PATH:
            raise OSError("connection reset by peer")
        return delete(store, paths)

    monkeypatch.setattr(atlas_meta.obstore, "delete", refused)
    _create(tmp_path / "db")
    monkeypatch.undo()
    RaggedAtlas.open(str(tmp_path / "db"))


def test_an_atlas_whose_table_was_dropped_but_still_listed_is_not_found(tmp_path: Path) -> None:
    """An object store whose deleted objects leave their folders lists a dropped table: opening the atlas
    raised lancedb's "Table 'cells' was not found" (ValueError)."""
    _create(tmp_path / "db")
    for entry in (tmp_path / "db" / "cells.lance").iterdir():  # the folder stays, empty
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    with pytest.raises(AtlasNotFoundError, match=r"table 'cells' is missing from the atlas database \(Table"):
        RaggedAtlas.open(str(tmp_path / "db"))


def test_a_refused_or_failed_creation_leaves_no_folder_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `lancell init ./db --store ./db` was refused but left an empty ./db behind
    for db, store in (("db", "db"), ("new/deeper/db", "new/deeper/db/")):
        with pytest.raises(StoreError, match="is the database directory"):
            RaggedAtlas.create(
                str(tmp_path / db), "cells", CellSchema, store=str(tmp_path / store),
                registry_schemas={"gene_expression": Gene},
            )  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()  # a folder that was there stays, with what it holds
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="is the database directory"):
        RaggedAtlas.create(
            str(tmp_path / "mine"), "cells", CellSchema, store=str(tmp_path / "mine"),
            registry_schemas={"gene_expression": Gene},
        )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError("the store refused the write")

    monkeypatch.setattr(atlas_meta.zarr, "open_group", refused)
    with pytest.raises(StoreError, match="refused the write"):
        _create(tmp_path / "failed")
    too_long = tmp_path / ("x" * 300) / "db"  # a name the file system refuses: the library's error, as before
    with pytest.raises(StoreError, match="cannot create the local store folder"):
        _create(too_long)
    # the folders it made are gone, but for the create lock's guard file (another process may hold it)
    left = sorted(str(p.relative_to(tmp_path / "failed")) for p in (tmp_path / "failed").rglob("*"))
    assert left == ["_lancell", "_lancell/locks", "_lancell/locks/.guard"]


def test_creating_an_atlas_where_one_is_makes_no_store_folder(tmp_path: Path) -> None:
    """The store folder (``db/_zarr``, or the ``store=`` given) was made before the atlas was found, and
    left: AtlasExistsError keeps what was made (a creation racing this one may be filling it)."""
    RaggedAtlas.create(
        str(tmp_path / "db"), "cells", CellSchema, store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )  # fmt: skip
    before = sorted(tmp_path.rglob("*"))
    for store in (None, str(tmp_path / "other")):
        with pytest.raises(AtlasExistsError, match="an atlas already exists"):
            RaggedAtlas.create(
                str(tmp_path / "db"), "cells", CellSchema, store=store,
                registry_schemas={"gene_expression": Gene},
            )  # fmt: skip
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("db", "table", "error", "message"),
    [
        ("", "cells", StoreError, "location .* is empty"),
        ("db", "bad name", SchemaError, "table name 'bad name'"),
    ],
)
def test_a_location_or_table_name_that_cannot_be_used_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db: str, table: str, error: type, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        RaggedAtlas.create(db, table, CellSchema, registry_schemas={"gene_expression": Gene})
    assert list(tmp_path.iterdir()) == []


def test_a_store_given_that_does_not_hold_the_atlas_is_refused(tmp_path: Path, monkeypatch) -> None:
    # a --store pointing elsewhere used to take the next dataset's group: the atlas was split across stores
    from lancell.tables import store_guards

    real_read = store_guards.read_json
    atlas = _create(tmp_path / "db")
    atlas.register_features("gene_expression", [Gene(uid=f"g{i}") for i in range(3)])
    x = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.int32))
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=["c0", "c1"]), var=pd.DataFrame(index=["g0", "g1", "g2"]))
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"),
        progress=False,
    )
    with pytest.raises(StoreError, match="given does not exist"):
        RaggedAtlas.open(str(tmp_path / "db"), store=str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()  # nothing created
    (tmp_path / "empty").mkdir()
    reads = []
    monkeypatch.setattr(store_guards, "read_json", lambda *a: reads.append(a[1]) or real_read(*a))
    with pytest.raises(StoreError, match="not an atlas's store"):
        RaggedAtlas.open(str(tmp_path / "db"), store=str(tmp_path / "empty"))
    assert reads == ["zarr.json"]  # refused at its root: no group searched for (a 404 each on S3)
    monkeypatch.undo()
    other = RaggedAtlas.create(
        str(tmp_path / "other"), "cells", CellSchema, registry_schemas={"gene_expression": Gene}
    )
    with pytest.raises(StoreError, match="does not hold this atlas's groups"):
        RaggedAtlas.open(str(tmp_path / "db"), store=other.store)
    # read-only too (the reads failed later with GroupNotFoundError, as if the atlas were damaged)
    atlas.snapshot()
    for read_only in (
        lambda store: RaggedAtlas.open(str(tmp_path / "db"), store=store, read_only=True),
        lambda store: RaggedAtlas.checkout_latest(str(tmp_path / "db"), store=store),
    ):
        with pytest.raises(StoreError, match="does not hold this atlas's groups"):
            read_only(other.store)
        with pytest.raises(StoreError, match="not an atlas's store"):
            read_only(str(tmp_path / "empty"))
    assert RaggedAtlas.open(str(tmp_path / "db"), store=str(tmp_path / "db" / "_zarr")).validate() == []
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="e"),
        on_duplicate="allow",
        progress=False,
    )
    lost = atlas.list_datasets().set_index("uid").loc["d", "zarr_group"]
    shutil.rmtree(
        tmp_path / "db" / "_zarr" / lost
    )  # the first record's group lost: damage, not another store
    damaged = RaggedAtlas.open(str(tmp_path / "db"), store=str(tmp_path / "db" / "_zarr"))
    assert any(lost in problem for problem in damaged.validate())
    damaged.delete_dataset("d")  # the repair works with the store given
    assert damaged.validate() == [] and damaged.query().count() == 2


def test_a_snapshot_reads_an_archive_of_its_store_holding_only_its_groups(tmp_path: Path) -> None:
    """The given store was checked against the live dataset records: an archive of a snapshot's store,
    without a dataset added since, was refused for its checkout."""
    atlas = _create(tmp_path / "db")
    atlas.register_features("gene_expression", [Gene(uid=f"g{i}") for i in range(3)])
    x = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], dtype=np.int32))
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=["c0", "c1"]), var=pd.DataFrame(index=["g0", "g1", "g2"]))

    def ingest(uid: str) -> None:
        add_from_anndata(
            atlas, adata, feature_space="gene_expression", zarr_layer="counts",
            dataset_record=DatasetRecord(uid=uid), on_duplicate="allow", progress=False,
        )  # fmt: skip

    ingest("d1")
    version = atlas.snapshot()
    shutil.copytree(tmp_path / "db" / "_zarr", tmp_path / "archive")
    atlas.delete_dataset("d1")
    ingest("d2")
    checked_out = RaggedAtlas.checkout(str(tmp_path / "db"), version, store=str(tmp_path / "archive"))
    assert checked_out.query().to_anndata().X.toarray().tolist() == x.toarray().tolist()
