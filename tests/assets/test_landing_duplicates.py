"""The ``dataset_group`` asset says what it did not store: a re-landed file's content (not ingested again)
and the obs columns the cell schema does not declare."""

import shutil

import dagster as dg

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, CellSchema
from lancell_assets import dataset_partitions

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _metadata(defs: dg.Definitions, instance: dg.DagsterInstance, partition: str) -> dict[str, object]:
    result = dg.materialize(
        list(defs.assets),
        selection=["dataset_group"],
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
        run_config=QUIET,
    )
    assert all(c.passed for c in result.get_asset_check_evaluations())
    metadata = result.asset_materializations_for_node("dataset_group")[0].metadata
    return {key: value.value for key, value in metadata.items()}


def test_a_relanded_file_is_not_ingested_again_and_dropped_columns_are_shown(platform):
    defs, instance, root = platform
    sample = BUNDLED[1]  # the celltypist sample: obs column "sample" is not in the example schema
    shutil.copyfile(root / "landing" / f"{sample.uid}.h5ad", root / "landing" / "again.h5ad")
    shutil.copyfile(root / "landing" / f"{sample.uid}.json", root / "landing" / "again.json")
    instance.add_dynamic_partitions(dataset_partitions.name, [sample.uid, "again"])
    dropped = sorted(set(sample.read().obs.columns) - set(CellSchema.model_fields))
    assert dropped == ["sample"]

    first = _metadata(defs, instance, sample.uid)
    assert (first["outcome"], first["dropped_obs_columns"]) == ("ingested", dropped)
    assert "duplicate_of" not in first

    again = _metadata(defs, instance, "again")
    assert (again["outcome"], again["duplicate_of"], again["dataset_uid"]) == (
        "duplicate",
        sample.uid,
        sample.uid,
    )
    atlas = RaggedAtlas.open(str(root / "db"))
    assert atlas.list_datasets()["uid"].tolist() == [sample.uid]
    assert atlas.query().count() == 559
