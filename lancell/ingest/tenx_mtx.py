"""10x Matrix Market folders (v2 ``matrix.mtx`` / ``genes.tsv`` / ``barcodes.tsv``, v3 the same gzipped with
``features.tsv.gz``), read in two bounded passes.

Files are recognised as gzip by their first bytes, not their names. Pass one streams the triplets
``CHUNK_LINES`` lines at a time, validates every line (indices in range, the entry count of the size line)
and counts the nonzeros of each cell; pass two builds CSR row blocks as it reads, which needs the triplets
ordered by barcode, as Cell Ranger writes them. Memory: O(n_cells + n_features) plus one chunk and one
block. A file in another order is read whole (O(nnz)), with a logged warning. Duplicate entries are an
error (``scipy.io.mmread`` would sum them).
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.errors import TenxFormatError
from lancell.ingest.sources import row_ranges
from lancell.ingest.tenx_matrix import GENE_EXPRESSION, TenxMatrix, checked_block, features_frame

__all__ = ["CHUNK_LINES", "mtx_folder", "open_mtx"]

log = logging.getLogger(__name__)

CHUNK_LINES = 1_000_000
_GZIP_MAGIC = b"\x1f\x8b"
# what a truncated or corrupt gzip member, bad UTF-8 or a malformed table raises while being read
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError)
_INT32_MAX = np.iinfo(np.int32).max


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The one of ``names`` (each gzipped or plain) in ``folder``, None if none is there.

    Raises
    ------
    TenxFormatError
        The folder holds a name both gzipped and plain (an edited copy beside the original, say), or two of
        ``names`` (``features.tsv.gz`` beside ``genes.tsv``), other than links to one file: which one is meant
        cannot be told, and reading either could be the wrong one.
    """
    found = [c for name in names for c in (folder / f"{name}.gz", folder / name) if c.is_file()]
    found = [c for i, c in enumerate(found) if not any(c.samefile(f) for f in found[:i])]  # (links: one)
    if len(found) > 1:
        listed = " and ".join(c.name for c in found)
        raise TenxFormatError(
            f"{folder} holds both {listed}: which one to read cannot be told; move the other out of the "
            "folder"
        )
    return found[0] if found else None


def mtx_folder(folder: Path, genome: str | None) -> Path:
    """The folder holding ``matrix.mtx[.gz]``: ``folder`` itself or its (single, or ``genome``) sub-folder."""
    if _find(folder, ("matrix.mtx",)) is not None:
        v2 = _find(folder, ("genes.tsv",)) is not None  # (a v2 genome folder is named for its genome)
        if genome is not None and not (v2 and genome == folder.name):
            of = f"genome {folder.name!r}" if v2 else "no genome: a v3 folder"
            raise TenxFormatError(
                f"{folder}: genome {genome!r} given, but the folder holds one matrix, of {of}"
            )
        return folder
    if genome is not None:
        if not (folder / genome).is_dir():
            raise TenxFormatError(f"{folder}: no genome sub-folder {genome!r}")
        return folder / genome
    inner = sorted(p for p in folder.iterdir() if p.is_dir() and _find(p, ("matrix.mtx",)) is not None)
    if len(inner) == 1:
        return inner[0]
    if inner:
        raise TenxFormatError(
            f"{folder} holds several matrix folders {[p.name for p in inner]}: give one of them (a v2 "
            "output's genomes: or pass genome=, lancell ingest: --genome)"
        )
    raise TenxFormatError(f"{folder}: no matrix.mtx or matrix.mtx.gz")


