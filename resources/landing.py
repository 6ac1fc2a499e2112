"""``LandingZone``: the folder where new ``.h5ad`` files (and their JSON sidecars) arrive."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from lancell.landing import LandingSpec, landing_files, read_landing_spec


class LandingZone(dg.ConfigurableResource):
    """A local folder watched by the landing-zone sensor."""

    path: str = Field(description="folder holding <dataset>.h5ad files and optional <dataset>.json sidecars")
    geo_mirror: str | None = Field(
        default=None, description="obstore URL of a GEO mirror (NCBI layout) for supplementary files"
    )

    def soft_files(self) -> dict[str, Path]:
        """GEO series SOFT files dropped into ``<path>/geo/``, by series key (the name before ``_family``)."""
        folder = Path(self.path) / "geo"
        files = sorted(folder.glob("*.soft")) + sorted(folder.glob("*.soft.gz")) if folder.exists() else []
        return {f.name.split("_family")[0].split(".soft")[0]: f for f in files}

    def specs(self) -> list[LandingSpec]:
        """Every landing file with its ingestion spec."""
        folder = Path(self.path)
        return landing_files(folder) if folder.exists() else []

    def spec(self, dataset_uid: str) -> LandingSpec:
        """The spec of the file whose dataset uid is ``dataset_uid``."""
        for spec in self.specs():
            if spec.uid == dataset_uid:
                return spec
        return read_landing_spec(Path(self.path) / f"{dataset_uid}.h5ad")
