"""Deprecated path of :mod:`lancell.tables.schema`, kept for one release.

Import the schema names from the package (``lc.LancellBaseSchema``) or from ``lancell.tables.schema``.
"""

import warnings

from lancell.tables.schema import *  # noqa: F403
from lancell.tables.schema import __all__  # noqa: F401

warnings.warn(
    "lancell.schema moved to lancell.tables.schema (or use lancell.LancellBaseSchema etc.); "
    "the old path will be removed in the next release",
    DeprecationWarning,
    stacklevel=2,
)
