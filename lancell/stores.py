"""Store glue: one obstore store for the zarr arrays, one for the database's side files, both by URL.

Local paths and ``file://``, ``s3://``, ``gs://``, ``az://`` URLs are handled alike. The URL persisted in the
atlas never contains credentials: only the location and non-secret client settings.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import obstore
import obstore.store as obs_store
import zarr.storage

from lancell.errors import StoreError

__all__ = ["describe_store", "open_store", "read_json", "write_json", "zarr_store"]

_SECRET_WORDS = ("secret", "token", "password", "key_id", "access_key", "session", "credential", "sas")


def is_local(uri: str) -> bool:
    """True when ``uri`` is a local path or a ``file://`` URL."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    """The absolute local path behind ``uri`` (a path or a ``file://`` URL)."""
    return Path(uri.removeprefix("file://")).expanduser().resolve()


def open_store(url: str, store_kwargs: dict[str, Any] | None = None) -> obs_store.ObjectStore:
    """Open an obstore store at ``url`` (creating a local directory if needed).

    ``store_kwargs`` are passed to :func:`obstore.store.from_url` (for example
    ``{"config": {"skip_signature": True, "region": "us-east-2"}}``).
    """
    kwargs = dict(store_kwargs or {})
    if is_local(url):
        path = local_path(url)
        path.mkdir(parents=True, exist_ok=True)
        return obs_store.LocalStore(path)
    try:
        return obs_store.from_url(url, **kwargs)
    except Exception as exc:  # obstore raises several unrelated types for bad URLs/config
        raise StoreError(f"cannot open object store at {url!r}: {exc}") from exc


def describe_store(store: obs_store.ObjectStore) -> str:
    """A credential-free URL for ``store``, suitable for persisting in the atlas."""
    if isinstance(store, obs_store.LocalStore):
        return Path(store.prefix).resolve().as_uri() if store.prefix else Path(os.sep).as_uri()
    prefix = str(store.prefix or "").strip("/")
    config = dict(getattr(store, "config", {}) or {})
    if isinstance(store, obs_store.S3Store):
        base = f"s3://{config.get('bucket', '')}"
    elif isinstance(store, obs_store.GCSStore):
        base = f"gs://{config.get('bucket', '')}"
    elif isinstance(store, obs_store.AzureStore):
        base = f"az://{config.get('container_name', '')}"
    elif isinstance(store, obs_store.MemoryStore):
        return "memory://"
    else:
        raise StoreError(f"cannot describe store of type {type(store).__name__}")
    return f"{base}/{prefix}" if prefix else base


def public_store_config(store: obs_store.ObjectStore) -> dict[str, Any]:
    """The non-secret part of a store's configuration (endpoint, region, allow_http...)."""
    config = dict(getattr(store, "config", {}) or {})
    public = {k: v for k, v in config.items() if not any(w in k.lower() for w in _SECRET_WORDS)}
    public.pop("bucket", None)
    public.pop("container_name", None)
    client = dict(getattr(store, "client_options", {}) or {})
    if client:
        public["client_options"] = client
    return public


def zarr_store(store: obs_store.ObjectStore, *, read_only: bool = False) -> zarr.storage.ObjectStore:
    """Wrap an obstore store for zarr-python."""
    return zarr.storage.ObjectStore(store, read_only=read_only)


def read_json(store: obs_store.ObjectStore, path: str) -> dict[str, Any] | None:
    """Read a JSON object at ``path``; None if it does not exist."""
    try:
        return json.loads(bytes(obstore.get(store, path).bytes()))
    except FileNotFoundError:
        return None


def write_json(
    store: obs_store.ObjectStore, path: str, value: dict[str, Any], *, create: bool = False
) -> None:
    """Write a JSON object at ``path``; with ``create=True`` fail with FileExistsError if it exists."""
    body = json.dumps(value, sort_keys=True, default=str).encode()
    try:
        obstore.put(store, path, body, mode="create" if create else "overwrite")
    except obstore.exceptions.AlreadyExistsError as exc:
        raise FileExistsError(path) from exc


def delete_prefix(store: obs_store.ObjectStore, prefix: str) -> int:
    """Delete every object under ``prefix``; return how many were deleted."""
    paths = [meta["path"] for batch in obstore.list(store, prefix=prefix.rstrip("/") + "/") for meta in batch]
    if paths:
        obstore.delete(store, paths)
    if isinstance(store, obs_store.LocalStore) and store.prefix is not None:
        # object semantics leave empty directories behind on a local disk
        shutil.rmtree(Path(store.prefix) / prefix.strip("/"), ignore_errors=True)
    return len(paths)


def prefix_nbytes(store: obs_store.ObjectStore, prefix: str) -> int:
    """Total size in bytes of the objects under ``prefix``."""
    return sum(
        meta["size"] for batch in obstore.list(store, prefix=prefix.rstrip("/") + "/") for meta in batch
    )
