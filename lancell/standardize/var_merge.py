"""Merge AnnData columns (var entries) that share a feature uid, before ingestion.

Standardizing gene names can map two inputs to one Ensembl id (a symbol and its older alias both present).
An atlas stores each feature once per dataset, so such columns are summed (exact for counts), reduced to the
first one (a :class:`~lancell.errors.LancellWarning` says how many were left out), or refused
(:func:`merge_duplicate_columns`); :func:`merge_modes` picks, per matrix (``X`` and each layer), ``"sum"``
for counts (integers, or floats that are all whole numbers, none negative) and ``"first"`` otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from kernels.ingest import UINT32_MAX  # integers are stored as uint32 counts
from lancell.errors import DataValueError, LancellWarning, StandardizationError, caller_outside_lancell

__all__ = ["Duplicates", "Merge", "merge_duplicate_columns", "merge_modes"]

Duplicates = Literal["sum", "first", "error", "auto"]
Merge = Literal["sum", "first"]


def _matrices(adata: ad.AnnData) -> dict[str, object]:
    """``X`` (unless the file has none: its counts in a layer) and every layer, by name."""
    x = {} if adata.X is None else {"X": adata.X}
    return {**x, **{f"layer {name!r}": adata.layers[name] for name in adata.layers}}


def _values(matrix: object) -> np.ndarray:
    return matrix.data if sp.issparse(matrix) else np.asarray(matrix)  # type: ignore[attr-defined]


def _whole_numbers(matrix: object) -> bool:
    """Whether ``matrix`` holds counts: integers (an integer dtype, or floats that are all whole numbers),
    none negative (a negative value is no count: summed, it would be hidden in its feature's total)."""
    values = _values(matrix)
    if values.size and values.min() < 0:
        return False
    return matrix.dtype.kind in "biu" or bool(np.array_equal(values, np.trunc(values)))  # type: ignore[attr-defined]


def merge_modes(adata: ad.AnnData, uids: pd.Series) -> dict[str, Merge]:
    """How to merge the columns that share a uid, per matrix (``"X"``, ``"layer 'name'"``): ``"sum"`` where
    they hold counts (integers, or floats that are all whole numbers: counts stored as floats), else
    ``"first"`` (adding up normalized values would change them)."""
    values = pd.Series(np.asarray(uids, dtype=object))
    shared = np.flatnonzero(values.duplicated(keep=False).to_numpy())
    return {
        name: "sum" if shared.size == 0 or _whole_numbers(matrix[:, shared]) else "first"  # type: ignore[index]
        for name, matrix in _matrices(adata).items()
    }


def _summed(matrix: object, codes: np.ndarray, distinct: pd.Index, where: str) -> object:
    """``matrix`` (cells x inputs) with columns of the same code added up, exactly.

    Integers are added as int64 (uint64 for unsigned input) and floats as float64; the result keeps the
    input dtype when its values fit it (floats: at least float32; whole numbers only where float32 holds
    them exactly, other floats always, as float sums round), else stays wide.
    """
    dtype = np.dtype(matrix.dtype)  # type: ignore[attr-defined]
    integer = dtype.kind in "biu"
    shared = np.flatnonzero(pd.Series(codes).duplicated(keep=False).to_numpy())
    summed = _values(matrix[:, shared])  # type: ignore[index]
    whole = integer or bool(np.array_equal(summed, np.trunc(summed)))
    if whole and summed.size and summed.min() < 0:  # (fractions: normalized values, summed as asked)
        raise DataValueError(
            f"{where}: var entries that share a feature uid hold negative whole numbers, which no count is; "
            "summing them would hide them in the totals: fix the values, or pass duplicates='first'"
        )
    wide = np.dtype(np.uint64 if dtype.kind == "u" else np.int64) if integer else np.dtype(np.float64)
    merge = sp.csr_matrix(
        (np.ones(len(codes), dtype=wide), (np.arange(len(codes)), codes)), shape=(len(codes), len(distinct))
    )
    if sp.issparse(matrix):
        total = sp.csr_matrix(sp.csr_matrix(matrix) @ merge)
        values = total.data
    else:
        total = np.asarray(merge.T @ np.asarray(matrix, dtype=wide).T).T
        values = total
    if not integer:  # whole-number sums (counts) float32 cannot hold exactly (above 2**24) stay float64
        narrow = np.result_type(dtype, np.float32)
        counts = np.array_equal(values, np.trunc(values), equal_nan=True)
        exact = not counts or np.array_equal(values.astype(narrow).astype(np.float64), values, equal_nan=True)
        return total.astype(narrow, copy=False) if exact else total
    if values.size and values.max() > UINT32_MAX:
        column_max = total.max(axis=0)
        column_max = column_max.toarray() if sp.issparse(column_max) else np.asarray(column_max)
        over = distinct[np.flatnonzero(column_max.ravel() > UINT32_MAX)].tolist()
        raise DataValueError(
            f"{where}: summing the var entries that share a feature uid gives values above {UINT32_MAX} "
            f"(counts are stored as uint32) for {len(over)} features, e.g. {over[:5]}; pass "
            "duplicates='first' or 'error'"
        )
    if dtype.kind == "b":
        return total
    info = np.iinfo(dtype)
    fits = values.size == 0 or (values.min() >= info.min and values.max() <= info.max)
    return total.astype(dtype, copy=False) if fits else total


def merge_duplicate_columns(
    adata: ad.AnnData,
    uids: pd.Series,
    how: Literal["sum", "first", "error"] | Mapping[str, Merge],
    *,
    resolved_from: str | None = None,
) -> tuple[ad.AnnData, int]:
    """``adata`` with one column per distinct ``uids`` value (first-seen order) and how many were merged away.

    Parameters
    ----------
    adata
        In memory; not modified.
    uids
        One feature uid per var entry (no missing values).
    how
        ``"sum"``: add the columns of ``X`` and of every layer up, exactly (integers as int64, floats as
        float64; the result keeps the input dtype where its values fit; a plain sum for normalized values);
        ``"first"``: keep the first column of each uid (warns); ``"error"``: refuse when any uid repeats; or
        one of ``"sum"`` / ``"first"`` per matrix, as :func:`merge_modes` gives.
    resolved_from
        The var column ``uids`` were resolved from (None: the var index); the other columns are checked for
        entries they tell apart.

    Warns
    -----
    LancellWarning
        A matrix kept the first column of var entries that share a uid, leaving the others' values out.

    Raises
    ------
    StandardizationError
        ``how="error"`` and a uid repeats (the message lists uids and the var entries that share them), or an
        unknown ``how``, or a missing uid (the message names its var entries), or entries sharing a uid that
        var's own columns tell apart: a feature type (10x's ``feature_types``: a protein named like a gene)
        or an Ensembl id column other than ``resolved_from`` (``gene_ids`` beside symbols: two genes of one
        symbol). Merging them would store one feature's values under another's uid.
    DataValueError
        Summing integers gives values above ``2**32 - 1``, which counts cannot hold (the message names the
        features).
    """
    if isinstance(how, str) and how not in ("sum", "first", "error"):
        raise StandardizationError(f"duplicates must be 'sum', 'first' or 'error', got {how!r}")
    values = pd.Series(np.asarray(uids, dtype=object), index=adata.var_names)
    if values.isna().any():
        missing = values.index[values.isna().to_numpy()].tolist()
        raise StandardizationError(
            f"{len(missing)} var entries have no feature uid (e.g. {missing[:5]}); entries without a uid "
            "cannot be merged"
        )
    repeated = values[values.duplicated(keep=False)]
    if repeated.empty:
        return adata, 0
    shared = {uid: list(names) for uid, names in repeated.groupby(repeated, sort=False).groups.items()}
    preview = dict(list(shared.items())[:5])
    if how == "error":
        raise StandardizationError(
            f"{len(shared)} feature uids are shared by several var entries {preview}; pass "
            "duplicates='sum' (counts) or 'first'"
        )
    _refuse_told_apart(adata.var, values, resolved_from)
    matrices = _matrices(adata)
    modes = dict.fromkeys(matrices, how) if isinstance(how, str) else dict(how)
    codes, distinct = pd.factorize(values)
    first = np.unique(codes, return_index=True)[1]
    out = adata[:, first].copy()
    if modes.get("X") == "sum":
        out.X = _summed(adata.X, codes, distinct, "X")
    for name in adata.layers:
        if modes[f"layer {name!r}"] == "sum":
            out.layers[name] = _summed(adata.layers[name], codes, distinct, f"layer {name!r}")
    if kept_first := [name for name, mode in modes.items() if mode == "first"]:
        summed = [name for name, mode in modes.items() if mode == "sum"]
        added = f"; {' and '.join(summed)}: added up" if summed else ""
        warnings.warn(
            f"{adata.n_vars - len(distinct)} var entries share a feature uid with an earlier one and were "
            f"left out of {' and '.join(kept_first)}, their values not stored (duplicates='first'; 'sum' "
            f"adds them up){added}: {preview}",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return out, adata.n_vars - len(distinct)


# 10x's feature types (CELLxGENE's feature_type holds gene biotypes instead: not a reason to keep apart)
_TENX_TYPES = frozenset({"Gene Expression", "Antibody Capture", "Antigen Capture", "CRISPR Guide Capture",
                         "Multiplexing Capture", "Peaks", "Custom"})  # fmt: skip
_ENSEMBL_ID = r"ENS[A-Z]*G[0-9]{6,}"
_ID_SUFFIX = r"(\.[0-9]+)?(_PAR_Y)?$"  # a version, and GENCODE's name for a pseudoautosomal gene's Y copy
_INDEX = "var index"  # (how the var index is named in a refusal)


def _refuse_told_apart(var: pd.DataFrame, uids: pd.Series, resolved_from: str | None) -> None:
    """Refuse var entries sharing a uid (``uids``: one per entry) that 10x's feature type column, or an
    Ensembl id column (the var index too) other than ``resolved_from``, gives different values (ids compared
    without version or ``_PAR_Y``; a missing value tells nothing apart)."""
    shared = uids.duplicated(keep=False).to_numpy()
    names = var.index[shared]
    group = uids.to_numpy()[shared]
    columns = {_INDEX: pd.Series(var.index, dtype=object)} if resolved_from is not None else {}
    columns.update(
        {c: var[c] for c in var.columns if c != resolved_from and c not in ("feature_uid", "ensembl_id")}
    )
    for column, series in columns.items():
        whole = pd.Series(series.to_numpy(), dtype="string")
        text = whole.iloc[np.flatnonzero(shared)].reset_index(drop=True)
        # (feature_types is 10x's and scanpy's name, whatever its values: GEX/ADT too; a feature_type column
        # holds CELLxGENE's biotypes unless it holds 10x's types)
        types = column == "feature_types" or (column == "feature_type" and _TENX_TYPES & set(whole.dropna()))
        if types:
            values = text
            remedy = (
                f"standardize and ingest each feature type on its own (adata[:, adata.var[{column!r}] == "
                "'Gene Expression']), or give each a feature space of its own"
            )
        elif (ids := whole.dropna()).size and ids.str.fullmatch(_ENSEMBL_ID + _ID_SUFFIX).mean() >= 0.9:
            values = text.str.replace(_ID_SUFFIX, "", regex=True)
            given = (
                "gene_column=None"
                if column == _INDEX
                else f"gene_column={column!r}; --var-uid-column {column}"
            )
            remedy = f"standardize by that column ({given})"
        else:
            continue
        differ = values.groupby(group, sort=False).nunique() > 1
        if differ.any():
            told = {
                uid: list(zip(names[group == uid], text[group == uid], strict=True))
                for uid in differ.index[differ.to_numpy()][:3]
            }
            raise StandardizationError(
                f"{int(differ.sum())} feature uids are shared by var entries that {column!r} tells apart "
                f"(uid: [(var entry, {column})]: {told}): merging them would store one entry's values under "
                f"another's uid; {remedy}"
            )
