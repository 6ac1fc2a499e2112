"""Where a :class:`~lancell.dataloader.CellDataset`'s cells came from and how a worker reopens its store:
plain values only (URIs, versions, non-secret client settings), so a dataset pickles without open handles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import obstore.store as obs_store

from lancell.storage.store_settings import with_recorded_config
from lancell.storage.stores import describe_store, open_store, public_store_config

__all__ = ["DatasetSource", "store_kwargs_of", "worker_store_kwargs"]


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


def worker_store_kwargs(store: obs_store.ObjectStore, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings a worker reopens ``store`` with: the reader's ``given`` (credentials held only in memory,
    say) over the handle's own (:func:`store_kwargs_of`), as an open completes a reader's settings by the
    recorded ones (:func:`lancell.storage.store_settings.with_recorded_config`). Given alone, they lost the
    endpoint, region and retry settings: a worker sent its requests to AWS."""
    own = store_kwargs_of(store)
    if given is None:
        return own
    defaults = dict(own.get("config") or {})
    if own.get("client_options"):
        defaults["client_options"] = own["client_options"]
    # the handle's settings already overrode the environment: it does not override them again
    kwargs = dict(with_recorded_config(describe_store(store), dict(given), defaults, environment=False) or {})
    if "retry_config" in own:
        kwargs.setdefault("retry_config", own["retry_config"])
    return kwargs
