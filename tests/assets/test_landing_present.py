"""A dataset already in the atlas against its landing file: a file whose content changed, a corrupt file, an
edited sidecar each fail the partition's run naming what differs (the atlas and its checks stay truthful); a
failed file is named as it landed; a missing landing folder is a typed error."""

import json
import logging
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from test_landing_sensor import tick, write_h5ad

import definitions
from lancell.atlas import RaggedAtlas
from lancell.ingest.landing import ingest_landing_file, read_landing_spec

QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
FINE = {"ingested_cleanly": True, "cell_count_matches": True, "nnz_matches": True, "dataset_consistent": True}


@pytest.fixture
def ingested(tmp_path: Path):
    """``(defs, instance, root)``: dataset ``a`` (a small counts file) landed and ingested."""
    (tmp_path / "landing").mkdir()
    write_h5ad(tmp_path / "landing" / "a.h5ad", seed=1)
    (tmp_path / "landing" / "a.json").write_text(json.dumps({"organism": "Homo sapiens"}))
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        tick(defs, instance)
        first = ingest(defs, instance, "a")
        assert first.success and checks(first) == FINE | {"content_matches": True}
        yield defs, instance, tmp_path


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, uid: str) -> dg.ExecuteInProcessResult:
    job = defs.resolve_job_def("ingest_dataset_job")
    return job.execute_in_process(
        run_config=QUIET, instance=instance, partition_key=uid, raise_on_error=False
    )


def checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def failure(result: dg.ExecuteInProcessResult) -> dg.Failure:
    return result.get_step_failure_events()[0].step_failure_data.user_failure_data


def warnings_of(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]


def test_a_changed_or_corrupt_file_under_an_ingested_dataset_fails_its_run(ingested):
    """A corrected file re-materialized green as ``present`` without a word; a corrupt one crashed with
    h5py's OSError and recorded no check."""
    defs, instance, root = ingested
    path = root / "landing" / "a.h5ad"
    original = path.read_bytes()
    served = RaggedAtlas.open(str(root / "db")).query().to_anndata().X.toarray()
    write_h5ad(path, seed=2)  # other values, same cells
    changed = ingest(defs, instance, "a")
    assert not changed.success and checks(changed) == FINE | {"content_matches": False}
    report = failure(changed)
    assert report.description.startswith("dataset a is in the atlas (left as it was), but ")
    assert "delete the dataset and re-materialize this partition to replace it" in report.description
    assert report.metadata["file"].value == str(path)
    assert any("a.h5ad" in message for message in warnings_of(instance, changed))
    assert np.array_equal(RaggedAtlas.open(str(root / "db")).query().to_anndata().X.toarray(), served)

    path.write_bytes(b"not an hdf5 file" * 64)
    corrupt = ingest(defs, instance, "a")
    assert not corrupt.success and checks(corrupt) == FINE | {"content_matches": False}
    assert failure(corrupt).metadata["error"].value.startswith("IngestError: ")

    path.write_bytes(original)  # the file it was ingested from, landed again
    restored = ingest(defs, instance, "a")
    assert restored.success and checks(restored) == FINE | {"content_matches": True}
    meta = restored.asset_materializations_for_node("dataset_group")[0].metadata
    assert meta["outcome"].value == "present"
    path.unlink()  # removed: the dataset stays, nothing to compare
    removed = ingest(defs, instance, "a")
    assert removed.success and checks(removed) == FINE | {"content_matches": True}


def test_an_edited_sidecar_under_an_ingested_dataset_is_named_and_the_checks_stay_truthful(ingested):
    """An unknown sidecar key failed the run with 'dataset a was not ingested' and every check failed,
    although dataset a was in the atlas and consistent."""
    defs, instance, root = ingested
    (root / "landing" / "a.json").write_text(json.dumps({"organism": "Homo sapiens", "comment": "QC ok"}))
    result = ingest(defs, instance, "a")
    assert not result.success and checks(result) == FINE | {"content_matches": False}
    report = failure(result)
    assert "was not ingested" not in report.description
    assert "a.json: unknown keys ['comment']" in report.description
    assert RaggedAtlas.open(str(root / "db")).list_datasets()["uid"].tolist() == ["a"]
    (root / "landing" / "a.json").write_text(json.dumps({"organism": "Mus musculus"}))  # another option
    other = ingest(defs, instance, "a")
    assert not other.success and checks(other) == FINE | {"content_matches": False}
    # it named two digests only, the same words as for other bytes: now what differs
    assert (
        "its sidecar's options differ (its bytes may too): organism 'Homo sapiens' -> 'Mus musculus'"
        in failure(other).description
    )
    (root / "landing" / "a.json").write_text(json.dumps({"organism": "Homo sapiens"}))
    write_h5ad(root / "landing" / "a.h5ad", seed=2)
    assert (
        "its bytes differ (its sidecar's options are the same)"
        in failure(ingest(defs, instance, "a")).description
    )


