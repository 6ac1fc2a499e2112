"""Child process of the crash-safety tests: ingest one backed ``.h5ad`` and SIGKILL itself at a chosen point.

    python crash_child.py ROOT H5AD POINT NTH

``POINT`` names a function of the ingestion path; the process kills itself with SIGKILL on the ``NTH`` call
of it (``enter:`` before the call runs, ``leave:`` after it returned), so that no ``finally`` block, roll-back
or atexit handler runs, exactly as if the machine lost power at that instant. ``none`` ingests to the end.
The geometry is shrunk so that the dataset spans many shards and the kill can land between two of them.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import lancedb.table

import lancell.ingest.cell_rows
import lancell.ingest.from_anndata
import lancell.ingest.write_transaction
import lancell.storage.csc
from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import groups
from lancell.storage.groups import GroupGeometry
from lancell.storage.shard_buffer import ShardBuffer
from lancell.tables.schema import DatasetRecord

DATASET = "big"


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def on_call(owner: object, name: str, nth: int, when: str, only: Callable[..., bool] | None = None) -> None:
    """Replace ``owner.name`` by a wrapper that dies on its ``nth`` (matching) call."""
    original = getattr(owner, name)
    seen = 0
    counting = threading.Lock()  # shards of indices and values are stored by two threads at once

    @functools.wraps(original)
    def wrapper(*args: object, **kwargs: object) -> object:
        nonlocal seen
        if only is not None and not only(*args, **kwargs):
            return original(*args, **kwargs)
        with counting:
            seen += 1
            mine = seen  # this call's number: another thread's call may count before this one returns
        if mine == nth and when == "enter":
            die()
        result = original(*args, **kwargs)
        if mine == nth and when == "leave":
            die()
        return result

    setattr(owner, name, wrapper)


def die_mid_stream(nth: int) -> None:
    """Die after the cell-row writer consumed ``nth`` record batches (LanceDB is mid-write)."""
    original = lancell.ingest.write_transaction.cell_batches

    def batches(*args: object, **kwargs: object) -> Iterator[object]:
        for i, batch in enumerate(original(*args, **kwargs)):
            if i == nth:
                die()
            yield batch

    lancell.ingest.write_transaction.cell_batches = batches


def install(point: str, nth: int) -> None:
    when, _, name = point.partition(":")
    if point == "none":
        return
    if name == "cell_batches":
        die_mid_stream(nth)
    elif name in ("shard_write", "shard_write_csc"):
        in_csc = name == "shard_write_csc"
        on_call(ShardBuffer, "_write", nth, when, only=lambda buf, _: ("/csc/" in buf.array.path) == in_csc)
    elif name in ("cells_add", "datasets_add"):
        table = name.split("_")[0]
        on_call(lancedb.table.LanceTable, "add", nth, when, only=lambda t, *a, **k: t.name == table)
    elif name == "write_csc":
        on_call(lancell.ingest.write_transaction, "write_csc", nth, when)
    elif name == "ensure_layout":
        on_call(lancell.ingest.write_transaction, "ensure_layout", nth, when)
    elif name == "plan":
        on_call(lancell.ingest.from_anndata, "plan_ingest", nth, when)
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def main() -> None:
    root, path, point, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    small = GroupGeometry(sparse_chunk=4_096, sparse_shard=4_096 * 32)
    groups.DEFAULT_GEOMETRY = small
    # several CSC passes of many shards, so that kills can land between them
    lancell.ingest.write_transaction.write_csc = functools.partial(
        lancell.storage.csc.write_csc, budget=1 << 18
    )
    lancell.ingest.cell_rows.CELL_BATCH = 4_096  # the cell rows reach LanceDB in several batches
    install(point, nth)
    atlas = RaggedAtlas.open(f"{root}/db", store=f"{root}/arrays")  # a copy: not the recorded store
    print("ingesting", flush=True)
    add_from_anndata(
        atlas,
        path,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid=DATASET),
        csc=True,
        progress=False,
    )
    print("committed", flush=True)


if __name__ == "__main__":
    main()
