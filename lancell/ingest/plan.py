"""What ingestion validates before its first write: the :class:`IngestPlan` of one dataset.

Feature space and layer, the caller's record (fields lancell assigns must be unset), shapes, dtypes, obs ->
Arrow (every batch converted once), feature uids against the registry, the dataset uid (embeddings:
:mod:`lancell.ingest.embeddings`). Obs columns the cell schema does not declare are listed on the plan
(``dropped_obs_columns``): ingestion stores them on the record and warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from kernels.ingest import UINT32_MAX
from lancell.errors import (
    DuplicateDatasetError,
    DuplicateFeaturesError,
    IngestError,
    LancellWarning,
    ShapeMismatchError,
    UnknownFeaturesError,
    caller_outside_lancell,
    require_text,
)
from lancell.ingest.layer_blocks import shared_pattern
from lancell.ingest.sources import MatrixSource, matrix_source
from lancell.tables.feature_spaces import FeatureSpace
from lancell.tables.names import check_obs_names, names_as_text
from lancell.tables.obs import obs_to_arrow, refuse_mixed_zones
from lancell.tables.obs_notes import altered_obs_columns, undeclared_obs_columns
from lancell.tables.registry import layout_uid_for, registered_symbols, registry_index, sql_literal
from lancell.tables.schema import (
    DatasetRecord,
    check_assigned_fields,
    check_dataset_uid,
    obs_fields,
)
from lancell.tables.schema_fit import check_record_fits

if TYPE_CHECKING:
    from lancell.core import AtlasCore

__all__ = [
    "CELL_BATCH",
    "ROWS_PER_COMMIT",
    "IngestPlan",
    "check_cells",
    "check_layer_sources",
    "check_record",
    "check_size",
    "plan_dataset",
    "plan_ingest",
    "stored_layers",
]

CELL_BATCH = 65_536
# cell rows per LanceDB commit of a new dataset's rows (a multiple of CELL_BATCH): what LanceDB's writer holds
ROWS_PER_COMMIT = CELL_BATCH


class IngestPlan:
    """Everything validated before the first write (docs/architecture.md, "Ingestion")."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)

    layers: dict[str, MatrixSource]  # stored layer name -> its source (cells x var)
    zero_fill: list[
        str
    ]  # sparse layers stored with zeros where another layer has entries (lancell.ingest.layer_blocks)
    obs: pd.DataFrame
    obs_names: pd.Index
    feature_uids: list[str]  # in stored (local) order: increasing global index
    global_index: np.ndarray
    stored_column: np.ndarray | None  # var column -> stored local index; None when var is in that order
    layout_uid: str
    n_cells: int
    nnz: int  # stored values: of the layers' shared pattern (sparse), n_cells x n_features (dense)
    dataset: str
    dropped_obs_columns: list[str]  # obs columns the cell schema does not declare: not stored
    vectors: dict[str, np.ndarray]


def check_record(core: AtlasCore, record: DatasetRecord, cells_of: str | None = None) -> None:
    """Refuse a malformed or taken dataset uid, a record that sets a field lancell assigns, and one the
    dataset table would not store as given (:func:`~lancell.tables.schema_fit.check_record_fits`).

    ``cells_of`` is the dataset a further modality is attached to (None for new cells).

    Raises
    ------
    IngestError
        A bad uid, a dataset already in the atlas (:class:`DuplicateDatasetError`), an assigned field set, a
        text field that UTF-8 cannot store.
    SchemaError
        The record's fields do not fit the dataset table's.
    """
    check_record_fits(record, core.dataset_arrow)
    check_dataset_uid(record.uid, owns_cells=cells_of is None)
    for field, value in record.model_dump().items():  # (a value Arrow cannot write fails the commit)
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                require_text(f"dataset {record.uid!r}: DatasetRecord field {field}", text, IngestError)
    if core.tables.datasets.count_rows(f"uid = {sql_literal(record.uid)}") > 0:
        raise DuplicateDatasetError(f"dataset {record.uid!r} is already in the atlas")
    check_assigned_fields(record, cells_of)


