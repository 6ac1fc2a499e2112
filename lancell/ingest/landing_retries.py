"""A landing file's ingestion run again after a store failure, on an object store: the Dagster asset's and
the command line's (``lancell ingest``).

lancell sends its own writes and deletes again after a broken connection
(:mod:`lancell.storage.store_retries`), but not LanceDB's: a connection reset under lance's commit of a
dataset's cell rows or record fails the ingestion, which is rolled back. On S3, GCS or Azure such a failure
(or a server throttling or briefly unreachable past its retries) is worth another try of the whole
ingestion, after a wait: the file is ingested again after each of ``STORE_RETRY_WAITS``, unless the dataset
is in the atlas by then (a failure after its record's commit, or another run's ingestion). A lock that timed
out (another writer holds it) and any failure of an atlas on local disk (a full disk, a permission) are
raised at once, as is every other error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


def ingest_retrying(
    atlas: RaggedAtlas, spec: LandingSpec, *, on_retry: Callable[[str], None], **options: Any
) -> tuple[DatasetRecord, LandingOutcome]:
    """:func:`~lancell.ingest.landing.ingest_landing_file` (with ``options``), run again after a store failure
    of an atlas on an object store (see the module docstring); ``on_retry`` is told of each retry, in words,
    before its wait."""
    local = is_local(atlas.db_uri) and isinstance(atlas.store, obs_store.LocalStore)
    for wait in STORE_RETRY_WAITS:
        try:
            return ingest_landing_file(atlas, spec, **options)
        except StoreError as exc:
            if local or isinstance(exc, LockTimeoutError):
                raise
            on_retry(f"{spec.path} is ingested as dataset {spec.uid!r} again in {wait:g} s: {exc}")
        time.sleep(wait)
        present = present_record(atlas, spec.uid)
        if present is not None:
            return present, "present"
    return ingest_landing_file(atlas, spec, **options)
