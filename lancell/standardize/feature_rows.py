"""The feature registry's rows for a standardized AnnData's genes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import anndata as ad

    from lancell.standardize.report import StandardizationReport

__all__ = ["feature_rows"]


def feature_rows(adata: ad.AnnData, report: StandardizationReport, columns: pd.Index) -> pd.DataFrame:
    """Registry rows for the ``feature_uid`` of ``adata``, with the registry's ``gene_symbol`` (current
    symbol, else the input: the ``report.gene_column`` value or the var name), ``ensembl_id`` and
    ``organism`` columns where it has them."""
    genes = report.genes.drop_duplicates("input").set_index("input")  # type: ignore[union-attr]
    names = adata.var_names if report.gene_column is None else adata.var[report.gene_column]
    inputs = pd.Series(names.astype(str).str.strip().to_numpy())
    rows = pd.DataFrame({"uid": adata.var["feature_uid"].astype(str).to_numpy()})
    if "gene_symbol" in columns:
        symbols = pd.Series(genes["symbol"].reindex(inputs).to_numpy(), dtype=object)
        rows["gene_symbol"] = symbols.fillna(inputs).to_numpy()
    if "ensembl_id" in columns:
        rows["ensembl_id"] = adata.var["ensembl_id"].astype(object).to_numpy()
    if "organism" in columns:
        rows["organism"] = report.organism
    return rows
