"""Where a :class:`~lancell.dataloader.CellDataset`'s cells came from and how a worker reopens its store:
plain values only (URIs, versions, non-secret client settings), so a dataset pickles without open handles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import obstore.store as obs_store

from lancell.storage.stores import open_store, public_store_config

__all__ = ["DatasetSource", "store_kwargs_of"]


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's cells came from and how a worker reopens the arrays (no open handles)."""

    db_uri: str
    snapshot_version: int | None
    cell_table_version: int
    store_url: str
    store_kwargs: dict[str, Any]

    def open_store(self) -> obs_store.ObjectStore:
        """A fresh obstore store for :attr:`store_url`."""
        return open_store(self.store_url, self.store_kwargs)


def store_kwargs_of(store: obs_store.ObjectStore) -> dict[str, Any]:
    """The client settings a worker reopens ``store`` with: its non-secret config, client options and retry
    settings (none for local disk). Without the retry settings a worker waited out obstore's defaults on a
    frozen server (10 retries, up to 180 s) where the reader had given a budget."""
    if isinstance(store, obs_store.LocalStore):
        return {}
    config = public_store_config(store)
    client_options = config.pop("client_options", None)
    kwargs: dict[str, Any] = {"config": config} if config else {}
    if client_options:
        kwargs["client_options"] = client_options
    retry = getattr(store, "retry_config", None)
    if retry:
        kwargs["retry_config"] = retry
    return kwargs
