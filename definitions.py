"""The Dagster code location of lancell: ``defs`` (loaded by ``workspace.yaml``, ``dagster dev`` and ``dg``).

Paths come from the environment so one definition serves the demo, the tests and a deployment:
``LANCELL_DB_URI`` (default ``demo_atlas/db``), ``LANCELL_STORE_URL`` (default ``<db>/../arrays``) and
``LANCELL_LANDING`` (default ``demo_atlas/landing``).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from lancell_assets import ASSETS, JOBS, SENSORS, nightly_snapshot_schedule
from resources import AtlasResource, LandingZone, ModelStore

ROOT = Path(os.environ.get("LANCELL_ROOT", Path(__file__).resolve().parent / "demo_atlas"))


def build_definitions(root: Path = ROOT) -> dg.Definitions:
    """Definitions over the atlas and landing zone under ``root`` (env variables override each path)."""
    return dg.Definitions(
        assets=ASSETS,
        jobs=JOBS,
        sensors=SENSORS,
        schedules=[nightly_snapshot_schedule],
        resources={
            "atlas": AtlasResource(
                db_uri=os.environ.get("LANCELL_DB_URI", str(root / "db")),
                store_url=os.environ.get("LANCELL_STORE_URL", str(root / "arrays")),
            ),
            "landing_zone": LandingZone(
                path=os.environ.get("LANCELL_LANDING", str(root / "landing")),
                geo_mirror=os.environ.get("LANCELL_GEO_MIRROR"),
            ),
            "model_store": ModelStore(path=os.environ.get("LANCELL_MODELS", str(root / "models"))),
        },
    )


defs = build_definitions()
