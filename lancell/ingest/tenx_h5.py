"""10x HDF5 files: v3 (``/matrix`` with a ``features`` group) and v2 (one group per genome, ``genes`` and
``gene_names``).

The file stores genes x cells as CSC, which is cells x genes CSR: a row block is one slice of ``data`` and
one of ``indices``, located by ``indptr`` (read whole: one offset per cell). Memory: O(n_cells + n_features)
plus one block.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.errors import TenxFormatError
from lancell.ingest.h5_direct import decompressor_pool, range_reader
from lancell.ingest.sources import native_order, row_ranges
from lancell.ingest.tenx_matrix import GENE_EXPRESSION, TenxMatrix, checked_block, features_frame

__all__ = ["open_h5"]


def _strings(dataset: h5py.Dataset) -> np.ndarray:
    """A string dataset's values as ``str``: fixed-length bytes (Cell Ranger's) or variable-length strings
    (h5py's own), both read as UTF-8 (whatever character set the file declares: Cell Ranger declares ASCII
    for names such as ``CD45RA_TotalSeq™``).

    Raises
    ------
    TenxFormatError
        The dataset is not 1-D (each row's text would be read as one name).
    """
    if dataset.ndim != 1:
        raise TenxFormatError(
            f"{dataset.file.filename}: {dataset.name} is a {dataset.ndim}-D array, not a 1-D array of names"
        )
    values = dataset.asstr("utf-8")[:] if h5py.check_string_dtype(dataset.dtype) else dataset[:]
    return np.char.decode(values, "utf-8").astype(object) if values.dtype.kind == "S" else values.astype(str)


def open_h5(path: Path, genome: str | None) -> TenxMatrix:
    """Open a 10x HDF5 file; see :func:`lancell.ingest.tenx.open_10x`.

    Raises
    ------
    TenxFormatError
        Not HDF5, no 10x groups, an unknown or ambiguous genome, or sizes that disagree.
    """
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise TenxFormatError(f"cannot open {path} as HDF5: {exc}") from exc
    try:
        with handle:
            group_name, version, all_var, columns = _h5_features(handle, path, genome)
            group = handle[group_name]
            for name in ("barcodes", "data", "indices", "indptr", "shape"):
                if name not in group:
                    raise TenxFormatError(f"{path}: /{group_name} has no {name!r} dataset")
            obs = pd.DataFrame(index=pd.Index(_strings(group["barcodes"]), dtype=str))
            for name in ("data", "indices", "indptr"):
                member = group[name]
                if member.ndim != 1 or (name != "data" and member.dtype.kind not in "iu"):
                    raise TenxFormatError(
                        f"{path}: /{group_name}/{name} is a {member.ndim}-D {member.dtype} array, not a 1-D "
                        f"array of {'numbers' if name == 'data' else 'integers'}"
                    )
            n_genes, n_cells = (int(v) for v in group["shape"][:])
            indptr = group["indptr"][:].astype(np.int64)
            n_data, n_indices = group["data"].shape[0], group["indices"].shape[0]
            dtype = np.dtype(group["data"].dtype).newbyteorder("=")  # (read in native order below)
    except TenxFormatError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise TenxFormatError(f"cannot read {path}: {exc}") from exc
    var = all_var if columns is None else all_var.iloc[columns]
    problems = []
    if (n_genes, n_cells) != (len(all_var), len(obs)):
        problems.append(
            f"shape is {n_genes} features x {n_cells} barcodes but there are {len(all_var)} features "
            f"and {len(obs)} barcodes"
        )
    if len(indptr) != n_cells + 1 or indptr[0] != 0 or (np.diff(indptr) < 0).any():
        problems.append(f"indptr ({len(indptr)} offsets) is not a valid offset array for {n_cells} barcodes")
    elif not int(indptr[-1]) == n_data == n_indices:
        problems.append(f"indptr ends at {int(indptr[-1])} but data has {n_data} and indices {n_indices}")
    if problems:
        raise TenxFormatError(f"{path} (/{group_name}): " + "; ".join(problems))
    if dtype.kind not in "iu" and dtype not in (np.float32, np.float64):
        raise TenxFormatError(
            f"{path}: unsupported value dtype {dtype} in /{group_name}/data (integers, float32 or float64)"
        )

    def read_blocks(target_values: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        # Cell Ranger writes gzip + shuffle: the chunks are decompressed on a pool (lancell.ingest.h5_direct)
        with h5py.File(path, "r") as f, decompressor_pool() as decompressors:
            arrays = [f[group_name]["data"], f[group_name]["indices"]]
            try:
                readers = [range_reader(array, decompressors) for array in arrays]
            except OSError as exc:
                raise TenxFormatError(f"cannot read {path}: {exc}") from exc
            for start, stop in row_ranges(indptr, target_values):
                lo, hi = int(indptr[start]), int(indptr[stop])
                data, indices = (np.empty(hi - lo, array.dtype) for array in arrays)
                try:
                    readers[0](data, lo, hi)
                    readers[1](indices, lo, hi)
                except OSError as exc:
                    raise TenxFormatError(f"cannot read {path} rows {start}..{stop}: {exc}") from exc
                if len(indices) and (indices.min() < 0 or indices.max() >= n_genes):
                    raise TenxFormatError(f"{path}: feature index outside 0..{n_genes - 1} in rows {start}..")
                shape = (stop - start, n_genes)
                data, indices = native_order(data), native_order(indices)  # (HDF5 may store big-endian)
                block = sp.csr_matrix((data, indices, indptr[start : stop + 1] - lo), shape=shape)
                nonzero = int(np.count_nonzero(data))
                yield start, checked_block(block, nonzero, path, start)

    return TenxMatrix(path, "h5", version, obs, var, dtype, read_blocks, columns)


def _h5_features(
    handle: h5py.File, path: Path, genome: str | None
) -> tuple[str, int, pd.DataFrame, np.ndarray | None]:
    """``(group, version, var, columns)``: all features, and the positions a v3 genome filter keeps."""
    if "matrix" in handle and "features" in handle["matrix"]:
        features = handle["matrix/features"]
        for name in ("id", "name", "feature_type"):
            if name not in features:
                raise TenxFormatError(f"{path}: /matrix/features has no {name!r} dataset")
        var = features_frame(
            _strings(features["id"]), _strings(features["name"]), _strings(features["feature_type"])
        )
        if "genome" in features:
            var["genome"] = _strings(features["genome"])
        genomes = sorted(set(var["genome"]) - {""}) if "genome" in var else []
        if genome is None and len(genomes) > 1:  # a barnyard run: one dataset has one organism
            raise TenxFormatError(
                f"{path} holds the features of several genomes {genomes}; pass genome= (lancell ingest: "
                "--genome) to ingest one genome's features (every cell is kept)"
            )
        if genome is None:
            return "matrix", 3, var, None
        if "genome" not in var or genome not in set(var["genome"]):
            known = sorted(set(var["genome"])) if "genome" in var else []
            raise TenxFormatError(f"{path}: no features of genome {genome!r} (genomes: {known})")
        # features of no genome (a CITE-seq run's antibodies, guides: genome "") are of every genome's cells
        return "matrix", 3, var, np.flatnonzero(np.isin(var["genome"].to_numpy(), [genome, ""]))
    genomes = sorted(k for k, v in handle.items() if isinstance(v, h5py.Group) and "genes" in v)
    if not genomes:
        raise TenxFormatError(f"{path}: neither a v3 /matrix group nor v2 genome groups")
    if genome is None:
        if len(genomes) > 1:
            raise TenxFormatError(
                f"{path} holds several genomes {genomes}; pass genome= (lancell ingest: --genome)"
            )
        genome = genomes[0]
    elif genome not in genomes:
        raise TenxFormatError(f"{path}: no genome {genome!r} (genomes: {genomes})")
    group = handle[genome]
    ids = _strings(group["genes"])
    names = _strings(group["gene_names"]) if "gene_names" in group else ids
    var = features_frame(ids, names, np.full(len(ids), GENE_EXPRESSION, dtype=object))
    var["genome"] = genome
    return genome, 2, var, None
