"""GEO series -> landing-zone files: each sample's 10x supplementary file becomes ``<GSM>.h5ad`` + sidecar.

The landing zone then treats GEO samples like any other landed dataset (one Dagster partition each), with
provenance (accession, source URL, title) in the sidecar and the sample characteristics as obs columns.
Supplementary files come through obstore from ``mirror`` (a local folder or bucket laid out like NCBI's
server), never by ad-hoc HTTP code.

A sample's 10x output is an ``.h5`` file or a Matrix Market triplet (``<prefix>matrix.mtx.gz`` with its
``<prefix>barcodes.tsv.gz`` and ``<prefix>features.tsv.gz`` or ``genes.tsv.gz``, as GEO names them). Only its
``Gene Expression`` features are landed (the landing file's feature space is ``gene_expression``); other
feature types are left out with a :class:`~lancell.errors.LancellWarning`. Every sample is fetched and read
before any landing file appears, so a failure lands nothing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lancell.errors import GeoError, LancellWarning, TenxFormatError, caller_outside_lancell
from lancell.ingest.geo import GeoDataset, broadcast_obs, fetch_supplementary, plan_datasets, read_soft
from lancell.ingest.tenx import read_10x
from lancell.ingest.tenx_matrix import GENE_EXPRESSION

__all__ = ["TENX_FILES", "land_geo_series"]

log = logging.getLogger(__name__)

TENX_FILES = r"(\.h5$|matrix\.mtx(\.gz)?$)"
_MTX = re.compile(r"^(?P<prefix>.*)matrix\.mtx(\.gz)?$")


def _remove_parts(parts: dict[str, Path | None]) -> None:
    """Delete the ``.part`` files not placed (an error, an interrupt, a landing that finished first)."""
    for part in parts.values():
        if part is not None:
            part.unlink(missing_ok=True)


def _made_folders(landing: Path) -> list[Path]:
    """Create ``landing`` and its missing parents; return the folders created, innermost first."""
    missing = [folder for folder in (landing, *landing.parents) if not folder.exists()]
    landing.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed landing created (innermost first), those still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # no longer empty (another landing wrote there), or gone
            return


def land_geo_series(
    soft_path: str | os.PathLike[str],
    landing: str | os.PathLike[str],
    *,
    mirror: str | None,
    zarr_layer: str = "counts",
    file_pattern: str = TENX_FILES,
    store_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write one landing file per sample of the series that has a 10x supplementary file; return their uids.

    Samples already in the landing folder (a sample of a SuperSeries and of its SubSeries, a series landed
    again) keep their files and sidecars as they are (warned). New ones are written as ``.part`` files and
    renamed only once every sample has been fetched and read: an error lands nothing new (and removes the
    landing folder, and its parents, where this call made them).

    Warns
    -----
    LancellWarning
        Samples without a supplementary file matching ``file_pattern`` (not landed), samples with several
        (only the first is landed), feature types other than ``Gene Expression`` (not landed), samples already
        landed (kept as they are).

    Raises
    ------
    GeoError
        The SOFT file cannot be parsed, no sample has a matching file, a listed supplementary file (or a
        Matrix Market file's barcodes or features) is missing from the mirror, or a sample repeats a barcode.
    TenxFormatError
        A supplementary file is not a readable 10x output.
    """
    series = read_soft(soft_path)
    landing = Path(landing)
    datasets = plan_datasets(series, file_pattern=file_pattern)
    without = [d.record.uid for d in datasets if not d.files]
    if len(without) == len(datasets):
        raise GeoError(f"{soft_path}: no sample has a supplementary file matching {file_pattern!r}")
    if without:
        warnings.warn(
            f"{soft_path}: {len(without)} samples have no supplementary file matching {file_pattern!r} (or "
            f"no ^SAMPLE section) and are not landed: {without}",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    planned = [(d, _files(d)) for d in datasets if d.files]  # every sample's files known before fetching
    created = _made_folders(landing)
    parts: dict[str, Path | None] = {}
    try:
        for dataset, urls in planned:
            target = landing / f"{dataset.record.uid}.h5ad"
            if not target.exists():
                parts[dataset.record.uid] = _landed_part(dataset, urls, target, mirror, store_kwargs)
        landed = [d for d, _ in planned if d.record.uid not in parts or parts[d.record.uid] is not None]
        if not landed:
            raise GeoError(f"{soft_path}: no sample has {GENE_EXPRESSION!r} features")
        ready = [(d, part) for d in landed if (part := parts.get(d.record.uid)) is not None]
        kept = _place(landing, ready, zarr_layer)
    except BaseException:
        _remove_parts(parts)
        _remove_empty(created)
        raise
    _remove_parts(parts)
    kept += [d.record.uid for d in landed if d.record.uid not in parts]
    if kept:  # a sample of a SuperSeries and its SubSeries, or the series landed again: as it was landed
        warnings.warn(
            f"{soft_path}: samples {sorted(kept)} are already in the landing folder; their files and "
            "sidecars are kept as they are (a new landing would make their ingested datasets differ from "
            "them)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return [dataset.record.uid for dataset in landed]


def _place(landing: Path, ready: list[tuple[GeoDataset, Path]], zarr_layer: str) -> list[str]:
    """Move each sample's part into place with its sidecar (the sidecar first: the sensor picks up the
    ``.h5ad``), under an exclusive lock of the landing folder (two landings of one sample at once, a
    SuperSeries and its SubSeries, never pair one's file with the other's sidecar); a sample another landing
    placed meanwhile keeps its files. Returns those samples' uids. The parts are left for the caller to
    remove."""
    kept = []
    folder = os.open(landing, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)  # released when closed, also by a killed process
        except OSError as exc:  # a file system without locks (some network mounts)
            log.warning("landing folder %s cannot be locked (%s): run one landing at a time", landing, exc)
        for dataset, part in ready:
            uid = dataset.record.uid
            target = landing / f"{uid}.h5ad"
            if target.exists():
                kept.append(uid)
                continue
            sidecar = {
                "uid": uid,
                "zarr_layer": zarr_layer,
                "var_uid_column": "gene_ids",
                "symbol_column": "gene_symbol",
                "organism": dataset.sample.organism,
                "name": dataset.record.name,
                "source": dataset.record.source,
                "accession": dataset.record.accession,
            }
            written = landing / f".{uid}.json.{uuid.uuid4().hex}.part"
            try:
                written.write_text(json.dumps(sidecar, indent=2))
                written.replace(landing / f"{uid}.json")
            finally:
                written.unlink(missing_ok=True)
            try:
                os.link(part, target)  # never over a file put there meanwhile (not by a landing)
            except FileExistsError:
                kept.append(uid)
            except OSError:  # a file system without hard links: the lock and the check above guard it
                part.replace(target)
    finally:
        os.close(folder)
    return kept


def _files(dataset: GeoDataset) -> list[str]:
    """The URLs of the sample's first 10x output: an ``.h5`` file, or a Matrix Market file with its barcodes
    and features (warns when the sample has other matching files)."""
    first, *others = dataset.files
    if others:
        warnings.warn(
            f"{dataset.record.uid}: several supplementary files match; only {first} is landed, not {others}",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    match = _MTX.match(first.rsplit("/", 1)[-1])
    if match is None:
        return [first]
    names = {url.rsplit("/", 1)[-1]: url for url in dataset.sample.supplementary_files}
    urls = [first]
    for kind in (("barcodes",), ("features", "genes")):
        found = [
            names[f"{match['prefix']}{stem}.tsv{gz}"]
            for stem in kind
            for gz in (".gz", "")
            if f"{match['prefix']}{stem}.tsv{gz}" in names
        ]
        if not found:
            raise GeoError(
                f"{dataset.record.uid}: {first} comes without {match['prefix']}{kind[0]}.tsv[.gz] among the "
                f"sample's supplementary files {sorted(names)}"
            )
        if len(found) > 1:
            raise GeoError(
                f"{dataset.record.uid}: {first} comes with {[url.rsplit('/', 1)[-1] for url in found]} among "
                "the sample's supplementary files: which one belongs to it cannot be told"
            )
        urls.append(found[0])
    return urls


def _landed_part(
    dataset: GeoDataset,
    urls: list[str],
    target: Path,
    mirror: str | None,
    store_kwargs: Mapping[str, Any] | None,
) -> Path | None:
    """Fetch and read the sample's 10x output; write its ``Gene Expression`` features with the sample's obs
    row to ``<target>.part`` and return that path (None, after the warning, when it has none)."""
    uid = dataset.record.uid
    with tempfile.TemporaryDirectory() as scratch:
        local = [fetch_supplementary(url, scratch, mirror=mirror, store_kwargs=store_kwargs) for url in urls]
        match = _MTX.match(local[0].name)
        if match is not None:  # a Matrix Market triplet, renamed as the folder reader wants it
            for path in local:
                path.rename(path.with_name(path.name.removeprefix(match["prefix"])))
        try:
            adata = read_10x(local[0].parent if match is not None else local[0])
        except TenxFormatError as exc:  # named by its URL: the fetched copy is gone when this is read
            raise TenxFormatError(
                f"{uid}: {', '.join(urls)} is no readable 10x output: {str(exc).replace(scratch + '/', '')}"
            ) from exc
    repeated = adata.obs_names[adata.obs_names.duplicated()]
    if len(repeated):
        raise GeoError(f"{uid}: {len(repeated)} barcodes occur more than once, e.g. {list(repeated[:3])}")
    kinds = adata.var["feature_type"].astype(str)
    left_out = {kind: int((kinds == kind).sum()) for kind in kinds.unique() if kind != GENE_EXPRESSION}
    if left_out:
        values = int(adata[:, (kinds != GENE_EXPRESSION).to_numpy()].X.nnz)
        none = "" if (kinds == GENE_EXPRESSION).any() else f"; the sample has no {GENE_EXPRESSION!r} features"
        warnings.warn(
            f"{uid}: features of types other than {GENE_EXPRESSION!r} are not landed: {left_out} features, "
            f"{values} nonzero values{none}",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    if not (kinds == GENE_EXPRESSION).any():
        return None
    kept = adata[:, (kinds == GENE_EXPRESSION).to_numpy()].copy()
    # a name of this call's own: two landings of one sample at once (a SuperSeries and its SubSeries) never
    # write, rename or remove each other's part
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")  # created as any file (umask)
    try:
        broadcast_obs(kept, dataset.obs).write_h5ad(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return partial
