"""A 10x Genomics output landed (``lancell ingest``, a landing zone): its features registered, then ingested
with :func:`lancell.ingest.tenx.add_from_10x`.

Each feature type the file holds goes to its feature space
(:data:`~lancell.ingest.tenx.DEFAULT_FEATURE_TYPES`, or the spec's one ``feature_space``); the features of
each are registered from the file's ``var`` (uid from ``gene_ids``, or the spec's ``var_uid_column``;
``gene_symbol`` from the feature name; the spec's ``organism``), and the cells get the spec's organism where
the cell schema declares the column.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from lancell.ingest.landing_features import register_for_ingestion, registry_rows, updated
from lancell.ingest.tenx import (
    DEFAULT_FEATURE_TYPES,
    add_from_10x,
    check_barcodes,
    open_10x,
    route_feature_types,
)
from lancell.tables.schema_fit import check_record_fits

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas
    from lancell.ingest.landing_spec import LandingSpec
    from lancell.tables.registry import OnConflict
    from lancell.tables.schema import DatasetRecord

__all__ = ["ingest_tenx_output"]


def ingest_tenx_output(
    atlas: RaggedAtlas,
    spec: LandingSpec,
    record: DatasetRecord,
    on_conflict: OnConflict = "error",
    progress: bool = True,
) -> DatasetRecord:
    """Register the 10x output's features and ingest it as ``record`` (skipping content the atlas holds);
    return the record of the dataset adding the cells (another dataset's, when the content was there).
    ``progress``: show progress bars.

    Raises
    ------
    TenxFormatError
        The output is malformed (:func:`lancell.ingest.tenx.open_10x`).
    FeatureSpaceError
        None of its feature types maps to a feature space of the atlas (or to ``spec.feature_space``).
    IngestError
        Any other invalid input; features registered before the failure stay registered (as for an
        ``.h5ad``: :func:`lancell.ingest.landing.ingest_landing_file`).
    """
    matrix = open_10x(spec.path, genome=spec.genome)
    check_barcodes(matrix)  # (what needs no registry, refused before it changes)
    check_record_fits(record, atlas.core.dataset_arrow)
    uid_column = spec.var_uid_column or "gene_ids"
    routes, _ = route_feature_types(atlas, matrix, spec.feature_space, DEFAULT_FEATURE_TYPES)
    updates = []
    for space, columns in routes.items():
        of_space = replace(spec, feature_space=space, var_uid_column=uid_column, symbol_column="gene_symbol")
        rows = registry_rows(atlas, of_space, matrix.var.iloc[columns])
        updates.append(register_for_ingestion(atlas, space, rows, on_conflict))
    stored = add_from_10x(
        atlas,
        matrix,
        feature_space=spec.feature_space,
        zarr_layer=spec.zarr_layer,
        dataset_record=record,
        var_uid_column=uid_column,
        obs=None if spec.organism is None else {"organism": spec.organism},
        csc=spec.csc,
        on_duplicate="skip",
        progress=progress,
    )
    updated(spec, stored[0].uid, updates)
    return stored[0]
