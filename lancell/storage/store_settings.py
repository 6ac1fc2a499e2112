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

__all__ = [
    "CLIENT_OPTIONS",
    "ENDPOINT_ENV",
    "RETRY_SETTINGS",
    "canonical_name",
    "check_endpoint",
    "check_store_kwargs",
    "environment_client_options",
    "is_s3",
    "store_config",
    "with_environment_client_options",
    "with_recorded_config",
]

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
# The environment variables that give an S3 endpoint (obstore and lance read both) when none is given.
ENDPOINT_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT")
# The AWS SDKs' S3-only endpoint variable: obstore and lance read it too, and use it over an endpoint given in
# their settings.
_S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"
# The client options (``client_options`` of obstore.store.from_url) that obstore and lance also read from the
# environment, as ``<PREFIX><NAME>`` (``AWS_ALLOW_HTTP``, ``GOOGLE_TIMEOUT``...). obstore drops the
# environment's when ``client_options`` are given, and ends one given in ``config`` with a Rust panic.
CLIENT_OPTIONS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_max_frame_size",
        "http2_only",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_ca_certificate",
        "proxy_excludes",
        "proxy_url",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)
# The keys of obstore's retry_config and of its backoff (obstore ignores any other without a word).
RETRY_SETTINGS = ("backoff", "max_retries", "retry_timeout")
_BACKOFF_SETTINGS = ("base", "init_backoff", "max_backoff")
# S3 settings sent in request headers (canonical names; one setting's aliases together), which may hold no
# control character
_S3_HEADER_SETTINGS = (
    ("access_key_id",),
    ("secret_access_key",),
    ("session_token", "token"),
    ("region", "default_region"),
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_endpoint(
    url: str, settings: Mapping[str, Any] | None, source: str, *, lance: bool | None = None
) -> None:
    """Refuse an endpoint that is not an ``http://`` or ``https://`` URL, for the object store at ``url``, an
    endpoint given in ``settings`` that the environment would replace, and an S3 credential or region
    holding a control character.

    The endpoint is the one ``settings`` give (``endpoint`` or ``endpoint_url``, with or without ``aws_``),
    else, for ``s3://``, the one the environment gives (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT``).
    ``AWS_ENDPOINT_URL_S3`` (the AWS SDKs' S3-only variable) is always checked: obstore and lance use it
    even over an endpoint given in their settings, so an endpoint given that differs from it is refused.
    obstore and LanceDB end a malformed endpoint (``"127.0.0.1:9000"``) with a Rust panic, which Python's
    ``except Exception`` does not even catch.

    Parameters
    ----------
    url
        The store's location; a local path takes no endpoint.
    settings
        The settings given for it (obstore's configuration, or LanceDB's ``storage_options``).
    source
        What ``settings`` are, for the message (``"store_kwargs"``, ``"storage_options"``).
    lance
        Whether ``settings`` are LanceDB's (default: when ``source`` is ``"storage_options"``). lance adds
        the environment's endpoint beside one given under another name than ``aws_endpoint`` and uses
        either of the two: a given endpoint that differs from the environment's is refused unless it is
        given as ``aws_endpoint`` (:func:`~lancell.storage.stores.lancedb_storage_options` adds that name).

    Raises
    ------
    StoreError
        The endpoint names no scheme (or another one), an environment variable would replace the endpoint
        given, or a credential holds a line end; the message names the setting or the environment variable.
    """
    scheme = _scheme(url)
    if scheme in ("", "file"):
        return
    lance = source == "storage_options" if lance is None else lance
    settings = settings or {}
    given = [(f"{source} setting {key}", value) for key, value in settings.items() if _is_endpoint(key)]
    found = list(given)
    s3 = _ENV_PREFIX.get(scheme) == "AWS_"
    if s3:
        # without an endpoint given, obstore and lance use the environment's; lance may use it beside one
        # given under another name than aws_endpoint; everyone uses AWS_ENDPOINT_URL_S3
        names = (_S3_ENDPOINT_ENV,)
        if not given or (lance and "aws_endpoint" not in {str(key).lower() for key in settings}):
            names = (*ENDPOINT_ENV, _S3_ENDPOINT_ENV)
        found += [(f"environment variable {name}", os.environ[name]) for name in names if name in os.environ]
    for where, value in found:
        if not re.match(r"https?://[^/\s]", str(value)):
            raise StoreError(f"{where}={value!r} (for {url}) must be an http:// or https:// URL")
    if s3:
        _check_endpoint_not_replaced(url, given, found[len(given) :])
        _check_header_text(url, settings, source)


def _check_endpoint_not_replaced(
    url: str, given: list[tuple[str, Any]], environment: list[tuple[str, Any]]
) -> None:
    """Refuse an endpoint given that an environment variable would replace: ``AWS_ENDPOINT_URL_S3`` for
    every client, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT`` for lance when the endpoint is not given as
    ``aws_endpoint`` (``environment`` holds only those variables then)."""
    for where, value in given:
        for variable, theirs in environment:
            if _same_endpoint(value, theirs):
                continue
            client = "obstore and LanceDB use" if variable.endswith(_S3_ENDPOINT_ENV) else "LanceDB may use"
            remedy = (
                "unset the variable, or make the two agree"
                if variable.endswith(_S3_ENDPOINT_ENV)
                else "give the endpoint as aws_endpoint (lance then leaves the environment's out), unset "
                "the variable, or make the two agree"
            )
            raise StoreError(
                f"{where}={value!r} (for {url}) would not be used: {client} the {variable}={theirs!r} "
                f"instead; {remedy}"
            )


def _same_endpoint(one: object, other: object) -> bool:
    return str(one).rstrip("/") == str(other).rstrip("/")


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


def check_store_kwargs(url: str, store_kwargs: Mapping[str, Any] | None) -> None:
    """Refuse what obstore would drop or end in a Rust panic, for the object store at ``url``: a key of
    ``retry_config`` (or of its ``backoff``) obstore does not know, which it ignores without a word, and a
    client option (``allow_http``, ``timeout``...) given as configuration (``config`` or a keyword argument),
    which it ends with a Rust panic.

    Raises
    ------
    StoreError
        Naming the key, and the keys that are known (or where the client option goes).
    """
    kwargs = store_kwargs or {}
    retry = kwargs.get("retry_config")
    if isinstance(retry, Mapping):
        unknown = sorted(str(key) for key in retry if key not in RETRY_SETTINGS)
        backoff = retry.get("backoff")
        if isinstance(backoff, Mapping):
            unknown += sorted(f"backoff.{key}" for key in backoff if key not in _BACKOFF_SETTINGS)
        if unknown:
            raise StoreError(
                f"store_kwargs retry_config {unknown} (for {url}): no store knows these keys, and obstore "
                f"would ignore them; retry_config takes {list(RETRY_SETTINGS)}, its backoff "
                f"{list(_BACKOFF_SETTINGS)}"
            )
    prefix = (_ENV_PREFIX.get(_scheme(url)) or "").lower()
    misplaced = [
        key for key in store_config(kwargs) if str(key).lower().removeprefix(prefix) in CLIENT_OPTIONS
    ]
    if misplaced:
        raise StoreError(
            f"store_kwargs settings {misplaced} (for {url}) are client options: give them in "
            "store_kwargs' client_options, not as configuration (obstore ends them there with a Rust panic)"
        )


def environment_client_options(url: str) -> dict[str, str]:
    """The client options the environment gives the object store at ``url`` (``AWS_ALLOW_HTTP``,
    ``AWS_TIMEOUT``... for ``s3://``; ``GOOGLE_``, ``AZURE_`` for the others), by option name."""
    prefix = _ENV_PREFIX.get(_scheme(url))
    if prefix is None:
        return {}
    return {
        name: os.environ[prefix + name.upper()]
        for name in CLIENT_OPTIONS
        if prefix + name.upper() in os.environ
    }


def with_environment_client_options(url: str, store_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``store_kwargs`` whose ``client_options``, when given, are completed by the environment's
    (:func:`environment_client_options`; the given ones win, under any case).

    obstore reads the client options from the environment, then replaces them all by ``client_options``
    when those are given: ``AWS_ALLOW_HTTP=true`` was lost once a ``timeout`` was given.
    """
    given = store_kwargs.get("client_options")
    if given is None:
        return store_kwargs
    taken = {str(key).lower() for key in given}
    extra = {name: value for name, value in environment_client_options(url).items() if name not in taken}
    if not extra:
        return store_kwargs
    return {**store_kwargs, "client_options": {**extra, **dict(given)}}


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
    if environment and prefix == "AWS_" and _S3_ENDPOINT_ENV in os.environ:  # the one the clients use
        env["endpoint"] = os.environ[_S3_ENDPOINT_ENV]
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


def is_s3(url: str) -> bool:
    """Whether ``url`` names an S3 location (``s3://`` or ``s3a://``, in any case: ``S3://`` too)."""
    return _ENV_PREFIX.get(_scheme(url)) == "AWS_"


def _scheme(url: str) -> str:
    """``url``'s scheme in lower case; ``""`` for a local path."""
    return url.partition("://")[0].lower() if "://" in url else ""


def _is_endpoint(key: object) -> bool:
    return canonical_name(key) == "endpoint"


def canonical_name(key: object) -> str:
    """A setting's name in one spelling: lower case, no ``aws_`` prefix, ``endpoint_url`` (and
    ``endpoint_url_s3``, of ``AWS_ENDPOINT_URL_S3``) as ``endpoint``."""
    name = str(key).lower().removeprefix("aws_")
    return "endpoint" if name in ("endpoint_url", "endpoint_url_s3") else name
