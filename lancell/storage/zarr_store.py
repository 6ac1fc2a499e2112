"""zarr-python's obstore store as lancell uses it: big local objects written in pieces, and writes and deletes
a broken connection failed sent again."""

from __future__ import annotations

import obstore
import obstore.store as obs_store
import zarr.storage
from zarr.core.buffer import Buffer

from lancell.storage.small_pages import WRITE_PIECE, write_pieces
from lancell.storage.store_retries import retried_async

__all__ = ["zarr_store"]


class _AtlasZarrStore(zarr.storage.ObjectStore):
    """zarr's obstore store, whose objects go to a local disk in writes of at most ``WRITE_PIECE`` bytes
    (:mod:`lancell.storage.small_pages`; obstore's local multipart upload: a staging file renamed whole, as
    its single put), and whose writes and deletes are sent again after a broken connection
    (:mod:`lancell.storage.store_retries`): ``set`` and ``delete``, and ``set_if_not_exists``, which zarr uses
    to make sure a parent group's metadata is there (it leaves an object already there as it is)."""

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        if isinstance(self.store, obs_store.LocalStore) and len(value) > WRITE_PIECE:
            pieces = value.as_buffer_like()
            await obstore.put_async(self.store, key, write_pieces(pieces), chunk_size=WRITE_PIECE)
            return
        write = super().set
        await retried_async(lambda: write(key, value), self.store, f"write of {key}")

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # (an object already there is left as it is: sent again after one that landed, it still is)
        write = super().set_if_not_exists
        await retried_async(lambda: write(key, value), self.store, f"write of {key}")

    async def delete(self, key: str) -> None:
        # (zarr's delete takes a missing object for deleted: one sent again after it landed passes)
        delete = super().delete
        await retried_async(lambda: delete(key), self.store, f"delete of {key}")


def zarr_store(store: obs_store.ObjectStore, *, read_only: bool = False) -> zarr.storage.ObjectStore:
    """Wrap an obstore store for zarr-python."""
    return _AtlasZarrStore(store, read_only=read_only)