def check_cells(core: AtlasCore, record: DatasetRecord | None, obs: pd.DataFrame) -> None:
    """What :func:`plan_ingest` refuses in a new dataset's record and cells alone, checked before anything
    else changes the atlas (standardization registers features: a refusal after it left them registered).

    Raises
    ------
    IngestError
        A bad or taken dataset uid, an assigned field set, no cells, obs names that cannot name one cell
        each, an obs value its cell schema field cannot hold (:class:`~lancell.errors.ObsConversionError`).
    """
    dataset = "(new)" if record is None else record.uid
    if record is not None:
        check_record(core, record)
    check_size(dataset, len(obs), 1)
    check_obs_names(dataset, obs.index)
    fields = obs_fields(core.cell_arrow)
    undeclared_obs_columns(dataset, obs, fields)
    for start in range(0, len(obs), CELL_BATCH):
        obs_to_arrow(dataset, obs.iloc[start : start + CELL_BATCH], fields)
    refuse_mixed_zones(dataset, obs, fields)  # (across batches)


def check_size(dataset: str, n_obs: int, n_vars: int) -> None:
    """Raise :class:`IngestError` for a dataset of no cells or features, or of more than 2**32 - 1."""
    if n_obs == 0:
        raise IngestError(f"dataset {dataset!r} has no cells")
    if n_vars == 0:
        raise IngestError(f"dataset {dataset!r} has no features")
    for n, what in ((n_obs, "cells"), (n_vars, "features")):
        if n > UINT32_MAX:  # (a CSC copy numbers a dataset's cells in 32 bits, stored indices its features)
            raise IngestError(
                f"dataset {dataset!r} has {n:,} {what}, more than a dataset holds (2**32 - 1): split it into "
                "several datasets"
            )


def stored_layers(
    dataset: str,
    zarr_layer: str | None,
    source_layer: str | None,
    layers: Mapping[str, str] | None,
    layer: str | None = None,
) -> dict[str, str]:
    """``{stored layer name: "X" or an adata.layers key}`` from an ingest call's ``zarr_layer`` (with
    ``source_layer``, None: ``X``) or ``layers``; exactly one of ``zarr_layer`` and ``layers``.

    ``layer`` is the earlier name of ``source_layer`` (one release): it warns and means the same.

    Raises
    ------
    IngestError
        Both or neither given, ``source_layer`` given with ``layers``, ``layer`` given with
        ``source_layer``, or ``layers`` empty or not str -> str.
    """
    if layer is not None:
        if source_layer is not None:
            raise IngestError(f"dataset {dataset!r}: give source_layer alone (layer is its earlier name)")
        warnings.warn(
            "layer= (the AnnData layer read) is named source_layer= now; layer= goes in the next release",
            DeprecationWarning,
            stacklevel=caller_outside_lancell(),
        )
        source_layer = layer
    if layers is None:
        if zarr_layer is None:
            raise IngestError(f"dataset {dataset!r}: give zarr_layer (the stored layer name) or layers")
        return {zarr_layer: "X" if source_layer is None else source_layer}
    if zarr_layer is not None or source_layer is not None:
        raise IngestError(
            f"dataset {dataset!r}: give layers={dict(layers)!r} alone, "
            "or zarr_layer (and source_layer), not both"
        )
    if not isinstance(layers, Mapping) or not layers:
        raise IngestError(f"dataset {dataset!r}: layers must be a non-empty mapping, got {layers!r}")
    bad = {k: v for k, v in layers.items() if not (isinstance(k, str) and k and isinstance(v, str) and v)}
    if bad:
        raise IngestError(f"dataset {dataset!r}: layers must map stored names to sources (strings): {bad!r}")
    return dict(layers)


