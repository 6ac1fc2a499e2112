"""``LandingZone``: the folder where new ``.h5ad`` files and 10x outputs (and their JSON sidecars) arrive.

A landing file is an ``.h5ad`` (the suffix in any case), a Cell Ranger ``.h5`` file or a 10x Matrix Market
folder (``lancell.ingest.landing_spec``), with an optional sidecar (``<stem>.json``; a folder's
``<name>.json``). Names starting with ``.``
(an upload's temporary file) or ending in ``.part`` (a GEO landing being written) are files in progress, and
``geo/`` holds GEO series (``geo_series``): none of these is a landing file, and none is reported. Anything
else (a sidecar without its file, another file or folder) is not ingested and is listed by
:meth:`LandingZone.ignored`.
"""

from __future__ import annotations

import hashlib
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
    another landing file lands as the same uid).

    ``stamp`` changes with every new landing of the file or its sidecar: it digests their inode numbers,
    sizes and modification times (a file copied or moved in again gets a new inode or modification time; a
    10x folder's: the folder's and every file's in it). The
    status-change time is left out: a permission or ownership pass over the folder (a volume mounted with an
    ``fsGroup``, a backup tool) changes it on every file without changing any.
    """

    uid: str
    path: Path
    spec: LandingSpec | None
    error: str | None
    stamp: str
    shared_uid: bool = False


def _stamp(path: Path, *companions: Path) -> str:
    """A digest of the inode number, size and modification time of ``path`` and of each of ``companions``
    that exists (a landing file's sidecar): it changes with every new landing of any of them.

    Raises
    ------
    FileNotFoundError
        ``path`` is gone (removed while the folder was listed).
    """
    from lancell.ingest.landing_spec import landing_contents

    parts = []
    inside = landing_contents(path) if path.is_dir() else []  # a 10x folder's files
    for file in (path, *inside, *companions):
        try:
            info = file.stat()
        except FileNotFoundError:
            if file == path:
                raise
            continue
        name = file.relative_to(path).as_posix() if file in inside else file.name
        parts.append(f"{name}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=8).hexdigest()


class LandingZone(dg.ConfigurableResource):
    """A local folder watched by the landing-zone sensor."""

    path: str = Field(
        description="folder holding <dataset>.h5ad files, 10x outputs (<dataset>.h5, Matrix Market folders) "
        "and optional <dataset>.json sidecars"
    )
    geo_mirror: str | None = Field(
        default=None, description="obstore URL of a GEO mirror (NCBI layout) for supplementary files"
    )

    def _soft_listing(self) -> dict[str, list[Path]]:
        folder = Path(self.path) / "geo"
        files = sorted(folder.glob("*.soft")) + sorted(folder.glob("*.soft.gz")) if folder.exists() else []
        keys: dict[str, list[Path]] = {}
        for file in files:
            keys.setdefault(file.name.split("_family")[0].split(".soft")[0], []).append(file)
        return keys

    def soft_files(self) -> dict[str, Path]:
        """GEO series SOFT files dropped into ``<path>/geo/``, by series key (the name before ``_family``); a
        key that two files give (``GSE1_family.soft`` and ``GSE1_family.soft.gz``) is left out
        (:meth:`soft_conflicts`)."""
        return {key: files[0] for key, files in self._soft_listing().items() if len(files) == 1}

    def soft_conflicts(self) -> dict[str, list[str]]:
        """Series keys that several SOFT files in ``<path>/geo/`` give, with the files' names."""
        return {key: [f.name for f in files] for key, files in self._soft_listing().items() if len(files) > 1}

    @staticmethod
    def soft_stamp(path: Path) -> str:
        """Changes with every new landing of the SOFT file (its inode, size and modification time).

        Raises
        ------
        FileNotFoundError
            The file is gone.
        """
        return _stamp(path)

    def _listing(self) -> tuple[list[Path], list[str]]:
        """The landing files (sorted by name) and the names of the other entries
        (``lancell.ingest.landing_spec.landing_paths``).

        Raises
        ------
        IngestError
            The landing folder does not exist or is not a folder.
        """
        from lancell.errors import IngestError
        from lancell.ingest.landing_spec import landing_paths

        try:
            return landing_paths(Path(self.path))
        except IngestError as exc:
            raise IngestError(
                f"{exc} (LandingZone.path, LANCELL_LANDING: mistyped, or its volume not mounted?)"
            ) from None

    def ignored(self) -> list[str]:
        """Names in the landing folder that are neither a landing file, its sidecar nor in progress (module
        doc): they are not ingested.

        Raises
        ------
        IngestError
            The landing folder does not exist or is not a folder.
        """
        return self._listing()[1]

    def entries(self) -> list[LandingEntry]:
        """Every landing file (sorted by name), each read on its own: a bad sidecar marks only its file.

        A file whose sidecar cannot be read keeps its file stem as uid and carries the error; so do files
        that land as the same dataset uid (neither is ingested while both say so: taking the first by name
        would leave the other out without a word).

        Raises
        ------
        IngestError
            The landing folder does not exist or is not a folder.
        """
        from lancell.errors import IngestError
        from lancell.ingest.landing_spec import default_uid, read_landing_spec, sidecar_path

        out = []
        for path in self._listing()[0]:
            try:
                stamp = _stamp(path, sidecar_path(path))
            except FileNotFoundError:  # removed since the listing: not landed any more
                continue
            try:
                spec = read_landing_spec(path)
            except IngestError as exc:
                uid = default_uid(
                    path
                )  # (the partition the file has once its sidecar is fixed, if it keeps it)
                out.append(LandingEntry(uid=uid, path=path, spec=None, error=str(exc), stamp=stamp))
            else:
                out.append(LandingEntry(uid=spec.uid, path=path, spec=spec, error=None, stamp=stamp))
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
                stamp=entry.stamp,
                shared_uid=True,
            )
            if len(files[entry.uid]) > 1
            else entry
            for entry in out
        ]

    def entry(self, dataset_uid: str) -> LandingEntry | None:
        """The landing file whose dataset uid is ``dataset_uid`` (the first by name if several land as it;
        its ``error`` then names them all), or None when no file lands as it.

        Raises
        ------
        IngestError
            The landing folder does not exist or is not a folder.
        """
        return next((entry for entry in self.entries() if entry.uid == dataset_uid), None)