def test_a_failed_file_is_named_as_it_landed_and_a_missing_landing_folder_is_a_typed_error(
    tmp_path: Path, monkeypatch
):
    """The failure metadata named ``<landing>/<uid>.h5ad``, not the file whose sidecar gave the uid."""
    landing = tmp_path / "landing"
    landing.mkdir()
    write_h5ad(landing / "upload_2026_12_05.h5ad")
    (landing / "upload_2026_12_05.json").write_text(json.dumps({"uid": "lung_atlas", "var_uid_column": "id"}))
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        tick(defs, instance)
        result = ingest(defs, instance, "lung_atlas")
        assert not result.success
        assert failure(result).metadata["file"].value == str(landing / "upload_2026_12_05.h5ad")
        monkeypatch.setenv("LANCELL_LANDING", str(tmp_path / "landng"))
        missing = ingest(definitions.build_definitions(tmp_path), instance, "lung_atlas")
        error = failure(missing).metadata["error"].value
        assert error.startswith("IngestError: ")
        assert f"landing folder {tmp_path / 'landng'} does not exist or is not a folder" in error


def test_a_dataset_ingested_outside_dagster_is_not_compared_and_says_so(tmp_path: Path):
    (tmp_path / "landing").mkdir()
    write_h5ad(tmp_path / "landing" / "a.h5ad")
    defs = definitions.build_definitions(tmp_path)
    ingest_landing_file(defs.resources["atlas"].open(), read_landing_spec(tmp_path / "landing" / "a.h5ad"))
    with dg.instance_for_test() as instance:
        tick(defs, instance)
        result = ingest(defs, instance, "a")
        assert result.success and checks(result) == FINE | {"content_matches": False}
        (content,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "content_matches"]
        assert content.severity == dg.AssetCheckSeverity.WARN
        assert "this Dagster instance recorded no landing fingerprint" in content.metadata["finding"].value
        assert any("not compared" in message for message in warnings_of(instance, result))


def test_a_file_replaced_while_it_is_ingested_fails_the_run(tmp_path: Path, monkeypatch):
    """The fingerprint and the ingestion read the file one after the other: a corrected upload landing
    between the two was stored under the first version's fingerprint, every check green."""
    import lancell.ingest.landing as landing

    (tmp_path / "landing").mkdir()
    write_h5ad(tmp_path / "landing" / "a.h5ad", seed=1)
    write_h5ad(tmp_path / "a_v2.h5ad", seed=2)
    real = landing.landing_fingerprint

    def fingerprint_then_replace(spec):
        digest = real(spec)
        (tmp_path / "a_v2.h5ad").replace(spec.path)  # the corrected upload lands meanwhile
        return digest

    monkeypatch.setattr(landing, "landing_fingerprint", fingerprint_then_replace)
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        tick(defs, instance)
        result = ingest(defs, instance, "a")
        assert not result.success and checks(result) == FINE | {"content_matches": False}
        assert "changed while it was fingerprinted and ingested" in failure(result).description
        assert "is deleted again (the features it registered" in failure(result).description
        assert RaggedAtlas.open(str(tmp_path / "db")).list_datasets().empty
        monkeypatch.undo()  # the next run ingests the file as it is now, its fingerprint recorded
        again = ingest(defs, instance, "a")
        assert again.success and checks(again) == FINE | {"content_matches": True}