def _open_text(path: Path) -> TextIO:
    """``path`` (gzipped or not) as text; a UTF-8 byte-order mark (written by some editors) is skipped."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == _GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        with _open_text(path) as fh:
            frame = pd.read_csv(fh, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=3)
    except pd.errors.EmptyDataError:
        raise TenxFormatError(f"{path} is empty") from None
    except _READ_ERRORS as exc:
        raise TenxFormatError(f"cannot read {path}: {exc}") from exc
    return frame


def _mtx_header(fh: TextIO, path: Path) -> tuple[int, int, int, str]:
    banner = fh.readline().split()
    if len(banner) != 5 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
        raise TenxFormatError(f"{path}: not a Matrix Market file (banner {' '.join(banner)!r})")
    fmt, value_field, symmetry = (word.lower() for word in banner[2:])
    if fmt != "coordinate" or symmetry != "general" or value_field not in ("integer", "real", "double"):
        raise TenxFormatError(
            f"{path}: unsupported Matrix Market layout {fmt} {value_field} {symmetry}; "
            "10x writes 'coordinate integer general'"
        )
    line = fh.readline()
    while line.startswith("%") or (line and not line.strip()):
        line = fh.readline()
    try:
        n_rows, n_cols, nnz = (int(word) for word in line.split())
    except ValueError:
        raise TenxFormatError(f"{path}: bad size line {line.strip()!r}") from None
    return n_rows, n_cols, nnz, value_field


def _mtx_chunks(path: Path, value_dtype: type) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(cells, genes, values)`` (0-based) for ``CHUNK_LINES`` triplets at a time.

    Raises
    ------
    TenxFormatError
        An unreadable file, an entry line without exactly 3 fields (row column value), a number that does
        not fit 64 bits.
    """
    try:
        with _open_text(path) as fh:
            _mtx_header(fh, path)
            # pandas would take the first field of a first line with too many fields as an index (or drop the
            # extra fields with index_col=False), so that line is checked here; later ones it refuses itself
            start = fh.tell()
            line = fh.readline()
            while line and not line.strip():
                start = fh.tell()
                line = fh.readline()
            if line and len(line.split()) != 3:
                raise TenxFormatError(
                    f"{path}: the first entry line {line.strip()!r} has {len(line.split())} fields, "
                    "expected 3 (feature barcode value)"
                )
            fh.seek(start)
            try:
                reader = pd.read_csv(
                    fh,
                    sep=r"\s+",
                    header=None,
                    names=["gene", "cell", "value"],
                    index_col=False,
                    dtype={"gene": np.int64, "cell": np.int64, "value": value_dtype},
                    keep_default_na=False,  # (a missing or "NA" field is refused, never read as NaN;
                    na_values=["nan", "NaN", "NAN", "-nan"],  # NaN written as a number is read as one)
                    chunksize=CHUNK_LINES,
                )
            except pd.errors.EmptyDataError:  # no entries at all
                return
            read = 0
            try:
                for chunk in reader:
                    read += len(chunk)
                    yield (
                        chunk["cell"].to_numpy() - 1,
                        chunk["gene"].to_numpy() - 1,
                        chunk["value"].to_numpy(),
                    )
            except UnicodeDecodeError:
                raise
            except ValueError as exc:
                kind = "integers: the header says 'integer'" if value_dtype is np.int64 else "numbers"
                raise TenxFormatError(
                    f"{path}: an entry line among entries {read + 1:,} to {read + CHUNK_LINES:,} is not 3 "
                    f"{kind} (feature barcode value; a field missing, or text?): {exc}"
                ) from exc
    except TenxFormatError:
        raise
    except OverflowError as exc:
        raise TenxFormatError(f"{path}: an entry holds a number that does not fit 64 bits ({exc})") from exc
    except _READ_ERRORS as exc:
        raise TenxFormatError(f"cannot read {path}: {exc}") from exc


