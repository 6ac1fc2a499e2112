"""The Dagster test platform: bundled files landed under a temporary root, definitions, an instance."""

from pathlib import Path

import dagster as dg
import pytest

import definitions
from lancell.bundled import land_bundled_data


@pytest.fixture(autouse=True)
def create_atlas(monkeypatch: pytest.MonkeyPatch) -> None:
    """The platforms here build their atlas from nothing: definitions.py creates it where none is."""
    monkeypatch.setenv("LANCELL_CREATE_ATLAS", "1")


@pytest.fixture
def platform(tmp_path: Path):
    """``(defs, instance, root)``: definitions over ``root`` (files landed) and an ephemeral instance."""
    land_bundled_data(tmp_path / "landing")
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        yield defs, instance, tmp_path
