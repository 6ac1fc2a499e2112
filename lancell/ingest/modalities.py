"""Several modalities per cell: attach a second feature space (e.g. protein) to cells already ingested.

The first modality creates the cell rows (:func:`lancell.ingest.from_anndata.add_from_anndata`, or the first
transaction of :func:`add_from_mudata`'s run); every further one is written by a
:class:`~lancell.ingest.write_transaction.WriteTransaction` like any dataset: its own zarr group and dataset
record (``cells_of`` names the first dataset), its rows being the pointer column on the existing cells (one
``merge_insert`` commit, only on cells without a pointer in that feature space). Attached to a committed
dataset (:func:`attach_modality`), the transaction holds the host dataset's lock from that commit to the
record's (:func:`lancell.maintenance.hold_host`), so the host cannot be deleted in between; pointers a killed
attachment left are nulled there; in :func:`add_from_mudata`'s run, the host's own claim covers its cells and
the records commit together. A failure before the dataset record is written puts the pointers back to null, so
readers see the atlas as it was. Obs columns
of a further modality are not stored (the cells have theirs): they are listed as ``dropped_obs_columns`` and
warned about.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lancell.errors import DatasetNotFoundError, IngestError
from lancell.ingest.csc_choice import check_csc_of_run, csc_of_modality
from lancell.ingest.from_anndata import check_raw
from lancell.ingest.plan import plan_ingest, stored_layers
from lancell.ingest.records import given_or_default, modality_record
from lancell.ingest.transaction_run import run_transactions
from lancell.ingest.write_transaction import WriteTransaction
from lancell.tables.atlas_tables import read_columns
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import sql_literal
from lancell.tables.schema import CELL_UID_SEPARATOR, DatasetRecord, obs_name_of

if TYPE_CHECKING:
    import pandas as pd
    from mudata import MuData

    from lancell.atlas import RaggedAtlas

__all__ = ["add_from_mudata", "attach_modality", "check_attachable"]


def _existing_cells(atlas: RaggedAtlas, cells_of: str, feature_space: str) -> pa.Table:
    where = f"dataset_uid = {sql_literal(cells_of)}"
    return atlas.core.tables.cells.search().where(where).select(["uid", feature_space]).to_arrow()


def _recorded_groups(atlas: RaggedAtlas) -> pa.Array:
    """The zarr groups of every committed dataset record."""
    return read_columns(atlas.core.tables.datasets, ["zarr_group"]).column("zarr_group").combine_chunks()


def check_attachable(
    atlas: RaggedAtlas, dataset: str, cells_of: str, feature_space: str, obs_names: pd.Index
) -> None:
    """Refuse to attach modality ``dataset`` in ``feature_space`` to the cells ``obs_names`` of ``cells_of``
    unless they are its cells and carry no ``feature_space`` pointer yet (checked again under the host's
    lock when the pointers are set).

    Raises
    ------
    DatasetNotFoundError
        No dataset ``cells_of``.
    IngestError
        ``cells_of`` is itself a modality attached to another dataset's cells, obs names that are not its
        cells, or cells that already have this modality.
    """
    host = atlas.core.tables.datasets.search().where(f"uid = {sql_literal(cells_of)}").to_list()
    if not host:
        raise DatasetNotFoundError(f"cannot attach {feature_space!r}: no dataset {cells_of!r} in the atlas")
    if host[0].get("cells_of"):
        raise IngestError(
            f"dataset {dataset!r}: {cells_of!r} is a modality attached to the cells of "
            f"{host[0]['cells_of']!r}: attach to that dataset"
        )
    existing = _existing_cells(atlas, cells_of, feature_space)
    wanted = (cells_of + CELL_UID_SEPARATOR + obs_names.astype(str)).to_numpy(dtype=object)  # as cell rows
    known = np.isin(wanted, np.asarray(existing.column("uid").to_pylist(), dtype=object))
    if not known.all():
        raise IngestError(
            f"dataset {dataset!r}: {int((~known).sum())} obs names are not cells of {cells_of!r}, "
            f"e.g. {[obs_name_of(n) for n in wanted[~known][:5]]}"
        )
    # pointers into a group no record references are a dead run's: the transaction nulls them (hold_host)
    # and, under the host's lock, sets its pointers only on cells without one
    groups = pc.struct_field(existing.column(feature_space), "zarr_group")
    taken = existing.filter(pc.fill_null(pc.is_in(groups, value_set=_recorded_groups(atlas)), False))
    if taken.num_rows and np.isin(wanted, np.asarray(taken.column("uid").to_pylist(), dtype=object)).any():
        raise IngestError(f"cells of {cells_of!r} already carry a {feature_space!r} pointer")


def attach_modality(
    atlas: RaggedAtlas,
    adata: ad.AnnData,
    *,
    cells_of: str,
    feature_space: str,
    zarr_layer: str | None = None,
    dataset_record: DatasetRecord | None = None,
    source_layer: str | None = None,
    layers: Mapping[str, str] | None = None,
    var_uid_column: str | None = None,
    progress: bool = True,
    layer: str | None = None,
    csc: bool | None = None,
) -> DatasetRecord:
    """Store ``adata`` as feature space ``feature_space`` of the cells of dataset ``cells_of``.

    ``adata.obs_names`` must be obs names of that dataset (any subset, any order); those cells must not
    already carry a pointer in ``feature_space``. ``dataset_record`` gives provenance and the uid; the fields
    lancell assigns (``zarr_group``, ...) must be unset and ``cells_of`` unset or equal to ``cells_of``.
    ``zarr_layer`` (with ``source_layer``) or ``layers`` say what is stored, and ``csc`` whether its
    feature-major copy is written, as in :func:`~lancell.ingest.from_anndata.add_from_anndata`.

    Raises
    ------
    DatasetNotFoundError
        No dataset ``cells_of``, or it was deleted while the modality was being written.
    IngestError
        Cells not in it, cells that already have this modality (checked first, and again under the host's
        lock when the pointers are set), a record that sets a field lancell assigns, or any input error that
        :func:`~lancell.ingest.from_anndata.add_from_anndata` would raise. The atlas is unchanged.
    """
    atlas.core.require_writable()
    space = resolve_feature_space(atlas.feature_spaces, feature_space)
    record = given_or_default(atlas.dataset_schema, dataset_record, uid=f"{cells_of}/{feature_space}")
    to_store = stored_layers(record.uid, zarr_layer, source_layer, layers, layer)
    check_raw(adata, record.uid, to_store)
    plan = plan_ingest(atlas.core, adata, space, to_store, record, var_uid_column, cells_of=cells_of)
    check_attachable(atlas, record.uid, cells_of, feature_space, plan.obs_names)
    plan.dropped_obs_columns = [str(c) for c in adata.obs.columns]  # the cells keep their own obs
    transaction = WriteTransaction(
        atlas.core, plan, space, record, cells_of=cells_of, csc=csc, on_duplicate="allow", progress=progress
    )
    (stored,) = run_transactions([transaction])
    return stored


def add_from_mudata(
    atlas: RaggedAtlas,
    mdata: MuData | str | Path,
    modalities: Mapping[str, tuple[str, str | Mapping[str, str]]],
    *,
    dataset_record: DatasetRecord | None = None,
    progress: bool = True,
    csc: bool | None = None,
) -> list[DatasetRecord]:
    """Ingest a MuData (or an ``.h5mu`` file's, read whole): ``modalities`` maps modality name ->
    ``(feature_space, zarr_layer)`` (the modality's ``X`` stored as ``zarr_layer``) or ``(feature_space,
    {stored layer: "X" or a key of the modality's layers})``, as ``layers=`` of
    :func:`~lancell.ingest.from_anndata.add_from_anndata` (e.g. ``{"counts": "counts", "log_normalized":
    "X"}``).

    The first modality creates the cells (with ``mdata.obs`` columns the schema declares); the others are
    attached to them (``<uid>/<feature_space>``), all in one run: their records are committed together or
    none is (:mod:`lancell.ingest.transaction_run`). Returns one record per modality. ``csc``: whether each
    sparse modality's feature-major copy is written, as in
    :func:`~lancell.ingest.from_anndata.add_from_anndata` (a dense one has none).

    Raises
    ------
    IngestError
        No modality, one the MuData lacks, two on one feature space, an ``mdata.obs`` column whose values
        differ from the first modality's column of the same name (one would be lost), a further modality
        naming cells the first lacks, or any error of the ingestion; nothing is stored.
    """
    if isinstance(mdata, str | Path):  # an .h5mu file, read whole (as add_from_anndata reads an .h5ad path)
        mdata = _read_h5mu(mdata)
    if not hasattr(mdata, "mod"):  # (mudata is imported where a MuData is read)
        kind = type(mdata).__name__
        raise IngestError(f"add_from_mudata takes a MuData or the path of an .h5mu file, got a {kind}")
    names = list(modalities)
    if not names:
        raise IngestError("add_from_mudata needs at least one modality")
    malformed = {
        m: spec for m, spec in modalities.items() if not (isinstance(spec, tuple | list) and len(spec) == 2)
    }
    if malformed:
        raise IngestError(
            f"modalities {malformed}: each is (feature_space, zarr_layer) or (feature_space, "
            "{stored layer: 'X' or a key of the modality's layers})"
        )
    missing = [m for m in names if m not in mdata.mod]
    if missing:
        raise IngestError(f"modalities {missing} are not in the MuData (it has {list(mdata.mod)})")
    repeated = {
        space for space, _ in modalities.values() if [s for s, _ in modalities.values()].count(space) > 1
    }
    if repeated:  # one uid (<uid>/<space>) and one pointer column for two modalities
        named = {name: space for name, (space, _) in modalities.items() if space in repeated}
        raise IngestError(f"modalities {named} share a feature space: a cell holds one modality per space")
    atlas.core.require_writable()
    _check_mudata(mdata, names)
    first = mdata.mod[names[0]].copy()
    _check_global_obs(mdata, first, names[0])
    shared = [c for c in mdata.obs.columns if c not in first.obs.columns and not _modality_copy(mdata, c)]
    first.obs = first.obs.join(mdata.obs[shared]) if shared else first.obs
    name, (space_name, layer) = names[0], modalities[names[0]]
    record = given_or_default(atlas.dataset_schema, dataset_record)
    spaces = [resolve_feature_space(atlas.feature_spaces, space) for space, _ in modalities.values()]
    check_csc_of_run(csc, spaces, record.uid)
    space = resolve_feature_space(atlas.feature_spaces, space_name)
    sources = _stored(record.uid, name, layer)
    check_raw(first, record.uid, sources)
    plan = plan_ingest(atlas.core, first, space, sources, record, None)
    host = WriteTransaction(
        atlas.core, plan, space, record, csc=csc_of_modality(csc, space), progress=progress
    )
    transactions = [host]
    for name in names[1:]:
        space_name, layer = modalities[name]
        adata, space = mdata.mod[name], resolve_feature_space(atlas.feature_spaces, space_name)
        attached = modality_record(record, f"{record.uid}/{space_name}")  # its provenance
        strangers = adata.obs_names.difference(first.obs_names)
        if len(strangers):
            raise IngestError(
                f"dataset {attached.uid!r}: {len(strangers)} obs names of modality {name!r} are not cells of "
                f"its first modality {names[0]!r}, e.g. {list(strangers[:5])}"
            )
        to_store = _stored(attached.uid, name, layer)
        check_raw(adata, attached.uid, to_store)
        plan = plan_ingest(atlas.core, adata, space, to_store, attached, None, cells_of=record.uid)
        plan.dropped_obs_columns = [str(c) for c in adata.obs.columns]  # the cells keep their own obs
        transactions.append(
            WriteTransaction(
                atlas.core,
                plan,
                space,
                attached,
                cells_of=record.uid,
                host=host,
                csc=csc_of_modality(csc, space),
                on_duplicate="allow",
                progress=progress,
            )
        )
    return run_transactions(transactions)


def _read_h5mu(path: str | Path) -> MuData:
    """The MuData in file ``path``.

    Raises
    ------
    IngestError
        The file is missing or is no MuData file.
    """
    import mudata

    try:
        return mudata.read_h5mu(path)
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:  # (an .h5ad: TypeError)
        raise IngestError(
            f"cannot read {path} as a MuData (.h5mu) file ({exc}): an .h5ad or a 10x output is ingested with "
            "add_from_anndata or add_from_10x"
        ) from exc


def _stored(uid: str, modality: str, layer: object) -> dict[str, str]:
    """``{stored layer: source}`` of a modality given a stored layer name (its ``X``) or that mapping."""
    if isinstance(layer, str):
        return stored_layers(uid, layer, None, None)
    if isinstance(layer, Mapping):
        return stored_layers(uid, None, None, layer)
    raise IngestError(
        f"modality {modality!r}: the stored layer must be a name (its X stored under it) or a mapping "
        f"{{stored layer: 'X' or a key of its layers}}, got {layer!r}"
    )


def _modality_copy(mdata: MuData, column: object) -> bool:
    """Whether ``mdata.obs`` column ``column`` is MuData's copy of a modality's obs column
    (``<modality>:<column>``), not a column of its own."""
    modality, colon, _ = str(column).partition(":")
    return bool(colon) and modality in mdata.mod


def _check_mudata(mdata: MuData, names: list[str]) -> None:
    """Refuse what ``add_from_mudata`` cannot read as given: a backed modality, repeated obs names.

    Raises
    ------
    IngestError
        A modality of ``names`` opened backed, or whose obs names (or ``mdata.obs``'s) repeat.
    """
    backed = [name for name in names if mdata.mod[name].isbacked]
    if backed:
        raise IngestError(
            f"modalities {backed} are backed: add_from_mudata reads a MuData in memory "
            "(mudata.read_h5mu(path)); to stream a backed one, ingest its first modality with "
            "add_from_anndata and attach the others with attach_modality"
        )
    for name, index in [
        *((name, mdata.mod[name].obs_names) for name in names),
        ("mdata.obs", mdata.obs_names),
    ]:
        if index.has_duplicates:
            repeated = index[index.duplicated()].unique().tolist()
            where = name if name == "mdata.obs" else f"modality {name!r}"
            raise IngestError(f"{where}: obs names repeat, e.g. {repeated[:5]}: a cell is named once")


def _check_global_obs(mdata: MuData, first: ad.AnnData, name: str) -> None:
    """Refuse ``mdata.obs`` columns that the first modality's obs also has, with other values: one of the
    two would be lost (the cells keep one column of each name).

    Raises
    ------
    IngestError
        A column of both whose values differ for some cell (missing values compare equal).
    """
    differ = []
    for column in mdata.obs.columns:
        if _modality_copy(mdata, column) or column not in first.obs.columns:
            continue
        own = first.obs[column].astype(object)
        mine = mdata.obs[column].reindex(first.obs.index).astype(object)
        missing = own.isna().to_numpy()  # pd.NA, NaN and None alike
        if (missing != mine.isna().to_numpy()).any() or own[~missing].tolist() != mine[~missing].tolist():
            differ.append(str(column))
    if differ:
        raise IngestError(
            f"mdata.obs columns {differ} differ from the columns of the same names in mdata[{name!r}].obs, "
            "whose cells are stored: rename one of each pair (e.g. mdata.obs.rename(columns=...)) so that "
            "neither is lost"
        )
