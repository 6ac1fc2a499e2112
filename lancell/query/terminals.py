"""Reading a query: the terminals of :class:`~lancell.query.atlas_query.AtlasQuery` (its rows, counts, read
plan, AnnData, MuData, AnnData batches and a loader's dataset).

Every terminal is the query's boundary with the stores (a store failure is a ``StoreError`` naming the atlas)
and reads one state of the atlas: a live handle's tables pinned at their versions when it is called
(:meth:`QueryTerminals.pinned`). The builder calls that choose rows and features live in
:mod:`lancell.query.atlas_query`.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Self

import anndata as ad
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from lancell.errors import ArgumentError, QueryError, require_type
from lancell.query.cell_selection import CellSelection
from lancell.query.feature_selection import FeatureSelection
from lancell.query.one_version import one_version, terminal
from lancell.query.plan import PlannedCells
from lancell.query.reconstruct import reconstruct, reconstruct_batches
from lancell.query.unmeasured import carrying, warn_none_measured
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.stored_fields import pointer_fields_from_arrow

if TYPE_CHECKING:
    import polars as pl
    from mudata import MuData

    from lancell.atlas import RaggedAtlas
    from lancell.dataloader import CellDataset

__all__ = ["QueryTerminals"]


class QueryTerminals:
    """The terminals of a query; :class:`~lancell.query.atlas_query.AtlasQuery` builds the query they read
    (its atlas handle, :class:`CellSelection` and :class:`FeatureSelection`)."""

    _atlas: RaggedAtlas
    _cells: CellSelection
    _reads: FeatureSelection

    @property
    def atlas(self) -> RaggedAtlas:
        """The atlas handle this query reads."""
        return self._atlas

    def pinned(self) -> Self:
        """This query on its atlas's tables as they are now: a live handle's pinned at their current versions
        (:meth:`lancell.core.AtlasCore.read_view`), a checked-out one as it is. Every terminal reads through
        it, so one call sees one state of the atlas whatever other processes commit meanwhile."""
        view = self._atlas.core.read_view()
        if view is self._atlas.core:
            return self
        return type(self)(type(self._atlas)(view), cells=replace(self._cells, core=view), reads=self._reads)

    @property
    def selection(self) -> CellSelection:
        """Which cell rows this query reads (filters, search, limit, kept columns); with a ``limit()`` under
        ``on_unmeasured("drop")``, only cells measured in every reconstructed layer, so that the limit counts
        the cells the readers return (without one, the readers' plan drops the others and names their
        datasets in ``uns["lancell"]["unmeasured_datasets"]``)."""
        return self._cells if self._cells.limit is None else self._returned()

    def _returned(self) -> CellSelection:
        """The rows the readers return: under ``on_unmeasured("drop")``, the measured cells only."""
        if self._reads.on_unmeasured != "drop":
            return self._cells
        measured = self._reads.measured_filter(self._atlas.core)
        return replace(self._cells, filters=(*self._cells.filters, measured))

    def _said_if_none_measured(self, returned: int) -> None:
        """Under ``on_unmeasured("drop")``, warn when none of the matching rows was returned, each unmeasured
        (a mistyped layer, a wrong selection: an empty answer otherwise without a word)."""
        if not returned and self._reads.on_unmeasured == "drop":
            space = self._reads.space(self._atlas.core)
            cells = self._cells.read(["uid", "dataset_uid", space])
            warn_none_measured(self._atlas.core, cells, space, self._reads.layers)

    @terminal
    @one_version
    def to_arrow(self) -> pa.Table:
        """The matching cell rows (metadata and pointers), in query (or search-rank) order."""
        rows = self._returned().read()
        self._said_if_none_measured(rows.num_rows)
        return rows

    @terminal
    @one_version
    def to_pandas(self) -> pd.DataFrame:
        """The matching cell rows as a pandas frame (integers as nullable ``Int64`` etc., never floats;
        booleans as nullable ``boolean``)."""
        rows = self._returned().read_pandas()
        self._said_if_none_measured(len(rows))
        return rows

    @terminal
    def to_polars(self) -> pl.DataFrame:
        """The matching cell rows as a polars frame."""
        import polars as pl

        return pl.from_arrow(self.to_arrow())

    @terminal
    @one_version
    def count(self, group_by: str | None = None) -> int | pd.Series | pd.DataFrame:
        """Number of matching cells, or cells per value of ``group_by`` (most first): the rows the other
        terminals return, a :meth:`search`'s included (under ``on_unmeasured("drop")`` the measured ones;
        under the default ``"error"`` every matching cell, where the matrix readers raise for an unmeasured
        one instead: count() reads no matrix).

        Without ``group_by`` or search this is LanceDB's ``count_rows`` (no column is read); with
        ``group_by`` only the grouping column is read. ``group_by="dataset_uid"`` gives a frame: ``cells`` and
        the ``layers`` each dataset stores in the query's feature space (those its record lists, or, for a
        modality attached to its cells, the attachment's record: what readers of this handle see; None where
        it stores none); any other column a ``cells`` series.
        """
        if group_by is None:
            n = self._returned().count()
            self._said_if_none_measured(n)
            return n
        series = self._returned().count_by(group_by)
        self._said_if_none_measured(int(series.sum()))
        if group_by != "dataset_uid":
            return series
        space = self._reads.space(self._atlas.core)
        frame = self._atlas.list_datasets()
        frame = frame[frame["feature_space"] == space]
        stored: dict[str, list[str]] = {}  # host uid -> the layers every record of it in the space stores
        for uid, cells_of, lays in zip(frame["uid"], frame["cells_of"], frame["layers"], strict=True):
            host = cells_of if isinstance(cells_of, str) else uid
            stored[host] = [lay for lay in stored.get(host, lays) if lay in set(lays)]
        return series.to_frame().assign(layers=series.index.map(lambda uid: stored.get(uid)))

    @terminal
    @one_version
    def plan(self, columns: Sequence[str] | None = None) -> PlannedCells:
        """The matching cells and the read plan that every reader of this query executes.

        The plan fixes the output features (``features()``, ``feature_join()``), the measured datasets and
        their local -> output column maps, and applies :meth:`on_unmeasured`.

        Parameters
        ----------
        columns
            Cell columns to read besides ``uid``, ``dataset_uid`` and the reconstructed pointer column;
            None: those of :meth:`select` (every column by default).

        Raises
        ------
        UnmeasuredDataError
            Unmeasured cells under the default policy ``"error"``.
        GroupNotFoundError
            A selected dataset's zarr group is missing from the store.
        """
        space = self._reads.space(self._atlas.core)
        if columns is not None:
            columns = list(dict.fromkeys(["uid", "dataset_uid", space, *columns]))
        cells = self.selection.read(columns)
        if self._cells.limit is not None:  # (without a limit, the plan judges every matching row itself)
            self._said_if_none_measured(cells.num_rows)
        return self._reads.plan(self._atlas.core, cells, space)

    @terminal
    @one_version
    def plan_for(self, cells: pa.Table) -> PlannedCells:
        """:meth:`plan` applied to ``cells``: this query's rows as the caller read them (at least
        ``dataset_uid`` and the reconstructed pointer's ``zarr_group``, dictionary-encoded columns allowed).

        The loader streams the rows into compact codes and plans from those (``CellDataset.from_query``).
        Raises what :meth:`plan` raises.
        """
        return self._reads.plan(self._atlas.core, cells, self._reads.space(self._atlas.core))

    @terminal
    @one_version
    def to_anndata(self, *, progress: bool = False) -> ad.AnnData:
        """Reconstruct the matching cells as one AnnData (rows in query order).

        ``X`` is CSR for sparse feature spaces and dense for dense ones (the first of :meth:`layers`, each
        other in ``adata.layers``); ``var`` comes from the registry; ``varm["presence"]`` says which features
        each dataset measured; ``uns["lancell"]`` records the feature space, layer, join, unmeasured-cell
        policy and the unmeasured datasets. ``progress`` shows a bar: the cells' selection, then their
        matrix values read dataset by dataset.
        """
        shown = {"disable": not progress, "leave": False}
        with tqdm(desc="query: selecting cells", bar_format="{desc}", **shown) as bar:
            planned = self.plan()
            layers = len(planned.plan.layers or [None])  # (the bar counts each layer of each cell)
            bar.set_description(f"query: reading{f' {layers} layers' if layers > 1 else ''}", refresh=False)
            bar.bar_format, bar.unit = None, "cell"  # (reconstruct sets the total)
            return reconstruct(self._atlas.core, planned.cells, planned.plan, bar=bar)

    @terminal
    @one_version
    def to_mudata(
        self,
        feature_spaces: Sequence[str] | None = None,
        layers: Mapping[str, str | Sequence[str]] | None = None,
    ) -> MuData:
        """One AnnData per feature space (every pointer field by default), cells aligned by uid.

        Each modality holds the matching cells that carry that modality; ``mdata.obsm[<space>]`` (a MuData
        convention) says which cells have it. Layers per space come from ``layers`` (``{space: layer or
        layers}``), from ``layers()`` for its space, or are inferred; cells whose dataset lacks the layer
        follow :meth:`on_unmeasured`. ``limit()`` takes the first matching cells before each space leaves
        out (``"drop"``) the ones it did not measure.

        Raises
        ------
        ArgumentError
            ``feature_spaces`` is one string (give a list), empty or repeats a space, or ``layers`` is not a
            mapping.
        QueryError
            ``layers`` names a space not reconstructed, or chooses other layers than ``layers()`` did.
        FeatureSpaceError
            An unknown feature space.
        """
        from mudata import MuData

        if isinstance(feature_spaces, str):
            raise ArgumentError(
                f"feature_spaces must be a list of feature spaces, got the string {feature_spaces!r} "
                f"(for one space: [{feature_spaces!r}])"
            )
        require_type("layers", layers or {}, Mapping, "a mapping {feature space: layer or layers}")
        core = self._atlas.core
        named = None if feature_spaces is None else list(feature_spaces)
        if named is not None and (not named or len(set(named)) < len(named)):  # []: every space was read
            raise ArgumentError(f"feature_spaces must name distinct feature spaces, got {named} (None: all)")
        spaces = named or list(pointer_fields_from_arrow(core.cell_arrow))
        chosen = {
            space: [wanted] if isinstance(wanted, str) else list(wanted)
            for space, wanted in (layers or {}).items()
        }
        unread = sorted(set(chosen) - set(spaces))
        if unread:
            raise QueryError(f"to_mudata(layers=...): {unread} are not among the spaces read, {spaces}")
        cells = self._cells.read()  # each space's plan applies on_unmeasured to the cells carrying it
        modalities = {}
        for space in spaces:
            resolve_feature_space(self._atlas.feature_spaces, space)
            has = cells.filter(carrying(core, cells, space))
            reads = self._reads if space == self._reads.feature_space else self._reads.other_space()
            if space in chosen:
                if reads.layers is not None and reads.layers != chosen[space]:
                    raise QueryError(
                        f"to_mudata(layers=...) reads {chosen[space]} of {space!r}, layers() chose "
                        f"{reads.layers}"
                    )
                reads = replace(reads, layers=chosen[space])
            planned = reads.plan(core, has, space)
            modalities[space] = reconstruct(core, planned.cells, planned.plan)
        with (
            warnings.catch_warnings()
        ):  # mudata 0.3's notice of its 0.4 default, about no choice of the caller's
            warnings.filterwarnings("ignore", "From 0.4 .update", FutureWarning)
            return MuData(modalities)

    @terminal
    @one_version
    def to_batches(self, batch_size: int = 10_000) -> Iterator[ad.AnnData]:
        """Stream the result as AnnData batches of at most ``batch_size`` cells, all with the same ``var``.

        Only the pointer and text columns are read up front (to plan the columns, registry and layouts read
        once, and to give every batch's text obs columns the categories of all the cells: a code means one
        label in every batch, as in ``to_anndata()``; the cell names, ``obs_name``, and a column of more than
        65,536 distinct values keep each batch's own); metadata and matrix values are read batch by batch,
        so memory is bounded by the batch (and the distinct labels). A search's
        ranked rows are read whole (without matrix values) before they are batched.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise QueryError(f"batch_size must be a positive integer, got {batch_size!r}")
        plan = self.plan(columns=[]).plan  # the same rows (search and limit included), pointers only
        # each text column's labels of all the rows first (those columns alone): one code, one label, in
        # every batch (each batch had its own categories: a code named other labels from batch to batch)
        categories = self.selection.text_values(plan.select, plan.feature_space)
        rows = self.selection.batches(int(batch_size))
        yield from reconstruct_batches(self._atlas.core, rows, plan, int(batch_size), categories)

    @terminal
    def to_cell_dataset(
        self,
        feature_space: str,
        layer: str | Sequence[str],
        metadata_columns: Sequence[str] = (),
        features: Sequence[str] | str | None = None,
        store_kwargs: dict[str, Any] | None = None,
        categories: Mapping[str, Sequence[str]] | None = None,
    ) -> CellDataset:
        """A map-style PyTorch dataset of the matching cells (positions follow the query or search order).

        Its output columns and cells are those of ``to_anndata()`` for the same query: ``features()``,
        ``feature_join()`` and ``on_unmeasured()`` apply. ``features`` adds to them as :meth:`reading` says.
        ``layer``: one name, or several (each batch carries one tensor per layer, the first as ``X``).
        ``store_kwargs``: the client settings (e.g. credentials given only in memory) DataLoader workers
        reopen the store with; default: the store's non-secret settings, credentials from the environment.
        ``categories``: fixed codes of string metadata columns (a training set's ``categories``, for its
        validation set). See :meth:`lancell.dataloader.CellDataset.from_query`.
        """
        from lancell.dataloader import CellDataset  # torch is an optional dependency

        return CellDataset.from_query(
            self,
            feature_space,
            layer,
            metadata_columns=metadata_columns,
            features=features,
            store_kwargs=store_kwargs,
            categories=categories,
        )