def plan_ingest(
    core: AtlasCore,
    adata: ad.AnnData,
    space: FeatureSpace,
    layers: Mapping[str, str],
    record: DatasetRecord,
    var_uid_column: str | None,
    cells_of: str | None = None,
) -> IngestPlan:
    """Validate everything about ``adata`` that can be checked before writing; ``vectors`` is left empty.

    ``layers`` maps each stored layer name (allowed by ``space``) to its source in ``adata``: ``"X"`` or a
    key of ``adata.layers``; ``cells_of`` is the dataset a further modality is attached to (None for new
    cells).

    Raises
    ------
    IngestError
        Any invalid input (subclasses say which), including a record that sets a field lancell assigns.
    """
    dataset = record.uid
    check_record(core, record, cells_of)
    check_size(dataset, adata.n_obs, adata.n_vars)
    check_measured(adata, dataset)
    if not layers:
        raise IngestError(f"dataset {dataset!r}: no layer to store (layers is empty)")
    sources = {}
    for stored, origin in layers.items():
        space.check_layer(stored)
        sources[stored] = _layer_source(adata, dataset, origin)
    if var_uid_column is None:
        feature_uids = names_as_text(adata.var_names, f"dataset {dataset!r}: var names", IngestError)
        feature_uids = feature_uids.tolist()
    elif var_uid_column not in adata.var.columns:
        raise IngestError(f"dataset {dataset!r}: var has no column {var_uid_column!r}")
    else:
        column = adata.var[var_uid_column]
        if column.isna().any():
            raise IngestError(
                f"dataset {dataset!r}: var[{var_uid_column!r}] has {int(column.isna().sum())} NaN"
            )
        feature_uids = names_as_text(
            column, f"dataset {dataset!r}: var[{var_uid_column!r}]", IngestError
        ).tolist()
    _warn_mixed_feature_types(dataset, adata.var, space.name)
    obs = adata.obs if cells_of is None else adata.obs[[]]  # an attachment stores none of its obs columns
    return plan_dataset(core, space, dataset, sources, obs, feature_uids)


# Cell Ranger's feature types that are no genes (a CELLxGENE file's feature_type holds gene biotypes instead)
_OTHER_10X_TYPES = frozenset(
    {"Antibody Capture", "Antigen Capture", "CRISPR Guide Capture", "Multiplexing Capture", "Peaks", "Custom"}
)


def _warn_mixed_feature_types(dataset: str, var: pd.DataFrame, space: str) -> None:
    """Warn when ``var``'s 10x feature types (``feature_type``, or scanpy's ``feature_types``) include other
    than genes (antibodies, guides): every feature is stored in ``space``."""
    for column in ("feature_type", "feature_types"):
        if column not in var.columns:
            continue
        kinds = sorted({str(kind) for kind in pd.unique(var[column].dropna())})
        if _OTHER_10X_TYPES.intersection(kinds):
            warnings.warn(
                f"dataset {dataset!r}: var[{column!r}] holds 10x feature types {kinds}: all are stored in "
                f"feature space {space!r}; give each type its own space (lancell.ingest.tenx.add_from_10x on "
                "the 10x output, or one AnnData per type with attach_modality)",
                LancellWarning,
                stacklevel=caller_outside_lancell(),
            )
            return


def check_layer_sources(adata: ad.AnnData, dataset: str, layers: Mapping[str, str]) -> None:
    """Refuse ``adata``'s matrices that ``layers`` (stored name -> ``"X"`` or an ``adata.layers`` key) would
    store but cannot be (missing, of an unsupported format or dtype, another shape): what
    :func:`plan_ingest` checks of them, for a caller that registers features first (so that a file refused
    for its matrix leaves the registry as it was).

    Raises
    ------
    IngestError
        As :func:`plan_ingest` for its matrices.
    """
    check_measured(adata, dataset)
    for origin in layers.values():
        _layer_source(adata, dataset, origin)


