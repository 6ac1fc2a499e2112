"""bionty's public ontologies as an ontology backend (optional: ``pip install "lancell[bionty]"``).

:class:`BiontyBackend` reads each ontology through ``bionty.base`` (bionty's public sources; no lamindb
instance is needed) and indexes it like :class:`~lancell.standardize.ontology.CellxgeneOntologyBackend`, so
:func:`lancell.standardize.ontology.resolve_terms` and
:func:`lancell.standardize.pipeline.standardize_anndata` take either.

Where bionty keeps its tables
    ``$BIONTY_ROOT_DIR/_dynamic/df_all__<source>__<version>__<Entity>.parquet`` (``BIONTY_ROOT_DIR`` is read
    when bionty is imported, and ``$BIONTY_ROOT_DIR/sources.yaml``, bionty's list of sources, must be
    there too; without the variable, both live in bionty's package folder). One row per term:
    ``ontology_id``, ``name``, ``definition``, ``synonyms`` (exact synonyms joined by ``|``) and ``parents``
    (a list of ids). With network access bionty fills a missing table itself (from ``s3://bionty-assets``,
    else from the source's OWL file).

Offline
    bionty 2.5.2 asks ``s3://bionty-assets`` for the table before it reads the local file, even when the
    file is there; without a network this fails (``EndpointConnectionError``, after about 15 s) and is
    raised here as :class:`~lancell.errors.OntologyBackendError`. Point ``AWS_ENDPOINT_URL_S3`` at a
    reachable S3 endpoint (a mirror of ``bionty-assets``): where it lacks the table, bionty reads the
    local one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from lancell.errors import OntologyBackendError
from lancell.standardize.ontology import TermIndex, add_disease_extras, organism_index

__all__ = ["BIONTY_SOURCES", "BiontyBackend"]

# ontology -> (bionty.base entity, bionty source name)
BIONTY_SOURCES: Mapping[str, tuple[str, str]] = {
    "CL": ("CellType", "cl"),
    "UBERON": ("Tissue", "uberon"),
    "MONDO": ("Disease", "mondo"),
    "EFO": ("ExperimentalFactor", "efo"),
}


class BiontyBackend:
    """Ontologies from bionty's public sources, indexed on first use.

    Parameters
    ----------
    versions
        Ontology (``"CL"``, ``"UBERON"``, ``"MONDO"``, ``"EFO"``) -> source version as bionty names it
        (``{"CL": "2026-03-26"}``); bionty's latest for the others.

    Notes
    -----
    Organisms (``NCBITaxon``) resolve against :data:`lancell.standardize.ontology.ORGANISMS`, the species with
    gene references, as with the default backend. Obsolete terms (names starting ``obsolete``, in any case)
    and nameless ones are left out.

    Raises
    ------
    OntologyBackendError
        bionty is not installed, or ``versions`` names an ontology it has no source for.
    """

    def __init__(self, versions: Mapping[str, str] | None = None) -> None:
        try:
            import bionty.base as bionty_base
        except ImportError as exc:
            raise OntologyBackendError(
                'bionty is not installed: pip install "lancell[bionty]" (or use CellxgeneOntologyBackend)'
            ) from exc
        unknown = sorted(set(versions or {}) - set(BIONTY_SOURCES))
        if unknown:
            raise OntologyBackendError(f"versions names {unknown}; bionty sources: {sorted(BIONTY_SOURCES)}")
        self._bionty = bionty_base
        self.versions = dict(versions or {})
        self._indexes: dict[str, TermIndex] = {}

    def index(self, ontology: str) -> TermIndex:
        """The index of ``ontology``, built from bionty's table of it.

        Raises
        ------
        OntologyBackendError
            No bionty source for ``ontology``, or bionty cannot give its table (no network, a version it
            does not know); the message names the table bionty reads.
        """
        if ontology not in self._indexes:
            if ontology == "NCBITaxon":
                self._indexes[ontology] = organism_index()
            elif ontology not in BIONTY_SOURCES:
                raise OntologyBackendError(
                    f"no bionty source for ontology {ontology!r}; known: {sorted(BIONTY_SOURCES)}"
                )
            else:
                index = TermIndex.build(ontology, _terms(self._table(ontology)))
                if ontology == "MONDO":
                    add_disease_extras(index)
                self._indexes[ontology] = index
        return self._indexes[ontology]

    def _table(self, ontology: str) -> Any:
        entity, source = BIONTY_SOURCES[ontology]
        version = self.versions.get(ontology)
        try:
            public = getattr(self._bionty, entity)(source=source, version=version)
            return public.to_dataframe()
        except Exception as exc:  # bionty raises botocore, httpx, OS and value errors alike
            folder = self._bionty.settings.dynamicdir
            raise OntologyBackendError(
                f"bionty cannot give {entity} ({source} {version or 'latest'}) from {folder}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def _terms(frame: Any) -> Iterator[tuple[str, str, list[str]]]:
    """``(term id, name, synonyms)`` of the named, non-obsolete rows of a bionty table (indexed by id)."""
    names = frame["name"].where(frame["name"].notna(), "").astype(str)
    synonyms = frame["synonyms"].where(frame["synonyms"].notna(), "").astype(str)
    for term_id, name, joined in zip(frame.index, names, synonyms, strict=True):
        if name and not name.lower().startswith("obsolete"):
            yield str(term_id), name, [s for s in joined.split("|") if s]
