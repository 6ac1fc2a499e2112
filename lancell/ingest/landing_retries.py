"""A landing file's ingestion run again after a store failure, on an object store: the Dagster asset's and
the command line's (``lancell ingest``), through :func:`lancell.run_again.run_again`: a connection reset
under LanceDB's commit of a dataset's cell rows or record fails the ingestion, which is rolled back; it is
ingested again, unless the dataset is in the atlas by then (the failure came after its commit, or another run
ingested it: the failure is raised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lancell.ingest.landing import LandingOutcome, LandingSpec, ingest_landing_file, present_record
from lancell.run_again import run_again

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.tables.schema import DatasetRecord

__all__ = ["ingest_retrying"]


def ingest_retrying(
    atlas: RaggedAtlas, spec: LandingSpec, *, on_retry: Callable[[str], None], **options: Any
) -> tuple[DatasetRecord, LandingOutcome]:
    """:func:`~lancell.ingest.landing.ingest_landing_file` (with ``options``), run again after a store failure
    of an atlas on an object store (:mod:`lancell.run_again`); ``on_retry`` is told of each retry, in words,
    before its wait (what the failed try reported, a standardization say, is not the stored dataset's)."""
    return run_again(
        atlas,
        lambda: ingest_landing_file(atlas, spec, **options),
        made=lambda: present_record(atlas, spec.uid) is not None,
        on_retry=on_retry,
        what=f"{spec.path} is ingested as dataset {spec.uid!r}",
    )
