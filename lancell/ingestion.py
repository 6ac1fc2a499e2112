"""Deprecated path of :mod:`lancell.ingest.from_anndata`, kept for one release.

Use ``lc.add_from_anndata`` or ``from lancell.ingest.from_anndata import add_from_anndata``.
"""

import warnings

from lancell.ingest.from_anndata import add_from_anndata

__all__ = ["add_from_anndata"]

warnings.warn(
    "lancell.ingestion moved to lancell.ingest.from_anndata (or use lancell.add_from_anndata); "
    "the old path will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
