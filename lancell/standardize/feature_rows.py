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
    symbol, else the file's own symbol column beside a var index of ids, else the input: the
    ``report.gene_column`` value or the var name), ``ensembl_id`` and ``organism`` columns where it has
    them."""
    genes = report.genes.drop_duplicates("input").set_index("input")  # type: ignore[union-attr]
    names = adata.var_names if report.gene_column is None else adata.var[report.gene_column]
    inputs = pd.Series(names.astype(str).str.strip().to_numpy())
    rows = pd.DataFrame({"uid": adata.var["feature_uid"].astype(str).to_numpy()})
    if "gene_symbol" in columns:
        symbols = pd.Series(genes["symbol"].reindex(inputs).to_numpy(), dtype=object)
        if report.gene_column is None and (given := _symbol_column(adata.var)) is not None:
            own = pd.Series(adata.var[given].astype(object).to_numpy())
            symbols = symbols.fillna(own)  # an id without a current gene (retired, unknown): the file's
        rows["gene_symbol"] = symbols.fillna(inputs).to_numpy()
    if "ensembl_id" in columns:
        rows["ensembl_id"] = adata.var["ensembl_id"].astype(object).to_numpy()
    if "organism" in columns:
        rows["organism"] = report.organism
    return rows


_SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "symbol", "feature_name")  # 10x's, scanpy's, CELLxGENE's


def _symbol_column(var: pd.DataFrame) -> str | None:
    """The var column holding the file's own gene symbols beside a var index of ids, if it has one."""
    return next((name for name in _SYMBOL_COLUMNS if name in var.columns), None)
