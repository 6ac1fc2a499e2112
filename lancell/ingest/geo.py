"""GEO series: a GSE family SOFT file -> per-sample records, typed obs columns and dataset provenance.

:func:`read_soft` parses a local SOFT file (plain or gzip) with GEOparse; nothing is downloaded. Each sample
becomes a :class:`GeoSample` (accession, title, organism, ``characteristics_ch*`` as key/value pairs,
supplementary file URLs). :func:`sample_table` types the characteristics over the whole series: a column
whose values are all integers is ``Int64`` ("age: 45"), all numbers ``float64`` (NaN when missing: anndata
cannot write ``Float64``), anything else ``category`` ("tissue: lung"). :func:`plan_datasets` maps each
sample to one dataset: a :class:`~lancell.tables.schema.DatasetRecord` with provenance and a one-row obs frame
that :func:`broadcast_obs` (or ``add_from_10x(obs=...)``) repeats for every cell of the sample.

Supplementary files are fetched through obstore (:func:`fetch_supplementary`) from a mirror given by URL
(``file:///...``, ``s3://...``), laid out like NCBI's server (``geo/samples/GSM1nnn/GSM1234/suppl/<file>``),
or from NCBI itself over HTTPS when no mirror is given.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anndata as ad
import obstore
import obstore.store as obs_store
import pandas as pd

from lancell.errors import GeoError, IngestError
from lancell.ingest.geo_values import typed_values
from lancell.standardize.ontology import ORGANISMS
from lancell.storage.store_failures import one_line
from lancell.tables.schema import DatasetRecord

__all__ = [
    "GeoDataset",
    "GeoSample",
    "GeoSeries",
    "broadcast_obs",
    "fetch_supplementary",
    "plan_datasets",
    "read_soft",
    "sample_table",
    "supplementary_key",
]

log = logging.getLogger(__name__)

GEO_HOST = "ftp.ncbi.nlm.nih.gov"
_TAXID_NAMES = {entry.term_id.removeprefix("NCBITaxon:"): name for name, entry in ORGANISMS.items()}


@dataclass(frozen=True)
class GeoSample:
    """One GEO sample (GSM) as the SOFT file describes it.

    ``characteristics`` maps snake_case keys (``"cell_type"``; keys of channel 2 and up get ``"_ch2"``...)
    to the raw text values; lines without ``key: value`` go under ``"characteristics"``.
    """

    accession: str
    title: str | None
    organism: str | None
    characteristics: Mapping[str, str]
    supplementary_files: tuple[str, ...]
    series: str


@dataclass(frozen=True)
class GeoSeries:
    """A GEO series (GSE) and its samples, in file order."""

    accession: str
    title: str | None
    samples: tuple[GeoSample, ...]
    supplementary_files: tuple[str, ...]
    soft_file: str

    def sample(self, accession: str) -> GeoSample:
        """The sample ``accession``; :class:`GeoError` if the series has none by that name."""
        for sample in self.samples:
            if sample.accession == accession:
                return sample
        raise GeoError(
            f"{self.accession}: no sample {accession!r} (samples: {[s.accession for s in self.samples]})"
        )


@dataclass(frozen=True)
class GeoDataset:
    """One sample mapped to one dataset: its record, its obs row (broadcast to its cells) and its files."""

    sample: GeoSample
    record: DatasetRecord
    obs: pd.DataFrame
    files: tuple[str, ...] = field(default=())


def read_soft(path: str | os.PathLike[str], *, geotype: str | None = None) -> GeoSeries:
    """Parse a GSE family SOFT file (``.gz`` works) into a :class:`GeoSeries`.

    Parameters
    ----------
    path
        The local file.
    geotype
        ``"GSE"`` for files whose name does not start with the accession (GEOparse guesses from the name).

    Raises
    ------
    GeoError
        The file is missing, a corrupt gzip, or not a series family file (no ``^SERIES`` section).
    """
    import GEOparse  # heavy import (requests, tqdm); only needed here

    path = Path(path)
    if not path.is_file():
        raise GeoError(f"no such SOFT file: {path}")
    _check_gzip(path)
    if geotype is None and not path.name.upper().startswith("GSE"):
        geotype = "GSE"
    with tempfile.TemporaryDirectory() as scratch:
        readable = _without_empty_sections(path, Path(scratch)) or path
        try:
            gse = GEOparse.get_GEO(filepath=str(readable), geotype=geotype, silent=True)
        except (ValueError, KeyError, IndexError, OSError, UnicodeDecodeError) as exc:
            raise GeoError(f"cannot parse {path} as a SOFT file: {exc}") from exc
    if not isinstance(gse, GEOparse.GEOTypes.GSE) or gse.name is None:
        raise GeoError(f"{path} has no ^SERIES section: not a GSE family SOFT file")
    accession = _first(gse.metadata, "geo_accession") or str(gse.name)
    samples = [_sample(gsm, accession) for gsm in gse.gsms.values()]
    parsed = {s.accession for s in samples} | {str(name) for name in gse.gsms}
    listed_only = [gsm for gsm in (x.strip() for x in gse.metadata.get("sample_id", [])) if gsm not in parsed]
    if listed_only:
        log.info("%s: %d listed samples have no ^SAMPLE section: %s", path, len(listed_only), listed_only)
        taxids = gse.metadata.get("sample_taxid", [])
        organism = _TAXID_NAMES.get(taxids[0].strip()) if len(taxids) == 1 else None
        samples += [GeoSample(gsm, None, organism, {}, (), accession) for gsm in listed_only]
    return GeoSeries(
        accession=accession,
        title=_first(gse.metadata, "title"),
        samples=tuple(samples),
        supplementary_files=_supplementary(gse.metadata),
        soft_file=str(path),
    )


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _check_gzip(path: Path) -> None:
    """GEOparse silently accepts a truncated gzip; read it through once to catch that."""
    if not _is_gzip(path):
        return
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise GeoError(f"{path} is not a valid gzip file: {exc}") from exc


def _without_empty_sections(path: Path, scratch: Path) -> Path | None:
    """A plain copy of the SOFT file without its empty sections (a ``^`` line right before another, such as
    a bare ``^DATABASE`` line: GEOparse would take the next section's lines for its own), or None if none."""

    def empty_sections(lines: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
        previous = b""
        for line in lines:
            yield previous, line.startswith(b"^") and previous.startswith(b"^")
            previous = line
        yield previous, False

    with gzip.open(path) if _is_gzip(path) else open(path, "rb") as fh:
        if not any(empty for _, empty in empty_sections(fh)):
            return None
    copy = scratch / path.name.removesuffix(".gz")
    with gzip.open(path) if _is_gzip(path) else open(path, "rb") as fh, open(copy, "wb") as out:
        out.writelines(line for line, empty in empty_sections(fh) if not empty)
    return copy


def _first(metadata: Mapping[str, list[str]], key: str) -> str | None:
    values = metadata.get(key) or []
    return values[0].strip() if values else None


def _supplementary(metadata: Mapping[str, list[str]]) -> tuple[str, ...]:
    urls = [
        value.strip()
        for key in sorted(metadata)
        if key.startswith("supplementary_file")
        for value in metadata[key]
    ]
    return tuple(url for url in urls if url and url.upper() != "NONE")


def column_name(key: str) -> str:
    """A characteristic key as a snake_case column name (``"Cell type"`` -> ``"cell_type"``)."""
    return re.sub(r"[^0-9a-z]+", "_", key.strip().lower()).strip("_") or "characteristics"


def _sample(gsm: Any, series: str) -> GeoSample:
    metadata: Mapping[str, list[str]] = gsm.metadata
    characteristics: dict[str, str] = {}
    channels = sorted(k for k in metadata if re.fullmatch(r"characteristics_ch\d+", k))
    for key in channels:
        suffix = "" if key == "characteristics_ch1" else "_" + key.rsplit("_", 1)[1]
        for line in metadata[key]:
            name, sep, value = line.partition(":")
            column = (column_name(name) if sep else "characteristics") + suffix
            value = (value if sep else line).strip()
            characteristics[column] = (
                f"{characteristics[column]}; {value}" if column in characteristics else value
            )
    return GeoSample(
        accession=_first(metadata, "geo_accession") or str(gsm.name),
        title=_first(metadata, "title"),
        organism=_first(metadata, "organism_ch1"),
        characteristics=characteristics,
        supplementary_files=_supplementary(metadata),
        series=series,
    )


def sample_table(series: GeoSeries) -> pd.DataFrame:
    """One row per sample (index = accession): ``title``, ``organism`` and the typed characteristics.

    A characteristic named like a base column is suffixed ``_characteristic``; the values are typed by
    :func:`lancell.ingest.geo_values.typed_values` (numbers, unless a leading zero or two
    spellings of one number would merge labels: then text).
    """
    base = {"title", "organism"}
    rows = []
    for sample in series.samples:
        row: dict[str, object] = {"title": sample.title, "organism": sample.organism}
        for key, value in sample.characteristics.items():
            row[f"{key}_characteristic" if key in base else key] = value
        rows.append(row)
    table = pd.DataFrame(rows, index=pd.Index([s.accession for s in series.samples], name="sample"))
    for name in table.columns:
        table[name] = table[name].astype("category") if name in base else typed_values(table[name])
    return table


def broadcast_obs(adata: ad.AnnData, row: pd.DataFrame) -> ad.AnnData:
    """A copy of ``adata`` whose obs gets every column of the one-row frame ``row``, dtypes kept.

    Raises
    ------
    GeoError
        ``row`` does not have exactly one row.
    """
    if len(row) != 1:
        raise GeoError(f"broadcast_obs wants one row (one sample), got {len(row)}")
    out = adata.copy()
    repeated = row.iloc[[0] * adata.n_obs].set_axis(out.obs_names)
    for name in repeated.columns:
        out.obs[name] = repeated[name]
    return out


def _dataset_uid(accession: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", accession).strip("_")


def plan_datasets(
    series: GeoSeries,
    *,
    samples: Iterable[str] | None = None,
    columns: Mapping[str, str] | None = None,
    record_type: type[DatasetRecord] = DatasetRecord,
    file_pattern: str | None = None,
) -> list[GeoDataset]:
    """Map each sample to one dataset: a record with provenance and its obs row.

    Parameters
    ----------
    series
        The parsed series.
    samples
        The sample accessions to plan (all by default).
    columns
        Rename sample-table columns to obs columns (``{"tissue": "tissue_type"}``); unnamed columns keep
        their names. The obs row holds ``organism`` and the characteristics (the title goes to the record).
    record_type
        The atlas's dataset record class (``atlas.dataset_schema``) if it adds fields.
    file_pattern
        A regular expression the supplementary file names must match (``r"\\.h5$"``); all files otherwise.

    Returns
    -------
    list of GeoDataset
        uid = the sample accession (characters outside ``[A-Za-z0-9_.-]`` become ``_``), ``accession`` =
        the sample accession, ``name`` = ``"<title> (<series>)"``, ``source`` = the first matching
        supplementary file URL, else the SOFT file.

    Raises
    ------
    IngestError
        ``columns`` renames a column the sample table does not have (a typo would pass unseen).
    """
    table = sample_table(series).drop(columns=["title"])
    if missing := sorted(set(columns or {}) - set(table.columns)):
        raise IngestError(
            f"{series.accession}: columns renames {missing}, which the sample table does not have (its "
            f"columns: {list(table.columns)})"
        )
    table = table.rename(columns=dict(columns or {}))
    wanted = list(samples) if samples is not None else [s.accession for s in series.samples]
    pattern = re.compile(file_pattern) if file_pattern else None
    planned = []
    for accession in wanted:
        sample = series.sample(accession)
        files = tuple(
            u for u in sample.supplementary_files if pattern is None or pattern.search(u.rsplit("/", 1)[-1])
        )
        record = record_type(
            uid=_dataset_uid(accession),
            accession=accession,
            name=f"{sample.title or accession} ({series.accession})",
            source=files[0] if files else series.soft_file,
        )
        planned.append(GeoDataset(sample, record, table.loc[[accession]], files))
    return planned


def supplementary_key(url: str) -> str:
    """The object key of a GEO supplementary file URL on a mirror: its path on NCBI's server.

    ``ftp://ftp.ncbi.nlm.nih.gov/geo/samples/GSM2828nnn/GSM2828511/suppl/x.mtx.gz`` ->
    ``geo/samples/GSM2828nnn/GSM2828511/suppl/x.mtx.gz``.
    """
    parsed = urlparse(url)
    key = parsed.path.lstrip("/")
    if not parsed.scheme or not key:
        raise GeoError(f"not a supplementary file URL: {url!r}")
    return key


def fetch_supplementary(
    url: str,
    destination: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    store_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Fetch one supplementary file through obstore into the folder ``destination``; return the local path.

    Parameters
    ----------
    url
        The URL as the SOFT file gives it (``ftp://`` or ``https://``).
    destination
        A local folder (created if needed); the file keeps its name.
    mirror
        An obstore URL of a mirror laid out like NCBI's server (``file:///data/geo-mirror``,
        ``s3://bucket/geo-mirror``), or a local folder's path; NCBI over HTTPS when omitted.
    store_kwargs
        Passed to :func:`obstore.store.from_url` (endpoint, region, ``client_options``...).

    Raises
    ------
    GeoError
        The file is not in the store, or the store cannot be reached.
    """
    key = supplementary_key(url)
    base = mirror if mirror is not None else f"https://{urlparse(url).netloc or GEO_HOST}"
    if "://" not in base:  # a local folder given as a path
        base = Path(base).resolve().as_uri()
    try:
        store = obs_store.from_url(base, **dict(store_kwargs or {}))
    except Exception as exc:  # obstore raises several unrelated types for bad URLs and settings
        raise GeoError(f"cannot open the store at {base!r}: {one_line(exc)}") from exc
    target = Path(destination) / key.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        result = obstore.get(store, key)
        with open(partial, "wb") as fh:
            for chunk in result.stream():
                fh.write(chunk)
    except FileNotFoundError as exc:
        partial.unlink(missing_ok=True)
        raise GeoError(f"{url}: no object {key!r} in {base}") from exc
    except Exception as exc:  # network and store errors come as several obstore types
        partial.unlink(missing_ok=True)
        raise GeoError(f"cannot fetch {url} from {base}: {one_line(exc)}") from exc
    partial.replace(target)
    return target
