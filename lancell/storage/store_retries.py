"""Idempotent writes and deletes sent again after a broken connection obstore did not retry.

obstore retries a request answered with a 5xx status (and a read, however it failed), but not a PUT, POST or
DELETE whose connection broke once the request was on its way: a reset, a lost reply or a request body cut
short fails the call at once (``Error performing PUT <url> in 1.4ms - HTTP error: error sending request
(Connection reset by peer)``), since the write may or may not have landed. On S3 that is one dropped
connection among the hundreds of objects an ingestion writes, and the ingestion was rolled back whole.

An unconditional write (the same bytes again) and a delete are idempotent: sent again, they leave the store as
one success would. :func:`retried` and :func:`retried_async` send them again after such a failure, up to
``RETRIES`` times (fewer where the store's ``retry_config`` asks for fewer ``max_retries``: 0 sends once),
after its backoff (obstore's: 100 ms, doubling, at most 15 s, jittered), and only within its
``retry_timeout`` (180 s by default) of the first try. Each retry is logged as a warning.
Conditional writes (a lock's or claim's ``mode="create"``) are not sent again here: their callers read the
outcome back (:mod:`lancell.tables.lock_objects`). A failure obstore already retried (its message says
``after N retries``) is not retried again, so an outage fails in the time its ``retry_config`` allows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import obstore.exceptions as obs_errors

__all__ = ["RETRIES", "broken_connection", "retried", "retried_async"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = 3
# how obstore names a request that failed in transport, and one it already retried
_TRANSPORT = re.compile(r"Error performing \w+ \S+ in [^,-]+- HTTP error: ")
_RETRIED = re.compile(r"after \d+ retr")
# obstore's default backoff (RetryConfig's): first delay, growth, longest delay
_BACKOFF = (0.1, 2.0, 15.0)
_RETRY_TIMEOUT = 180.0  # obstore's default retry_timeout, seconds


def broken_connection(exc: BaseException) -> bool:
    """Whether ``exc`` is obstore's failure of a request whose connection broke, not retried by obstore."""
    if not isinstance(exc, obs_errors.GenericError):  # (not found, precondition, permission...: answers)
        return False
    text = str(exc)
    return _TRANSPORT.search(text) is not None and _RETRIED.search(text) is None


def _delays(store: Any) -> tuple[list[float], float]:
    """The waits before each retry of a request to ``store`` (its ``retry_config``'s backoff and
    ``max_retries``, capped at ``RETRIES``, else obstore's defaults) and the seconds within which a retry may
    start (its ``retry_timeout``: obstore's bound of a request's retries)."""
    config = getattr(store, "retry_config", None) or {}
    retries = min(RETRIES, int(config.get("max_retries", RETRIES)))
    within = _seconds(config.get("retry_timeout"), _RETRY_TIMEOUT)
    backoff = config.get("backoff") or {}
    first, base, longest = (
        _seconds(backoff.get("init_backoff"), _BACKOFF[0]),
        float(backoff.get("base", _BACKOFF[1])),
        _seconds(backoff.get("max_backoff"), _BACKOFF[2]),
    )
    waits = [min(first * base**attempt, longest) * random.uniform(0.5, 1.0) for attempt in range(retries)]
    return waits, within


def _seconds(value: object, default: float) -> float:
    if value is None:
        return default
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _sent_again(what: str, exc: BaseException, delay: float, attempt: int, retries: int, left: float) -> bool:
    """Whether the request that failed with ``exc`` is sent again after ``delay`` (``left`` seconds of its
    ``retry_timeout`` left), logged if so."""
    if not broken_connection(exc) or delay > left:
        return False
    first_line = str(exc).split("\n", 1)[0]
    log.warning("%s: %s; sent again in %.2f s (retry %d of %d)", what, first_line, delay, attempt, retries)
    return True


def retried(call: Callable[[], T], store: Any, what: str) -> T:
    """``call()`` (an idempotent write or delete to ``store``), called again after a
    :func:`broken_connection`; ``what`` names it in the log."""
    (delays, within), started = _delays(store), time.monotonic()
    for attempt, delay in enumerate(delays, start=1):
        try:
            return call()
        except obs_errors.GenericError as exc:
            if not _sent_again(what, exc, delay, attempt, len(delays), within - time.monotonic() + started):
                raise
        time.sleep(delay)
    return call()


async def retried_async(call: Callable[[], Awaitable[T]], store: Any, what: str) -> T:
    """:func:`retried` for a coroutine function: ``await call()``, awaited again after a
    :func:`broken_connection`."""
    (delays, within), started = _delays(store), time.monotonic()
    for attempt, delay in enumerate(delays, start=1):
        try:
            return await call()
        except obs_errors.GenericError as exc:
            if not _sent_again(what, exc, delay, attempt, len(delays), within - time.monotonic() + started):
                raise
        await asyncio.sleep(delay)
    return await call()
