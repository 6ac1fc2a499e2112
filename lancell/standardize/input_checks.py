"""What standardization refuses or warns about in its inputs before it changes anything: var entries
without a gene name, curated term ids already in obs, arguments that would have no effect, Ensembl ids of
another organism, overrides that mapped nothing."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

import pandas as pd

from lancell.errors import LancellWarning, StandardizationError, caller_outside_lancell
from lancell.standardize.genes import foreign_ids
from lancell.standardize.ontology import FIELD_ONTOLOGY, OntologyBackend, default_backend

if TYPE_CHECKING:
    import anndata as ad

    from lancell.standardize.report import StandardizationReport

__all__ = [
    "curated_id_check",
    "drop_raw",
    "keep_existing_ids",
    "no_gene_name",
    "warn_foreign_ids",
    "warn_unused_gene_arguments",
    "warn_unused_overrides",
]


def _missing_text(values: pd.Series) -> pd.Series:
    """Whether each value is missing: NA, or a string that is empty or only whitespace."""
    return values.isna() | values.astype(object).map(lambda v: isinstance(v, str) and not v.strip())


def no_gene_name(
    adata: ad.AnnData, gene_column: str | None, unresolved: Literal["keep", "drop"]
) -> pd.Series | None:
    """Mask of the var entries without a gene name (missing or empty), None when every entry has one.

    Raises :class:`StandardizationError` for them with ``unresolved="keep"`` (a missing name is no feature
    uid, and entries sharing it would be merged); warns that they are dropped with ``"drop"``.
    """
    names = pd.Series(adata.var.index if gene_column is None else adata.var[gene_column].to_numpy())
    missing = _missing_text(names)
    if not missing.any():
        return None
    where = "the var index" if gene_column is None else f"var[{gene_column!r}]"
    examples = adata.var_names[missing.to_numpy()][:5].tolist()
    message = (
        f"{int(missing.sum())} of {adata.n_vars} var entries have no gene name in {where} "
        f"(var index e.g. {examples})"
    )
    if unresolved == "keep":
        raise StandardizationError(
            f"{message}: a missing name cannot be a feature uid; fill them in, pass another gene_column, or "
            "pass unresolved='drop' to drop them"
        )
    warnings.warn(
        f"{message}: dropped (unresolved='drop')", LancellWarning, stacklevel=caller_outside_lancell()
    )
    return missing


# what a CELLxGENE file may hold besides a term of the field's ontology: its non-ontology terms, for a
# tissue of tissue_type "cell culture" or "organoid" a cell type (CL) or a Cellosaurus cell line, and for the
# cell types and tissues of zebrafish, fly and worm their anatomy ontologies' terms (ZFA, FBbt, WBbt: not in
# the backend's CL and UBERON, so checked by their form only)
_NON_ONTOLOGY_TERMS = frozenset({"unknown", "na"})
_CELL_LINE = re.compile(r"CVCL_[A-Z0-9]{4}")
_ORGANISM_ANATOMY = re.compile(r"ZFA:\d{7}|WBbt:\d{7}|FBbt:\d{8}")


def curated_id_check(field_name: str, backend: OntologyBackend | None) -> Callable[[str], bool]:
    """Whether a term id already in obs is one the field may hold (:func:`keep_existing_ids` warns about
    the others)."""
    indexes = [(backend or default_backend()).index(FIELD_ONTOLOGY[field_name]).names]
    if field_name == "tissue":
        indexes.append((backend or default_backend()).index(FIELD_ONTOLOGY["cell_type"]).names)

    def allowed(term_id: str) -> bool:
        if term_id in _NON_ONTOLOGY_TERMS or any(term_id in names for names in indexes):
            return True
        if field_name in ("cell_type", "tissue") and _ORGANISM_ANATOMY.fullmatch(term_id) is not None:
            return True
        return field_name == "tissue" and _CELL_LINE.fullmatch(term_id) is not None

    return allowed


def keep_existing_ids(
    existing: pd.Series, matched: pd.Series, column: str, target: str, allowed: Callable[[str], bool]
) -> pd.Series:
    """``existing`` term ids where present, ``matched`` ones where missing; warns where they disagree, and
    about present ids that are not ``allowed`` (no term of the field's ontology: an UBERON id in a cell
    type column, a letter O typed for a zero)."""
    existing = existing.astype(object)
    present = ~_missing_text(existing)
    distinct = pd.unique(existing[present].astype(str))
    unknown = pd.Index([term_id for term_id in distinct if not allowed(term_id)])
    if unknown.size:
        warnings.warn(
            f"obs[{target!r}] holds {unknown.size} term ids that are no terms of its ontology (e.g. "
            f"{unknown[:5].tolist()}); kept as they are: check them",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    differ = present & matched.notna() & (existing.astype(str) != matched.astype(str))
    if differ.any():
        pairs = pd.DataFrame({"existing": existing[differ], "matched": matched[differ]}).drop_duplicates()
        warnings.warn(
            f"obs[{target!r}] already holds term ids; {int(differ.sum())} of them differ from the ids "
            f"matched from obs[{column!r}] and are kept (e.g. {pairs.head(5).values.tolist()})",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return existing.where(present, matched)


def warn_unused_gene_arguments(**arguments: object) -> None:
    """Warn about gene arguments given with ``genes=False`` (not standardizing genes, they are unused)."""
    defaults = {"organism": None, "unresolved": "keep", "duplicates": None}
    given = {name: value for name, value in arguments.items() if value != defaults[name]}
    if given:
        warnings.warn(
            f"genes=False: {given} apply to genes only and were not used",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def warn_foreign_ids(values: list[str], organism: str) -> None:
    """Warn about Ensembl ids of other organisms: they stay unresolved, registered under ``organism``."""
    foreign = foreign_ids(values, organism)
    if foreign:
        warnings.warn(
            f"{sum(foreign.values())} of {len(values)} genes are Ensembl ids of another organism than "
            f"{organism} ({foreign}): they are not resolved, and are kept or dropped as unresolved genes of "
            f"{organism}; pass organism= and standardize each organism's genes separately",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def warn_case_mismatches(genes: pd.DataFrame, unresolved: str) -> None:
    """Warn about unresolved genes that name a gene in another case (``cd3e``, ``ensg00000198851``): kept as
    features of their own (or dropped), where a typo of case is the likely cause (``genes``: the report's)."""
    near = genes[(genes["match"] == "unresolved") & (genes["candidates"] != "")]
    if len(near):
        examples = dict(zip(near["input"][:5], near["candidates"][:5], strict=True))
        warnings.warn(
            f"{len(near)} genes are unresolved but name a gene in another case ({examples}); they are "
            f"{'kept as features of their own' if unresolved == 'keep' else 'dropped'}: correct their case "
            "in var to resolve them (report.genes['candidates'] lists each)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def warn_unused_overrides(overrides: Mapping[str, Mapping[str, str]], report: StandardizationReport) -> None:
    """Warn about ``overrides`` entries that mapped nothing: a column not standardized, a value not in obs
    (or one that matched as a term id before the override applied)."""
    unused: dict[str, object] = {}
    for column, mapping in overrides.items():
        if column not in report.terms:
            unused[column] = "not a standardized obs column"
            continue
        applied = {m.value for m in report.terms[column] if m.match == "manual"}
        values = [value for value in mapping if value not in applied]
        if values:
            unused[column] = values
    if unused:
        warnings.warn(
            f"overrides not used: {unused} (standardized obs columns: {sorted(report.terms)})",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def drop_raw(given: ad.AnnData, out: ad.AnnData) -> None:
    """Drop ``out.raw``: ``given.raw`` as standardization kept it, named by ``given``'s var entries, not by
    the standardized ones. Warns how to keep it (ingestion stores no ``.raw``, and its own advice, comparing
    ``.raw``'s genes with the standardized var's, would be wrong)."""
    if out.raw is None:
        return
    if given.raw is not None and given.raw.var_names.equals(given.var_names):
        remedy = (
            "copy it into a layer before standardizing (adata.layers['counts'] = adata.raw.X), then name "
            "that layer (source_layer='counts'; --layers on the command line)"
        )
    else:
        remedy = "ingest adata.raw.to_adata() as a dataset of its own (its features are not var's)"
    warnings.warn(
        f"adata.raw is neither standardized nor stored: to keep it, {remedy}",
        LancellWarning,
        stacklevel=caller_outside_lancell(),
    )
    del out.raw
