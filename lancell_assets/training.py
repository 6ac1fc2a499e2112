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


class ClassifierConfig(dg.Config):
    """How ``cell_type_classifier`` reads its cells (launchpad config; every field optional)."""

    layer: str | None = None  # None: log_normalized where a dataset stores it, else counts (training_inputs)
    normalize: bool | None = None  # None: scale and log1p an integer layer (counts), read a float one as is
    label_column: str = "cell_type"
    epochs: int = 8


@dg.asset(
    deps=[atlas_snapshot],
    partitions_def=snapshot_partitions,
    group_name="models",
    kinds={"pytorch"},
    owners=OWNERS,
)
def cell_type_classifier(
    context: dg.AssetExecutionContext, config: ClassifierConfig, atlas: AtlasResource, model_store: ModelStore
) -> dg.MaterializeResult:
    """A softmax cell-type classifier trained with the lancell loader on this snapshot's labelled cells.

    The layer is ``log_normalized`` where a dataset of the snapshot stores it, else ``counts`` (scaled to
    10,000 per cell and log1p-ed), unless the run's config names one (``layer``, ``normalize``,
    ``label_column``, ``epochs``). Only cells measured in that layer are used; with none the run fails
    (``UnmeasuredDataError``) instead of training on empty rows. The metadata lists the layer and the cells
    used and left out per dataset.
    """
    # torch: imported by the run, not the definitions
    from lancell.training import train_cell_type_classifier, training_inputs

    version = atlas.find_snapshot(context.partition_key)
    if version is None:
        raise dg.Failure(f"no snapshot labelled {context.partition_key!r}; materialize atlas_snapshot first")
    snapshot = atlas.checkout(version)
    layer, normalize = training_inputs(snapshot, layer=config.layer, normalize=config.normalize)
    report = train_cell_type_classifier(
        snapshot,
        layer=layer,
        normalize=normalize,
        label_column=config.label_column,
        epochs=config.epochs,
        seed=LOADER_SEED,
    )
    path = model_store.save("cell_type_classifier", context.partition_key, report.checkpoint())
    context.log.info(
        f"snapshot {version}: accuracy {report.test_accuracy:.3f} on {report.n_test} held-out cells"
    )
    return dg.MaterializeResult(
        metadata={
            "snapshot_version": dg.MetadataValue.int(version),
            "layer": dg.MetadataValue.text(layer),
            "normalize": dg.MetadataValue.bool(normalize),
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
