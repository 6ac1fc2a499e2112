"""Cold start: what a fresh process pays before its first query or batch (issue 19).

Timings are measured by ``benchmarks/cold_start.py``; these tests check the structure that keeps them low.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema
from lancell.registry_view import registry_view
from lancell.schema import FeatureBaseSchema


class SymbolFeature(FeatureBaseSchema):
    gene_symbol: str | None = None


def test_registry_view_groups_repeated_symbols_in_index_order(tmp_path: Path) -> None:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": SymbolFeature},
    )
    features = pd.DataFrame(
        {
            "uid": ["ENSG5", "ENSG1", "ENSG4", "ENSG2", "ENSG3", "ENSG6"],
            "gene_symbol": ["Rp1", "CD3D", None, "Rp1", "AAA", "Rp1"],
        }
    )
    atlas.register_features("gene_expression", features)
    view = registry_view(atlas, "gene_expression")
    # global indices follow registration order: ENSG5 0, ENSG1 1, ENSG4 2, ENSG2 3, ENSG3 4, ENSG6 5
    assert view.by_symbol == {"AAA": [4], "CD3D": [1], "Rp1": [0, 3, 5]}
    assert list(view.by_symbol) == ["AAA", "CD3D", "Rp1"]
    assert all(type(i) is int for ids in view.by_symbol.values() for i in ids)
    assert view.by_uid.to_dict() == {
        "ENSG5": 0,
        "ENSG1": 1,
        "ENSG4": 2,
        "ENSG2": 3,
        "ENSG3": 4,
        "ENSG6": 5,
    }
