"""``LandingZone``: the folder where new ``.h5ad`` files (and their JSON sidecars) arrive."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:  # lancell is imported at first use: loading the definitions must stay fast
    from lancell.ingest.landing import LandingSpec


@dataclass(frozen=True)
class LandingEntry:
    """One landing file: its dataset uid and either its spec or why it cannot be ingested (``shared_uid``:
    another landing file lands as the same uid)."""

    uid: str
    path: Path
    spec: LandingSpec | None
    error: str | None
    shared_uid: bool = False


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

    def entries(self) -> list[LandingEntry]:
        """Every landing file (sorted by name), each read on its own: a bad sidecar marks only its file.

        A file whose sidecar cannot be read keeps its file stem as uid and carries the error; so do files
        that land as the same dataset uid (neither is ingested while both say so: taking the first by name
        would leave the other out without a word).
        """
        from lancell.errors import IngestError
        from lancell.ingest.landing import read_landing_spec

        folder = Path(self.path)
        out = []
        for path in sorted(folder.glob("*.h5ad")) if folder.exists() else []:
            try:
                spec = read_landing_spec(path)
            except IngestError as exc:
                out.append(LandingEntry(uid=path.stem, path=path, spec=None, error=str(exc)))
            else:
                out.append(LandingEntry(uid=spec.uid, path=path, spec=spec, error=None))
        files: dict[str, list[str]] = {}
        for entry in out:
            files.setdefault(entry.uid, []).append(entry.path.name)
        return [
            LandingEntry(
                uid=entry.uid,
                path=entry.path,
                spec=None,
                error=f"landing files {files[entry.uid]} all land as dataset uid {entry.uid!r}; give each "
                "its own uid (file stem or sidecar 'uid')",
                shared_uid=True,
            )
            if len(files[entry.uid]) > 1
            else entry
            for entry in out
        ]

    def spec(self, dataset_uid: str) -> LandingSpec:
        """The spec of the file whose dataset uid is ``dataset_uid``.

        Raises
        ------
        IngestError
            That file's sidecar cannot be read (the message names it), or no file has that uid.
        """
        from lancell.errors import IngestError
        from lancell.ingest.landing import read_landing_spec

        for entry in self.entries():
            if entry.uid == dataset_uid:
                if entry.spec is None:
                    raise IngestError(entry.error)
                return entry.spec
        return read_landing_spec(Path(self.path) / f"{dataset_uid}.h5ad")