def check_measured(adata: ad.AnnData, dataset: str, stored_of: str | None = None) -> None:
    """Refuse a lancell query result whose cells did not all measure its features (``varm["presence"]``
    with a False, ``uns["lancell"]["unmeasured_datasets"]``, of the datasets its ``obs["dataset_uid"]``
    holds cells of; ``stored_of``: of that one dataset only, whose cells alone are stored, as by
    ``add_layer``): stored as one dataset, every feature counts as measured, and their unmeasured zeros
    would become measured ones.

    Raises
    ------
    IngestError
        Such a result; it names the datasets and the remedies.
    """
    presence = adata.varm["presence"] if "presence" in adata.varm else None
    # the datasets whose cells it holds (a result's obs names each cell's; else every one it lists)
    held = set(adata.obs["dataset_uid"].astype(str)) if "dataset_uid" in adata.obs.columns else None
    if stored_of is not None:
        held = {stored_of}
    partial = []
    if isinstance(presence, pd.DataFrame) and presence.size:
        partial = [
            str(uid)
            for uid in presence.columns
            if (held is None or str(uid) in held) and not presence[uid].to_numpy(dtype=bool).all()
        ]
    about = adata.uns.get("lancell")
    unmeasured = list(about.get("unmeasured_datasets", [])) if isinstance(about, Mapping) else []
    unmeasured = [uid for uid in unmeasured if held is None or str(uid) in held]  # ("drop": none held)
    unmeasured = sorted({str(uid) for uid in unmeasured})
    partial = [uid for uid in partial if uid not in unmeasured]  # (a dataset without the layer: all False)
    if partial or unmeasured:
        said = []
        if unmeasured:  # kept by on_unmeasured("keep")
            said.append(
                f"datasets {unmeasured[:3]} did not measure its layer: their cells are zeros no one measured "
                "(query with on_unmeasured('drop'); lancell query --on-unmeasured drop)"
            )
        if partial:
            one = partial[0]
            said.append(
                f"datasets {partial[:3]} measured only some of its features: query each dataset alone "
                f"(query().where(dataset_uid={one!r}); lancell query --where \"dataset_uid = '{one}'\"), or "
                f"keep a dataset's cells and measured features (adata[adata.obs['dataset_uid'] == {one!r}]"
                f"[:, adata.varm['presence'][{one!r}]])"
            )
        raise IngestError(
            f"dataset {dataset!r}: the input is a lancell query result (varm['presence'], uns['lancell']) "
            f"whose {'; and whose '.join(said)}: stored as one dataset, every value counts as measured; to "
            "store its zeros as measured all the same, delete varm['presence'] and uns['lancell'] first"
        )


