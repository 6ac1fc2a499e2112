"""What a data engineer relies on: failed ingestion is red and stays red per partition, sensors change the
instance only through their committed result, one bad sidecar marks one file, a custom schema with an
``obs_columns`` map lands a file's own columns, snapshots on demand from the command line show the diff
since the previous one, and loading the definitions imports Dagster only."""

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

import definitions
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, GeneFeature
from lancell.errors import IngestError, SnapshotLabelError
from lancell.ingest.landing import ingest_landing_file, read_landing_spec
from lancell.tables.schema import LancellBaseSchema, SparseZarrPointer
from lancell_assets import (
    dataset_partitions,
    landing_zone_sensor,
    nightly_snapshot_sensor,
    snapshot_partitions,
)
from lancell_assets.automation import nightly_label
from lancell_assets.demo import land_bundled_data
from resources.models import check_label

REPO = Path(__file__).resolve().parents[2]
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
CHECKS = ("ingested_cleanly", "cell_count_matches", "nnz_matches", "dataset_consistent", "content_matches")


class RenamedCells(LancellBaseSchema):
    """A lab's own cell schema: other names than the bundled one."""

    cell_label: str | None = None
    cluster: str | None = None
    gene_expression: SparseZarrPointer | None = None


def _ingest(defs: dg.Definitions, instance: dg.DagsterInstance, uid: str) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("ingest_dataset_job")
    return job.execute_in_process(
        run_config=QUIET, instance=instance, partition_key=uid, raise_on_error=False
    )


def _latest_check_status(instance: dg.DagsterInstance, check: str, partition: str) -> str:
    key = dg.AssetCheckKey(dg.AssetKey("dataset_group"), check)
    history = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
    return next(record.status.value for record in history if record.partition == partition)


def test_a_later_good_partition_leaves_the_bad_partitions_checks_failed(platform):
    defs, instance, root = platform
    shutil.copyfile(BUNDLED[0].path, root / "landing" / "broken.h5ad")
    (root / "landing" / "broken.json").write_text(json.dumps({"zarr_layer": "counts"}))  # floats: not counts
    instance.add_dynamic_partitions(dataset_partitions.name, ["broken", "pbmc68k"])
    bad = _ingest(defs, instance, "broken")
    assert not bad.success
    good = _ingest(defs, instance, "pbmc68k")
    assert good.success and all(c.passed for c in good.get_asset_check_evaluations())
    for check in CHECKS:
        assert _latest_check_status(instance, check, "broken") == "FAILED"
        assert _latest_check_status(instance, check, "pbmc68k") == "SUCCEEDED"
    assert instance.get_materialized_partitions(dg.AssetKey("dataset_group")) == {"pbmc68k"}
    run = instance.get_run_by_id(bad.run_id)
    assert (run.job_name, run.status) == ("ingest_dataset_job", dg.DagsterRunStatus.FAILURE)


def test_nightly_sensor_adds_its_partition_only_through_its_result(platform):
    defs, instance, _ = platform
    label = nightly_label(datetime.now(UTC))
    assert nightly_label(datetime(2026, 5, 4, 1, 59, tzinfo=UTC)) == "nightly-2026-05-03"
    assert nightly_label(datetime(2026, 5, 4, 2, 0, tzinfo=UTC)) == "nightly-2026-05-04"
    result = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert [r.partition_key for r in result.run_requests] == [label]
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in result.dynamic_partitions_requests] == [
        (snapshot_partitions.name, [label])
    ]
    assert instance.get_dynamic_partitions(snapshot_partitions.name) == []  # evaluating changed nothing
    instance.add_dynamic_partitions(snapshot_partitions.name, [label])  # what committing the tick does
    started = _snapshot_run(instance, label, dg.DagsterRunStatus.STARTED)
    again = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert isinstance(again, dg.SkipReason) and "is being taken" in again.skip_message
    instance.report_run_failed(started)  # the night failed: it used to be skipped until the next night
    for attempt in (1, 2):
        retry = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
        assert [(r.run_key, r.partition_key) for r in retry.run_requests] == [
            (f"{label}:retry-{attempt}", label)
        ]
        assert retry.dynamic_partitions_requests == []
        _snapshot_run(instance, label, dg.DagsterRunStatus.FAILURE)
    given_up = nightly_snapshot_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert isinstance(given_up, dg.SkipReason) and "failed 3 times; not retried" in given_up.skip_message


