"""Atlas-wide assets: the feature registry, the optimized atlas, and snapshot partitions.

``feature_registry`` and ``optimized_atlas`` refresh on their own after new datasets (declarative
automation, evaluated by ``atlas_refresh_sensor``, on by default); snapshots stay explicit (the nightly
sensor, ``python -m lancell_assets.take_snapshot LABEL`` or the UI). See docs/architecture.md, "Dagster
platform".
"""

import time

import dagster as dg

from lancell_assets.datasets import dataset_group
from lancell_assets.duplicates import absent_datasets
from lancell_assets.metadata import OWNERS
from lancell_assets.partitions import snapshot_partitions
from lancell_assets.pools import WRITER_POOL
from resources import AtlasResource
from resources.models import check_label

# eager, except that a dataset partition that failed (so is missing) does not hold back the others' refresh
REFRESH_AFTER_NEW_DATA = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


@dg.asset(
    deps=[dataset_group],
    pool=WRITER_POOL,
    group_name="atlas",
    kinds={"lancedb"},
    owners=OWNERS,
    automation_condition=REFRESH_AFTER_NEW_DATA,
)
def feature_registry(context: dg.AssetExecutionContext, atlas: AtlasResource) -> dg.MaterializeResult:
    """Every feature space's registry, each feature with its permanent global index."""
    handle = atlas.open()
    numbered = handle.assign_global_indices()
    sizes = {name: len(handle.feature_registry(name)) for name in handle.feature_spaces}
    context.log.info(f"registry sizes {sizes}; newly numbered {numbered}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(sum(sizes.values())),
            "features": dg.MetadataValue.json(sizes),
            "newly_numbered": dg.MetadataValue.json(numbered),
            "lance_versions": dg.MetadataValue.json(handle.table_versions()),
        }
    )


@dg.asset(
    deps=[feature_registry],
    pool=WRITER_POOL,
    group_name="atlas",
    kinds={"lancedb"},
    owners=OWNERS,
    automation_condition=REFRESH_AFTER_NEW_DATA,
)
def optimized_atlas(context: dg.AssetExecutionContext, atlas: AtlasResource) -> dg.MaterializeResult:
    """The atlas with compacted tables and untagged old versions pruned (snapshots are tagged, so kept)."""
    from lancell.run_again import run_again
    from lancell_assets.metadata import column_schema, datasets_table

    handle = atlas.open()
    started = time.perf_counter()
    # (on an object store, run again after a store failure: optimizing twice is harmless)
    versions = run_again(
        handle, handle.optimize, made=lambda: False, on_retry=context.log.warning, what="optimize is run"
    )
    seconds = time.perf_counter() - started
    context.log.info(f"optimized in {seconds:.2f} s")
    cells = handle.query().count()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(cells),
            "dagster/column_schema": column_schema(handle),
            "cells": dg.MetadataValue.int(cells),
            "datasets": datasets_table(handle),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
            "lance_versions": dg.MetadataValue.json(versions),
        }
    )


@dg.asset(
    deps=[optimized_atlas],
    partitions_def=snapshot_partitions,
    pool=WRITER_POOL,
    group_name="atlas",
    kinds={"lancedb"},
    owners=OWNERS,
    check_specs=[
        dg.AssetCheckSpec(
            "snapshot_valid",
            asset="atlas_snapshot",
            blocking=True,
            partitions_def=snapshot_partitions,
            description="atlas.validate() finds no problem in the frozen snapshot.",
        ),
        dg.AssetCheckSpec(
            "cells_equal_dataset_sum",
            asset="atlas_snapshot",
            blocking=True,
            partitions_def=snapshot_partitions,
            description="Cells in the snapshot = the sum of its datasets' n_cells.",
        ),
        dg.AssetCheckSpec(
            "materialized_datasets_in_atlas",
            asset="atlas_snapshot",
            partitions_def=snapshot_partitions,
            description="Every dataset partition shown as materialized has its dataset in the live atlas "
            "when this partition is materialized (a warning names those deleted outside Dagster, e.g. by "
            "lancell delete); about the live atlas, not this snapshot's datasets, which never change.",
        ),
    ],
)
def atlas_snapshot(context: dg.AssetExecutionContext, atlas: AtlasResource) -> dg.MaterializeResult:
    """A frozen, tagged atlas version; the partition key is the snapshot's label (its note), which names
    that one version for good (the library refuses a note another snapshot has).

    The metadata shows what changed since the previous snapshot (datasets added, removed and changed, cells
    and features added).
    """
    from lancell.errors import DuplicateNoteError
    from lancell.run_again import run_again
    from lancell.tables.visibility import recorded_cells
    from lancell_assets.metadata import column_schema, datasets_table
    from lancell_assets.snapshot_diff import snapshot_diff

    label = context.partition_key
    check_label(label)  # a partition added by hand (in the UI) names model files too: refused first
    version = atlas.find_snapshot(label)
    if version is None:
        handle = atlas.open()
        try:  # (on an object store, taken again after a store failure that left no snapshot)
            version = run_again(
                handle,
                lambda: handle.snapshot(note=label),
                made=lambda: atlas.find_snapshot(label) is not None,
                on_retry=context.log.warning,
                what=f"snapshot {label!r} is taken",
            )
            context.log.info(f"took snapshot {version} for partition {label!r}")
        except DuplicateNoteError:  # another run of this partition took it meanwhile
            version = atlas.find_snapshot(label)
    frozen = atlas.checkout(version)
    problems = frozen.validate()
    live = set(atlas.open().list_datasets()["uid"])
    absent = absent_datasets(context.instance, dataset_group.key, live)
    if absent:
        context.log.warning(
            f"dataset partitions shown as materialized whose datasets are not in the live atlas (deleted "
            f"outside Dagster?): {absent}; materialize them again to ingest their files again (snapshot "
            f"{version} itself is unchanged)"
        )
    cells = frozen.query().count()
    datasets = frozen.list_datasets()
    return dg.MaterializeResult(
        metadata={
            "snapshot_version": dg.MetadataValue.int(version),
            "dagster/row_count": dg.MetadataValue.int(cells),
            "dagster/column_schema": column_schema(frozen),
            "cells": dg.MetadataValue.int(cells),
            "datasets": datasets_table(frozen),
            "lance_versions": dg.MetadataValue.json(frozen.table_versions()),
        }
        | snapshot_diff(atlas, frozen),
        check_results=[
            dg.AssetCheckResult(
                check_name="snapshot_valid",
                passed=not problems,
                metadata={"problems": len(problems), "first": "; ".join(problems[:5])},
            ),
            dg.AssetCheckResult(
                check_name="cells_equal_dataset_sum",
                passed=cells == recorded_cells(datasets),
                metadata={"cells": cells, "dataset_sum": recorded_cells(datasets)},
            ),
            dg.AssetCheckResult(
                check_name="materialized_datasets_in_atlas",
                passed=not absent,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"absent": dg.MetadataValue.json(absent)},
            ),
        ],
    )
