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

import contextlib
import logging
import os
import warnings
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Literal

import anndata as ad
import pandas as pd

from lancell.errors import (
    ArgumentError,
    IngestError,
    LancellWarning,
    StandardizationError,
    UnknownOrganismError,
    caller_outside_lancell,
)
from lancell.standardize.copies import in_memory
from lancell.standardize.feature_rows import feature_rows
from lancell.standardize.genes import GeneReference, canonical_organism, infer_organism
from lancell.standardize.input_checks import (
    curated_id_check,
    drop_raw,
    keep_existing_ids,
    no_gene_name,
    warn_case_mismatches,
    warn_foreign_ids,
    warn_unused_gene_arguments,
    warn_unused_overrides,
)
from lancell.standardize.ontology import FIELD_ONTOLOGY, OntologyBackend, resolve_terms
from lancell.standardize.report import StandardizationReport
from lancell.standardize.var_merge import Duplicates, merge_duplicate_columns, merge_modes

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.fingerprint import OnDuplicate
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
# standardize_anndata arguments that standardize_and_ingest passes through **standardize
STANDARDIZE_OPTIONS = ("organism", "obs_columns", "gene_column", "backend", "overrides", "allow_broader")


def _organism_for(adata: ad.AnnData, organism: str | None, gene_values: list[str]) -> str:
    values = pd.unique(adata.obs["organism"].dropna().astype(str)) if "organism" in adata.obs.columns else []
    if organism is not None:
        given = canonical_organism(organism)
        named = set()
        for value in values:
            with contextlib.suppress(UnknownOrganismError):  # (an unknown one is its term's matter)
                named.add(canonical_organism(value))
        if others := sorted(named - {given}):
            warnings.warn(
                f"organism={organism!r} resolves the genes as {given}, but obs['organism'] names "
                f"{others} for cells of this file: the genes and the cells' organism disagree",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
        return given
    if len(values):
        named = sorted({canonical_organism(value) for value in values})  # (human and Homo sapiens are one)
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
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
    matrices: Collection[str] | None = None,
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
        reported (warned when ``obs_columns`` is given, not for the defaults). A term id column already in obs
        (curated ids, as in cellxgene files) is kept: only its missing values are filled from the labels.
    gene_column
        The var column holding gene symbols or ids (the var index by default). An entry without a name
        (missing, or an empty string) is never made a feature: it is refused, or dropped with
        ``unresolved="drop"`` (warned, counted in ``report.var_counts["dropped"]`` and ``["no_name"]``).
    genes
        Standardize genes (False: obs only; ``organism``, ``unresolved`` and ``duplicates`` are then unused,
        and warned about when given).
    backend
        Ontology backend (``CellxgeneOntologyBackend`` by default).
    overrides
        obs column -> {value: term id}: curated mappings applied before text matching (an entry that maps
        nothing, a column not standardized or a value not in it, is warned about).
    allow_broader
        Accept less specific cell types (match kind ``broader``).
    unresolved
        Genes without an Ensembl id: ``"keep"`` them (``feature_uid`` is the input name, ``ensembl_id``
        missing) or ``"drop"`` them.
    duplicates
        var entries that resolve to one ``feature_uid``: ``"sum"`` their columns (exact; counts), keep the
        ``"first"`` (warned), ``"auto"``: per matrix (``X`` and each layer), sum counts (integers, or
        floats that are all whole numbers) and keep the first of other values, or raise (``"error"``);
        None leaves them (flagged in ``report.genes["duplicate"]``; an atlas refuses to ingest them). See
        :func:`lancell.standardize.var_merge.merge_duplicate_columns`.
    matrices
        The matrices to standardize and keep: ``"X"`` and layer names (all by default). Those left out are
        not copied (nor read, from a backed file), merged, reported or warned about.

    Returns
    -------
    (AnnData, StandardizationReport)
        Unresolved labels have a missing term id; ``report.var_counts`` says what happened to the genes.

    Warns
    -----
    LancellWarning
        Genes that are Ensembl ids of another organism (left unresolved), ``overrides`` entries that mapped
        nothing, var entries left out by ``duplicates="first"`` (or ``"auto"`` on values that are not counts),
        var entries without a gene name dropped (``unresolved="drop"``), existing term ids that differ from
        the ids matched from the labels (the existing ids are kept), gene arguments given with
        ``genes=False``, ``obs_columns`` entries whose obs column is absent.

    Raises
    ------
    UnknownOrganismError
        The organism is unknown, has no gene reference, or cannot be inferred.
    StandardizationError
        A target column not named ``<field>_ontology_term_id`` for a known field, a missing ``gene_column``,
        an override naming a term the ontology lacks, an unknown ``unresolved`` or ``duplicates``,
        ``duplicates="error"`` with genes sharing an id, or var entries without a gene name (missing or empty
        in ``gene_column`` or the var index) with ``unresolved="keep"``.
    DataValueError
        Summed integer counts above ``2**32 - 1`` (the message names the genes).
    ArgumentError
        ``matrices`` names a layer ``adata`` lacks, or is a string.
    """
    if unresolved not in ("keep", "drop"):
        raise StandardizationError(f"unresolved must be 'keep' or 'drop', got {unresolved!r}")
    if duplicates not in (None, "sum", "first", "error", "auto"):
        raise StandardizationError(
            f"duplicates must be 'sum', 'first', 'error', 'auto' or None, got {duplicates!r}"
        )
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
    if not genes:
        warn_unused_gene_arguments(organism=organism, unresolved=unresolved, duplicates=duplicates)
    no_name = no_gene_name(adata, gene_column, unresolved) if genes else None
    report = StandardizationReport(gene_column=gene_column)
    out = in_memory(adata, matrices)
    if genes:
        if no_name is not None:
            out = out[:, ~no_name].copy()
        values = (out.var.index if gene_column is None else out.var[gene_column]).astype(str).tolist()
        report.organism = _organism_for(out, organism, values)
        warn_foreign_ids(values, report.organism)
        report.genes = GeneReference.load(report.organism).resolve(values)
        warn_case_mismatches(report.genes, unresolved)
        out = _standard_genes(out, report.genes, unresolved, duplicates, report)
        drop_raw(adata, out)
        if no_name is not None:
            report.var_counts["dropped"] += int(no_name.sum())
            report.var_counts["no_name"] = int(no_name.sum())
    absent = []
    for column, name in targets.items():
        if column not in out.obs.columns:
            report.skipped_columns.append(column)
            absent.append(column)
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
        target = obs_columns[column]
        if target in out.obs.columns:
            ids = keep_existing_ids(out.obs[target], ids, column, target, curated_id_check(name, backend))
        out.obs[target] = ids.astype("category")
    if report.skipped_columns:
        log.info("standardize: obs columns absent, skipped: %s", report.skipped_columns)
    if absent and obs_columns is not DEFAULT_OBS_COLUMNS:
        warnings.warn(
            f"obs_columns {absent} are not obs columns, not standardized (obs columns: "
            f"{out.obs.columns.tolist()[:20]})",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    warn_unused_overrides(overrides or {}, report)
    return out, report


def _standard_genes(
    adata: ad.AnnData,
    table: pd.DataFrame,
    unresolved: Literal["keep", "drop"],
    duplicates: Duplicates | None,
    report: StandardizationReport,
) -> ad.AnnData:
    """``adata`` with ``ensembl_id`` and ``feature_uid`` var columns; unresolved and duplicates handled.

    Sets ``table["duplicate"]`` for the kept entries that share a feature uid (an id or a kept input name).
    """
    ids = pd.array(table["ensembl_id"].to_numpy(), dtype="string")
    uids = table["ensembl_id"].fillna(table["input"])
    adata.var["ensembl_id"] = ids
    adata.var["feature_uid"] = pd.array(uids.to_numpy(), dtype="string")
    resolved = pd.notna(ids)
    kept = resolved | (unresolved == "keep")
    table["duplicate"] = kept & uids.where(kept).duplicated(keep=False).to_numpy()
    counts = {"resolved": int(resolved.sum()), "kept": 0, "dropped": 0}
    if unresolved == "drop":
        counts["dropped"] = int((~resolved).sum())
        adata = adata[:, resolved].copy()
    else:
        counts["kept"] = int((~resolved).sum())
    if duplicates is not None:
        how = merge_modes(adata, adata.var["feature_uid"]) if duplicates == "auto" else duplicates
        uids = adata.var["feature_uid"]
        adata, merged = merge_duplicate_columns(adata, uids, how, resolved_from=report.gene_column)
        summed = how == "sum" or (not isinstance(how, str) and "sum" in how.values())
        counts["summed" if summed else "first"] = merged
    report.var_counts = counts | {"n_vars": adata.n_vars}
    return adata


def standardize_and_ingest(
    atlas: RaggedAtlas,
    adata: ad.AnnData | str | os.PathLike[str],
    *,
    feature_space: str,
    zarr_layer: str,
    dataset_record: DatasetRecord | None = None,
    source_layer: str | None = None,
    unresolved: Literal["keep", "drop"] = "keep",
    duplicates: Duplicates = "auto",
    on_conflict: OnConflict = "error",
    progress: bool = True,
    layer: str | None = None,
    csc: bool | None = None,
    on_duplicate: OnDuplicate = "error",
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
    feature_space, zarr_layer, dataset_record, source_layer, progress, layer, csc, on_duplicate
        As for :func:`lancell.ingest.from_anndata.add_from_anndata` (``on_duplicate="skip"``: standardized
        content already in the atlas returns that dataset's record).
    unresolved, duplicates
        As for :func:`standardize_anndata`; genes sharing an id are summed in the matrices that hold
        counts (``"auto"``; integers or whole-number floats), the first is kept in the others (warned).
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
    ArgumentError
        An unknown key in ``standardize``, or one this function sets itself (``genes``), before anything is
        read or written (the message names the accepted ones).
    FeatureSpaceError
        An unknown feature space, or ``zarr_layer`` not allowed in it (before anything is standardized).
    StandardizationError
        As :func:`standardize_anndata` (nothing is registered or written).
    FeatureConflictError
        A gene registered with other values (``on_conflict="error"``; nothing is registered or written).
    IngestError
        As :func:`lancell.ingest.from_anndata.add_from_anndata`. A taken dataset uid and obs that cannot be
        stored are refused before anything is registered; after registration (a matrix refused as it is
        read), the features registered by this call stay registered (registration is idempotent), and no
        cell or array is written.
    """
    from lancell.ingest.fingerprint import check_on_duplicate
    from lancell.ingest.from_anndata import add_from_anndata
    from lancell.ingest.plan import check_cells
    from lancell.tables.feature_spaces import resolve_feature_space

    check_on_duplicate(dataset_record.uid if dataset_record else "(new)", on_duplicate)  # before reading
    unknown = sorted(set(standardize) - set(STANDARDIZE_OPTIONS))
    if unknown:
        raise ArgumentError(
            f"standardize_and_ingest got options {unknown} it does not take (genes are always standardized "
            f"here); other standardize_anndata options it accepts: {list(STANDARDIZE_OPTIONS)}"
        )
    if not isinstance(adata, ad.AnnData):
        adata = ad.read_h5ad(adata)
    # the stored layer and its source, before anything is standardized or registered (a typo found after)
    resolve_feature_space(atlas.feature_spaces, feature_space).check_layer(zarr_layer)
    origin = source_layer if source_layer is not None else layer
    if origin not in (None, "X") and origin not in adata.layers:
        raise IngestError(f"standardize_and_ingest: no layer {origin!r} in adata.layers {list(adata.layers)}")
    standardized, report = standardize_anndata(
        adata,
        matrices=["X" if origin is None else origin],
        unresolved=unresolved,
        duplicates=duplicates,
        genes=True,
        **standardize,
    )  # type: ignore[arg-type]
    check_cells(atlas.core, dataset_record, standardized.obs)  # (refused before its genes are registered)
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
        csc=csc,
        progress=progress,
        on_duplicate=on_duplicate,
    )
    log.info("standardize_and_ingest %s:\n%s", record.uid, report.summary())
    return record, report