def _snapshot_run(instance: dg.DagsterInstance, label: str, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    """A run record of snapshot_job for ``label`` in ``status`` (what the sensor reads)."""
    return instance.add_run(
        dg.DagsterRun(
            job_name="snapshot_job",
            run_id=str(uuid.uuid4()),
            status=status,
            tags={"dagster/partition": label},
        )
    )


def test_one_bad_sidecar_marks_its_file_only(platform):
    defs, instance, root = platform
    shutil.copyfile(BUNDLED[0].path, root / "landing" / "odd.h5ad")
    (root / "landing" / "odd.json").write_text(json.dumps({"zarr_layr": "counts"}))
    result = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert [r.partition_key for r in result.run_requests] == [
        "celltypist_sample",
        "mouse_10k",
        "odd",
        "pbmc68k",
    ]
    assert instance.get_dynamic_partitions(dataset_partitions.name) == []
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    odd = _ingest(defs, instance, "odd")
    failure = odd.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert failure.metadata["error"].value == (
        f"IngestError: {root / 'landing' / 'odd.json'}: unknown keys ['zarr_layr'] (known: {_sidecar_keys()})"
    )
    assert _ingest(defs, instance, "pbmc68k").success
    assert RaggedAtlas.open(str(root / "db")).list_datasets()["uid"].tolist() == ["pbmc68k"]
    # fixed to name another uid: the new partition is added, the old one (never ingested) removed; an
    # ingested partition whose file goes stays
    (root / "landing" / "odd.json").write_text(json.dumps({"zarr_layer": "counts", "uid": "renamed"}))
    (root / "landing" / "pbmc68k.h5ad").unlink()
    fixed = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    assert [r.partition_key for r in fixed.run_requests] == ["renamed"]
    changes = [(type(r).__name__, list(r.partition_keys)) for r in fixed.dynamic_partitions_requests]
    assert changes == [
        ("AddDynamicPartitionsRequest", ["renamed"]),
        ("DeleteDynamicPartitionsRequest", ["odd"]),
    ]


def test_files_landing_as_one_uid_fail_naming_both_and_an_unreadable_sidecar_marks_its_file(platform):
    """Two files landing as one uid: the first by name was ingested and the other left out without a word.
    A sidecar that is not UTF-8 (or a folder) stopped the whole sensor tick."""
    defs, instance, root = platform
    landing = root / "landing"
    for name in ("x1", "x2"):
        shutil.copyfile(BUNDLED[1].path, landing / f"{name}.h5ad")
        (landing / f"{name}.json").write_text(json.dumps({"uid": "x"}))
    shutil.copyfile(BUNDLED[1].path, landing / "latin.h5ad")
    (landing / "latin.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    result = landing_zone_sensor(dg.build_sensor_context(instance=instance, resources=defs.resources))
    keys = [r.partition_key for r in result.run_requests]
    assert {"x", "latin", "pbmc68k"} <= set(keys)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    both = _ingest(defs, instance, "x")
    error = both.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata["error"].value
    assert "landing files ['x1.h5ad', 'x2.h5ad'] all land as dataset uid 'x'" in error
    latin = _ingest(defs, instance, "latin")
    error = latin.get_step_failure_events()[0].step_failure_data.user_failure_data.metadata["error"].value
    assert "latin.json: not valid JSON" in error
    db = root / "db"
    assert not db.exists() or RaggedAtlas.open(str(db)).list_datasets().empty


def test_a_present_partition_whose_file_was_removed_stays_materialized(platform):
    defs, instance, root = platform
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k"])
    assert _ingest(defs, instance, "pbmc68k").success
    (root / "landing" / "pbmc68k.h5ad").unlink()
    again = _ingest(defs, instance, "pbmc68k")
    assert again.success and all(c.passed for c in again.get_asset_check_evaluations())


def _sidecar_keys() -> list[str]:
    return [
        "accession",
        "csc",
        "feature_space",
        "genome",
        "layers",
        "name",
        "obs_columns",
        "organism",
        "source",
        "standardize",
        "symbol_column",
        "uid",
        "var_uid_column",
        "zarr_layer",
    ]


def test_custom_schema_and_obs_columns_land_the_files_own_columns(platform, monkeypatch):
    _, instance, root = platform
    monkeypatch.setenv("LANCELL_CELL_SCHEMA", f"{__name__}:RenamedCells")
    defs = definitions.build_definitions(root)
    sidecar = root / "landing" / "pbmc68k.json"
    options = json.loads(sidecar.read_text()) | {
        "obs_columns": {"cell_type": "cell_label", "louvain": "cluster"}
    }
    sidecar.write_text(json.dumps(options))
    instance.add_dynamic_partitions(dataset_partitions.name, ["pbmc68k"])
    result = _ingest(defs, instance, "pbmc68k")
    assert result.success
    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("dataset_group")[0].metadata.items()
    }
    assert meta["obs_columns"] == {"cell_type": "cell_label", "louvain": "cluster"}
    assert meta["dropped_obs_columns"] == ["n_counts", "organism"]
    assert meta["dagster/row_count"] == 700
    columns = [c.name for c in meta["dagster/column_schema"].columns]
    assert "cell_label" in columns and "cluster" in columns and "cell_type" not in columns
    atlas = RaggedAtlas.open(str(root / "db"))
    source = BUNDLED[0].read()
    cells = atlas.query().to_pandas()
    assert cells["cell_label"].astype(str).tolist() == source.obs["cell_type"].astype(str).tolist()
    assert cells["cluster"].astype(str).tolist() == source.obs["louvain"].astype(str).tolist()


def test_sidecar_layers_and_renames_are_checked(tmp_path: Path):
    path = tmp_path / "a.h5ad"
    (tmp_path / "a.json").write_text(json.dumps({"layers": {"counts": "raw"}}))
    spec = read_landing_spec(path)
    assert dict(spec.layers) == {"counts": "raw"}
    (tmp_path / "a.json").write_text(json.dumps({"layers": {"counts": "raw", "log_normalized": "X"}}))
    assert dict(read_landing_spec(path).layers) == {"counts": "raw", "log_normalized": "X"}
    (tmp_path / "a.json").write_text(json.dumps({"layers": {}}))
    with pytest.raises(IngestError, match=r"a\.json: layers must map stored layer names to their AnnData"):
        read_landing_spec(path)
    (tmp_path / "a.json").write_text(json.dumps({"layers": {"counts": "X"}, "zarr_layer": "counts"}))
    with pytest.raises(IngestError, match=r"a\.json: give layers or zarr_layer, not both"):
        read_landing_spec(path)
    (tmp_path / "a.json").write_text(json.dumps({"obs_columns": ["cell_type"]}))
    with pytest.raises(IngestError, match="obs_columns must map file columns to cell schema columns"):
        read_landing_spec(path)
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        RenamedCells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    land_bundled_data(tmp_path / "landing")
    spec = read_landing_spec(tmp_path / "landing" / "pbmc68k.h5ad")
    bad = type(spec)(**{**spec.__dict__, "obs_columns": {"cell_type": "cell_type"}})
    with pytest.raises(
        IngestError, match=r"obs_columns targets \['cell_type'\] are not columns of the cell schema"
    ):
        ingest_landing_file(atlas, bad)
    no_layer = type(spec)(**{**spec.__dict__, "zarr_layer": None, "layers": {"counts": "nonexistent"}})
    with pytest.raises(  # it said "not in []"
        IngestError,
        match=r"layers to store name \['nonexistent'\], which the file does not hold: a layer's source",
    ):
        ingest_landing_file(atlas, no_layer)
    assert atlas.list_datasets().empty


def test_snapshot_on_demand_from_the_command_line_shows_the_diff(tmp_path: Path, monkeypatch):
    home, root = tmp_path / "dagster_home", tmp_path / "atlas"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    land_bundled_data(root / "landing")
    env = {**os.environ, "DAGSTER_HOME": str(home), "LANCELL_ROOT": str(root), "LANCE_LOG": "error"}
    atlas = definitions.build_definitions(root).resources["atlas"].open()

    def run(label: str, environment: dict[str, str] = env) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lancell_assets.take_snapshot", label, "--no-train"]
        return subprocess.run(command, env=environment, cwd=REPO, capture_output=True, text=True, check=False)

    def take(label: str) -> str:
        done = run(label)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(" (run ")[0] + done.stdout.strip().split(")")[-1]

    ingest_landing_file(atlas, read_landing_spec(root / "landing" / "pbmc68k.h5ad"))
    assert take("first") == (
        "snapshot 'first': version 0, 700 cells; since snapshot None: datasets added ['pbmc68k'], "
        "removed [], changed [], cells added 700, features added {'gene_expression': 765}"
    )
    ingest_landing_file(atlas, read_landing_spec(root / "landing" / "celltypist_sample.h5ad"))
    new_features = len(atlas.feature_registry("gene_expression")) - 765
    assert take("second") == (
        "snapshot 'second': version 1, 1259 cells; since snapshot 0: datasets added ['celltypist_sample'], "
        f"removed [], changed [], cells added 559, features added {{'gene_expression': {new_features}}}"
    )
    # a dataset replaced under its uid (other values, same cells) was reported as no change at all
    atlas.delete_dataset("pbmc68k")
    spec = read_landing_spec(root / "landing" / "pbmc68k.h5ad")
    ingest_landing_file(atlas, type(spec)(**{**spec.__dict__, "csc": not spec.csc}))
    assert take("third") == (
        "snapshot 'third': version 2, 1259 cells; since snapshot 1: datasets added [], removed [], "
        "changed ['pbmc68k'], cells added 0, features added {'gene_expression': 0}"
    )
    # a label that cannot name the snapshot's model files is refused before anything is added or taken
    # ("x/../first" overwrote partition first's model; an absolute label wrote outside the model store)
    refused = run("x/../first")
    assert refused.returncode == 1
    assert refused.stderr.startswith("SnapshotLabelError: snapshot label"), refused.stderr
    for label in ("/tmp/elsewhere", "", ".hidden", "a" * 201):  # the same check, without a process each
        with pytest.raises(SnapshotLabelError, match="snapshot label"):
            check_label(label)
    # a failed run's line names the asset's own error, not Dagster's wrapper of it
    failed = run("fourth", {**env, "LANCELL_ROOT": str(tmp_path / "nowhere"), "LANCELL_CREATE_ATLAS": "0"})
    assert failed.returncode == 1
    (line,) = failed.stderr.strip().splitlines()  # one line, not Dagster's step failure with its traceback
    assert "failed: lancell.errors.AtlasNotFoundError: AtlasResource.db_uri: no atlas at " in line, line
    assert "nowhere" in line and "Nothing was created" in line, line
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(snapshot_partitions.name) == [
            "first",
            "second",
            "third",
            "fourth",
        ]
        runs = instance.get_runs()
        assert {(r.job_name, r.tags["dagster/partition"], r.status) for r in runs} == {
            ("snapshot_job", "first", dg.DagsterRunStatus.SUCCESS),
            ("snapshot_job", "second", dg.DagsterRunStatus.SUCCESS),
            ("snapshot_job", "third", dg.DagsterRunStatus.SUCCESS),
            ("snapshot_job", "fourth", dg.DagsterRunStatus.FAILURE),
        }


def test_loading_the_definitions_imports_dagster_only():
    code = (
        "import sys, time\n"
        "started = time.perf_counter()\n"
        "import definitions\n"
        "seconds = time.perf_counter() - started\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'lancell', 'lancedb', 'lance', 'torch', 'zarr', 'numba', 'anndata', 'obstore'})\n"
        "print(f'{seconds:.2f}', heavy)\n"
    )
    seconds = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
        )
        value, heavy = done.stdout.split(" ", 1)
        assert heavy.strip() == "[]"
        seconds.append(float(value))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dagster"], cwd=REPO, check=True)
    dagster_alone = time.perf_counter() - started
    print(
        f"\n`import definitions` in a fresh process: {', '.join(f'{s:.2f}' for s in seconds)} s; "
        f"`import dagster` alone (process included): {dagster_alone:.2f} s"
    )


