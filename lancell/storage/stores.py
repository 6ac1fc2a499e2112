"""Store glue: one obstore store for the zarr arrays, one for the database's side files, both by URL.

Local paths and ``file://``, ``s3://``, ``gs://``, ``az://`` URLs are handled alike. The URL persisted in the
atlas never contains credentials: only the location and non-secret client settings.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import obstore
import obstore.store as obs_store

from lancell.errors import LancellWarning, StoreError, caller_outside_lancell, require_type
from lancell.storage.store_failures import store_error
from lancell.storage.store_retries import retried
from lancell.storage.store_settings import (
    ENDPOINT_ENV,
    canonical_name,
    check_endpoint,
    check_store_kwargs,
    is_s3,
    store_config,
    with_environment_client_options,
)

__all__ = [
    "check_options_used",
    "describe_store",
    "given_store_kwargs",
    "lancedb_storage_options",
    "location_in_store",
    "open_store",
    "public_store_config",
    "read_json",
    "table_location",
    "write_json",
]

# Any config key containing one of these is a credential (S3 access/secret keys and session tokens, Azure
# account/SAS keys and client secrets, GCS service-account keys) and is never persisted.
_SECRET_WORDS = ("secret", "token", "password", "key", "session", "credential", "sas", "service_account")
# Client options that can carry credentials (an Authorization header, a proxy URL with user:password).
_SECRET_CLIENT_OPTIONS = ("default_headers", "proxy_url")
# URL schemes of the object stores, by the kind of namespace (bucket or container) they name.
_URL_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az", "memory": "mem"}
# A location that is no URL ("://" missing) but starts like one: "s3:/bucket/db", "file:/data/db", "gs:b/db".
# Taken for a local path it made folders named "s3:"; a Windows drive ("C:/data") has a one-letter name.
_MISTYPED_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):(?!//)")
# URL schemes that are surely meant as such when followed by ":" ("s3:bucket/db" as well as "s3:/bucket/db").
_KNOWN_SCHEMES = frozenset({*_URL_SCHEMES, "file", "http", "https", "abfs", "abfss", "adl"})
# obstore's S3 config names -> the names the LanceDB (lance) docs use for the same settings.
_LANCE_S3_NAMES = {
    "access_key_id": "aws_access_key_id",
    "secret_access_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
    "token": "aws_session_token",
}


def is_local(uri: str) -> bool:
    """True when ``uri`` is a local path or a ``file://`` URL.

    Raises
    ------
    StoreError
        ``uri`` is a mistyped URL (``s3:/bucket/db``, ``file:/data/db``: a scheme, ``:`` and one slash, or a
        known scheme and ``:`` without ``//``); taken for a local path it made folders named ``s3:``. A local
        path holding ``?``: Lance reads what follows as a URL's query (the atlas was created, then not found).
    """
    if "://" in uri and not uri.startswith("file://"):
        return False
    if "?" in unquote(uri.removeprefix("file://")) if uri.startswith("file://") else "?" in uri:
        raise StoreError(
            f"local path {uri!r} contains '?', which the table format reads as the start of a URL's query: "
            "choose a folder name without it"
        )
    if uri.startswith("file://"):
        return True
    typo = _MISTYPED_URL.match(uri)
    if typo and (uri[typo.end() :].startswith("/") or typo.group(1).lower() in _KNOWN_SCHEMES):
        scheme, rest = typo.group(1), uri[typo.end() :].lstrip("/")
        meant = f"file:///{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"
        raise StoreError(
            f"location {uri!r} looks like a mistyped URL (a URL takes two slashes: {meant}); for a local "
            f"folder of that name, give it as ./{uri}"
        )
    return True


def local_path(uri: str) -> Path:
    """The absolute local path behind ``uri`` (a path, or a ``file://`` URL: percent-encoded, as
    :meth:`pathlib.Path.as_uri` writes spaces, ``%`` and non-ASCII characters)."""
    if uri.startswith("file://"):
        return Path(unquote(uri.removeprefix("file://"))).expanduser().resolve()
    is_local(uri)  # a mistyped URL is no local path
    return Path(uri).expanduser().resolve()


def table_location(uri: str) -> str:
    """``uri`` as the table format (Lance) is given it: a ``file://`` URL as its local path, since Lance does
    not decode its percent-escapes (``a%20b`` was a folder of that name beside lancell's ``a b``)."""
    return str(local_path(uri)) if uri.startswith("file://") else uri


def given_store_kwargs(store_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``store_kwargs`` (``{}`` for None).

    Raises
    ------
    ArgumentError
        ``store_kwargs`` is not a mapping (of :func:`obstore.store.from_url`'s keyword arguments) or None.
    """
    require_type(
        "store_kwargs",
        store_kwargs,
        (Mapping, type(None)),
        "None or a dict of obstore.store.from_url's "
        "keyword arguments, e.g. {'config': {'region': 'us-east-2'}}",
    )
    return dict(store_kwargs or {})


def open_store(url: str, store_kwargs: dict[str, Any] | None = None) -> obs_store.ObjectStore:
    """Open an obstore store at ``url`` (creating a local directory if needed).

    ``store_kwargs`` are passed to :func:`obstore.store.from_url` (for example
    ``{"config": {"skip_signature": True, "region": "us-east-2"}}``); ``client_options`` given are completed
    by the environment's (``AWS_ALLOW_HTTP``, ``AWS_TIMEOUT``...), which obstore would drop for them.

    Raises
    ------
    StoreError
        The store cannot be opened: a local folder that cannot be made, a mistyped URL (:func:`is_local`),
        settings refused (:func:`~lancell.storage.store_settings.check_store_kwargs`,
        :func:`~lancell.storage.store_settings.check_endpoint`) or by obstore.
    """
    kwargs = given_store_kwargs(store_kwargs)
    if is_local(url):
        path = local_path(url)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a regular file on the way, no permission, a read-only file system...
            raise StoreError(
                f"cannot create the local store folder {str(path)!r}: {exc.strerror or exc}"
            ) from exc
        return obs_store.LocalStore(path)
    check_store_kwargs(url, kwargs)
    check_endpoint(url, store_config(kwargs), "store_kwargs")
    kwargs = with_environment_client_options(url, kwargs)  # obstore drops the environment's for them
    try:
        return obs_store.from_url(url, **kwargs)
    except Exception as exc:  # obstore raises several unrelated types for bad URLs/config
        raise store_error(exc, f"cannot open object store at {url!r}") from exc


def check_options_used(urls: Sequence[str], store_kwargs: dict[str, Any] | None) -> None:
    """Refuse store options when every location in ``urls`` is local: a local store takes none.

    obstore drops any ``config`` or ``client_options`` given for a local path without a word (on an object
    store, :func:`open_store` refuses an unknown key: ``StoreError`` naming it).

    Raises
    ------
    StoreError
        ``store_kwargs`` holds an option (each is named) and every URL is a local path.
    """
    if not urls or not all(is_local(url) for url in urls):
        return
    named: list[str] = []
    for part, options in given_store_kwargs(store_kwargs).items():  # config, client_options, retry_config...
        if isinstance(options, dict):
            named += [f"{part}.{key}" for key in options]
        elif options is not None:
            named.append(part)
    if named:
        raise StoreError(
            f"store options {named} would be ignored: {sorted(set(urls))} are local paths, which take no "
            "options (they configure object stores: s3://, gs://, az:// URLs)"
        )


def describe_store(store: obs_store.ObjectStore) -> str:
    """A credential-free URL for ``store``, suitable for persisting in the atlas."""
    if isinstance(store, obs_store.LocalStore):
        return Path(store.prefix).resolve().as_uri() if store.prefix else Path(os.sep).as_uri()
    prefix = str(getattr(store, "prefix", None) or "").strip("/")  # MemoryStore has no prefix
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
    client = {
        k: v
        for k, v in (getattr(store, "client_options", {}) or {}).items()
        if k not in _SECRET_CLIENT_OPTIONS
    }
    if client:
        public["client_options"] = client
    return public


def lancedb_storage_options(db_uri: str, store_kwargs: dict[str, Any] | None) -> dict[str, str] | None:
    """LanceDB ``storage_options`` equivalent to obstore ``store_kwargs``, so one set of settings serves both.

    The configuration (``store_kwargs["config"]`` and configuration keyword arguments) and
    ``store_kwargs["client_options"]`` (``timeout``, ``connect_timeout``...) are flattened into one mapping of
    strings (LanceDB rejects non-string values; booleans become ``"true"``/``"false"``). S3 credential names
    become LanceDB's ``aws_*`` names and an ``aws_`` prefix on other keys is dropped (``aws_endpoint`` ->
    ``endpoint``); other keys pass through, since lance and obstore share object_store's names. An S3
    endpoint is given as ``aws_endpoint`` too while ``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT`` is set: lance
    adds the environment's endpoint under that name beside one given under another, and used either.
    ``retry_config``'s ``max_retries`` and ``retry_timeout`` become lance's ``client_max_retries`` and
    ``client_retry_timeout`` (whole seconds, rounded up).

    Parameters
    ----------
    db_uri
        The LanceDB location; a local path needs no options.
    store_kwargs
        Keyword arguments of :func:`obstore.store.from_url`.

    Returns
    -------
    dict of str to str or None
        None when ``db_uri`` is local or there is nothing to pass (LanceDB then reads the environment).

    Raises
    ------
    StoreError
        ``retry_config`` holds a key no store knows, a client option is given as configuration
        (:func:`~lancell.storage.store_settings.check_store_kwargs`), or the endpoint is refused
        (:func:`~lancell.storage.store_settings.check_endpoint`).

    Warns
    -----
    LancellWarning
        ``store_kwargs`` hold what LanceDB cannot be given (a ``credential_provider``, ``retry_config``'s
        ``backoff``): LanceDB goes without them (credentials from the environment, lance's backoff).
    """
    if is_local(db_uri) or not store_kwargs:
        return None
    check_store_kwargs(db_uri, store_kwargs)
    s3 = is_s3(db_uri)
    flat = {**store_config(store_kwargs), **dict(store_kwargs.get("client_options") or {})}
    options: dict[str, str] = {}
    for key, value in flat.items():
        name = str(key).lower()
        if s3:
            name = name.removeprefix("aws_")
            name = _LANCE_S3_NAMES.get(name, name)
        options[name] = str(value).lower() if isinstance(value, bool) else str(value)
    endpoint = [value for key, value in options.items() if canonical_name(key) == "endpoint"]
    if s3 and endpoint and any(name in os.environ for name in ENDPOINT_ENV):  # (lance reads them too)
        # lance adds the environment's endpoint as aws_endpoint beside an endpoint given under another name,
        # and uses either: given under that name, it is the one used
        options["aws_endpoint"] = endpoint[-1]
    retry = {
        key: value for key, value in (store_kwargs.get("retry_config") or {}).items() if value is not None
    }
    if "max_retries" in retry:
        options["client_max_retries"] = str(int(retry.pop("max_retries")))
    if "retry_timeout" in retry:
        timeout = retry.pop("retry_timeout")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        options["client_retry_timeout"] = str(math.ceil(seconds))
    unused = [f"retry_config.{key}" for key in retry] + (
        ["credential_provider"] if store_kwargs.get("credential_provider") is not None else []
    )
    if unused:
        warnings.warn(
            f"store settings {unused} cannot be passed to LanceDB (lance takes retry_config's max_retries "
            "and retry_timeout only, and credentials as settings or from the environment): the database at "
            f"{db_uri!r} is read and written without them",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    check_endpoint(db_uri, options, "store_kwargs", lance=True)
    return options or None


def read_json(store: obs_store.ObjectStore, path: str) -> dict[str, Any] | None:
    """Read a JSON object at ``path``; None if it does not exist."""
    try:
        return json.loads(bytes(obstore.get(store, path).bytes()))
    except FileNotFoundError:
        return None


def write_json(
    store: obs_store.ObjectStore, path: str, value: dict[str, Any], *, create: bool = False
) -> None:
    """Write a JSON object at ``path``; with ``create=True`` fail with FileExistsError if it exists (an
    overwrite is sent again after a broken connection: :mod:`lancell.storage.store_retries`)."""
    body = json.dumps(value, sort_keys=True, default=str).encode()
    if not create:
        retried(lambda: obstore.put(store, path, body), store, f"write of {path}")
        return
    try:
        obstore.put(store, path, body, mode="create")
    except obstore.exceptions.AlreadyExistsError as exc:
        raise FileExistsError(path) from exc


def location_in_store(store: obs_store.ObjectStore, uri: str) -> str | None:
    """Where ``uri`` lies in ``store``'s namespace: its path from the store's root (``""`` for the root).

    None when ``uri`` cannot be reached through ``store``: another disk location, scheme or bucket, or a
    location that contains the store's root (a store inside the database directory, such as the default
    ``<db_uri>/_zarr``). Local paths are compared resolved (symbolic links followed).

    Raises
    ------
    StoreError
        The relation cannot be worked out: an unknown URL scheme, or a store of a type lancell cannot
        describe.
    """
    if is_local(uri):
        if not isinstance(store, obs_store.LocalStore):
            return None
        root = Path(store.prefix).resolve() if store.prefix else Path(os.sep)
        return _relative(local_path(uri).parts, root.parts)
    scheme, _, rest = uri.partition("://")
    kind = _URL_SCHEMES.get(scheme.lower())
    if kind is None:
        raise StoreError(
            f"cannot tell whether {uri!r} lies in the store {describe_store(store)}: "
            f"unknown URL scheme {scheme!r} (known: {sorted(_URL_SCHEMES)})"
        )
    if isinstance(store, obs_store.LocalStore | obs_store.MemoryStore):
        return None
    store_scheme, _, store_rest = describe_store(store).partition("://")
    if _URL_SCHEMES[store_scheme] != kind:
        return None
    return _relative(
        tuple(part for part in rest.split("/") if part), tuple(part for part in store_rest.split("/") if part)
    )


def _relative(target: tuple[str, ...], root: tuple[str, ...]) -> str | None:
    """``target`` below ``root`` as a ``/``-joined path, or None when it is not at or below it."""
    if target[: len(root)] != root:
        return None
    return "/".join(target[len(root) :])


def prefix_nbytes(store: obs_store.ObjectStore, prefix: str) -> int:
    """Total size in bytes of the objects under ``prefix``."""
    return sum(
        meta["size"] for batch in obstore.list(store, prefix=prefix.rstrip("/") + "/") for meta in batch
    )
