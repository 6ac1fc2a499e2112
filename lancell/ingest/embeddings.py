"""An AnnData's embeddings (``obsm``) as the cell table's vector columns: checked and converted to float32."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import scipy.sparse as sp

from lancell.errors import DataValueError, IngestError, ShapeMismatchError
from lancell.tables.stored_fields import vector_fields

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = ["embedding_vectors"]


def embedding_vectors(
    core: AtlasCore, adata: ad.AnnData, dataset: str, obsm_columns: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Check and convert the embeddings named by ``obsm_columns`` (float32, finite, the declared width)."""
    declared = vector_fields(core.cell_arrow)
    vectors = {}
    for key, column in obsm_columns.items():
        if key not in adata.obsm:
            raise IngestError(f"dataset {dataset!r}: no obsm[{key!r}] (obsm has {list(adata.obsm)})")
        if column not in declared:
            raise IngestError(
                f"dataset {dataset!r}: {column!r} is not a vector column of the cell schema {declared}"
            )
        given = adata.obsm[key]
        shape = (
            given.shape if sp.issparse(given) else np.shape(given)
        )  # (checked before a sparse one is read)
        if len(shape) != 2 or tuple(shape) != (adata.n_obs, declared[column]):
            raise ShapeMismatchError(
                f"dataset {dataset!r}: obsm[{key!r}] has shape {tuple(shape)}, "
                f"column {column!r} needs ({adata.n_obs}, {declared[column]})"
            )
        values = given.toarray() if sp.issparse(given) else np.asarray(given)
        if values.dtype.kind not in "fiu" or not np.isfinite(values).all():
            raise DataValueError(f"dataset {dataset!r}: obsm[{key!r}] must be finite numbers")
        top = float(np.abs(values).max()) if values.size else 0.0
        if top > np.finfo(np.float32).max:  # (it was stored as inf)
            raise DataValueError(
                f"dataset {dataset!r}: obsm[{key!r}] holds {top:g}, which does not fit float32 (the vector "
                "column's type)"
            )
        vectors[column] = values.astype(np.float32)
    return vectors
