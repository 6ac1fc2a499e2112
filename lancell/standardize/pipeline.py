"""Standardize an AnnData before ingestion: genes -> Ensembl ids, metadata labels -> ontology term ids.

:func:`standardize_anndata` returns a copy with ``var["ensembl_id"]``, ``var["feature_uid"]`` and
``obs["<field>_ontology_term_id"]`` filled, and a :class:`StandardizationReport` that lists every distinct
input with what it resolved to and how (:mod:`lancell.standardize.genes` and
:mod:`lancell.standardize.ontology` describe the match kinds). Genes without an Ensembl id are kept under
their input name (``unresolved="keep"``) or dropped (``"drop"``); inputs that resolve to one id are summed,
reduced to the first, or refused (``duplicates=``). :func:`standardize_and_ingest` does it all, registers the
features and ingests, in one call::

    record, report = standardize_and_ingest(
        atlas, "study.h5ad", feature_space="gene_expression", zarr_layer="counts", organism="human"
    )
    print(report.summary())  # genes resolved / kept / summed, cell types matched
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anndata as ad
import pandas as pd

from lancell.errors import StandardizationError, UnknownOrganismError
from lancell.standardize.genes import (
    GENE_MATCH_KINDS,
    RESOLVED_KINDS,
    GeneReference,
    canonical_organism,
    infer_organism,
)
from lancell.standardize.ontology import FIELD_ONTOLOGY, OntologyBackend, TermMatch, resolve_terms
from lancell.standardize.var_merge import Duplicates, merge_duplicate_columns

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.tables.registry import OnConflict
    from lancell.tables.schema import DatasetRecord

__all__ = [
    "DEFAULT_OBS_COLUMNS",
    "StandardizationReport",
    "feature_rows",
    "standardize_and_ingest",
    "standardize_anndata",
]

log = logging.getLogger(__name__)

DEFAULT_OBS_COLUMNS: Mapping[str, str] = {
    "cell_type": "cell_type_ontology_term_id",
    "tissue": "tissue_ontology_term_id",
    "disease": "disease_ontology_term_id",
    "organism": "organism_ontology_term_id",
    "assay": "assay_ontology_term_id",
}
TERM_SUFFIX = "_ontology_term_id"


@dataclass
class StandardizationReport:
    """What :func:`standardize_anndata` resolved, per distinct input value.

    Attributes
    ----------
    organism
        The organism the genes were resolved for (None when genes were not standardized).
    genes
        One row per var entry: ``input``, ``ensembl_id``, ``symbol``, ``match``, ``candidates``,
        ``duplicate`` (see :meth:`lancell.standardize.genes.GeneReference.resolve`).
    terms
        obs column -> one :class:`~lancell.standardize.ontology.TermMatch` per distinct value.
    skipped_columns
        Requested obs columns that ``obs`` does not have.
    var_counts
        What happened to the var entries: ``resolved`` (got an Ensembl id), ``kept`` (unresolved, kept under
        the input name), ``dropped`` (unresolved, left out), ``summed`` / ``first`` (merged into another
        entry of the same id by adding up / by keeping the first), ``n_vars`` (entries in the output).
    """

    organism: str | None = None
    genes: pd.DataFrame | None = None
    terms: dict[str, list[TermMatch]] = field(default_factory=dict)
    skipped_columns: list[str] = field(default_factory=list)
    var_counts: dict[str, int] = field(default_factory=dict)

    def gene_counts(self) -> dict[str, int]:
        """Number of var entries per match kind (every kind present, zeros included)."""
        if self.genes is None:
            return {}
        counts = self.genes["match"].value_counts()
        return {kind: int(counts.get(kind, 0)) for kind in GENE_MATCH_KINDS}

    def gene_resolution_rate(self) -> float:
        """Fraction of var entries that got an Ensembl id (NaN when genes were not standardized)."""
        if self.genes is None or self.genes.empty:
            return float("nan")
        return float(self.genes["match"].isin(RESOLVED_KINDS).mean())

    def term_counts(self, column: str) -> dict[str, int]:
        """Number of distinct values of ``column`` per match kind (only kinds that occur)."""
        counts: dict[str, int] = {}
        for match in self.terms[column]:
            counts[match.match] = counts.get(match.match, 0) + 1
        return counts

    def term_table(self, column: str) -> pd.DataFrame:
        """The matches of ``column`` as a frame (value, term_id, name, match, ontology, candidates)."""
        rows = [
            {
                "value": m.value,
                "term_id": m.term_id,
                "name": m.name,
                "match": m.match,
                "ontology": m.ontology,
                "candidates": ";".join(m.candidates),
            }
            for m in self.terms[column]
        ]
        return pd.DataFrame(rows, columns=["value", "term_id", "name", "match", "ontology", "candidates"])

    def unresolved(self) -> dict[str, list[str]]:
        """Inputs without a result: ``"var"`` -> gene inputs, obs column -> values."""
        out: dict[str, list[str]] = {}
        if self.genes is not None:
            out["var"] = self.genes.loc[self.genes["match"] == "unresolved", "input"].tolist()
        for column, matches in self.terms.items():
            out[column] = [m.value for m in matches if m.match == "unresolved"]
        return out

    def as_metadata(self) -> dict[str, object]:
        """Flat counts for logs and Dagster metadata."""
        meta: dict[str, object] = {"organism": self.organism}
        if self.genes is not None:
            meta["gene_resolution_rate"] = round(self.gene_resolution_rate(), 4)
            meta |= {f"genes_{kind}": n for kind, n in self.gene_counts().items()}
            meta["genes_duplicate_ids"] = int(self.genes["duplicate"].sum())
            meta |= {f"var_{action}": n for action, n in self.var_counts.items()}
        for column in self.terms:
            meta |= {f"{column}_{kind}": n for kind, n in self.term_counts(column).items()}
        if self.skipped_columns:
            meta["skipped_columns"] = ", ".join(self.skipped_columns)
        return meta

    def summary(self) -> str:
        """One line per part: gene resolution rate and counts, term counts per obs column."""
        lines = []
        if self.genes is not None:
            counts = ", ".join(f"{k} {n}" for k, n in self.gene_counts().items() if n)
            lines.append(
                f"genes ({self.organism}): {self.gene_resolution_rate():.1%} of {len(self.genes)} resolved "
                f"({counts}; {int(self.genes['duplicate'].sum())} share an id)"
            )
            lines.append("var: " + ", ".join(f"{action} {n}" for action, n in self.var_counts.items()))
        for column in self.terms:
            counts = ", ".join(f"{k} {n}" for k, n in self.term_counts(column).items())
            lines.append(f"{column}: {len(self.terms[column])} distinct values ({counts})")
        if self.skipped_columns:
            lines.append(f"obs columns absent: {self.skipped_columns}")
        return "\n".join(lines)


def _organism_for(adata: ad.AnnData, organism: str | None, gene_values: list[str]) -> str:
    if organism is not None:
        return canonical_organism(organism)
    if "organism" in adata.obs.columns:
        values = pd.unique(adata.obs["organism"].dropna().astype(str))
        if len(values) == 1:
            return canonical_organism(values[0])
        if len(values) > 1:
            raise UnknownOrganismError(
                f"obs['organism'] holds several organisms {list(values)}; pass organism="
            )
    inferred = infer_organism(gene_values)
    if inferred is None:
        raise UnknownOrganismError(
            "cannot infer the organism: no organism=, no single-valued obs['organism'], no Ensembl ids in var"
        )
    return inferred


def standardize_anndata(
    adata: ad.AnnData,
    *,
    organism: str | None = None,
    obs_columns: Mapping[str, str] = DEFAULT_OBS_COLUMNS,
    gene_column: str | None = None,
    genes: bool = True,
    backend: OntologyBackend | None = None,
    overrides: Mapping[str, Mapping[str, str]] | None = None,
    allow_broader: bool = True,
    unresolved: Literal["keep", "drop"] = "keep",
    duplicates: Duplicates | None = None,
) -> tuple[ad.AnnData, StandardizationReport]:
    """A copy of ``adata`` with ``var["ensembl_id"]``, ``var["feature_uid"]`` and ontology term id obs
    columns, and a report.

    Parameters
    ----------
    adata
        In memory or backed (a backed AnnData is loaded into memory for the copy).
    organism
        Scientific or common name or NCBITaxon id; else the single value of ``obs["organism"]``, else
        inferred from Ensembl ids in the genes.
    obs_columns
        obs column -> term id column to fill; the target's name (``<field>_ontology_term_id``) picks the
        ontology (see :data:`lancell.standardize.ontology.FIELD_ONTOLOGY`). Absent obs columns are skipped and
        reported.
    gene_column
        The var column holding gene symbols or ids (the var index by default).
    genes
        Standardize genes (False: obs only).
    backend
        Ontology backend (``CellxgeneOntologyBackend`` by default).
    overrides
        obs column -> {value: term id}: curated mappings applied before text matching.
    allow_broader
        Accept less specific cell types (match kind ``broader``).
    unresolved
        Genes without an Ensembl id: ``"keep"`` them (``feature_uid`` is the input name, ``ensembl_id``
        missing) or ``"drop"`` them.
    duplicates
        var entries that resolve to one ``feature_uid``: ``"sum"`` their columns (counts), keep the
        ``"first"``, or raise (``"error"``); None leaves them (flagged in ``report.genes["duplicate"]``; an
        atlas refuses to ingest them).

    Returns
    -------
    (AnnData, StandardizationReport)
        Unresolved labels have a missing term id; ``report.var_counts`` says what happened to the genes.

    Raises
    ------
    UnknownOrganismError
        The organism is unknown, has no gene reference, or cannot be inferred.
    StandardizationError
        A target column not named ``<field>_ontology_term_id`` for a known field, a missing ``gene_column``,
        an override naming a term the ontology lacks, an unknown ``unresolved`` or ``duplicates``, or
        ``duplicates="error"`` with genes sharing an id.
    """
    if unresolved not in ("keep", "drop"):
        raise StandardizationError(f"unresolved must be 'keep' or 'drop', got {unresolved!r}")
    if duplicates not in (None, "sum", "first", "error"):
        raise StandardizationError(f"duplicates must be 'sum', 'first', 'error' or None, got {duplicates!r}")
    targets: dict[str, str] = {}
    for column, target in obs_columns.items():
        name = target.removesuffix(TERM_SUFFIX)
        if not target.endswith(TERM_SUFFIX) or name not in FIELD_ONTOLOGY:
            raise StandardizationError(
                f"obs column {column!r} -> {target!r}: the target must be one of "
                f"{[f + TERM_SUFFIX for f in FIELD_ONTOLOGY]}"
            )
        targets[column] = name
    if gene_column is not None and gene_column not in adata.var.columns:
        raise StandardizationError(f"var has no column {gene_column!r}")
    report = StandardizationReport()
    out = adata.to_memory() if adata.isbacked else adata.copy()
    if genes:
        values = (out.var.index if gene_column is None else out.var[gene_column]).astype(str).tolist()
        report.organism = _organism_for(out, organism, values)
        table = GeneReference.load(report.organism).resolve(values)
        report.genes = table
        out = _standard_genes(out, table, unresolved, duplicates, report)
    for column, name in targets.items():
        if column not in out.obs.columns:
            report.skipped_columns.append(column)
            continue
        matches = resolve_terms(
            out.obs[column].tolist(),
            name,
            backend=backend,
            overrides=(overrides or {}).get(column),
            allow_broader=allow_broader,
        )
        report.terms[column] = matches
        mapping = {m.value: m.term_id for m in matches}
        ids = out.obs[column].astype(object).map(lambda v, mapping=mapping: mapping.get(str(v)))
        out.obs[obs_columns[column]] = ids.astype("category")
    if report.skipped_columns:
        log.info("standardize: obs columns absent, skipped: %s", report.skipped_columns)
    return out, report


def _standard_genes(
    adata: ad.AnnData,
    table: pd.DataFrame,
    unresolved: Literal["keep", "drop"],
    duplicates: Duplicates | None,
    report: StandardizationReport,
) -> ad.AnnData:
    """``adata`` with ``ensembl_id`` and ``feature_uid`` var columns; unresolved and duplicates handled."""
    ids = pd.array(table["ensembl_id"].to_numpy(), dtype="string")
    adata.var["ensembl_id"] = ids
    adata.var["feature_uid"] = pd.array(table["ensembl_id"].fillna(table["input"]).to_numpy(), dtype="string")
    resolved = pd.notna(ids)
    counts = {"resolved": int(resolved.sum()), "kept": 0, "dropped": 0}
    if unresolved == "drop":
        counts["dropped"] = int((~resolved).sum())
        adata = adata[:, resolved].copy()
    else:
        counts["kept"] = int((~resolved).sum())
    if duplicates is not None:
        adata, merged = merge_duplicate_columns(adata, adata.var["feature_uid"], duplicates)
        counts["summed" if duplicates == "sum" else "first"] = merged
    report.var_counts = counts | {"n_vars": adata.n_vars}
    return adata


def feature_rows(adata: ad.AnnData, report: StandardizationReport, columns: pd.Index) -> pd.DataFrame:
    """Registry rows for the ``feature_uid`` of ``adata``, with the registry's ``gene_symbol`` (current
    symbol, else the input), ``ensembl_id`` and ``organism`` columns where it has them."""
    genes = report.genes.drop_duplicates("input").set_index("input")  # type: ignore[union-attr]
    inputs = adata.var_names.to_series()
    rows = pd.DataFrame({"uid": adata.var["feature_uid"].astype(str).to_numpy()})
    if "gene_symbol" in columns:
        rows["gene_symbol"] = genes["symbol"].reindex(inputs).fillna(inputs).to_numpy()
    if "ensembl_id" in columns:
        rows["ensembl_id"] = adata.var["ensembl_id"].astype(object).to_numpy()
    if "organism" in columns:
        rows["organism"] = report.organism
    return rows


def standardize_and_ingest(
    atlas: RaggedAtlas,
    adata: ad.AnnData | str | os.PathLike[str],
    *,
    feature_space: str,
    zarr_layer: str,
    dataset_record: DatasetRecord | None = None,
    source_layer: str | None = None,
    unresolved: Literal["keep", "drop"] = "keep",
    duplicates: Duplicates = "sum",
    on_conflict: OnConflict = "error",
    progress: bool = True,
    layer: str | None = None,
    **standardize: object,
) -> tuple[DatasetRecord, StandardizationReport]:
    """Standardize ``adata``, register its genes and ingest it, in one call.

    Genes are registered in ``feature_space`` under ``feature_uid`` (the Ensembl id, or the input name of a
    kept unresolved gene) with the registry's ``gene_symbol``, ``ensembl_id`` and ``organism`` columns
    filled where it has them; cells get the ontology term id columns their schema declares (others are
    reported as dropped by :func:`lancell.ingest.from_anndata.add_from_anndata`). See docs/standardization.md.

    Parameters
    ----------
    atlas
        A writable atlas.
    adata
        In memory, backed, or a path to an ``.h5ad`` (read into memory: standardizing makes a copy).
    feature_space, zarr_layer, dataset_record, source_layer, progress, layer
        As for :func:`lancell.ingest.from_anndata.add_from_anndata`.
    unresolved, duplicates
        As for :func:`standardize_anndata`; genes sharing an id are summed by default (right for counts:
        pass ``"first"`` for normalized values).
    on_conflict
        As for :meth:`lancell.atlas.RaggedAtlas.register_features` (a uid registered with another symbol).
    **standardize
        Other arguments of :func:`standardize_anndata` (``organism``, ``obs_columns``, ``gene_column``,
        ``backend``, ``overrides``, ``allow_broader``).

    Returns
    -------
    (DatasetRecord, StandardizationReport)
        The ingested dataset's record and what standardization did (``report.summary()``).

    Raises
    ------
    StandardizationError
        As :func:`standardize_anndata` (nothing is registered or written).
    FeatureConflictError
        A gene registered with other values (``on_conflict="error"``; nothing is registered or written).
    IngestError
        As :func:`lancell.ingest.from_anndata.add_from_anndata`; the features registered by this call stay
        registered (registration is idempotent), no cell or array is written.
    """
    from lancell.ingest.from_anndata import add_from_anndata

    if not isinstance(adata, ad.AnnData):
        adata = ad.read_h5ad(adata)
    standardized, report = standardize_anndata(
        adata, unresolved=unresolved, duplicates=duplicates, genes=True, **standardize
    )  # type: ignore[arg-type]
    columns = atlas.feature_registry(feature_space).columns
    atlas.register_features(feature_space, feature_rows(standardized, report, columns), on_conflict)
    record = add_from_anndata(
        atlas,
        standardized,
        feature_space=feature_space,
        zarr_layer=zarr_layer,
        dataset_record=dataset_record,
        source_layer=source_layer,
        layer=layer,
        var_uid_column="feature_uid",
        progress=progress,
    )
    log.info("standardize_and_ingest %s:\n%s", record.uid, report.summary())
    return record, report
