"""Opening the nodes of a dataset group for reading, and what their stored values must be.

:func:`open_node` is the one way a read path opens a group or array (a missing or unreadable ``zarr.json`` is
a typed error); :func:`written_dtype` says which dtype lancell writes each array with (the batched reader
refuses another); :func:`checked_indices` refuses stored local indices past their dataset's cells or features
(shards of another array copied over this one: each checksum is its object's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from lancell.errors import GroupNotFoundError, OutOfBoundsError, ShardFormatError

__all__ = ["checked_indices", "open_node", "written_dtype"]


def written_dtype(group_attrs: Mapping[str, Any], relative: str) -> np.dtype | None:
    """The dtype lancell writes the array at ``relative`` (a path inside a dataset group) with, when fixed:
    uint32 for ``csr/indices`` and ``csc/indices``, the group's ``layers`` attribute for a layer's values
    (CSR, CSC or dense); None for anything else (``indptr``: read whole through zarr)."""
    parts = relative.split("/")
    if parts in (["csr", "indices"], ["csc", "indices"]):
        return np.dtype("uint32")
    layers = group_attrs.get("layers")
    if len(parts) >= 2 and parts[-2] == "layers" and isinstance(layers, Mapping) and parts[-1] in layers:
        return np.dtype(layers[parts[-1]])
    return None


def open_node(root: zarr.Group, path: str) -> zarr.Group | zarr.Array:
    """``root[path]``, with a missing or unreadable ``zarr.json`` as lancell's typed errors.

    Raises
    ------
    GroupNotFoundError
        Nothing is stored at ``path``.
    ShardFormatError
        A ``zarr.json`` on the way is not valid zarr v3 metadata (damaged or edited).
    """
    named = f"{root.path}/{path}" if root.path else path
    try:
        return root[path]
    except (KeyError, FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise GroupNotFoundError(
            f"zarr node {named!r} is missing from the store (vacuum() removes the groups of deleted datasets "
            "and of deleted snapshots)"
        ) from exc
    except (ValueError, TypeError) as exc:  # json's JSONDecodeError is a ValueError; zarr's metadata errors
        raise ShardFormatError(f"zarr node {named!r}: its zarr.json cannot be read: {exc}") from exc


def checked_indices(index: np.ndarray, size: int, array: str) -> np.ndarray:
    """``index`` (stored local indices of ``array``), unless one is ``size`` or more.

    Raises
    ------
    OutOfBoundsError
        A stored index reaches past the dataset's ``size`` cells or features: the array's objects are not
        this dataset's (another array's, copied over it).
    """
    if index.size and int(index.max()) >= size:
        raise OutOfBoundsError(
            f"array {array!r} holds index {int(index.max())} but its dataset has {size} there: its shards "
            "are not this dataset's (atlas.validate() and the group's objects should be checked)"
        )
    return index
