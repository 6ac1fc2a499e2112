"""BiontyBackend's own checks; tests/s3/test_bionty_sources.py resolves labels through bionty's code."""

from __future__ import annotations

import sys

import pytest

from lancell.errors import OntologyBackendError
from lancell.standardize.ontology import ORGANISMS, resolve_terms
from lancell.standardize.ontology_bionty import BIONTY_SOURCES, BiontyBackend


def test_without_bionty_the_backend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bionty", None)  # what an environment without bionty imports
    monkeypatch.delitem(sys.modules, "bionty.base", raising=False)
    with pytest.raises(
        OntologyBackendError, match=r'bionty is not installed: pip install "lancell\[bionty\]"'
    ):
        BiontyBackend()


def test_unknown_ontologies_are_refused() -> None:
    with pytest.raises(OntologyBackendError, match=r"versions names \['CVCL'\]; bionty sources: \['CL', "):
        BiontyBackend(versions={"CVCL": "55.0", "CL": "2026-03-26"})
    with pytest.raises(OntologyBackendError, match=r"no bionty source for ontology 'HANCESTRO'"):
        BiontyBackend().index("HANCESTRO")
    assert sorted(BIONTY_SOURCES) == ["CL", "EFO", "MONDO", "UBERON"]


def test_organisms_resolve_against_the_species_with_gene_references() -> None:
    matches = resolve_terms(
        ["human", "Mus musculus", "NCBITaxon:10116", "yeast"], "organism", backend=BiontyBackend()
    )
    assert [(m.term_id, m.match) for m in matches] == [
        (ORGANISMS["Homo sapiens"].term_id, "synonym"),
        ("NCBITaxon:10090", "exact"),
        ("NCBITaxon:10116", "id"),
        (None, "unresolved"),
    ]
