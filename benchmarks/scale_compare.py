"""Whether two atlases built from the same inputs are identical: what ``benchmarks/scale_dagster.py`` proves.

**Identical** means, compared table by table and value by value (both atlases optimized first):

- the same registry: every column of every feature, ``global_index`` included;
- the same dataset records: every field but ``zarr_group`` (a fresh group per write), ``source`` (the
  landing flow records the landed file) and ``created_at`` (the clock);
- per dataset, the same cell rows: every column, sorted by uid, the pointer's ``start``, ``end`` and
  ``zarr_row`` included; the pointer's ``zarr_group`` is, in each atlas, the group its own record names;
- per dataset, bit-identical matrix reads of every cell (``query().to_batches()`` of the ``counts`` layer):
  the same obs names and var names in the same order, and the same CSR ``indptr``, ``indices`` and ``data``
  arrays with the same dtypes; the cells and values read add up to the records' ``n_cells`` and ``nnz``.
"""

from __future__ import annotations

import time
from typing import Any

from rss_sampler import peak_rss_mib

__all__ = ["compare"]

BATCH = 20_000


def _cell_rows(atlas: Any, dataset: str, zarr_group: str) -> Any:
    """A dataset's cell rows sorted by uid, the pointer flattened and its ``zarr_group`` checked, then dropped."""
    import pyarrow.compute as pc

    table = atlas.query().where(f"dataset_uid = '{dataset}'").to_arrow().flatten()
    groups = table.column("gene_expression.zarr_group").unique().to_pylist()
    assert groups == [zarr_group], (dataset, groups, zarr_group)
    table = table.drop_columns(["gene_expression.zarr_group"])
    return table.take(pc.sort_indices(table, [("uid", "ascending")]))


def compare(a_spec: dict[str, str], b_spec: dict[str, str]) -> dict[str, Any]:
    """Assert that the atlases at ``a_spec`` and ``b_spec`` (``db``, ``store``) are identical (module doc).

    Returns what was compared: datasets, features, cells and values, the record fields, seconds, peak RSS.

    Raises
    ------
    AssertionError
        The first difference found, naming the dataset.
    """
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from lancell.atlas import RaggedAtlas

    a = RaggedAtlas.open(a_spec["db"], store=a_spec["store"])
    b = RaggedAtlas.open(b_spec["db"], store=b_spec["store"])
    started = time.perf_counter()
    registry = [
        x.feature_registry("gene_expression").sort_values("uid").reset_index(drop=True) for x in (a, b)
    ]
    pd.testing.assert_frame_equal(*registry)
    records = [x.list_datasets().sort_values("uid").reset_index(drop=True) for x in (a, b)]
    fields = [c for c in records[0].columns if c not in ("zarr_group", "source", "created_at")]
    pd.testing.assert_frame_equal(records[0][fields], records[1][fields])
    cells = nnz = 0
    for row_a, row_b in tqdm(
        zip(records[0].itertuples(), records[1].itertuples(), strict=True),
        total=len(records[0]),
        desc="compare",
        unit="ds",
    ):
        rows_a, rows_b = (
            _cell_rows(a, row_a.uid, row_a.zarr_group),
            _cell_rows(b, row_b.uid, row_b.zarr_group),
        )
        assert rows_a.equals(rows_b), f"{row_a.uid}: cell rows differ"
        batches = [
            x.query()
            .where(f"dataset_uid = '{row_a.uid}'")
            .layers("gene_expression", "counts")
            .to_batches(BATCH)
            for x in (a, b)
        ]
        for got, want in zip(*batches, strict=True):
            assert got.obs_names.equals(want.obs_names) and got.var_names.equals(want.var_names), row_a.uid
            assert type(got.X) is type(want.X) and got.X.dtype == want.X.dtype, row_a.uid
            for part in ("indptr", "indices", "data"):
                x, y = getattr(got.X, part), getattr(want.X, part)
                assert x.dtype == y.dtype and np.array_equal(x, y), f"{row_a.uid}: X.{part} differs"
            cells, nnz = cells + got.n_obs, nnz + int(got.X.nnz)
    assert cells == int(records[0]["n_cells"].sum()) and nnz == int(records[0]["nnz"].sum())
    return {
        "identical": True,
        "datasets": len(records[0]),
        "features": len(registry[0]),
        "cells": cells,
        "nnz": nnz,
        "record_fields": fields,
        "seconds": time.perf_counter() - started,
        "peak_mib": peak_rss_mib(),
    }
