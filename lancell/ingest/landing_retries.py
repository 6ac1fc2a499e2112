"""A landing file's ingestion run again after a store failure, on an object store: the Dagster asset's and
the command line's (``lancell ingest``).

lancell sends its own writes and deletes again after a broken connection
(:mod:`lancell.storage.store_retries`), but not LanceDB's: a connection reset under lance's commit of a
dataset's cell rows or record fails the ingestion, which is rolled back. On S3, GCS or Azure such a failure
(or a server throttling or briefly unreachable past its retries) is worth another try of the whole
ingestion, after a wait: the file is ingested again after each of ``STORE_RETRY_WAITS``.

Raised at once, as is every other error: a failure of an atlas whose database and store are both on local
disk; a lock that timed out (another writer holds it); a failure no wait mends (a full, read-only or
over-quota disk, a permission or credentials refused, a client error of the server, a store without
conditional writes); and a failure after which the dataset is in the atlas (it came after the dataset's
commit, in the registry's update say, or another run ingested it): run again, it would be reported
present, and what failed not said.
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import obstore.exceptions as obs_errors
import obstore.store as obs_store

from lancell.errors import LockTimeoutError, StoreError
from lancell.ingest.landing import LandingOutcome, LandingSpec, ingest_landing_file, present_record
from lancell.storage.stores import is_local

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.tables.schema import DatasetRecord

__all__ = ["STORE_RETRY_WAITS", "ingest_retrying"]

# seconds waited before each ingestion again (two retries)
STORE_RETRY_WAITS = (5.0, 20.0)
# failures no wait mends: a full, read-only or over-quota disk, a permission refused, no file handle left
_LASTING_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EMFILE}
)
_LASTING = (obs_errors.PermissionDeniedError, obs_errors.UnauthenticatedError, obs_errors.NotSupportedError)
# a server's answer that the request itself is wrong (4xx), but for a timeout (408) and throttling (429)
_CLIENT_ERROR = re.compile(r"status code: 4(?!08|29)\d\d")


def ingest_retrying(
    atlas: RaggedAtlas, spec: LandingSpec, *, on_retry: Callable[[str], None], **options: Any
) -> tuple[DatasetRecord, LandingOutcome]:
    """:func:`~lancell.ingest.landing.ingest_landing_file` (with ``options``), run again after a store failure
    of an atlas on an object store (see the module docstring); ``on_retry`` is told of each retry, in words,
    before its wait (what the failed try reported, a standardization say, is not the stored dataset's)."""
    local = is_local(atlas.db_uri) and isinstance(atlas.store, obs_store.LocalStore)
    for wait in STORE_RETRY_WAITS:
        try:
            return ingest_landing_file(atlas, spec, **options)
        except StoreError as exc:
            if local or not _passing(exc) or _present(atlas, spec.uid):
                raise
            on_retry(f"{spec.path} is ingested as dataset {spec.uid!r} again in {wait:g} s: {exc}")
        time.sleep(wait)
    return ingest_landing_file(atlas, spec, **options)


def _passing(exc: StoreError) -> bool:
    """Whether the store failure ``exc`` may pass with a wait (see the module docstring)."""
    if isinstance(exc, LockTimeoutError) or exc.errno in _LASTING_ERRNOS:
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, _LASTING) or _CLIENT_ERROR.search(str(cause)):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


def _present(atlas: RaggedAtlas, uid: str) -> bool:
    """Whether dataset ``uid`` is in the atlas; True where the store cannot tell (it is failing still)."""
    try:
        return present_record(atlas, uid) is not None
    except Exception:
        return True