def _layer_source(adata: ad.AnnData, dataset: str, origin: str) -> MatrixSource:
    """``adata.X`` (``origin == "X"``) or ``adata.layers[origin]`` as a checked source."""
    if origin != "X" and origin not in adata.layers:
        raise IngestError(
            f'dataset {dataset!r}: no layer {origin!r} in adata.layers {list(adata.layers)} ("X" is adata.X)'
        )
    where = "X" if origin == "X" else f"layers[{origin!r}]"
    try:  # a backed file opens its matrix only now
        matrix = adata.X if origin == "X" else adata.layers[origin]
    except Exception as exc:  # whatever anndata raises (an unknown encoding: ValueError, IORegistryError)
        raise IngestError(
            f"dataset {dataset!r}: cannot read adata.{where} from {adata.filename}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if matrix is None:
        raise IngestError(f"dataset {dataset!r}: adata.{where} is empty")
    source = matrix_source(dataset, matrix)
    if source.shape != (adata.n_obs, adata.n_vars):
        raise ShapeMismatchError(
            f"dataset {dataset!r}: adata.{where} has shape {source.shape} but obs x var is "
            f"{(adata.n_obs, adata.n_vars)}"
        )
    return source


def plan_dataset(
    core: AtlasCore,
    space: FeatureSpace,
    dataset: str,
    layers: Mapping[str, MatrixSource],
    obs: pd.DataFrame,
    feature_uids: list[str],
) -> IngestPlan:
    """The plan of dataset ``dataset`` (its record checked by :func:`check_record`) from its parts: the
    stored layers' sources (cells x features each), ``obs`` (indexed by obs name) and the feature uids in
    source column order. Checks the features against the registry, the obs names and obs -> Arrow.

    Raises
    ------
    IngestError
        Any invalid input (subclasses say which).
    """
    n_obs = len(obs)
    check_size(dataset, n_obs, len(feature_uids))
    if not layers:
        raise IngestError(f"dataset {dataset!r}: no layer to store")
    for name, source in layers.items():
        if source.shape != (n_obs, len(feature_uids)):
            raise ShapeMismatchError(
                f"dataset {dataset!r}: layer {name!r} has shape {source.shape} but obs x var is "
                f"{(n_obs, len(feature_uids))}"
            )
    uids = pd.Index(feature_uids)
    if uids.has_duplicates:
        raise DuplicateFeaturesError(dataset, uids[uids.duplicated()].unique().tolist())
    registry = registry_index(core.tables.registry(space.name))
    known = uids.isin(registry.index)
    if not known.all():
        missing = uids[~known].tolist()
        symbols = registered_symbols(core.tables.registry(space.name), missing)
        remedy = None  # a file naming genes by symbol: registering the symbols would store each gene twice
        if len(symbols) * 2 >= len(missing):
            remedy = (
                f"{len(symbols)} of them are registered genes' symbols (e.g. {next(iter(symbols.items()))}): "
                "pass var_uid_column= naming var's column of registry ids, or map symbols to ids "
                "(lancell.standardize); registering the symbols would store each gene twice"
            )
        raise UnknownFeaturesError(dataset, space.name, missing, remedy)
    global_index = registry.reindex(uids).to_numpy()
    if pd.isna(global_index).any():
        raise IngestError(f"dataset {dataset!r}: registry features without a global index; run optimize()")
    obs_names = obs.index
    check_obs_names(dataset, obs_names)
    fields = obs_fields(core.cell_arrow)
    for start in range(0, n_obs, CELL_BATCH):  # convert once up front to validate; kept batch by batch later
        obs_to_arrow(dataset, obs.iloc[start : start + CELL_BATCH], fields)
    refuse_mixed_zones(dataset, obs, fields)  # (across batches)
    for note in altered_obs_columns(obs, fields):
        warnings.warn(f"dataset {dataset!r}: {note}", LancellWarning, stacklevel=caller_outside_lancell())
    # features are stored in global-index order, so that a row read back maps to increasing output columns
    # and queries never sort rows (var order is only how the input happened to list them)
    order = np.argsort(global_index.astype(np.int64), kind="stable")
    stored_column = None
    if (order != np.arange(order.size)).any():
        stored_column = np.empty(order.size, dtype=np.int64)
        stored_column[order] = np.arange(order.size)
    feature_uids = [feature_uids[i] for i in order]
    global_index = global_index.astype(np.int64)[order]
    nnz, zero_fill = n_obs * len(feature_uids), []
    if space.kind == "sparse" and len(layers) > 1:  # checks every layer's values before the first write
        nnz, zero_fill = shared_pattern(layers, stored_column)
    elif space.kind == "sparse":
        nnz = next(iter(layers.values())).nnz
    return IngestPlan(
        layers=dict(layers),
        obs=obs,
        obs_names=obs_names,
        feature_uids=feature_uids,
        global_index=global_index,
        stored_column=stored_column,
        layout_uid=layout_uid_for(feature_uids, global_index),
        n_cells=n_obs,
        nnz=nnz,
        zero_fill=zero_fill,
        dataset=dataset,
        dropped_obs_columns=undeclared_obs_columns(dataset, obs, fields),
        vectors={},
    )