def test_a_flipped_bit_in_a_stored_chunk_fails_dataset_consistent(ingested):
    """Its checks called validate(), which reads no data: a corrupt dataset stayed green and its snapshot
    was labelled."""
    defs, instance, root = ingested
    (shard,) = (root / "arrays").glob("a-*/csr/layers/counts/c/0")
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    shard.write_bytes(bytes(raw))
    result = ingest(defs, instance, "a")
    assert checks(result)["dataset_consistent"] is False
    (consistent,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "dataset_consistent"]
    assert "chunk checksum" in str(consistent.metadata)


def test_a_duplicate_of_a_replaced_dataset_is_run_again_after_it(ingested):
    """A file landed under two names was ingested once (its second partition green as ``duplicate``); once
    the first dataset was replaced, its content was in no dataset and nothing said so. The duplicate's run
    comes after the replacement's, never beside it: run first, it took the content as its own."""
    defs, instance, root = ingested
    landing = root / "landing"
    original = (landing / "a.h5ad").read_bytes()
    (landing / "copy.h5ad").write_bytes(original)
    (landing / "copy.json").write_text((landing / "a.json").read_text())
    first = tick(defs, instance)
    assert [run.partition_key for run in first.run_requests] == ["copy"]
    duplicate = ingest(defs, instance, "copy")
    meta = duplicate.asset_materializations_for_node("dataset_group")[0].metadata
    assert (meta["outcome"].value, meta["duplicate_of"].value) == ("duplicate", "a")

    atlas = RaggedAtlas.open(str(root / "db"))
    atlas.delete_dataset("a")  # the same file landed again: only a's run, whose content it is
    (landing / "a.h5ad").write_bytes(original)
    landed = tick(defs, instance, first.cursor)
    assert [run.partition_key for run in landed.run_requests] == ["a"]
    assert ingest(defs, instance, "a").success
    after = tick(defs, instance, landed.cursor)  # a ingested anew: copy's run follows, a duplicate again
    assert [run.partition_key for run in after.run_requests] == ["copy"]
    assert ingest(defs, instance, "copy").success
    assert RaggedAtlas.open(str(root / "db")).list_datasets()["uid"].tolist() == ["a"]
    assert tick(defs, instance, after.cursor).run_requests == []  # once per ingestion of a

    atlas.delete_dataset("a")  # the documented replacement: delete, land the new file, materialize
    write_h5ad(landing / "a.h5ad", seed=2)
    assert ingest(defs, instance, "a").success
    again = tick(defs, instance, after.cursor)
    assert sorted(run.partition_key for run in again.run_requests) == ["a", "copy"]
    assert ingest(defs, instance, "copy").success
    assert sorted(RaggedAtlas.open(str(root / "db")).list_datasets()["uid"]) == ["a", "copy"]  # stored again


def test_a_run_stopped_during_its_checks_still_tells_the_next_run_what_was_ingested(
    tmp_path: Path, monkeypatch
):
    """A run killed once its dataset was committed (its checks read every chunk: minutes) recorded no
    materialization, so the landing fingerprint was lost: a later changed file passed green with a warning,
    and once removed, the sensor dropped the partition as "never ingested" while the atlas held it."""
    import lancell_assets.datasets as datasets
    from lancell.errors import StoreError
    from lancell_assets import dataset_partitions

    (tmp_path / "landing").mkdir()
    path = tmp_path / "landing" / "a.h5ad"
    write_h5ad(path, seed=1)
    defs = definitions.build_definitions(tmp_path)
    with dg.instance_for_test() as instance:
        cursor = tick(defs, instance).cursor

        def stopped(*args, **kwargs):
            raise StoreError("the process stops here (killed, out of memory)")

        with monkeypatch.context() as patch:
            patch.setattr(datasets, "_checks", stopped)
            assert not ingest(defs, instance, "a").success
        assert "a" not in instance.get_materialized_partitions(dg.AssetKey("dataset_group"))
        assert RaggedAtlas.open(str(tmp_path / "db")).list_datasets()["uid"].tolist() == ["a"]
        write_h5ad(path, seed=2)  # another content lands as "a"
        changed = ingest(defs, instance, "a")
        assert not changed.success and checks(changed) == FINE | {"content_matches": False}
        assert "is not the one it was ingested from" in str(failure(changed).description)
        path.unlink()
        kept = tick(defs, instance, cursor)
        assert not kept.dynamic_partitions_requests  # the atlas holds "a": its partition stays
        assert "a" in instance.get_dynamic_partitions(dataset_partitions.name)
