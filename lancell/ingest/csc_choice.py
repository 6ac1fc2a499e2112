"""Which datasets get a CSC copy: a choice given (``csc=True`` / ``False``), else sparse datasets of at least
:data:`~lancell.storage.csc.CSC_MIN_VALUES` stored values; a run of several modalities passes its choice to
the sparse ones (a dense feature space's rows hold every feature: it has no CSC copy).
"""

from __future__ import annotations

import warnings

from lancell.errors import LancellWarning, caller_outside_lancell
from lancell.storage.csc import CSC_MIN_VALUES
from lancell.tables.feature_spaces import FeatureSpace

__all__ = ["check_csc_of_run", "csc_of_modality", "writes_csc"]


def writes_csc(space: FeatureSpace, nnz: int, csc: bool | None) -> bool:
    """Whether a dataset of ``nnz`` stored values in ``space`` gets a CSC copy, ``csc`` given or None."""
    return space.kind == "sparse" and (nnz >= CSC_MIN_VALUES if csc is None else csc)


def csc_of_modality(csc: bool | None, space: FeatureSpace) -> bool | None:
    """A run of several modalities' ``csc`` choice, for the one in ``space``: the sparse ones' (a dense space
    has no CSC copy; :func:`check_csc_of_run` warns where no modality of the run is sparse)."""
    return csc if space.kind == "sparse" else None


def check_csc_of_run(csc: bool | None, spaces: list[FeatureSpace], uid: str) -> None:
    """Warn that ``csc=True`` is ignored by a run of modalities (dataset ``uid``) in ``spaces`` none of which
    is sparse."""
    if csc and not any(space.kind == "sparse" for space in spaces):
        names = sorted(space.name for space in spaces)
        warnings.warn(
            f"dataset {uid!r}: csc=True is ignored: feature spaces {names} are dense, and only sparse "
            "datasets have a CSC copy",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
