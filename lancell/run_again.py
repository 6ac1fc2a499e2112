"""An operation on an atlas in an object store, run again after a store failure: the Dagster assets' and the
command line's ingestion (:mod:`lancell.ingest.landing_retries`), ``optimize`` and ``snapshot``.

lancell sends its own writes and deletes again after a broken connection
(:mod:`lancell.storage.store_retries`), but not LanceDB's: a connection reset under one of lance's commits
fails the operation (an ingestion is rolled back; an optimize or a snapshot changes nothing or is whole). On
S3, GCS or Azure such a failure (or a server throttling or briefly unreachable past its retries) is worth
another try of the whole operation, after a wait: it is run again after each of ``STORE_RETRY_WAITS``.

Raised at once, as is every other error: a failure of an atlas whose database and store are both on local
disk; a lock that timed out (another writer holds it); a failure no wait mends (a full, read-only or
over-quota disk, a permission or credentials refused, a store without conditional writes); and a failure
after which what the operation makes is there (``made()``: a dataset whose failure came after its commit,
in the registry's update say; a snapshot taken before the failure): run again, it would find it made, and
what failed would not be said.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import obstore.exceptions as obs_errors
import obstore.store as obs_store

from lancell.errors import LockTimeoutError, StoreError
from lancell.storage.stores import is_local

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["STORE_RETRY_WAITS", "run_again"]

T = TypeVar("T")

# seconds waited before each run again (two retries)
STORE_RETRY_WAITS = (5.0, 20.0)
# failures no wait mends: a full, read-only or over-quota disk, a permission refused, no file handle left
_LASTING_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EMFILE}
)
_LASTING = (obs_errors.PermissionDeniedError, obs_errors.UnauthenticatedError, obs_errors.NotSupportedError)
# a server's refusal of the credentials or the permission, in a LanceDB error's text (obstore's are typed;
# no other 4xx is judged: S3 answers a slow or cut connection with 400 RequestTimeout or IncompleteBody)
_REFUSED = re.compile(r"status code: 40[13]")


def run_again(
    atlas: RaggedAtlas,
    operation: Callable[[], T],
    *,
    made: Callable[[], bool],
    on_retry: Callable[[str], None],
    what: str,
) -> T:
    """``operation()`` on ``atlas``, run again after a store failure (see the module docstring). ``made()``
    tells, after a failure, whether what the operation makes is there (then the failure is raised);
    ``on_retry`` is told of each retry, in words naming ``what`` is run again, before its wait."""
    local = is_local(atlas.db_uri) and isinstance(atlas.store, obs_store.LocalStore)
    for wait in STORE_RETRY_WAITS:
        try:
            return operation()
        except StoreError as exc:
            if local or not _passing(exc) or _told(made):
                raise
            on_retry(f"{what} again in {wait:g} s: {exc}")
        time.sleep(wait)
    return operation()


def _passing(exc: StoreError) -> bool:
    """Whether the store failure ``exc`` may pass with a wait (see the module docstring)."""
    if isinstance(exc, LockTimeoutError) or exc.errno in _LASTING_ERRNOS:
        return False
    cause: BaseException | None = exc
    while cause is not None:  # (its causes only: an error being handled when it was raised says nothing)
        if isinstance(cause, _LASTING) or _REFUSED.search(str(cause)):
            return False
        cause = cause.__cause__
    return True


def _told(made: Callable[[], bool]) -> bool:
    """``made()``; True where the store cannot tell (it is failing still)."""
    try:
        return made()
    except Exception:
        return True
