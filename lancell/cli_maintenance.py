"""The ``lancell`` commands that change or remove what is stored: ``add-csc``, ``delete``, ``optimize``,
``delete-snapshot`` and ``vacuum``
(:mod:`lancell.cli_commands` has the others; the same conventions)."""

from __future__ import annotations

import argparse
import shlex
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING

from lancell.cli_messages import progress_bars

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["add_csc", "add_csc_hint", "delete", "delete_snapshot", "optimize", "vacuum"]


def add_csc(args: argparse.Namespace) -> int:
    """``lancell add-csc``: write the CSC copy of each dataset given (``--all``: of every sparse dataset)
    that lacks one, one after another, every dataset checked first."""
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.add_csc import add_csc as write_missing
    from lancell.ingest.add_csc import datasets_without_csc, require_csc_writable

    atlas = RaggedAtlas.open(args.db, store=args.store)
    if args.all:
        groups = atlas.list_datasets().set_index("uid")["zarr_group"]
        uids, unowned = [], []
        for uid in datasets_without_csc(atlas):  # whose group it is, as add_csc checks, before any is written
            own = atlas.group_claims.ownership(str(groups[uid])) == "own"
            (uids if own else unowned).append(uid)  # (not own: written before lancell claimed groups)
        if unowned:
            print(
                f"{', '.join(unowned)}: no CSC copy written (their groups were written before this atlas "
                "claimed its groups, and lancell writes only into groups it can prove its own)"
            )
        if not uids and not unowned:
            print("every sparse dataset has its CSC copy")
    else:
        uids = list(dict.fromkeys(args.uids))  # (a uid given twice is written once)
        require_csc_writable(atlas, uids)  # every uid checked as add_csc checks it before any copy is written
    for uid in uids:
        written = write_missing(atlas, uid, progress=progress_bars())
        print(f"{uid}: CSC copy of {', '.join(written)} written" if written else f"{uid}: has a CSC copy")
    return 0


def add_csc_hint(args: argparse.Namespace, atlas: RaggedAtlas, uid: str) -> str:
    """For ``ingest --csc``: the ``lancell add-csc`` command that writes the CSC copy of dataset ``uid`` and
    of the modalities attached to its cells, where it would write one (else nothing)."""
    from lancell.errors import LancellError
    from lancell.ingest.add_csc import layers_without_csc

    if not args.csc:
        return ""
    records = atlas.list_datasets()
    uids = [uid, *records.loc[records["cells_of"] == uid, "uid"]] if "cells_of" in records else [uid]
    missing = []
    for candidate in uids:
        try:
            if layers_without_csc(atlas, candidate):
                missing.append(candidate)
        except LancellError:  # dense, its group missing or not provably this atlas's: add-csc would not write
            continue
    if not missing:
        return ""
    store = "" if args.store is None else f" --store {shlex.quote(args.store)}"
    named = " ".join(map(shlex.quote, missing))
    whose = "their" if len(missing) > 1 else "its"
    return f" (lancell add-csc {shlex.quote(args.db)}{store} {named} writes {whose} CSC copy)"


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
        attached = [a for a in records.index[records["cells_of"] == uid] if a not in gone]
        ownership = atlas.group_claims.ownership(str(records.loc[uid, "zarr_group"]))
        try:
            atlas.delete_dataset(uid)
        except KeyboardInterrupt:  # held until the deletion's commit, which may have been its record's
            if uid not in set(atlas.list_datasets()["uid"]):
                print(f"{uid}: deleted{_with(attached)} (then interrupted)")
            raise
        gone.update([uid, *attached])
        also = _with(attached)
        group = (
            "lancell vacuum removes its group after its grace"
            if ownership in ("own", "absent")
            else "its group stays (this atlas cannot prove it its own: vacuum leaves it)"
        )
        print(f"{uid}: deleted{also}; snapshots keep it, {group}")
    return 0


def _with(attached: list[str]) -> str:
    """What ``lancell delete`` says of a dataset's further modalities deleted with it."""
    return f" with {', '.join(attached)} (its cells' other feature spaces)" if attached else ""


def optimize(args: argparse.Namespace) -> int:
    """``lancell optimize``: compact, index and prune untagged table versions older than ``--keep-hours``."""
    from lancell.atlas import RaggedAtlas

    keep = None if args.keep_hours is None else timedelta(hours=args.keep_hours)
    versions = RaggedAtlas.open(args.db, store=args.store).optimize(cleanup_older_than=keep)
    print("table versions now: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    return 0


def delete_snapshot(args: argparse.Namespace) -> int:
    """``lancell delete-snapshot``: delete snapshots, every number checked first."""
    from lancell.atlas import RaggedAtlas
    from lancell.errors import LancellWarning, VersionNotFoundError
    from lancell.tables.versions import number_runs

    atlas = RaggedAtlas.open(args.db, store=args.store)
    versions = list(dict.fromkeys(args.versions))  # (one given twice is deleted once)
    known = RaggedAtlas.list_versions(args.db, deleted=True).set_index("version")["deleted_at"]
    if missing := [v for v in versions if v not in known.index]:
        live = known.index[known.isna()].tolist()
        raise VersionNotFoundError(
            f"no snapshot {', '.join(map(str, missing))}; snapshots: {number_runs(live)}: nothing deleted"
        )
    for version in versions:
        already = not known.isna()[version]
        with warnings.catch_warnings():  # (the line below says it)
            warnings.simplefilter("ignore", LancellWarning)
            atlas.delete_snapshot(version)  # (one deleted already: the tags it left go)
        print(f"snapshot {version}: deleted already" if already else f"snapshot {version}: deleted")
    print(
        "numbers and notes are not reused; `lancell optimize` prunes the table versions only deleted "
        "snapshots kept (older than --keep-hours, a week by default), `lancell vacuum` their zarr groups "
        "(after --grace-hours, 1 by default)"
    )
    return 0


def vacuum(args: argparse.Namespace) -> int:
    """``lancell vacuum``: delete the zarr groups no dataset and no snapshot references, naming each
    (``--dry-run``: name them, delete nothing)."""
    from lancell.atlas import RaggedAtlas

    verb = "would delete" if args.dry_run else "deleted"
    removed = RaggedAtlas.open(args.db, store=args.store).vacuum(
        grace=timedelta(hours=args.grace_hours),
        dry_run=args.dry_run,
        on_group=lambda group, uid: print(f"{verb} zarr group {group} (dataset {uid})"),
    )
    counts = ", ".join(f"{name}: {count}" for name, count in removed.items())
    print(f"{counts} (a dry run: nothing deleted)" if args.dry_run else counts)
    return 0
