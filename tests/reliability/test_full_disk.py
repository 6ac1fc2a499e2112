"""A full disk (ENOSPC) mid-operation: a typed error saying what was done and what was not, with the
system's error number, and no debris left by lancell's own files.

The disk fills by monkeypatching the write that fails (a tmpfs would need root); the errors are the ones
LanceDB, obstore and the file system raised on a full tmpfs.
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
from helpers import table_calls

from lancell.atlas import RaggedAtlas
from lancell.errors import StoreError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import csc_blocks
from lancell.storage.store_failures import (
    StoreFailures,
    is_store_failure,
    one_line,
    store_error,
    store_failed,
)
from lancell.synthetic import synthetic_counts
from lancell.tables import lock_objects
from lancell.tables.schema import DatasetRecord, FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer

GENES = [f"g{i}" for i in range(40)]
# what LanceDB raised on a full tmpfs (its Rust source place included)
LANCE_FULL = (
    "lance error: LanceError(IO): Generic LocalFileSystem error: Unable to copy data to file: No space left "
    "on device (os error 28), /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/"
    "lance-table-13.0.0/src/io/commit.rs:166:31"
)


class Gene(FeatureBaseSchema):
    pass


class Cell(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


@pytest.fixture
def atlas(tmp_path: Path) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"), "cells", Cell, registry_schemas={"gene_expression": Gene}
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES}))
    return atlas


def _ingest(atlas: RaggedAtlas, uid: str, seed: int, **kwargs: object) -> DatasetRecord:
    x = synthetic_counts(30, len(GENES), 8, np.random.default_rng(seed))
    obs = pd.DataFrame(index=[f"c{i}" for i in range(30)])
    return add_from_anndata(
        atlas,
        ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=GENES)),
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=uid),
        progress=False,
        **kwargs,
    )


def test_a_store_error_carries_the_systems_error_number_and_no_rust_source_places():
    """``except OSError as e: e.errno == errno.ENOSPC`` never matched: every StoreError had errno None."""
    from_rust = store_error(RuntimeError(LANCE_FULL), "add() on table 'cells' failed")
    assert from_rust.errno == errno.ENOSPC
    assert ".rs:" not in str(from_rust) and "(os error 28); the disk is full: free some" in str(from_rust)
    from_python = store_error(OSError(errno.EROFS, "Read-only file system"), "cannot take lock 'x'")
    assert from_python.errno == errno.EROFS
    assert store_error(RuntimeError("lance error: LanceError(IO): timed out"), "read").errno is None
    assert one_line(RuntimeError(LANCE_FULL)).endswith("No space left on device (os error 28)")


def test_too_many_open_files_and_a_used_up_quota_say_what_to_do():
    """A login node's ``ulimit -n`` and a cluster's disk quota were said with no hint, where a full disk and a
    read-only file system had one."""
    emfile = "lance error: LanceError(IO): Too many open files (os error 24)"
    limited = store_error(RuntimeError(emfile), "opening table 'cells' failed")
    assert limited.errno == errno.EMFILE and "raise its limit (`ulimit -n`;" in str(limited)
    quota = store_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "writing shard 0 failed")
    assert str(quota).endswith("; the disk quota is used up: free some space first, even to delete")


def test_a_broken_pipe_is_no_store_failure():
    """stderr's reader gone (``lancell ingest ... 2>&1 | head -1``) was said to be the object store's
    failure, and the CLI's quiet exit for a closed pipe never ran."""
    assert not is_store_failure(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert is_store_failure(OSError(errno.ENOSPC, "No space left on device"))


def test_a_deletion_stopped_after_the_record_says_the_dataset_is_deleted(atlas, monkeypatch):
    """The record's deletion committed and the cell rows' failed: the message named table 'cells' only,
    and a retry said "no dataset 'b' in the atlas"."""
    _ingest(atlas, "a", 1)
    _ingest(atlas, "b", 2)

    def delete(table, *args, **kwargs):
        raise StoreError("delete() on table 'cells' failed: No space left on device (os error 28)")

    with table_calls("cells", delete=delete):
        with pytest.raises(StoreError, match=r"dataset 'b' is deleted, but its cell rows are not \(vacuum"):
            atlas.delete_dataset("b")
    assert atlas.list_datasets()["uid"].tolist() == ["a"] and atlas.validate() == []
    assert atlas.vacuum(grace=timedelta(0))["cells"] == 30
    assert atlas.query().count() == 30


def test_a_full_disk_under_the_csc_spill_file_is_said_to_be_there(atlas, monkeypatch):
    """The spill file's ENOSPC read "the object store failed while it was written: [Errno 28] No space
    left on device": the disk to free was not the store's."""

    def full(fd, data, position):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csc_blocks, "pwrite_all", full)
    monkeypatch.setattr("lancell.ingest.write_transaction.CSC_BUDGET", 100)  # spilled
    with pytest.raises(StoreError, match=r"'big': not ingested: .*the CSC copy's spill file in ") as raised:
        _ingest(atlas, "big", 3, csc=True)
    assert raised.value.errno == errno.ENOSPC
    assert atlas.list_datasets().empty and atlas.validate() == []


def test_a_lock_object_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Each refused lock write (and each renewal of a held lock) left an empty ``.NAME.lock.<hex>.tmp``
    that nothing removed."""
    real = Path.write_bytes

    def full(path, data):
        real(path, b"")  # the file is made, its bytes are not
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    target = tmp_path / "locks" / "a.lock"
    target.parent.mkdir()
    with pytest.raises(OSError, match="No space"):
        lock_objects._write(target, b"{}")
    assert list(target.parent.iterdir()) == []


def test_a_public_calls_store_error_names_the_call():
    """snapshot()'s full disk said only "create() on table '_feature_layouts' ... failed" (its first tag) or
    "add() on table 'atlas_versions'": never that it was the snapshot. (A boundary within a boundary, a
    public call making another, names the outer one only once.)"""

    def guarded_call_fails():  # as a guarded table raises it
        try:
            raise RuntimeError(LANCE_FULL)
        except RuntimeError as exc:
            raise store_error(exc, "create() on table 'cells' failed") from exc

    with pytest.raises(StoreError, match=r"^RaggedAtlas.snapshot on .* failed: create\(\) on table") as e:
        with StoreFailures("RaggedAtlas.snapshot on the atlas at '/db' failed"):
            guarded_call_fails()
    assert e.value.errno == errno.ENOSPC and store_failed(e.value)
    with pytest.raises(StoreError) as nested:
        with StoreFailures("RaggedAtlas.outer failed"), StoreFailures("RaggedAtlas.inner failed"):
            guarded_call_fails()
    assert str(nested.value).startswith("RaggedAtlas.inner failed: create()")
    assert str(nested.value).count("RaggedAtlas.") == 1
