"""The Dagster code location of lancell: ``defs`` (loaded by ``workspace.yaml`` and ``dagster dev``).

Configuration comes from the environment so one definition serves the demo, the tests and a deployment:

- ``LANCELL_ROOT`` (default ``demo_atlas/``): the folder holding ``db/``, ``arrays/``, ``landing/`` and
  ``models/``; ``LANCELL_DB_URI``, ``LANCELL_STORE_URL``, ``LANCELL_LANDING`` and ``LANCELL_MODELS``
  override each path (set but empty, any of them is refused).
- ``LANCELL_CELL_SCHEMA`` (``module:Class``, default ``lancell.bundled:CellSchema``): the cell schema a new
  atlas is created with; an existing atlas must have its columns. ``LANCELL_FEATURE_SCHEMA``: the gene
  registry's of a new atlas (default ``lancell.bundled:GeneFeature``; one whose columns an existing atlas's
  registry lacks is warned about).
- ``LANCELL_CREATE_ATLAS`` (``1``/``true``/``yes`` or ``0``/``false``/``no``, default ``0``): whether the
  first run creates an empty atlas where none is; off, a run against a location without an atlas fails with
  ``AtlasNotFoundError`` naming it (a mistyped ``LANCELL_DB_URI`` or an unmounted volume is never filled
  with a new atlas). ``make demo`` sets it.
- ``LANCELL_EXECUTOR``: ``in_process`` (default: a run's steps share one process, so the imports are paid
  once per run) or ``multiprocess``.

Loading this module imports Dagster only: lancell (LanceDB, zarr, numba, torch) is imported by the runs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import dagster as dg

from lancell_assets import ASSETS, JOBS, SENSORS
from resources import AtlasResource, LandingZone, ModelStore
from resources.atlas import DEFAULT_CELL_SCHEMA, DEFAULT_FEATURE_SCHEMA

REPO = Path(__file__).resolve().parent


def _setting(name: str, default: str | None) -> str | None:
    """Environment variable ``name``, ``default`` when unset; set but blank is refused (an empty
    ``LANCELL_ROOT`` made the atlas in the current folder)."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip():
        raise ValueError(f"{name} is set but empty: name a location, or unset it (default {default!r})")
    return value


ROOT = Path(_setting("LANCELL_ROOT", str(REPO / "demo_atlas")))
EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}
FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def _executor() -> dg.ExecutorDefinition:
    name = os.environ.get("LANCELL_EXECUTOR", "in_process")
    if name not in EXECUTORS:
        raise ValueError(f"LANCELL_EXECUTOR={name!r}: must be one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]


def _create_atlas() -> bool:
    value = os.environ.get("LANCELL_CREATE_ATLAS", "0")
    if value.strip().lower() not in FLAGS:
        raise ValueError(f"LANCELL_CREATE_ATLAS={value!r}: must be one of {sorted(FLAGS)}")
    return FLAGS[value.strip().lower()]


def build_definitions(root: Path = ROOT) -> dg.Definitions:
    """Definitions over the atlas and landing zone under ``root`` (env variables override each path)."""
    with warnings.catch_warnings():  # code references are a Dagster beta feature; say so once, here
        warnings.simplefilter("ignore", dg.BetaWarning)
        assets = dg.with_source_code_references(ASSETS)  # the UI links each asset to its code
    return dg.Definitions(
        assets=assets,
        jobs=JOBS,
        sensors=SENSORS,
        executor=_executor(),
        resources={
            "atlas": AtlasResource(
                db_uri=_setting("LANCELL_DB_URI", str(root / "db")),
                store_url=_setting("LANCELL_STORE_URL", str(root / "arrays")),
                cell_schema=_setting("LANCELL_CELL_SCHEMA", DEFAULT_CELL_SCHEMA),
                feature_schema=_setting("LANCELL_FEATURE_SCHEMA", DEFAULT_FEATURE_SCHEMA),
                create_if_missing=_create_atlas(),
            ),
            "landing_zone": LandingZone(
                path=_setting("LANCELL_LANDING", str(root / "landing")),
                geo_mirror=_setting("LANCELL_GEO_MIRROR", None),
            ),
            "model_store": ModelStore(path=_setting("LANCELL_MODELS", str(root / "models"))),
        },
    )


defs = build_definitions()
