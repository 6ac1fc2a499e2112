"""``make demo``: land the bundled real data, materialize the whole asset graph, print a query and a loader.

Uses a persistent ``DAGSTER_HOME`` (``.dagster_home/``, or the one the environment names), so ``make ui``
afterwards shows the runs, the partitions and the lineage. Run as ``python -m lancell_assets.demo [ROOT]``
(default ``demo_atlas/``). Both folders are emptied first, so they must be the demo's: new, empty, made by an
earlier demo (a ``.lancell-demo`` file marks them) or those defaults; an instance or atlas of the user's is
refused, not deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import dagster as dg

from lancell.bundled import land_bundled_data

REPO = Path(__file__).resolve().parent.parent
MARK = ".lancell-demo"  # written into the folders the demo made: the next demo may empty them


def _check_own(folder: Path, what: str, own: Path) -> None:
    """Refuse ``folder`` unless the demo may empty it: new or empty, marked by an earlier demo, or ``own``
    (its default place in the repository); anything else is an instance or atlas of the user's.

    Raises
    ------
    SystemExit
        ``folder`` holds what the demo did not make.
    """
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"demo: {what} {folder} is a file; give a new or empty folder")
    if folder.exists() and folder != own and not (folder / MARK).exists() and any(folder.iterdir()):
        raise SystemExit(
            f"demo: {what} {folder} holds files the demo did not make; it starts from an empty folder and "
            "would delete them: give a new or empty folder"
        )


def _fresh_folder(folder: Path) -> None:
    """Empty ``folder`` (checked by :func:`_check_own`) and mark it as the demo's."""
    if folder.is_dir():  # its contents (the folder itself may be a mount point, which cannot go)
        for child in folder.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARK).write_text("made by python -m lancell_assets.demo, which empties it on its next run\n")


def materialize_graph(defs: dg.Definitions, instance: dg.DagsterInstance, snapshot_label: str) -> None:
    """Evaluate the landing sensor and run the named jobs it and a person would launch.

    The sensor's partition requests are applied as the daemon applies them when it commits a tick; then
    ``ingest_dataset_job`` per new dataset, ``rebuild_atlas_job``, and ``snapshot_job`` (with training)
    through :func:`lancell_assets.take_snapshot.take_snapshot`, so the UI shows each run under its job.
    """
    from lancell_assets import landing_zone_sensor
    from lancell_assets.dead_runs import worker_tags
    from lancell_assets.take_snapshot import QUIET, take_snapshot

    context = dg.build_sensor_context(instance=instance, resources=defs.resources)
    result = landing_zone_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    ingest = defs.resolve_job_def("ingest_dataset_job")
    for run in result.run_requests:
        print(f"  sensor -> ingest partition {run.partition_key}")
        ingest.execute_in_process(
            run_config=QUIET, instance=instance, partition_key=run.partition_key, tags=worker_tags()
        )
    defs.resolve_job_def("rebuild_atlas_job").execute_in_process(
        run_config=QUIET, instance=instance, tags=worker_tags()
    )
    snapshot = take_snapshot(defs, instance, snapshot_label)
    if not snapshot.success:
        raise SystemExit(f"snapshot_job for {snapshot_label!r} failed (run {snapshot.run_id})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", nargs="?", default=str(REPO / "demo_atlas"), type=Path)
    parser.add_argument("--snapshot", default="demo-1", help="label of the snapshot partition")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO / ".dagster_home"))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    _check_own(root, "ROOT", REPO / "demo_atlas")  # both checked before either is emptied
    _check_own(home, "DAGSTER_HOME", REPO / ".dagster_home")
    if root.is_relative_to(home) or home.is_relative_to(root):
        raise SystemExit(f"demo: ROOT {root} and DAGSTER_HOME {home} must not hold one another")
    _fresh_folder(root)
    _fresh_folder(home)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    os.environ["LANCELL_ROOT"] = str(root)
    os.environ["LANCELL_CREATE_ATLAS"] = "1"  # the demo builds its atlas from nothing (root was just emptied)
    from definitions import build_definitions

    started = time.perf_counter()
    land_bundled_data(root / "landing")
    defs = build_definitions(root)
    with dg.DagsterInstance.get() as instance:
        materialize_graph(defs, instance, args.snapshot)
        event = instance.get_latest_materialization_event(dg.AssetKey("cell_type_classifier"))
        classifier = {k: v.value for k, v in event.asset_materialization.metadata.items()} if event else None
    print(f"materialized the asset graph in {time.perf_counter() - started:.1f} s (DAGSTER_HOME={home})")
    from lancell_assets.summary import print_summary

    print_summary(root, args.snapshot, classifier)


if __name__ == "__main__":
    main()
