"""The cells' obs of a 10x output ingested by :func:`lancell.ingest.tenx.add_from_10x`: its barcodes with the
caller's extra columns (constants, values in cell order, or rows indexed by barcode)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Set

import numpy as np
import pandas as pd

from lancell.errors import IngestError, LancellWarning, caller_outside_lancell
from lancell.ingest.tenx_matrix import TenxMatrix

__all__ = ["cell_obs"]


def cell_obs(matrix: TenxMatrix, obs: pd.DataFrame | Mapping[str, object] | None) -> pd.DataFrame:
    """``matrix.obs`` with the columns of ``obs`` (see :func:`add_from_10x`).

    Raises
    ------
    IngestError
        A mapping value that is a sequence of another length than the number of cells, a mapping, a set or
        an iterator (no cell order), an
        ``obs`` frame or Series that lacks barcodes or has several rows for one, a one-row frame for a
        one-cell matrix indexed by another barcode.
    """
    frame = matrix.obs.copy()
    if obs is None:
        return frame
    if not isinstance(obs, pd.DataFrame):
        for name, value in obs.items():
            if isinstance(value, pd.Series):  # by its index, like a frame's column, never aligned to nulls
                frame[name] = _rows_by_barcode(matrix, value.to_frame(name))[name]
                continue
            if isinstance(value, Mapping):
                raise IngestError(
                    f"{matrix.path}: obs[{name!r}] is a mapping; give one value per cell (a list or array in "
                    "the matrix's cell order, or a Series indexed by barcode) or a constant"
                )
            if isinstance(value, Set) or (pd.api.types.is_list_like(value) and not hasattr(value, "__len__")):
                raise IngestError(
                    f"{matrix.path}: obs[{name!r}] is a {type(value).__name__}, which has no cell order; "
                    "give one value per cell (a list or array in the matrix's cell order, or a Series "
                    "indexed by barcode) or a constant"
                )
            if pd.api.types.is_list_like(value) and len(value) != len(frame):
                raise IngestError(
                    f"{matrix.path}: obs[{name!r}] has {len(value)} values but the matrix has "
                    f"{len(frame)} cells; give one value per cell or a constant"
                )
            frame[name] = value
        return frame
    barcodes = frame.index
    if not obs.index.isin(barcodes).any() and len(obs) == 1 and len(barcodes) != 1:
        return pd.concat([frame, obs.iloc[np.zeros(len(frame), dtype=np.int64)].set_axis(barcodes)], axis=1)
    if not obs.index.isin(barcodes).any() and len(obs) == 1:
        raise IngestError(
            f"{matrix.path}: obs has one row, for {obs.index[0]!r}, and the matrix one cell, barcode "
            f"{barcodes[0]!r}: index the row by that barcode (a one-row frame indexed by something else "
            "than a barcode is repeated for every cell only when the matrix has several)"
        )
    return pd.concat([frame, _rows_by_barcode(matrix, obs)], axis=1)


def _rows_by_barcode(matrix: TenxMatrix, obs: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``obs`` (indexed by barcode) for the matrix's barcodes, in its order.

    Raises
    ------
    IngestError
        ``obs`` has several rows for a barcode, or none for some.
    """
    barcodes = matrix.obs.index
    known = obs.index.isin(barcodes)
    repeated = obs.index[obs.index.duplicated()]
    if len(repeated):
        raise IngestError(
            f"{matrix.path}: obs has several rows for {len(repeated)} barcodes, e.g. {list(repeated[:3])}"
        )
    missing = barcodes.difference(obs.index)
    if len(missing):
        raise IngestError(
            f"{matrix.path}: obs has no rows for {len(missing)} barcodes, e.g. {list(missing[:3])} (columns "
            f"{list(obs.columns)}); index it by barcode, or give its values in the matrix's cell order (a "
            "list or array)"
        )
    if not known.all():
        extra = obs.index[~known]
        warnings.warn(
            f"{matrix.path}: obs rows for {len(extra)} barcodes the matrix does not have are not stored, "
            f"e.g. {list(extra[:3])}",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return obs.loc[barcodes].set_axis(barcodes)
