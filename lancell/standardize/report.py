"""What standardization did: :class:`StandardizationReport`, per distinct input value."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from lancell.standardize.genes import GENE_MATCH_KINDS, RESOLVED_KINDS
from lancell.standardize.ontology import TermMatch

__all__ = ["StandardizationReport"]


@dataclass
class StandardizationReport:
    """What :func:`standardize_anndata` resolved, per distinct input value.

    Attributes
    ----------
    organism
        The organism the genes were resolved for (None when genes were not standardized).
    gene_column
        The var column the genes were read from (None: the var index).
    genes
        One row per var entry: ``input``, ``ensembl_id``, ``symbol``, ``match``, ``candidates`` (see
        :meth:`lancell.standardize.genes.GeneReference.resolve`) and ``duplicate`` (the entry is kept and its
        feature uid, the Ensembl id or the kept input name, is also another kept entry's).
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
    gene_column: str | None = None
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
                f"({counts}; {int(self.genes['duplicate'].sum())} share a feature uid)"
            )
            lines.append("var: " + ", ".join(f"{action} {n}" for action, n in self.var_counts.items()))
        for column in self.terms:
            counts = ", ".join(f"{k} {n}" for k, n in self.term_counts(column).items())
            lines.append(f"{column}: {len(self.terms[column])} distinct values ({counts})")
        if self.skipped_columns:
            lines.append(f"obs columns absent: {self.skipped_columns}")
        return "\n".join(lines)
