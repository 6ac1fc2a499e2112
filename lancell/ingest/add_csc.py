"""``add_csc``: the feature-major (CSC) copy of a dataset ingested without one, added later.

The copy is derived data: the same CSR arrays always give the same CSC arrays, and readers use it only for
the layers listed in the group's ``csc_layers`` attribute (:mod:`lancell.query.reconstruct`). So the write is
made safe by ordering, under the dataset's lock: layers that already have a copy are never rewritten; when a
copy must be (re)built, ``csc_layers`` is cleared first (readers fall back to the CSR arrays, which give the
same answer), the arrays are written, and ``csc_layers`` is set last: the commit point. An error in between
deletes the unlisted arrays written; a crash leaves them, in a group that reads correctly from CSR, and
running ``add_csc`` again overwrites them and finishes the copy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lancell.errors import (
    DatasetNotFoundError,
    GroupNotFoundError,
    IngestError,
    require_text,
    require_type,
)
from lancell.layer_entries import recorded_layers
from lancell.storage.csc import write_csc
from lancell.storage.store_failures import StoreFailures, is_store_failure, store_error
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import sql_literal
from lancell.tables.visibility import dataset_lock_name

if TYPE_CHECKING:
    import zarr

    from lancell.atlas import RaggedAtlas

__all__ = ["add_csc", "datasets_without_csc", "layers_without_csc", "require_csc_writable"]

log = logging.getLogger(__name__)


def add_csc(atlas: RaggedAtlas, dataset_uid: str, *, progress: bool = False) -> list[str]:
    """Write the CSC copy of every stored layer of a dataset that lacks one; return the layers written.

    Layers that already have a copy are left as they are (an empty list when every layer has one). A write
    that fails is undone: the layers' copy arrays written so far are deleted (the listed ones are never
    touched), so the group is as before and the call can be made again.

    Raises
    ------
    DatasetNotFoundError
        No dataset ``dataset_uid`` in the atlas.
    IngestError
        The dataset is dense (only sparse datasets have a CSC copy).
    GroupNotFoundError
        The dataset's group is missing, or (when a layer lacks its copy) this atlas cannot prove it its own
        (no claim, or its attributes name another atlas or none).
    StoreError
        The store failed while the copy was written (the copy is then undone).
    ReadOnlyAtlasError
        The handle is checked out at a snapshot.
    ArgumentError
        ``dataset_uid`` is not a str.
    """
    require_type("dataset_uid", dataset_uid, str, "a dataset uid (a str)")
    require_text("dataset_uid", dataset_uid)
    core = atlas.core
    core.require_writable()
    with core.lock(dataset_lock_name(dataset_uid), about=f"dataset {dataset_uid!r}"):
        name, missing = _group_and_uncopied(atlas, dataset_uid)  # read under the lock; the owner checked
        if not missing:
            return []
        with StoreFailures(f"add_csc: dataset {dataset_uid!r}: opening its zarr group {name!r}"):
            group = core.zarr_root[name]
            copied = list(group.attrs.get("csc_layers", []))
        try:
            if copied:  # the shared csc/indices exist: write the missing layers' values only, on them
                write_csc(group, missing, indices=False, progress=progress)
            else:
                group.attrs.pop("csc_layers", None)
                write_csc(group, missing, progress=progress)  # every listed layer; sets csc_layers last
        except BaseException as exc:
            _roll_back(group, copied, missing, whole=not copied)
            if is_store_failure(exc):  # the store's own errors (obstore's, a full disk): typed, named
                what = f"add_csc: dataset {dataset_uid!r}: its CSC copy was not written (run it again)"
                raise store_error(exc, what) from exc
            raise
        finally:
            core.forget_nodes()  # this handle's opened groups predate the copy
    log.info("wrote the CSC copy of %s: layers %s", dataset_uid, missing)
    return missing


def layers_without_csc(atlas: RaggedAtlas, dataset_uid: str) -> list[str]:
    """The stored layers of dataset ``dataset_uid`` that have no CSC copy: what :func:`add_csc` would write
    (as the group holds them now), checking what it would check before writing them.

    Raises
    ------
    DatasetNotFoundError
        No dataset ``dataset_uid`` in the atlas.
    IngestError
        The dataset is dense.
    GroupNotFoundError
        The dataset's group is missing, or a layer lacks its copy and this atlas cannot prove the group its
        own.
    """
    return _group_and_uncopied(atlas, dataset_uid)[1]


def datasets_without_csc(atlas: RaggedAtlas) -> dict[str, list[str]]:
    """Every sparse dataset of the atlas with a stored layer that has no CSC copy, and those layers, in the
    dataset table's order. Dense datasets have no copy and are not listed. Whose each group is is not
    checked here: :func:`add_csc` refuses a group this atlas cannot prove its own (one written before
    lancell claimed groups), and :func:`layers_without_csc` tells beforehand.

    Raises
    ------
    GroupNotFoundError
        A dataset's group is missing.
    """
    spaces = atlas.feature_spaces
    columns = [
        "uid",
        "feature_space",
        "zarr_group",
        *(["layers"] if "layers" in atlas.core.dataset_arrow.names else []),
    ]
    records = atlas.core.tables.datasets.to_arrow().select(columns)
    missing = {
        record["uid"]: _uncopied_in(
            atlas, record["uid"], record["zarr_group"], record.get("layers"), check_owner=False
        )
        for record in records.to_pylist()
        if resolve_feature_space(spaces, record["feature_space"]).kind == "sparse"
    }
    return {uid: layers for uid, layers in missing.items() if layers}


def require_csc_writable(atlas: RaggedAtlas, uids: list[str]) -> None:
    """Check everything :func:`add_csc` checks before it writes, for every dataset of ``uids``, before a copy
    of any of them is written.

    Raises
    ------
    DatasetNotFoundError, IngestError, GroupNotFoundError
        As :func:`layers_without_csc`, for the first dataset that fails.
    """
    for uid in uids:
        layers_without_csc(atlas, uid)


def _roll_back(group: zarr.Group, copied: list[str], layers: list[str], *, whole: bool) -> None:
    """Undo a failed copy: list the copied layers as before, then delete the arrays written (the whole
    ``csc`` group when no layer had a copy, else the unlisted layers' values); logged if the store refuses."""
    try:
        if whole:
            group.attrs.pop("csc_layers", None)
            if "csc" in group:
                del group["csc"]
        else:
            group.attrs["csc_layers"] = copied
            for layer in layers:
                if "csc/layers" in group and layer in group["csc/layers"]:
                    del group["csc/layers"][layer]
    except Exception as exc:  # whatever the store raises: the caller's own error stands
        log.error("roll-back of a CSC copy left arrays behind (unlisted; add_csc overwrites them): %s", exc)


def _group_and_uncopied(atlas: RaggedAtlas, dataset_uid: str) -> tuple[str, list[str]]:
    """Dataset ``dataset_uid``'s zarr group and its layers without a copy (:func:`layers_without_csc`)."""
    record = _sparse_record(atlas, dataset_uid)
    name = record["zarr_group"]
    return name, _uncopied_in(atlas, dataset_uid, name, record.get("layers"))


def _uncopied_in(
    atlas: RaggedAtlas, dataset_uid: str, name: str, listed: list[str] | None, *, check_owner: bool = True
) -> list[str]:
    """The layers dataset ``dataset_uid``'s record lists (``listed``; :func:`recorded_layers`) without a copy
    in its group ``name``, in stored order, its owner checked if any (unless ``check_owner`` is False). A
    layer the group stores and the record does not list (an interrupted ``add_layer``'s) is not one."""
    attrs = atlas.core.group_attrs(name, reopen=True)
    if attrs is None:
        raise GroupNotFoundError(f"dataset {dataset_uid!r}: its zarr group {name!r} is missing")
    copied = set(attrs.get("csc_layers", []))
    missing = [layer for layer in recorded_layers(listed, attrs) if layer not in copied]
    if missing and check_owner:  # (a group with every copy is only read: whose it is does not matter)
        atlas.group_claims.require_own(name, dataset_uid)
    return missing


def _sparse_record(atlas: RaggedAtlas, uid: str) -> dict[str, object]:
    """The record of dataset ``uid``, which must be sparse."""
    rows = atlas.core.tables.datasets.search().where(f"uid = {sql_literal(uid)}").to_arrow().to_pylist()
    if not rows:
        raise DatasetNotFoundError(f"dataset {uid!r} is not in the atlas {atlas.db_uri!r}")
    space = resolve_feature_space(atlas.feature_spaces, rows[0]["feature_space"])
    if space.kind != "sparse":  # (its rows hold every feature: no feature-major copy)
        raise IngestError(
            f"dataset {uid!r} is in the dense feature space {space.name!r}: only sparse datasets have a "
            "CSC copy"
        )
    return rows[0]
