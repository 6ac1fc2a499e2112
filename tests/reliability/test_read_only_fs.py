"""An atlas on a read-only file system (a lab's shared atlas, mounted read-only for most users): what can run
there runs, and what must write says how to read instead.

The file system refuses writes by monkeypatching the write that fails (a read-only mount needs root); the
errors are the ones obstore, LanceDB and the OS raised on a read-only bind mount.
"""

from __future__ import annotations

import errno
from datetime import timedelta
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import lancell.maintenance as maintenance
from lancell.atlas import RaggedAtlas
from lancell.cli_h5ad import write_result
from lancell.errors import ReadOnlyAtlasError, StoreError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage.store_failures import store_error
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

GENES = [f"g{i}" for i in range(10)]


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _read_only(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EROFS, "Read-only file system")


def test_a_write_refused_by_a_read_only_file_system_says_how_to_read():
    """Every write takes a lock first: the error named the lock file and nothing else."""
    error = store_error(_raised(), "cannot take lock 'snapshot' at /shared/db")
    assert error.errno == errno.EROFS
    assert "the file system is read-only: open the atlas with read_only=True to read it" in str(error)


def _raised() -> OSError:
    try:
        _read_only()
    except OSError as exc:
        return exc
    raise AssertionError


def test_vacuum_dry_run_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A dry run changes nothing, yet took each candidate's dataset lock and the snapshot lock: on a
    read-only atlas it failed ("cannot take lock 'dataset-...'") as soon as there was a group to list."""
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", Cell, registry_schemas={"gene_expression": Gene}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    x = sp.csr_matrix(np.arange(50, dtype=np.int32).reshape(5, 10) % 3)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(5)])
    add_from_anndata(
        atlas,
        ad.AnnData(x, obs=obs, var=pd.DataFrame(index=GENES)),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="gone"),
        progress=False,
    )
    atlas.delete_dataset("gone")

    def no_lock(*args: object, **kwargs: object) -> None:
        raise store_error(_raised(), "cannot take lock")

    with monkeypatch.context() as patch:
        patch.setattr(maintenance, "atlas_lock", no_lock)
        listed: list[str] = []
        counts = atlas.vacuum(
            grace=timedelta(0), dry_run=True, on_group=lambda group, uid: listed.append(uid)
        )
    assert counts["groups"] == 1 and listed == ["gone"]
    # as docs/versions.md says, through a handle opened read-only too (the read-only mount's way to open:
    # it was ReadOnlyAtlasError, "use RaggedAtlas.open() (not read_only) to write"), not a snapshot's
    reader = RaggedAtlas.open(atlas.db_uri, read_only=True)
    assert reader.vacuum(grace=timedelta(0), dry_run=True)["groups"] == 1
    with pytest.raises(ReadOnlyAtlasError, match="is read-only"):
        reader.vacuum(grace=timedelta(0))
    atlas.snapshot()
    with pytest.raises(ReadOnlyAtlasError, match="checked out at snapshot 0"):
        RaggedAtlas.checkout(atlas.db_uri, 0).vacuum(dry_run=True)
    assert atlas.vacuum(grace=timedelta(0))["groups"] == 1  # what the dry run listed


def test_query_output_to_a_read_only_folder_is_the_writes_own_error(tmp_path: Path, monkeypatch):
    """The temporary file's removal raised EROFS (a read-only folder says so even for no file) over the
    write's typed StoreError: a raw OSError naming '.lancell-query-NNN.part'."""
    monkeypatch.setattr(ad.AnnData, "write_h5ad", lambda self, path, **kwargs: _read_only())
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: _read_only())
    with pytest.raises(StoreError, match=r"cannot write .*out\.h5ad: .*Read-only file system") as raised:
        write_result(ad.AnnData(np.zeros((2, 2), np.float32)), tmp_path / "out.h5ad")
    assert ".part" not in str(raised.value)
