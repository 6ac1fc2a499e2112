"""Training assets, partitioned by the *same* snapshot partitions as ``atlas_snapshot``.

The lineage then reads ``cell_type_classifier@snap <- atlas_snapshot@snap``: every model names the exact
atlas version it was trained on.
"""

import dagster as dg

from lancell_assets.atlas_assets import atlas_snapshot
from lancell_assets.metadata import OWNERS
from lancell_assets.partitions import snapshot_partitions
from resources import AtlasResource
from resources.models import ModelStore

LOADER_SEED = 0


@dg.asset(
    deps=[atlas_snapshot],
    partitions_def=snapshot_partitions,
    group_name="models",
    kinds={"pytorch"},
    owners=OWNERS,
)
def cell_type_classifier(
    context: dg.AssetExecutionContext, atlas: AtlasResource, model_store: ModelStore
) -> dg.MaterializeResult:
    """A softmax cell-type classifier trained with the lancell loader on this snapshot's labelled cells.

    Only cells measured in the training layer are used; with none the run fails (``UnmeasuredDataError``)
    instead of training on empty rows. The metadata lists the cells used and left out per dataset.
    """
    from lancell.training import train_cell_type_classifier  # torch: imported by the run, not the definitions

    version = atlas.find_snapshot(context.partition_key)
    if version is None:
        raise dg.Failure(f"no snapshot labelled {context.partition_key!r}; materialize atlas_snapshot first")
    report = train_cell_type_classifier(atlas.checkout(version), seed=LOADER_SEED)
    path = model_store.save("cell_type_classifier", context.partition_key, report.checkpoint())
    context.log.info(
        f"snapshot {version}: accuracy {report.test_accuracy:.3f} on {report.n_test} held-out cells"
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_version": dg.MetadataValue.int(version),
            "loader_seed": dg.MetadataValue.int(report.seed),
            "datasets": dg.MetadataValue.json(report.datasets),
            "cells_per_dataset": dg.MetadataValue.json(report.cells_per_dataset),
            "unmeasured_per_dataset": dg.MetadataValue.json(report.unmeasured_per_dataset),
            "test_accuracy": dg.MetadataValue.float(round(report.test_accuracy, 4)),
            "train_loss": dg.MetadataValue.float(round(report.train_loss, 5)),
            "n_train": dg.MetadataValue.int(report.n_train),
            "n_test": dg.MetadataValue.int(report.n_test),
            "classes": dg.MetadataValue.json(report.classes),
            "batches_sha256": report.batches_sha256,
            "duration_s": dg.MetadataValue.float(round(report.seconds, 2)),
            "model_path": dg.MetadataValue.path(str(path)),
        }
    )
