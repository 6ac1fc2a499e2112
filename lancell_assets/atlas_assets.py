"""Atlas-wide assets: the feature registry, the optimized atlas, and snapshot partitions."""

import time

import dagster as dg

from lancell_assets.datasets import dataset_group
from lancell_assets.metadata import datasets_table
from lancell_assets.partitions import snapshot_partitions
from resources import AtlasResource


@dg.asset(deps=[dataset_group], pool="lancedb_writer", group_name="atlas", kinds={"lancedb"})
def feature_registry(context: dg.AssetExecutionContext, atlas: AtlasResource) -> dg.MaterializeResult:
    """Every feature space's registry, each feature with its permanent global index."""
    handle = atlas.open()
    numbered = handle.assign_global_indices()
    sizes = {name: len(handle.feature_registry(name)) for name in handle.feature_spaces}
    context.log.info(f"registry sizes {sizes}; newly numbered {numbered}")
    return dg.MaterializeResult(
        metadata={
            "features": dg.MetadataValue.json(sizes),
            "newly_numbered": dg.MetadataValue.json(numbered),
            "lance_versions": dg.MetadataValue.json(handle._tables.versions()),
        }
    )


@dg.asset(deps=[feature_registry], pool="lancedb_writer", group_name="atlas", kinds={"lancedb"})
def optimized_atlas(context: dg.AssetExecutionContext, atlas: AtlasResource) -> dg.MaterializeResult:
    """The atlas with compacted tables and untagged old versions pruned (snapshots are tagged, so kept)."""
    handle = atlas.open()
    started = time.perf_counter()
    versions = handle.optimize()
    seconds = time.perf_counter() - started
    context.log.info(f"optimized in {seconds:.2f} s")
    return dg.MaterializeResult(
        metadata={
            "cells": dg.MetadataValue.int(handle.query().count()),
            "datasets": datasets_table(handle),
            "duration_s": dg.MetadataValue.float(round(seconds, 3)),
            "lance_versions": dg.MetadataValue.json(versions),
        }
    )


@dg.asset(
    deps=[optimized_atlas],
    partitions_def=snapshot_partitions,
    pool="lancedb_writer",
    group_name="atlas",
    kinds={"lancedb"},
    check_specs=[
        dg.AssetCheckSpec("snapshot_valid", asset="atlas_snapshot", blocking=True),
        dg.AssetCheckSpec("cells_equal_dataset_sum", asset="atlas_snapshot", blocking=True),
    ],
)
def atlas_snapshot(context: dg.AssetExecutionContext, atlas: AtlasResource) -> dg.MaterializeResult:
    """A frozen, tagged atlas version; the partition key is the snapshot's label (its note)."""
    label = context.partition_key
    version = atlas.find_snapshot(label)
    if version is None:
        version = atlas.open().snapshot(note=label)
        context.log.info(f"took snapshot {version} for partition {label!r}")
    frozen = atlas.checkout(version)
    problems = frozen.validate()
    cells = frozen.query().count()
    datasets = frozen.list_datasets()
    return dg.MaterializeResult(
        metadata={
            "snapshot_version": dg.MetadataValue.int(version),
            "cells": dg.MetadataValue.int(cells),
            "datasets": datasets_table(frozen),
            "lance_versions": dg.MetadataValue.json(frozen._tables.versions()),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="snapshot_valid", passed=not problems, metadata={"problems": len(problems)}
            ),
            dg.AssetCheckResult(
                check_name="cells_equal_dataset_sum",
                passed=cells == int(datasets["n_cells"].sum()),
                metadata={"cells": cells, "dataset_sum": int(datasets["n_cells"].sum())},
            ),
        ],
    )
