"""The ``lancell`` commands that change or remove what is stored: ``add-csc``, ``delete`` and ``vacuum``
(:mod:`lancell.cli_commands` has the others; the same conventions)."""

from __future__ import annotations

import argparse
import shlex
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["add_csc", "add_csc_hint", "delete", "vacuum"]


def add_csc(args: argparse.Namespace) -> int:
    """``lancell add-csc``: write the CSC copy of each dataset given (``--all``: of every sparse dataset)
    that lacks one, one after another, every dataset checked first."""
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.add_csc import add_csc as write_missing
    from lancell.ingest.add_csc import datasets_without_csc, require_csc_writable

    atlas = RaggedAtlas.open(args.db, store=args.store)
    if args.all:
        uids = list(datasets_without_csc(atlas))  # (checked as add_csc checks them)
        if not uids:
            print("every sparse dataset has its CSC copy")
    else:
        uids = list(dict.fromkeys(args.uids))  # (a uid given twice is written once)
        require_csc_writable(atlas, uids)  # every uid checked as add_csc checks it before any copy is written
    for uid in uids:
        written = write_missing(atlas, uid)
        print(f"{uid}: CSC copy of {', '.join(written)} written" if written else f"{uid}: has a CSC copy")
    return 0


def add_csc_hint(args: argparse.Namespace, atlas: RaggedAtlas, uid: str) -> str:
    """For ``ingest --csc``: the ``lancell add-csc`` command that writes dataset ``uid``'s CSC copy, where it
    would write one (else nothing)."""
    from lancell.errors import LancellError
    from lancell.ingest.add_csc import layers_without_csc

    if not args.csc:
        return ""
    try:
        if not layers_without_csc(atlas, uid):
            return ""
    except LancellError:  # dense, its group missing or not provably this atlas's: add-csc would not write
        return ""
    store = "" if args.store is None else f" --store {shlex.quote(args.store)}"
    return f" (lancell add-csc {shlex.quote(args.db)}{store} {shlex.quote(uid)} writes its CSC copy)"


def delete(args: argparse.Namespace) -> int:
    """``lancell delete``: delete datasets, every uid checked first; a dataset's further modalities (its
    cells' other feature spaces) go with it, and are named."""
    from lancell.atlas import RaggedAtlas
    from lancell.errors import DatasetNotFoundError

    atlas = RaggedAtlas.open(args.db, store=args.store)
    records = atlas.list_datasets().set_index("uid")
    uids = list(dict.fromkeys(args.uids))  # (a uid given twice is deleted once)
    if missing := [uid for uid in uids if uid not in records.index]:
        named = ", ".join(map(repr, missing))
        raise DatasetNotFoundError(f"no dataset {named} in the atlas: nothing deleted")
    gone: set[str] = set()
    for uid in uids:
        if uid in gone:  # a modality of a dataset deleted before it
            continue
        attached = records.index[records["cells_of"] == uid].tolist()
        atlas.delete_dataset(uid)
        gone.update([uid, *attached])
        also = f" with {', '.join(attached)} (its cells' other feature spaces)" if attached else ""
        print(f"{uid}: deleted{also}; snapshots keep it, lancell vacuum removes its group after its grace")
    return 0


def vacuum(args: argparse.Namespace) -> int:
    """``lancell vacuum``: delete the zarr groups no dataset and no snapshot references."""
    from lancell.atlas import RaggedAtlas

    removed = RaggedAtlas.open(args.db, store=args.store).vacuum(grace=timedelta(hours=args.grace_hours))
    print(", ".join(f"{name}: {count}" for name, count in removed.items()))
    return 0