def test_the_model_store_writes_only_under_its_folder(tmp_path: Path):
    """A partition added by hand (in the UI) reaches the model store unchecked by take_snapshot."""
    from resources.models import ModelStore

    store = ModelStore(path=str(tmp_path / "models"))
    for label in ("x/../first", str(tmp_path / "outside"), "..", "a\nb"):
        with pytest.raises(SnapshotLabelError, match="snapshot label"):
            store.save("classifier", label, {})
    assert list(tmp_path.iterdir()) == []
    assert store.save("classifier", "first", {}) == tmp_path / "models" / "classifier" / "first.pt"


def test_a_model_save_stopped_midway_keeps_the_earlier_model(tmp_path: Path, monkeypatch):
    """Re-training a partition wrote its file in place: a run killed while torch.save wrote left the earlier
    good model half overwritten (torch.load failed), its materialization still pointing at it."""
    import torch

    from resources.models import ModelStore

    store = ModelStore(path=str(tmp_path / "models"))
    path = store.save("classifier", "first", {"weights": torch.arange(4)})
    save = torch.save

    def stopped(state, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", stopped)
    with pytest.raises(OSError, match="No space left"):
        store.save("classifier", "first", {"weights": torch.arange(8)})
    monkeypatch.setattr(torch, "save", save)
    assert torch.equal(torch.load(path)["weights"], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["first.pt"]  # nothing left beside it


def test_a_run_whose_process_was_killed_is_failed_and_its_slot_freed(tmp_path: Path, monkeypatch):
    """A SIGKILLed take_snapshot left its run STARTED holding the lancedb_writer slot: every later writing
    step waited forever. Such a run (its worker process gone) is failed and its slots freed; a run whose
    process lives, or of another machine, boot or namespace (nothing tells if it lives), is left alone."""
    from lancell_assets.dead_runs import WORKER_TAG, fail_dead_runs, worker_tags

    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    code = "from lancell_assets.dead_runs import WORKER_TAG, worker_tags; print(worker_tags()[WORKER_TAG])"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    dead_worker = done.stdout.strip()
    mine = json.loads(worker_tags()[WORKER_TAG])
    boot, ticks = mine["started"].rsplit(":", 1)
    gone = json.loads(dead_worker)
    workers = {
        "dead": dead_worker,
        "alive": json.dumps(mine),
        # this process's id, an earlier start: the process that had it is gone
        "reused id": json.dumps(mine | {"started": f"{boot}:{int(ticks) - 1}"}),
        "other namespace": json.dumps(gone | {"namespace": "1"}),  # nothing tells whether it lives
        "other host": json.dumps(gone | {"host": "elsewhere"}),
        # a machine of the same name: nothing tells; this machine before a reboot: gone
        "other machine": json.dumps(gone | {"started": "another-boot:1", "machine": "another machine"}),
        "before a reboot": json.dumps(mine | {"started": "another-boot:1"}),
        "not ours": "host:1:2",
    }
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("lancedb_writer", 1)
        runs = {}
        for name, worker in workers.items():
            run = dg.DagsterRun(
                job_name="ingest_dataset_job",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.STARTED,
                tags={WORKER_TAG: worker},
            )
            instance.add_run(run)
            runs[name] = run.run_id
        assert storage.claim_concurrency_slot("lancedb_writer", runs["dead"], "feature_registry").is_claimed
        failed = [runs["dead"], runs["reused id"], runs["before a reboot"]]
        assert sorted(fail_dead_runs(instance)) == sorted(failed)
        status = {name: instance.get_run_by_id(run_id).status for name, run_id in runs.items()}
        assert status == {
            "dead": dg.DagsterRunStatus.FAILURE,
            "alive": dg.DagsterRunStatus.STARTED,
            "reused id": dg.DagsterRunStatus.FAILURE,
            "other namespace": dg.DagsterRunStatus.STARTED,
            "other host": dg.DagsterRunStatus.STARTED,
            "other machine": dg.DagsterRunStatus.STARTED,
            "before a reboot": dg.DagsterRunStatus.FAILURE,
            "not ours": dg.DagsterRunStatus.STARTED,
        }
        assert storage.get_concurrency_info("lancedb_writer").claimed_slots == []
        assert storage.claim_concurrency_slot("lancedb_writer", runs["alive"], "feature_registry").is_claimed
        assert fail_dead_runs(instance) == []


def test_a_cli_run_holding_the_writers_slot_is_named_and_failed_on_request(
    tmp_path: Path, monkeypatch, caplog
):
    """A SIGKILLed `dagster job execute` run kept the lancedb_writer slot: take_snapshot then waited forever
    and printed nothing (such runs carry no worker tag: nothing can tell they are dead)."""
    from lancell.errors import ArgumentValueError
    from lancell_assets import take_snapshot as command
    from lancell_assets.dead_runs import WORKER_TAG, fail_runs, slot_holders, worker_tags
    from lancell_assets.pools import WRITER_POOL

    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(WRITER_POOL, 1)
        cli_run = dg.DagsterRun(
            job_name="rebuild_atlas_job", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED
        )
        instance.add_run(cli_run)
        assert storage.claim_concurrency_slot(WRITER_POOL, cli_run.run_id, "feature_registry").is_claimed
        assert [run.run_id for run in slot_holders(instance, WRITER_POOL)] == [cli_run.run_id]

        class Job:  # the snapshot job itself is not run here: what it would wait for is named first
            def execute_in_process(self, **kwargs):
                return kwargs["partition_key"]

        class Defs:
            def resolve_job_def(self, name):
                return Job()

        with caplog.at_level("WARNING", logger=command.__name__):
            assert command.take_snapshot(Defs(), instance, "s1", train=False) == "s1"
        assert f"run {cli_run.run_id} (rebuild_atlas_job, STARTED) holds a 'lancedb_writer'" in caplog.text
        assert f"--fail-run {cli_run.run_id}" in caplog.text
        with pytest.raises(ArgumentValueError, match="no such run"):  # every one checked first
            fail_runs(instance, [cli_run.run_id, "no-such-run"])
        assert instance.get_run_by_id(cli_run.run_id).status == dg.DagsterRunStatus.STARTED
        alive = dg.DagsterRun(
            job_name="snapshot_job",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags=worker_tags(),  # this very process: alive
        )
        instance.add_run(alive)
        assert WORKER_TAG in alive.tags
        with pytest.raises(ArgumentValueError, match="is alive on this machine"):
            fail_runs(instance, [alive.run_id])
        assert command.main(["s1", "--no-train", "--fail-run", "no-such-run"]) == 1  # nothing run
        fail_runs(instance, [cli_run.run_id])
        assert instance.get_run_by_id(cli_run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert storage.get_concurrency_info(WRITER_POOL).claimed_slots == []
        with pytest.raises(ArgumentValueError, match=r"it has finished \(FAILURE\)"):
            fail_runs(instance, [cli_run.run_id])


def test_a_failure_line_names_the_assets_own_error_not_the_one_it_was_raised_from():
    """Following the chain to its end printed the store's raw OSError instead of the StoreError naming
    the table and location."""
    from lancell.errors import StoreError
    from lancell_assets.take_snapshot import _cause

    @dg.asset
    def store_fails():
        try:
            raise OSError("Generic S3 error: request failed\n\nDebug source: Reqwest { retries: 10 }")
        except OSError as exc:
            raise StoreError("cannot read table 'cells' at s3://bucket/atlas/db: request failed") from exc

    result = dg.materialize([store_fails], raise_on_error=False)
    (failure,) = result.get_step_failure_events()
    assert _cause(failure.event_specific_data.error) == (
        "lancell.errors.StoreError: cannot read table 'cells' at s3://bucket/atlas/db: request failed"
    )


def test_the_demo_empties_only_its_own_folders(tmp_path: Path, monkeypatch):
    """``make demo`` with DAGSTER_HOME exported deleted that instance (its run history), and any ROOT given
    (landing files included), before anything else ran."""
    from lancell_assets import demo

    home, root = tmp_path / "lab_home", tmp_path / "lab_root"
    (home / "history").mkdir(parents=True)
    (root / "landing").mkdir(parents=True)
    (home / "history" / "runs.db").write_text("runs")
    (root / "landing" / "donor1.h5ad").write_text("raw")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with pytest.raises(SystemExit, match=r"ROOT .*lab_root holds files the demo did not make"):
        demo.main([str(root)])
    (root / "landing" / "donor1.h5ad").unlink()
    (root / "landing").rmdir()  # an empty root is the demo's to fill; the home still holds the user's runs
    with pytest.raises(SystemExit, match=r"DAGSTER_HOME .*lab_home holds files the demo did not make"):
        demo.main([str(root)])
    assert (home / "history" / "runs.db").read_text() == "runs"
    assert list(root.iterdir()) == []  # nothing done before both were checked
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match="a_file is a file"):
        demo.main([str(tmp_path / "a_file")])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "new_home"))
    with pytest.raises(SystemExit, match="must not hold one another"):  # (emptying one emptied the other)
        demo.main([str(tmp_path / "new_home" / "atlas")])


def test_the_instance_settings_purge_idle_sensor_ticks_after_a_day(tmp_path: Path) -> None:
    """Each tick stores its sensor's cursor (the landing sensor's grows with the datasets), and an idle
    landing sensor ticks every 30 s: Dagster kept those skipped ticks 7 days."""
    from dagster._core.scheduler.instigation import InstigatorType, TickStatus

    shutil.copyfile(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        kept = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        assert kept[TickStatus.SKIPPED] == 1 and kept[TickStatus.SUCCESS] == -1
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
