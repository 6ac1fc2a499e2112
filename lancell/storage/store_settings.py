"""The settings of an object store's client, wherever they come from: ``store_kwargs`` (obstore's), LanceDB's
``storage_options``, the environment, and the non-secret settings an atlas recorded for its store.

obstore and lance both read the environment (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``) for a setting their options
do not give, so the endpoint checked is the one that is used, and a recorded setting is a default that the
caller's options and environment override.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from lancell.errors import StoreError

__all__ = ["canonical_name", "check_endpoint", "store_config", "with_recorded_config"]

log = logging.getLogger(__name__)

# The keyword arguments of obstore.store.from_url that are not store configuration (any other one is).
_KWARG_PARTS = ("config", "client_options", "retry_config", "credential_provider")
# The prefix of the environment variables that configure an object store's client, by URL scheme.
_ENV_PREFIX = {
    "s3": "AWS_",
    "s3a": "AWS_",
    "gs": "GOOGLE_",
    "gcs": "GOOGLE_",
    "az": "AZURE_",
    "azure": "AZURE_",
}
# The environment variables that give an S3 endpoint (obstore and lance read both).
_ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT")
# S3 settings sent in request headers (canonical names; one setting's aliases together), which may hold no
# control character
_S3_HEADER_SETTINGS = (
    ("access_key_id",),
    ("secret_access_key",),
    ("session_token", "token"),
    ("region", "default_region"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_endpoint(url: str, settings: Mapping[str, Any] | None, source: str) -> None:
    """Refuse an endpoint that is not an ``http://`` or ``https://`` URL, for the object store at ``url``, and
    an S3 credential or region holding a control character.

    The endpoint is the one ``settings`` give (``endpoint`` or ``endpoint_url``, with or without ``aws_``),
    else, for ``s3://``, the one the environment gives (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT``). obstore and
    LanceDB end such an endpoint (``"127.0.0.1:9000"``) with a Rust panic, which Python's
    ``except Exception`` does not even catch.

    Parameters
    ----------
    url
        The store's location; a local path takes no endpoint.
    settings
        The settings given for it (obstore's configuration, or LanceDB's ``storage_options``).
    source
        What ``settings`` are, for the message (``"store_kwargs"``, ``"storage_options"``).

    Raises
    ------
    StoreError
        The endpoint names no scheme (or another one), or a credential holds a line end; the message names
        the setting or the environment variable that gave it.
    """
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return
    found = [
        (f"{source} setting {key}", value) for key, value in (settings or {}).items() if _is_endpoint(key)
    ]
    if not found and _ENV_PREFIX.get(scheme) == "AWS_":
        found = [
            (f"environment variable {name}", os.environ[name]) for name in _ENDPOINT_ENV if name in os.environ
        ]
    for where, value in found:
        if not re.match(r"https?://[^/\s]", str(value)):
            raise StoreError(f"{where}={value!r} (for {url}) must be an http:// or https:// URL")
    if _ENV_PREFIX.get(scheme) == "AWS_":
        _check_header_text(url, settings, source)


def _check_header_text(url: str, settings: Mapping[str, Any] | None, source: str) -> None:
    """Refuse an S3 credential or region (given, else from the environment) holding a control character: a
    key read from a file with its line end ended the request signing with a Rust panic (not an Exception).
    The message names where the value came from, never the value."""
    given = {
        canonical_name(key): (f"{source} setting {key}", value) for key, value in (settings or {}).items()
    }
    for aliases in _S3_HEADER_SETTINGS:  # a setting given is used, the environment's then is not
        used = [given[name] for name in aliases if name in given] or [
            (f"environment variable AWS_{name.upper()}", os.environ.get(f"AWS_{name.upper()}"))
            for name in aliases
        ]
        for where, value in used:
            if isinstance(value, str) and _CONTROL.search(value):
                raise StoreError(
                    f"{where} (for {url}) holds a control character (a line end read with it from a file?): "
                    "strip it"
                )


def store_config(store_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The store configuration in ``store_kwargs``: its ``config`` and the keyword arguments obstore takes as
    configuration too (every one but ``client_options``, ``retry_config`` and ``credential_provider``)."""
    kwargs = dict(store_kwargs or {})
    extra = {key: value for key, value in kwargs.items() if key not in _KWARG_PARTS}
    return {**extra, **dict(kwargs.get("config") or {})}


def with_recorded_config(
    url: str,
    store_kwargs: dict[str, Any] | None,
    recorded: Mapping[str, Any] | None,
    *,
    environment: bool = True,
) -> dict[str, Any] | None:
    """``store_kwargs`` completed by the non-secret settings an atlas recorded for its store at ``url``
    (``public_store_config``: endpoint, region, ``allow_http``...), so that a reader supplies its credentials
    only.

    A recorded setting is a default: one that ``store_kwargs`` give (under any spelling) or the environment
    gives (``AWS_<NAME>`` for S3, ``GOOGLE_`` / ``AZURE_`` for the others) wins. An endpoint given other than
    the recorded one is the caller's choice, logged as a warning. A local ``url`` takes no settings.
    ``environment=False`` leaves the environment out (``recorded`` are settings that already overrode it).
    """
    prefix = _ENV_PREFIX.get(_scheme(url))
    if prefix is None or not recorded:
        return store_kwargs
    recorded = dict(recorded)
    recorded_client = {
        str(key).lower(): value for key, value in (recorded.pop("client_options", None) or {}).items()
    }
    kwargs = dict(store_kwargs or {})
    env = {
        canonical_name(name.removeprefix(prefix)): value
        for name, value in (os.environ.items() if environment else ())
        if name.startswith(prefix)
    }
    given = {**env, **{canonical_name(key): value for key, value in store_config(kwargs).items()}}
    ours, theirs = given.get("endpoint"), recorded.get("endpoint")
    if ours is not None and theirs is not None and str(ours).rstrip("/") != str(theirs).rstrip("/"):
        log.warning(
            "zarr store %s: the endpoint %s is given, the atlas recorded %s: using %s",
            url,
            ours,
            theirs,
            ours,
        )
    config = {key: value for key, value in recorded.items() if canonical_name(key) not in given}
    taken = {str(key).lower() for key in kwargs.get("client_options") or {}} | set(env)
    client = {key: value for key, value in recorded_client.items() if key not in taken}
    if config:
        kwargs["config"] = {**config, **dict(kwargs.get("config") or {})}
    if client:
        kwargs["client_options"] = {**client, **dict(kwargs.get("client_options") or {})}
    return kwargs


def _scheme(url: str) -> str:
    """``url``'s scheme in lower case; ``""`` for a local path."""
    return url.partition("://")[0].lower() if "://" in url else ""


def _is_endpoint(key: object) -> bool:
    return canonical_name(key) == "endpoint"


def canonical_name(key: object) -> str:
    """A setting's name in one spelling: lower case, no ``aws_`` prefix, ``endpoint_url`` as ``endpoint``."""
    name = str(key).lower().removeprefix("aws_")
    return "endpoint" if name == "endpoint_url" else name
