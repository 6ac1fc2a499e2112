"""Readers for 10x Genomics Cell Ranger outputs, and their ingestion into an atlas.

Two layouts, two versions each:

* Matrix Market folders: ``matrix.mtx``, ``genes.tsv`` (gene id, symbol) and ``barcodes.tsv`` (v2), or
  ``matrix.mtx.gz``, ``features.tsv.gz`` (id, name, feature type) and ``barcodes.tsv.gz`` (v3). Files are
  recognised as gzip by their first bytes, not by their names.
* HDF5 files: ``/matrix`` with a ``features`` group (v3, ``filtered_feature_bc_matrix.h5``) or one group per
  genome with ``genes`` / ``gene_names`` (v2, ``filtered_gene_bc_matrices_h5.h5``).

Every reader gives cells x features CSR (sorted indices, no explicit zeros) with ``var`` columns
``gene_ids``, ``gene_symbol`` and ``feature_type`` (v2 features are all ``"Gene Expression"``).

Memory: barcodes, features and one offset per cell are held, O(n_cells + n_features); values are read in
row blocks of about ``TARGET_BLOCK_VALUES`` stored values (:mod:`lancell.ingest.tenx_h5` and
:mod:`lancell.ingest.tenx_mtx` say how; an ``.mtx`` not ordered by barcode is the one O(nnz) case).

:func:`add_from_10x` streams the blocks of each feature space through a
:class:`~lancell.ingest.sources.MatrixSource` (:meth:`TenxMatrix.sources`) into one
:class:`~lancell.ingest.write_transaction.WriteTransaction` per dataset, all committed or none, so ingestion
also runs in bounded memory and writes no temporary file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from lancell.errors import (
    FeatureSpaceError,
    IngestError,
    LancellWarning,
    TenxFormatError,
    caller_outside_lancell,
)
from lancell.ingest.csc_choice import check_csc_of_run, csc_of_modality
from lancell.ingest.fingerprint import OnDuplicate, check_on_duplicate
from lancell.ingest.landing_spec import MATRIX_FILES
from lancell.ingest.modalities import check_attachable
from lancell.ingest.plan import check_record, plan_dataset
from lancell.ingest.records import given_or_default, modality_record
from lancell.ingest.sources import TARGET_BLOCK_VALUES
from lancell.ingest.tenx_h5 import open_h5
from lancell.ingest.tenx_matrix import TenxMatrix, check_tenx_layer
from lancell.ingest.tenx_mtx import mtx_folder, open_mtx
from lancell.ingest.tenx_obs import cell_obs
from lancell.ingest.transaction_run import run_transactions
from lancell.ingest.write_transaction import WriteTransaction
from lancell.tables.feature_spaces import resolve_feature_space

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.tables.schema import DatasetRecord

__all__ = [
    "DEFAULT_FEATURE_TYPES",
    "TARGET_BLOCK_VALUES",
    "TenxMatrix",
    "add_from_10x",
    "check_barcodes",
    "open_10x",
    "read_10x",
    "read_10x_h5",
    "read_10x_mtx",
    "route_feature_types",
]

DEFAULT_FEATURE_TYPES: Mapping[str, str] = {
    "Gene Expression": "gene_expression",
    "Antibody Capture": "protein",
}


def open_10x(path: str | os.PathLike[str], *, genome: str | None = None) -> TenxMatrix:
    """Open a 10x output: a Matrix Market folder (or its ``matrix.mtx[.gz]``) or an ``.h5`` file.

    Parameters
    ----------
    path
        The folder, its ``matrix.mtx[.gz]``, or the HDF5 file. A v2 folder holding one genome sub-folder
        (``filtered_gene_bc_matrices/hg19``) is accepted too.
    genome
        The genome to read: the group of a v2 HDF5 file or sub-folder, or a value of ``features/genome`` of a
        v3 file (the other genomes' features are left out; features of no genome, antibodies and guides, are
        kept). Needed only when the file holds several genomes; refused for a folder holding one matrix
        unless it is that genome's folder.

    Raises
    ------
    TenxFormatError
        A missing file, mismatched sizes, a malformed or corrupt file.
    """
    path = Path(path)
    if not path.exists():
        raise TenxFormatError(f"no such 10x output: {path}")
    if path.is_file() and path.name in MATRIX_FILES:
        path = path.parent
    if path.is_dir():
        return open_mtx(mtx_folder(path, genome))
    return open_h5(path, genome)


def check_barcodes(matrix: TenxMatrix) -> None:
    """Refuse a matrix without barcodes or whose barcodes repeat (before anything is written for it).

    Raises
    ------
    IngestError
        No barcodes (an empty matrix). :class:`TenxFormatError`: naming how many repeat, and a few.
    """
    if not len(matrix.obs):
        raise IngestError(f"{matrix.path}: no barcodes (an empty matrix): no cells to ingest")
    if (repeated := matrix.obs.index[matrix.obs.index.duplicated()]).size:
        raise TenxFormatError(
            f"{matrix.path}: {repeated.size} barcodes occur more than once, e.g. {list(repeated[:3])}: a 10x "
            "output names each cell once (a damaged or edited barcodes file)"
        )


def read_10x(path: str | os.PathLike[str], *, genome: str | None = None) -> ad.AnnData:
    """Read a 10x folder or HDF5 file into memory; see :func:`open_10x`."""
    return open_10x(path, genome=genome).to_anndata()


def read_10x_mtx(path: str | os.PathLike[str], *, genome: str | None = None) -> ad.AnnData:
    """Read a 10x Matrix Market folder (v2 or v3) into memory as cells x features CSR.

    Raises
    ------
    TenxFormatError
        ``path`` is not a folder, or see :func:`open_10x`.
    """
    if Path(path).is_file() and Path(path).name not in MATRIX_FILES:
        raise TenxFormatError(f"{path} is a file; read_10x_mtx wants the folder holding matrix.mtx")
    return read_10x(path, genome=genome)


def read_10x_h5(path: str | os.PathLike[str], *, genome: str | None = None) -> ad.AnnData:
    """Read a 10x HDF5 file (v2 with genome groups, or v3) into memory as cells x features CSR.

    Raises
    ------
    TenxFormatError
        ``path`` is a folder, or see :func:`open_10x`.
    """
    if Path(path).is_dir():
        raise TenxFormatError(f"{path} is a folder; read_10x_h5 wants an .h5 file")
    return read_10x(path, genome=genome)


# ------------------------------------------------------------------------------------------------- ingestion


def add_from_10x(
    atlas: RaggedAtlas,
    path: str | os.PathLike[str] | TenxMatrix,
    *,
    feature_space: str | None = None,
    zarr_layer: str = "counts",
    dataset_record: DatasetRecord | None = None,
    feature_types: Mapping[str, str] = DEFAULT_FEATURE_TYPES,
    var_uid_column: str = "gene_ids",
    genome: str | None = None,
    obs: pd.DataFrame | Mapping[str, object] | None = None,
    cells_of: str | None = None,
    csc: bool | None = None,
    on_duplicate: OnDuplicate = "error",
    progress: bool = True,
) -> list[DatasetRecord]:
    """Ingest a 10x output, one dataset per feature space on one set of cells, all or nothing, streamed from
    the file.

    Feature types are routed to feature spaces by ``feature_types``; a type with no entry there, or whose
    feature space the atlas lacks, is not stored (a :class:`~lancell.errors.LancellWarning` names it with its
    numbers of features and values). The first feature space (in ``feature_types`` order) adds the cells as
    dataset ``<uid>``; each further one (a CITE-seq run's ``protein``) is attached to those cells as dataset
    ``<uid>/<feature_space>`` (as :func:`lancell.ingest.modalities.attach_modality` does), so a cell's
    modalities are read together (``to_mudata``) and counted once. With ``cells_of``, one feature space is
    attached to the cells of that dataset instead (a file's protein ingested after its RNA).

    Parameters
    ----------
    atlas
        A writable atlas whose registries already hold the features (by ``var_uid_column``).
    path
        A Matrix Market folder or an ``.h5`` file (see :func:`open_10x`), or one opened by it.
    feature_space
        Ingest only the feature types routed to this feature space (all routed types by default).
    zarr_layer
        The layer to store the values under.
    dataset_record
        Provenance and the base uid; ``source`` defaults to ``path``. The fields lancell assigns
        (``zarr_group``, ...) must be unset.
    feature_types
        10x feature type -> feature space.
    var_uid_column
        The ``var`` column matched against the registries: ``gene_ids`` or ``gene_symbol``.
    genome
        See :func:`open_10x` (not with an opened matrix).
    obs
        Extra cell columns: a mapping of column name to a constant, one value per cell (a list or array in
        the matrix's cell order) or a Series indexed by barcode; a one-row frame whose index is not a
        barcode (broadcast to every cell; its dtypes are kept, e.g. the row of a GEO sample table); or a
        frame indexed by barcode. Whatever is indexed by barcode needs a row for every barcode (rows for
        other barcodes are left out, with a warning).
    cells_of
        A dataset whose cells the file's barcodes are (its obs names): the feature space (one: give
        ``feature_space`` when the file routes several) is attached to them as dataset
        ``<uid>/<feature_space>`` (``uid`` is ``cells_of`` unless ``dataset_record`` gives one); its cells
        keep their obs (``obs`` is refused) and ``on_duplicate`` does not apply (a repeat is refused: the
        cells already carry the modality).
    csc
        Write the feature-major (CSC) copy of each sparse dataset: as for
        :func:`lancell.ingest.from_anndata.add_from_anndata` (None: datasets of at least
        ``lancell.storage.csc.CSC_MIN_VALUES`` stored values); a dense feature space has none.
    on_duplicate
        As for :func:`lancell.ingest.from_anndata.add_from_anndata`, applied to the dataset adding the cells:
        ``"error"`` raises :class:`~lancell.errors.DuplicateContentError` (nothing is stored), ``"skip"``
        warns and returns the records of the datasets already holding that content (the dataset's, and its
        attached modalities of the same content: an :class:`~lancell.errors.IngestError` if it has none),
        ``"allow"`` stores it again.
    progress
        Show progress bars.

    Returns
    -------
    list of DatasetRecord
        The stored records, in the order of ``feature_types``.

    Warns
    -----
    LancellWarning
        Feature types not stored (no feature space), or ``obs`` rows for barcodes the matrix lacks.

    Raises
    ------
    DatasetNotFoundError
        No dataset ``cells_of``.
    FeatureSpaceError
        No feature type of the file maps to a feature space of the atlas, or ``zarr_layer`` is not allowed.
    TenxFormatError
        The input is malformed (see :func:`open_10x`).
    IngestError
        Any other invalid input (an ``obs`` frame that lacks barcodes of the matrix, a one-row frame for
        a one-cell matrix indexed by another barcode, an ``obs`` mapping value that is a sequence of
        another length than the number of cells; with ``cells_of``: ``obs``, several feature spaces, or
        barcodes that are not its cells or carry the modality already; a ``zarr_layer`` naming values
        computed from counts, ``normalized``, ``log_normalized`` or ``scaled``: a 10x output holds UMI counts,
        and other names than ``counts`` are warned about); the atlas is left unchanged.
    """
    atlas.core.require_writable()
    if isinstance(path, TenxMatrix) and genome is not None:
        raise IngestError(f"{path.path}: genome is chosen when the matrix is opened (open_10x), not here")
    matrix = path if isinstance(path, TenxMatrix) else open_10x(path, genome=genome)
    check_barcodes(matrix)
    routes, skipped = route_feature_types(atlas, matrix, feature_space, feature_types)
    if var_uid_column not in matrix.var.columns:
        raise IngestError(
            f"{matrix.path}: var has no column {var_uid_column!r}; use one of {list(matrix.var)}"
        )
    base = given_or_default(
        atlas.dataset_schema, dataset_record, **({} if cells_of is None else {"uid": cells_of})
    )
    check_on_duplicate(base.uid, on_duplicate)
    if base.source is None:
        base = base.model_copy(update={"source": str(matrix.path)})
    if cells_of is not None:
        _check_cells_of(matrix, cells_of, list(routes), obs, on_duplicate)
    host_uid = cells_of or base.uid  # the dataset owning the cells
    cells_space = None if cells_of is not None else next(iter(routes))  # adds the cells, if any
    records = {
        space: base if space == cells_space else modality_record(base, f"{base.uid}/{space}")
        for space in routes
    }
    spaces = {space: resolve_feature_space(atlas.feature_spaces, space) for space in routes}
    check_csc_of_run(csc, list(spaces.values()), base.uid)
    check_tenx_layer(matrix.path, zarr_layer)
    for space in routes:
        spaces[space].check_layer(zarr_layer)
        check_record(atlas.core, records[space], None if space == cells_space else host_uid)
        if cells_of is not None:
            check_attachable(atlas, records[space].uid, cells_of, space, matrix.obs.index)
    obs_frame = cell_obs(matrix, obs)
    # the left-out types are counted with the kept ones ("_" starts no dataset uid)
    subsets = {records[space].uid: columns for space, columns in routes.items()}
    sources = matrix.sources(subsets | {f"_{kind}": columns for kind, (columns, _) in skipped.items()})
    transactions: list[WriteTransaction] = []
    for space, columns in routes.items():
        uid, adds_cells = records[space].uid, space == cells_space
        host = transactions[0] if cells_space is not None and not adds_cells else None  # of this run
        uids = matrix.var.iloc[columns][var_uid_column].astype(str).tolist()
        obs_of = obs_frame if adds_cells else obs_frame[[]]  # an attached modality's cells keep their obs
        plan = plan_dataset(atlas.core, spaces[space], uid, {zarr_layer: sources[uid]}, obs_of, uids)
        transactions.append(
            WriteTransaction(
                atlas.core,
                plan,
                spaces[space],
                records[space],
                cells_of=None if adds_cells else host_uid,
                host=host,
                csc=csc_of_modality(csc, spaces[space]),
                on_duplicate=on_duplicate if adds_cells else "allow",  # modalities: their cells are named
                progress=progress,
            )
        )
    stored = run_transactions(transactions)
    if zarr_layer != "counts" and any("counts" in spaces[space].layers for space in routes):
        warnings.warn(
            f"{matrix.path}: a 10x output's matrix holds UMI counts; they are stored under the layer "
            f"{zarr_layer!r}, not 'counts'",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    for kind, (columns, reason) in skipped.items():
        warnings.warn(
            f"{matrix.path}: {columns.size} {kind!r} features ({sources[f'_{kind}'].nnz} nonzero values) not "
            f"stored: {reason}",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    return stored


def _check_cells_of(
    matrix: TenxMatrix, cells_of: str, spaces: list[str], obs: object, on_duplicate: OnDuplicate
) -> None:
    """Refuse what a file attached to the cells of ``cells_of`` cannot take; warn about an unused policy.

    Raises
    ------
    IngestError
        ``obs`` given (the cells keep theirs), or several feature spaces routed (one per call).
    """
    if obs is not None:
        raise IngestError(f"{matrix.path}: obs is not stored for cells of {cells_of!r}, which keep their own")
    if len(spaces) > 1:
        raise IngestError(
            f"{matrix.path}: the file routes feature spaces {spaces}; attach one per call to the cells of "
            f"{cells_of!r} (feature_space=...)"
        )
    if on_duplicate != "error":
        warnings.warn(
            f"{matrix.path}: on_duplicate={on_duplicate!r} does not apply to a modality attached to the "
            f"cells of {cells_of!r} (a repeat is refused: the cells already carry it)",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def route_feature_types(
    atlas: RaggedAtlas, matrix: TenxMatrix, feature_space: str | None, feature_types: Mapping[str, str]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, str]]]:
    """Feature space -> positions of its features in ``matrix.var`` (in ``feature_types`` order), and the
    feature types left out for want of a feature space -> (their positions, why).

    Raises
    ------
    FeatureSpaceError
        No feature type maps to a feature space of the atlas (or to ``feature_space``, when given).
    """
    present = matrix.var["feature_type"].to_numpy()
    spaces: list[str] = []
    skipped: dict[str, tuple[np.ndarray, str]] = {}
    for kind in pd.unique(present):
        space = feature_types.get(kind)
        if space is None:
            skipped[kind] = (np.flatnonzero(present == kind), "no feature space in feature_types")
        elif space not in atlas.feature_spaces:
            skipped[kind] = (np.flatnonzero(present == kind), f"the atlas has no feature space {space!r}")
        elif (feature_space is None or space == feature_space) and space not in spaces:
            spaces.append(space)
    if not spaces:
        restricted = f" restricted to {feature_space!r}" if feature_space else ""
        raise FeatureSpaceError(
            f"{matrix.path}: none of the feature types {sorted(set(present))} maps to a feature space of the "
            f"atlas {sorted(atlas.feature_spaces)}{restricted} (feature_types={dict(feature_types)})"
        )
    order = list(dict.fromkeys(feature_types.values()))
    spaces.sort(key=order.index)
    routes = {
        space: np.flatnonzero(np.isin(present, [k for k, s in feature_types.items() if s == space]))
        for space in spaces
    }
    return routes, skipped
