"""Merge AnnData columns (var entries) that share a feature uid, before ingestion.

Standardizing gene names can map two inputs to one Ensembl id (a symbol and its older alias both present).
An atlas stores each feature once per dataset, so such columns are summed (exact for counts), reduced to the
first one, or refused (:func:`merge_duplicate_columns`).
"""

from __future__ import annotations

from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.errors import StandardizationError

__all__ = ["Duplicates", "merge_duplicate_columns"]

Duplicates = Literal["sum", "first", "error"]


def _summed(matrix: object, codes: np.ndarray, n_out: int) -> object:
    """``matrix`` (cells x inputs) with columns of the same code added up, in the matrix's dtype."""
    dtype = matrix.dtype  # type: ignore[attr-defined]
    merge = sp.csr_matrix(
        (np.ones(len(codes), dtype=dtype), (np.arange(len(codes)), codes)), shape=(len(codes), n_out)
    )
    if sp.issparse(matrix):
        return (sp.csr_matrix(matrix) @ merge).astype(dtype, copy=False)
    return np.asarray(merge.T @ np.asarray(matrix).T).T.astype(dtype, copy=False)


def merge_duplicate_columns(adata: ad.AnnData, uids: pd.Series, how: Duplicates) -> tuple[ad.AnnData, int]:
    """``adata`` with one column per distinct ``uids`` value (first-seen order) and how many were merged away.

    Parameters
    ----------
    adata
        In memory; not modified.
    uids
        One feature uid per var entry (no missing values).
    how
        ``"sum"``: add the columns of ``X`` and of every layer up (values keep their dtype; exact for
        counts, a plain sum for normalized values); ``"first"``: keep the first column of each uid;
        ``"error"``: refuse when any uid repeats.

    Raises
    ------
    StandardizationError
        ``how="error"`` and a uid repeats (the message lists uids and the var entries that share them), or an
        unknown ``how``.
    """
    if how not in ("sum", "first", "error"):
        raise StandardizationError(f"duplicates must be 'sum', 'first' or 'error', got {how!r}")
    values = pd.Series(np.asarray(uids, dtype=object), index=adata.var_names)
    repeated = values[values.duplicated(keep=False)]
    if repeated.empty:
        return adata, 0
    if how == "error":
        shared = {uid: list(names) for uid, names in repeated.groupby(repeated, sort=False).groups.items()}
        preview = dict(list(shared.items())[:5])
        raise StandardizationError(
            f"{len(shared)} feature uids are shared by several var entries {preview}; pass "
            "duplicates='sum' (counts) or 'first'"
        )
    codes, distinct = pd.factorize(values)
    first = np.unique(codes, return_index=True)[1]
    out = adata[:, first].copy()
    if how == "sum":
        out.X = _summed(adata.X, codes, len(distinct))
        for name in adata.layers:
            out.layers[name] = _summed(adata.layers[name], codes, len(distinct))
    return out, adata.n_vars - len(distinct)
