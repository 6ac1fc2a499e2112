"""The in-memory copy of an AnnData that standardization works on: of a backed file (one without ``X``
too), and of only the matrices asked for (those an ingestion stores)."""

from __future__ import annotations

from collections.abc import Collection

import anndata as ad
import h5py

from lancell.errors import ArgumentError

__all__ = ["in_memory"]


def in_memory(adata: ad.AnnData, matrices: Collection[str] | None = None) -> ad.AnnData:
    """A copy of ``adata`` in memory holding ``X`` and the layers that ``matrices`` names (``"X"`` and layer
    names; all by default); everything else (obs, var, obsm, varm, obsp, varp, uns, raw) is copied whole.

    A backed file's ``X`` is read once, into the copy (not read and then copied); a backed file without ``X``
    (its counts in layers only, where anndata's ``to_memory`` raises ``KeyError``) is copied without it.

    Raises
    ------
    ArgumentError
        ``matrices`` names a layer ``adata`` lacks, or is a string.
    """
    if isinstance(matrices, str):
        raise ArgumentError(f"matrices must be a collection of names, got the string {matrices!r}")
    names = ["X", *adata.layers] if matrices is None else list(dict.fromkeys(matrices))
    unknown = [name for name in names if name != "X" and name not in adata.layers]
    if unknown:
        raise ArgumentError(f"no layers {unknown} in adata.layers {list(adata.layers)}")
    with_x = "X" in names and _has_x(adata)
    shallow = ad.AnnData(
        X=adata.X if with_x and not adata.isbacked else None,
        obs=adata.obs,
        var=adata.var,
        layers={name: adata.layers[name] for name in names if name != "X"} or None,
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        obsp=dict(adata.obsp),
        varp=dict(adata.varp),
        uns=adata.uns,
    )
    out = shallow.copy()  # every array the caller's adata holds, copied once
    if with_x and adata.isbacked:
        out.X = _read(adata.X)
    if adata.raw is not None:
        raw = adata.raw
        out.raw = ad.AnnData(X=_read(raw.X), var=raw.var.copy()) if adata.isbacked else raw.to_adata()
    return out


def _read(matrix: object) -> object:
    """A backed matrix (anndata's sparse dataset, or an h5py dataset) read into memory."""
    return matrix.to_memory() if hasattr(matrix, "to_memory") else matrix[()]


def _has_x(adata: ad.AnnData) -> bool:
    """Whether ``adata`` holds an ``X`` (a backed file may keep its counts in layers only)."""
    if not adata.isbacked:
        return adata.X is not None
    with h5py.File(adata.filename, "r") as file:
        return "X" in file
