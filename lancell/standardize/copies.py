"""The in-memory AnnData standardization works on: a copy of a backed file (one without ``X`` too), and
the matrices an ingestion stores."""

from __future__ import annotations

from collections.abc import Collection

import anndata as ad
import h5py

__all__ = ["in_memory", "stored_matrices"]


def in_memory(adata: ad.AnnData) -> ad.AnnData:
    """A copy of ``adata`` in memory. anndata's ``to_memory`` reads ``X``, which a backed file holding its
    counts in layers only lacks (a ``KeyError``): such a file is copied without it."""
    if not adata.isbacked:
        return adata.copy()
    with h5py.File(adata.filename, "r") as file:
        has_x = "X" in file
    if has_x:
        return adata.to_memory()
    layers = {name: adata.layers[name] for name in adata.layers}
    return ad.AnnData(
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        layers=layers,
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        uns=dict(adata.uns),
    )


def stored_matrices(adata: ad.AnnData, sources: Collection[str | None]) -> ad.AnnData:
    """``adata`` with only the matrices to be stored (``X`` for ``"X"`` or None, else the layers named),
    sharing its arrays: what standardization merges, reports and warns about is then what is stored (a count
    layer summed under an X that kept the first column was reported as summed)."""
    adata = in_memory(adata) if adata.isbacked else adata
    layers = {name: adata.layers[name] for name in sources if name not in (None, "X")}
    out = ad.AnnData(
        X=adata.X if any(name in (None, "X") for name in sources) else None,
        obs=adata.obs,
        var=adata.var,
        layers=layers or None,
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        uns=dict(adata.uns),
    )
    if adata.raw is not None:
        out.raw = adata.raw.to_adata()
    return out
