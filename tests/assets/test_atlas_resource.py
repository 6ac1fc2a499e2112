"""``AtlasResource`` creates an atlas only when told to, and refuses store options a local path would ignore.

A mistyped or unmounted ``LANCELL_DB_URI`` used to give green runs into a new, empty atlas (a 0-cell snapshot
with its checks passed), and ``store_config={"regionn": ...}`` on local paths was dropped without a word.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import dagster as dg
import pytest

import definitions
from lancell.bundled import CellSchema, GeneFeature
from lancell.errors import AtlasNotFoundError, SchemaError, StoreError
from lancell.tables.schema import LancellBaseSchema, SparseZarrPointer
from resources import AtlasResource

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def test_a_missing_atlas_is_an_error_naming_the_location_and_nothing_is_created(tmp_path: Path):
    resource = AtlasResource(db_uri=str(tmp_path / "dbb"), store_url=str(tmp_path / "arrays"))
    with pytest.raises(AtlasNotFoundError, match=re.escape(f"no atlas at '{tmp_path / 'dbb'}'")) as raised:
        resource.open()
    assert "create_if_missing" in str(raised.value)
    assert sorted(tmp_path.iterdir()) == []


def test_a_file_given_as_the_atlas_is_named_as_a_file_not_offered_creation(tmp_path: Path):
    """db_uri naming a file said to set create_if_missing=True, which then failed to create a folder."""
    (tmp_path / "x.h5ad").write_text("not an atlas")
    for create in (False, True):
        resource = AtlasResource(db_uri=str(tmp_path / "x.h5ad"), create_if_missing=create)
        with pytest.raises(AtlasNotFoundError, match="it names a file; an atlas is a folder"):
            resource.open()


def test_create_if_missing_creates_the_atlas_once_and_says_so(tmp_path: Path, caplog):
    resource = AtlasResource(db_uri=str(tmp_path / "db"), create_if_missing=True)
    with caplog.at_level(logging.WARNING):
        assert resource.open().query().count() == 0
    assert [r.getMessage() for r in caplog.records if "created a new, empty atlas" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resource.open()  # it exists now: opened, not created
    assert not [r for r in caplog.records if "created a new" in r.getMessage()]


def test_the_definitions_create_the_atlas_only_with_lancell_create_atlas(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("LANCELL_CREATE_ATLAS")
    monkeypatch.setenv("LANCELL_DB_URI", str(tmp_path / "dbb"))  # a typo: the atlas is at .../db
    defs = definitions.build_definitions(tmp_path)
    assert defs.resources["atlas"].create_if_missing is False
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            list(defs.assets),
            selection=["feature_registry"],
            instance=instance,
            resources=defs.resources,
            run_config=QUIET,
            raise_on_error=False,
        )
    assert not result.success
    cause = result.get_step_failure_events()[0].step_failure_data.error.cause
    assert cause.cls_name == "AtlasNotFoundError" and str(tmp_path / "dbb") in cause.message
    assert not (tmp_path / "dbb").exists()
    for value, create in (("1", True), ("yes", True), ("false", False), ("0", False)):
        monkeypatch.setenv("LANCELL_CREATE_ATLAS", value)
        assert definitions.build_definitions(tmp_path).resources["atlas"].create_if_missing is create
    monkeypatch.setenv("LANCELL_CREATE_ATLAS", "maybe")
    with pytest.raises(ValueError, match="LANCELL_CREATE_ATLAS='maybe'"):
        definitions.build_definitions(tmp_path)
    monkeypatch.setenv("LANCELL_CREATE_ATLAS", "1")
    for name in ("LANCELL_DB_URI", "LANCELL_LANDING", "LANCELL_GEO_MIRROR"):  # blank: the current folder
        monkeypatch.setenv(name, " ")
        with pytest.raises(ValueError, match=f"{name} is set but empty"):
            definitions.build_definitions(tmp_path)
        monkeypatch.delenv(name)
    with pytest.raises(ValueError, match="LANCELL_ROOT is set but empty"):
        monkeypatch.setenv("LANCELL_ROOT", "")
        definitions._setting("LANCELL_ROOT", "demo_atlas")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"store_config": {"regionn": "us-east-1"}}, "config.regionn"),
        ({"client_options": {"allow_http": "true"}}, "client_options.allow_http"),
        ({"retry_timeout_seconds": 30.0}, "retry_config.retry_timeout"),
    ],
)
def test_store_options_that_local_paths_would_ignore_are_refused(tmp_path: Path, options, named):
    resource = AtlasResource(
        db_uri=str(tmp_path / "db"), store_url=str(tmp_path / "arrays"), create_if_missing=True, **options
    )
    with pytest.raises(StoreError, match=re.escape(f"['{named}'] would be ignored")):
        resource.open()
    assert sorted(tmp_path.iterdir()) == []


class RnaCells(LancellBaseSchema):
    """Cells whose genes are feature space ``rna``."""

    rna: SparseZarrPointer | None = None


class RetypedCells(CellSchema):
    """The bundled cell schema with a column of another type and one the bundled table lacks."""

    n_counts: int | None = None
    donor: str | None = None


class PanelGene(GeneFeature):
    """A registry schema with a column the bundled one lacks."""

    panel: str | None = None


def test_schemas_an_existing_atlas_lacks_are_named_with_the_setting(tmp_path: Path, caplog):
    """LANCELL_FEATURE_SCHEMA was never compared with an existing atlas (its columns silently ignored), and a
    schema that cannot load named neither the resource field nor the variable."""
    AtlasResource(db_uri=str(tmp_path / "db"), create_if_missing=True).open()
    extra = AtlasResource(db_uri=str(tmp_path / "db"), feature_schema=f"{__name__}:PanelGene")
    with caplog.at_level(logging.WARNING):
        extra.open()  # only a new atlas is created with it: warned, the atlas served
    assert re.search(r"FEATURE_SCHEMA\) .*:PanelGene declares \['panel'\], which", caplog.text)
    for field, variable in (("cell_schema", "CELL"), ("feature_schema", "FEATURE")):
        broken = AtlasResource(db_uri=str(tmp_path / "db"), **{field: "lancell.bundled:NoSuchClass"})
        with pytest.raises(SchemaError, match=rf"AtlasResource.{field} \(LANCELL_{variable}_SCHEMA\): "):
            broken.open()


def test_an_atlas_of_another_feature_space_is_opened_and_the_feature_schema_not_checked(
    tmp_path: Path, caplog
):
    """The feature schema check refused an atlas whose gene space has another name (FeatureSpaceError)."""
    from lancell.atlas import RaggedAtlas

    RaggedAtlas.create(str(tmp_path / "db"), "cells", RnaCells, registry_schemas={"rna": GeneFeature})
    with caplog.at_level(logging.WARNING):
        AtlasResource(db_uri=str(tmp_path / "db"), cell_schema=f"{__name__}:RnaCells").open()
    assert "AtlasResource.feature_space 'gene_expression' is not a feature space of the atlas" in caplog.text


def test_a_cell_schema_that_types_a_column_otherwise_is_refused(tmp_path: Path):
    """Only the names were compared: a configured ``n_counts: int`` was served an atlas storing floats (its
    obs converted to the table's type, not the one configured)."""
    AtlasResource(db_uri=str(tmp_path / "db"), create_if_missing=True).open()
    retyped = AtlasResource(db_uri=str(tmp_path / "db"), cell_schema=f"{__name__}:RetypedCells")
    mismatch = r"\['donor'\] the table lacks; fields of another type: n_counts \(int64; the table stores"
    with pytest.raises(SchemaError, match=mismatch):
        retyped.open()
