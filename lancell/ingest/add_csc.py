"""``add_csc``: the feature-major (CSC) copy of a dataset ingested without one, added later.

The copy is derived data: the same CSR arrays always give the same CSC arrays, and readers use it only for
the layers listed in the group's ``csc_layers`` attribute (:mod:`lancell.query.reconstruct`). So the write is
made safe by ordering, under the dataset's lock: layers that already have a copy are never rewritten; when a
copy must be (re)built, ``csc_layers`` is cleared first (readers fall back to the CSR arrays, which give the
same answer), the arrays are written, and ``csc_layers`` is set last: the commit point. A crash in between
leaves a group that reads correctly from CSR, and running ``add_csc`` again finishes the copy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from lancell.errors import DatasetNotFoundError, GroupNotFoundError, IngestError
from lancell.storage.csc import write_csc
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import sql_literal
from lancell.tables.visibility import dataset_lock_name

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["add_csc", "layers_without_csc", "require_sparse_datasets"]

log = logging.getLogger(__name__)


def add_csc(atlas: RaggedAtlas, dataset_uid: str) -> list[str]:
    """Write the CSC copy of every stored layer of a dataset that lacks one; return the layers written.

    Layers that already have a copy are left as they are (an empty list when every layer has one).

    Raises
    ------
    DatasetNotFoundError
        No dataset ``dataset_uid`` in the atlas.
    IngestError
        The dataset is dense (only sparse datasets have a CSC copy).
    GroupNotFoundError
        The dataset's group is missing, or this atlas cannot prove it its own (no claim, or its attributes
        name another atlas or none).
    ReadOnlyAtlasError
        The handle is checked out at a snapshot.
    """
    core = atlas.core
    core.require_writable()
    with core.lock(dataset_lock_name(dataset_uid), about=f"dataset {dataset_uid!r}"):
        name = _sparse_record(atlas, dataset_uid)["zarr_group"]
        atlas.group_claims.require_own(name, dataset_uid)
        group = core.zarr_root[name]
        stored = list(group.attrs.get("layers", {}))
        copied = list(group.attrs.get("csc_layers", []))
        missing = _uncopied(group.attrs)
        if not missing:
            return []
        if copied:  # the shared csc/indices exist: write the missing layers' values only, on them
            write_csc(group, missing, indices=False)
        else:
            group.attrs.pop("csc_layers", None)
            write_csc(group, stored)  # sets csc_layers last
        core.forget_nodes()  # this handle's opened groups predate the copy
    log.info("wrote the CSC copy of %s: layers %s", dataset_uid, missing)
    return missing


def layers_without_csc(atlas: RaggedAtlas, dataset_uid: str) -> list[str]:
    """The stored layers of dataset ``dataset_uid`` that have no CSC copy: what :func:`add_csc` would
    write (as the group holds them now).

    Raises
    ------
    DatasetNotFoundError, IngestError
        As :func:`require_sparse_datasets`.
    GroupNotFoundError
        The dataset's group is missing.
    """
    name = _sparse_record(atlas, dataset_uid)["zarr_group"]
    attrs = atlas.core.group_attrs(name, reopen=True)
    if attrs is None:
        raise GroupNotFoundError(f"dataset {dataset_uid!r}: its zarr group {name!r} is missing")
    return _uncopied(attrs)


def require_sparse_datasets(atlas: RaggedAtlas, uids: list[str]) -> None:
    """Check that every dataset of ``uids`` is in the atlas and sparse (what :func:`add_csc` requires),
    before a copy of any of them is written.

    Raises
    ------
    DatasetNotFoundError
        A uid with no dataset.
    IngestError
        A dense dataset.
    """
    for uid in uids:
        _sparse_record(atlas, uid)


def _uncopied(attrs: Mapping[str, object]) -> list[str]:
    """A group's stored layers (from its attributes) without a CSC copy, in stored order."""
    copied = set(attrs.get("csc_layers", []))
    return [layer for layer in attrs.get("layers", {}) if layer not in copied]


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