def open_mtx(folder: Path) -> TenxMatrix:
    """Open a 10x Matrix Market folder and run the validating first pass; see
    :func:`lancell.ingest.tenx.open_10x`.

    Raises
    ------
    TenxFormatError
        A missing file, sizes that disagree, a malformed line (an entry without exactly 3 fields, a number
        beyond 64 bits), a corrupt gzip, a wrong entry count.
    """
    matrix_path = _find(folder, ("matrix.mtx",))
    features_path = _find(folder, ("features.tsv", "genes.tsv"))
    barcodes_path = _find(folder, ("barcodes.tsv",))
    for what, found, names in (
        ("matrix", matrix_path, "matrix.mtx[.gz]"),
        ("features", features_path, "features.tsv[.gz] or genes.tsv[.gz]"),
        ("barcodes", barcodes_path, "barcodes.tsv[.gz]"),
    ):
        if found is None:
            raise TenxFormatError(f"{folder}: no {what} file ({names})")
    barcodes = _read_tsv(barcodes_path)
    features = _read_tsv(features_path)
    if features.shape[1] < 2:
        raise TenxFormatError(f"{features_path}: expected at least 2 tab-separated columns (id, name)")
    given = features[2] if features.shape[1] >= 3 else pd.Series([""] * len(features))
    untyped = np.flatnonzero(given.isna() | (given.astype(str).str.strip() == ""))
    version = 2 if untyped.size == len(features) else 3  # (every line ending in a tab: 2 columns)
    types = given.to_numpy() if version == 3 else np.full(len(features), GENE_EXPRESSION, dtype=object)
    if version == 3 and untyped.size:  # (a damaged line: its feature would be left out as of an unknown type)
        more = f" (and {untyped.size - 1} more)" if untyped.size > 1 else ""
        raise TenxFormatError(
            f"{features_path}: line {untyped[0] + 1}{more} has no feature type in its third column (Gene "
            "Expression, Antibody Capture, ...; a file of 2 columns is read as genes)"
        )
    var = features_frame(features[0].to_numpy(), features[1].to_numpy(), types)
    obs = pd.DataFrame(index=pd.Index(barcodes[0].to_numpy(), dtype=str))
    try:
        with _open_text(matrix_path) as fh:
            n_genes, n_cells, nnz, value_field = _mtx_header(fh, matrix_path)
    except TenxFormatError:  # (it names the file itself)
        raise
    except _READ_ERRORS as exc:
        raise TenxFormatError(f"cannot read {matrix_path}: {exc}") from exc
    if (n_genes, n_cells) != (len(var), len(obs)):
        raise TenxFormatError(
            f"{folder}: {matrix_path.name} is {n_genes} features x {n_cells} barcodes but "
            f"{features_path.name} has {len(var)} rows and {barcodes_path.name} has {len(obs)}"
        )
    value_dtype = np.int64 if value_field == "integer" else np.float64
    indptr, ordered, vmax = _mtx_first_pass(matrix_path, value_dtype, n_genes, n_cells, nnz)
    dtype = np.dtype(np.int32) if value_dtype is np.int64 and vmax <= _INT32_MAX else np.dtype(value_dtype)
    if not ordered:
        log.warning("%s is not ordered by barcode: it is read whole into memory (O(nnz))", matrix_path)

    def read_blocks(target_values: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        blocks = _ordered_blocks if ordered else _unordered_blocks
        yield from blocks(matrix_path, value_dtype, dtype, indptr, n_genes, target_values)

    return TenxMatrix(folder, "mtx", version, obs, var, dtype, read_blocks, indptr=indptr)


def _mtx_first_pass(
    path: Path, value_dtype: type, n_genes: int, n_cells: int, nnz: int
) -> tuple[np.ndarray, bool, float]:
    """Validate every triplet; return the CSR row offsets of the nonzeros, whether rows are ordered, max."""
    counts = np.zeros(n_cells, dtype=np.int64)
    seen, last_cell, ordered, vmax = 0, -1, True, 0
    for cells, genes, values in _mtx_chunks(path, value_dtype):
        if cells.size == 0:  # a matrix without entries
            continue
        for name, index, size in (("feature", genes, n_genes), ("barcode", cells, n_cells)):
            bad = (index < 0) | (index >= size)
            if bad.any():
                line = seen + int(np.flatnonzero(bad)[0]) + 1
                raise TenxFormatError(
                    f"{path}: entry {line} has {name} index {int(index[bad][0]) + 1} outside 1..{size}"
                )
        if ordered and (cells[0] < last_cell or (np.diff(cells) < 0).any()):
            ordered = False
        last_cell = int(cells[-1])
        nonzero = values != 0
        counts += np.bincount(cells[nonzero], minlength=n_cells)
        vmax = max(vmax, abs(values).max())
        seen += len(cells)
    if seen != nnz:
        raise TenxFormatError(f"{path}: the size line says {nnz} entries but the file holds {seen}")
    return np.concatenate([[0], np.cumsum(counts)]), ordered, vmax


def _triplet_block(
    parts: list[tuple[np.ndarray, ...]], start: int, stop: int, n_genes: int, dtype: np.dtype
) -> sp.csr_matrix:
    cells = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    genes = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    values = np.concatenate([p[2] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)
    shape = (stop - start, n_genes)
    return sp.coo_matrix((values, (cells - start, genes)), shape=shape).tocsr()


def _ordered_blocks(
    path: Path, value_dtype: type, dtype: np.dtype, indptr: np.ndarray, n_genes: int, target_values: int
) -> Iterator[tuple[int, sp.csr_matrix]]:
    ranges = row_ranges(indptr, target_values)
    start, stop = next(ranges, (0, 0))
    pending: list[tuple[np.ndarray, ...]] = []
    for cells, genes, values in _mtx_chunks(path, value_dtype):
        keep = values != 0
        cells, genes, values = cells[keep], genes[keep], values[keep]
        while True:
            cut = int(np.searchsorted(cells, stop, side="left"))
            pending.append((cells[:cut], genes[:cut], values[:cut]))
            if cut == len(cells):
                break
            block = _triplet_block(pending, start, stop, n_genes, dtype)
            yield start, checked_block(block, int(indptr[stop] - indptr[start]), path, start)
            pending = []
            cells, genes, values = cells[cut:], genes[cut:], values[cut:]
            start, stop = next(ranges)
    while stop > start:
        block = _triplet_block(pending, start, stop, n_genes, dtype)
        yield start, checked_block(block, int(indptr[stop] - indptr[start]), path, start)
        pending = []
        start, stop = next(ranges, (stop, stop))


def _unordered_blocks(
    path: Path, value_dtype: type, dtype: np.dtype, indptr: np.ndarray, n_genes: int, target_values: int
) -> Iterator[tuple[int, sp.csr_matrix]]:
    whole = _triplet_block(list(_mtx_chunks(path, value_dtype)), 0, len(indptr) - 1, n_genes, dtype)
    whole = checked_block(whole, int(indptr[-1]), path, 0)
    for start, stop in row_ranges(indptr, target_values):
        yield start, whole[start:stop]
