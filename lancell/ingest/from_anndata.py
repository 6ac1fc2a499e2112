"""Atomic ingestion of AnnData into a :class:`~lancell.atlas.RaggedAtlas`.

Everything that can be checked up front is validated first (:mod:`lancell.ingest.plan`: feature space and
layer, the caller's record, shapes, dtypes, obs -> Arrow, feature uids against the registry, dataset uid,
embeddings); the plan is then written by one :class:`~lancell.ingest.write_transaction.WriteTransaction`
(group, CSC copy, layout, cell rows, and, unless the same content is already in the atlas
(:mod:`lancell.ingest.fingerprint`), the dataset record). Any failure removes what this call wrote, so
readers, ``validate()`` and ``snapshot()`` see the atlas exactly as before.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import h5py

from lancell.errors import IngestError, LancellWarning, caller_outside_lancell, require_type
from lancell.ingest.embeddings import embedding_vectors
from lancell.ingest.fingerprint import OnDuplicate, check_on_duplicate
from lancell.ingest.landing_spec import is_tenx_output
from lancell.ingest.plan import plan_ingest, stored_layers
from lancell.ingest.records import given_or_default
from lancell.ingest.transaction_run import run_transactions
from lancell.ingest.write_transaction import WriteTransaction
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.schema import DatasetRecord

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["add_from_anndata", "check_raw", "open_h5ad"]

_MATRIX_MARKET = re.compile(r"(.*_)?matrix\.mtx(\.gz)?")  # a 10x folder's matrix (GEO prefixes it)


def add_from_anndata(
    atlas: RaggedAtlas,
    adata: ad.AnnData | str | os.PathLike[str],
    *,
    feature_space: str,
    zarr_layer: str | None = None,
    dataset_record: DatasetRecord | None = None,
    source_layer: str | None = None,
    layers: Mapping[str, str] | None = None,
    var_uid_column: str | None = None,
    obsm_columns: Mapping[str, str] | None = None,
    csc: bool | None = None,
    on_duplicate: OnDuplicate = "error",
    progress: bool = True,
    layer: str | None = None,
) -> DatasetRecord:
    """Ingest one AnnData (in memory, backed, or a path to ``.h5ad`` read in backed mode) as one dataset.

    Parameters
    ----------
    atlas
        A writable atlas.
    adata
        The data; a path is opened with ``backed="r"`` and streamed in bounded memory.
    feature_space
        The feature space (pointer field) the matrix belongs to.
    zarr_layer
        The layer name to store the matrix under (must be allowed by the feature space); or give ``layers``.
    dataset_record
        Provenance and the dataset uid; the storage fields (``lancell.tables.schema.ASSIGNED_FIELDS``:
        ``zarr_group``, ``n_cells``, ...) are assigned by lancell and must be left unset. A fresh record if
        omitted.
    source_layer
        Read ``adata.layers[source_layer]`` instead of ``adata.X`` (with ``zarr_layer``, the stored name).
    layers
        Several layers at once: ``{stored layer name: "X" or a key of adata.layers}``, e.g.
        ``{"counts": "counts", "log_normalized": "X"}``; the first is the record's ``layer``. Sparse layers
        share one stored sparsity pattern (the union of theirs; :mod:`lancell.ingest.layer_blocks`).
    var_uid_column
        The ``var`` column holding registry uids; the var index by default.
    obsm_columns
        ``{obsm key: vector column}``: embeddings stored as ``FixedSizeList<float32>`` cell columns (found
        with ``query().search(vector)``).
    csc
        Also write the feature-major (CSC) copy used by feature-filtered reads; by default for sparse
        datasets of at least ``lancell.storage.csc.CSC_MIN_VALUES`` stored values
        (``lancell.ingest.add_csc.add_csc`` adds it later).
    on_duplicate
        What to do when the same content (matrix, obs names, layer and feature panel: the
        ``content_fingerprint``) is already in the atlas as another dataset: ``"error"`` raises
        :class:`~lancell.errors.DuplicateContentError`; ``"skip"`` warns
        (:class:`~lancell.errors.DuplicateContentWarning`) and returns that dataset's record, leaving the
        atlas unchanged; ``"allow"`` stores it again.
    progress
        Show progress bars while the matrix and its CSC copy are written.
    layer
        The earlier name of ``source_layer``; it warns (``DeprecationWarning``) and goes in the next release.

    Returns
    -------
    DatasetRecord
        The stored record (``zarr_group``, ``n_cells``, ``nnz``, ``layout_uid``, ``content_fingerprint``
        filled in; ``dropped_obs_columns`` lists the obs columns the cell schema does not declare, which are
        not stored and are warned about with :class:`~lancell.errors.DroppedColumnsWarning`).

    Raises
    ------
    IngestError
        Any invalid input (subclasses say which), a record that sets a field lancell assigns, a read error
        while streaming a backed file; the atlas is unchanged. :class:`~lancell.errors.ArgumentError` for an
        ``adata`` that is neither an AnnData nor a path.
    DuplicateContentError
        The content is already in the atlas (``on_duplicate="error"``); the atlas is unchanged.
    """
    atlas.core.require_writable()
    if isinstance(adata, str | os.PathLike):
        adata = open_h5ad(Path(adata))
    require_type("adata", adata, ad.AnnData, "an AnnData or the path of an .h5ad file")
    record = given_or_default(atlas.dataset_schema, dataset_record)
    space = resolve_feature_space(atlas.feature_spaces, feature_space)
    check_on_duplicate(record.uid, on_duplicate)
    sources = stored_layers(record.uid, zarr_layer, source_layer, layers, layer)
    check_raw(adata, record.uid, sources)
    plan = plan_ingest(atlas.core, adata, space, sources, record, var_uid_column)
    warn_unstored(adata, record.uid, sources, obsm_columns or {})
    plan.vectors = embedding_vectors(atlas.core, adata, record.uid, obsm_columns or {})
    transaction = WriteTransaction(
        atlas.core, plan, space, record, csc=csc, on_duplicate=on_duplicate, progress=progress
    )
    (stored,) = run_transactions([transaction])
    return stored


def check_raw(adata: ad.AnnData, dataset: str, sources: Mapping[str, str]) -> None:
    """Refuse ``raw`` named as a layer source that is not in ``adata.layers``; warn that ``adata.raw`` (if
    any) is not stored, saying how to store it.

    Raises
    ------
    IngestError
        A source named ``raw`` that is not a key of ``adata.layers``: ``adata.raw`` is not a layer.
    """
    raw = adata.raw
    if raw is not None and raw.var_names.equals(adata.var_names):
        remedy = "copy it into a layer (adata.layers[NAME] = adata.raw.X) and name that layer"
    else:
        remedy = "ingest adata.raw.to_adata() as a dataset of its own (its features are not var's)"
    if "raw" in sources.values() and "raw" not in adata.layers:
        raise IngestError(
            f"dataset {dataset!r}: no layer 'raw' in adata.layers {list(adata.layers)}; adata.raw is not a "
            "layer" + ("" if raw is None else f": to store it, {remedy}")
        )
    if raw is None:
        return
    from_layers = {stored: source for stored, source in sources.items() if source in adata.layers}
    if any(adata.layers[source] is raw.X for source in from_layers.values()):
        return  # the documented recipe, adata.layers[NAME] = adata.raw.X: raw's values are stored
    maybe = (  # a file's layer read back is not raw.X itself: whether it holds raw's values is unknown here
        f"; stored layers {sorted(from_layers)} come from adata.layers: if one holds raw's values, they are "
        "stored"
        if from_layers
        else ""
    )
    warnings.warn(
        f"dataset {dataset!r}: adata.raw ({raw.n_obs} x {raw.n_vars}) is not stored (only X and adata.layers "
        f"are){maybe}; to keep it, {remedy}",
        LancellWarning,
        stacklevel=caller_outside_lancell(),
    )


def warn_unstored(
    adata: ad.AnnData, dataset: str, sources: Mapping[str, str], obsm_columns: Mapping[str, str]
) -> None:
    """Warn of the matrices of ``adata`` that are not stored: ``X`` and ``adata.layers`` no stored layer
    reads (``sources``: stored name -> source) and ``adata.obsm`` entries ``obsm_columns`` does not name."""
    matrices = (["X"] if _holds_x(adata) else []) + list(adata.layers)
    unread = [name for name in matrices if name not in sources.values()]
    unnamed = [key for key in adata.obsm if key not in obsm_columns]
    left = ([f"matrices {unread} (layers=, lancell ingest --layers STORED=SOURCE)"] if unread else []) + (
        [f"obsm {unnamed} (obsm_columns=, into a vector column the cell schema declares)"] if unnamed else []
    )
    if left:
        warnings.warn(
            f"dataset {dataset!r}: not stored: {'; '.join(left)}; name them to store them",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def _holds_x(adata: ad.AnnData) -> bool:
    """Whether ``adata`` has an ``X`` (a backed file's is opened, not read; one anndata cannot open, an
    encoding it does not know, counts as none: ingestion refuses it where it is read)."""
    try:
        return adata.X is not None
    except Exception:  # whatever anndata raises for a backed file's X (KeyError, ValueError...)
        return False


# anndata's warning on reading a file with repeated obs or var names: its advice (make them unique) would
# register made-up feature uids; ingestion refuses repeated names where it uses them, naming the remedy
NAMES_NOT_UNIQUE = r"(Variable|Observation) names are not unique"


def open_h5ad(path: Path) -> ad.AnnData:
    """The ``.h5ad`` file ``path``, opened backed (no matrix read); anndata's warning about repeated obs or
    var names is left out (:data:`NAMES_NOT_UNIQUE`).

    Raises
    ------
    IngestError
        No such file, or not an ``.h5ad`` (a Cell Ranger ``.h5`` or matrix file is named, with what to do).
    """
    if not path.exists():
        raise IngestError(f"no such file: {path}")
    try:
        with warnings.catch_warnings():  # lancell checks the names it uses (and says what to pass instead)
            warnings.filterwarnings("ignore", NAMES_NOT_UNIQUE, UserWarning)
            return ad.read_h5ad(path, backed="r")
    except Exception as exc:  # whatever anndata raises (its IORegistryError is a bare Exception)
        if _MATRIX_MARKET.fullmatch(path.name) or _is_tenx_h5(path):
            raise IngestError(
                f"cannot read {path} as .h5ad: it is a 10x output: {_tenx_remedy(path)}"
            ) from exc
        raise IngestError(f"cannot read {path} as .h5ad: {type(exc).__name__}: {exc}") from exc


def _tenx_remedy(path: Path) -> str:
    """How to ingest the 10x output at ``path`` (named as Cell Ranger names it, or not)."""
    how = "(each feature type into its feature space, a CITE-seq run's protein on the same cells)"
    if is_tenx_output(path):
        return (
            f"ingest it with `lancell ingest {path}` or lancell.ingest.tenx.add_from_10x(atlas, path) {how}"
        )
    if path.name.endswith((".mtx", ".mtx.gz")):
        named = "name it matrix.mtx[.gz], in a folder with its barcodes.tsv[.gz] and features.tsv[.gz]"
    else:
        named = f"name it {path.with_suffix('.h5').name}"
    return f"{named}, then ingest it with `lancell ingest` or lancell.ingest.tenx.add_from_10x {how}"


def _is_tenx_h5(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file laid out as Cell Ranger writes its matrices: a group (``matrix``, or
    one per genome) holding ``barcodes``, ``data``, ``indices`` and ``indptr``."""
    try:
        with h5py.File(path, "r") as f:
            return any(
                isinstance(group, h5py.Group) and {"barcodes", "data", "indices", "indptr"} <= set(group)
                for group in f.values()
            )
    except OSError:  # not HDF5
        return False
