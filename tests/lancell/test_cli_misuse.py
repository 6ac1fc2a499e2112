"""The command line refuses misuse with one line and leaves the atlas as it was: options that would be
ignored, files and folders that cannot be written, sidecar values of the wrong type, several files of which
one is bad."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell import cli
from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError, LancellWarning
from lancell.ingest.landing_spec import read_landing_spec
from tests.lancell.test_cli import LANCELL, run
from tests.lancell.test_cli_tenx import V3_DIR, V3_H5

DATA = Path(__file__).resolve().parents[2] / "data"


def _write(path: Path, genes: list[str], sidecar: dict | None = None) -> Path:
    x = sp.csr_matrix(np.arange(1, 2 * len(genes) + 1, dtype=np.int32).reshape(2, len(genes)))
    obs = pd.DataFrame(index=[f"{path.stem}-a", f"{path.stem}-b"])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=genes)).write_h5ad(path)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


@pytest.fixture
def db(tmp_path: Path) -> str:
    db = str(tmp_path / "db")
    run("init", db)
    return db


def _registry(db: str) -> list[str]:
    return sorted(RaggedAtlas.open(db).core.tables.registry("gene_expression").to_pandas()["uid"])


def _unchanged(db: str) -> None:
    assert "0 datasets, 0 cells" in run("ls", db).stdout
    assert _registry(db) == []


def test_query_of_features_registered_without_organism_is_written(tmp_path: Path, db: str) -> None:
    """An all-null text column of the registry (no organism given) used to stop write_h5ad and leave a
    half-written file at -o."""
    run("ingest", db, str(_write(tmp_path / "plain.h5ad", ["G1", "G2", "G3"])))
    out = tmp_path / "out.h5ad"
    run("query", db, "--layer", "counts", "-o", str(out))
    written = ad.read_h5ad(out)
    assert written.var_names.tolist() == ["G1", "G2", "G3"]
    assert written.var["organism"].isna().all()
    np.testing.assert_array_equal(written.X.toarray(), [[1, 2, 3], [4, 5, 6]])
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial file


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--ignore-case"], "--ignore-case applies to --features"),
        (
            ["--layer", "protein:counts", "--feature-space", "gene_expression", "--features", "G1"],
            "reads feature space 'protein', --feature-space names 'gene_expression': a query reads one",
        ),
        (["-o", "{tmp}"], "is a folder, not a file"),
        (["-o", "{tmp}/no/such/q.h5ad"], "does not exist"),
        (["--features", "G1, G2 ,,"], "an empty feature name in 'G1, G2 ,,' (name 3)"),  # (was dropped)
    ],
)
def test_query_command_lines_that_cannot_work_are_refused_first(tmp_path, db, options, message) -> None:
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    options = options if "-o" in options else [*options, "-o", str(tmp_path / "q.h5ad")]
    refused = run("query", db, "--layer", "counts", *options, check=False)
    assert refused.returncode == 2 and message in refused.stderr
    assert refused.stderr.startswith("usage: lancell query")  # the command's usage, not lancell's
    assert not (tmp_path / "q.h5ad").exists()
    out = str(tmp_path / "q.h5ad")
    without_layer = run("query", db, "--feature-space", "protein", "-o", out, check=False)
    assert without_layer.returncode == 2 and "applies to --features and --layer" in without_layer.stderr
    unknown = run("query", db, "-o", out, "--bogus", check=False)  # lancell's usage named only the commands
    assert unknown.returncode == 2 and unknown.stderr.startswith("usage: lancell query")
    assert "lancell query: error: unrecognized arguments: --bogus" in unknown.stderr
    before = run("--bogus", "query", db, "-o", out, check=False)  # lancell's own option, not the command's
    assert before.returncode == 2 and "lancell: error: unrecognized arguments: --bogus" in before.stderr


@pytest.mark.parametrize("hours", ["-5", "nan", "inf", "1e300", "soon"])
def test_vacuum_grace_must_be_a_finite_number_of_hours(db: str, hours: str) -> None:
    refused = run("vacuum", db, "--grace-hours", hours, check=False)
    assert refused.returncode == 2 and "--grace-hours" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("soon", "not a number of hours"),
        ("-5", "at least 0"),
        ("1e300", "must be at most 23,999,999,976 hours"),
    ],
)
def test_a_grace_is_refused_for_what_is_wrong_with_it(text: str, said: str) -> None:
    """1e300 was "not a number of hours": a number, too large for a time span."""
    from lancell.cli_arguments import hours

    with pytest.raises(argparse.ArgumentTypeError, match=said):
        hours(text)


@pytest.mark.parametrize(
    ("sidecar", "message"),
    [
        ({"uid": 123}, "uid must be a non-empty string, got 123"),
        ({"uid": None}, "uid must be a non-empty string, got None"),
        ({"organism": ["human"]}, "organism must be a non-empty string or null"),
        ({"name": 5}, "name must be a non-empty string or null"),
        ({"symbol_column": "symbl"}, "symbol_column 'symbl' is not a column of var"),
        ({"var_uid_column": "ids"}, "var_uid_column 'ids' is not a column of var"),
        ({"feature_space": "protein"}, "unknown feature space 'protein'"),
        ({"uid": "x" * 300}, "is 300 bytes long; at most 200"),
        ({"uid": "a:b"}, "contains ':'"),
    ],
)
def test_bad_sidecar_values_are_one_line_and_register_nothing(tmp_path, db, sidecar, message) -> None:
    path = _write(tmp_path / "f.h5ad", ["LEAK1", "LEAK2"], sidecar)
    refused = run("ingest", db, str(path), check=False)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1 and message in refused.stderr
    _unchanged(db)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--layers", "a=X"], "layer 'a' is not allowed in feature space 'gene_expression'"),
        (["--layer", "raw_counts"], "layer 'raw_counts' is not allowed"),
        (["--obs-columns", "cell_type=louvain,louvain"], "obs_columns give ['louvain'] twice"),
    ],
)
def test_ingest_options_that_cannot_work_register_nothing(tmp_path, db, options, message) -> None:
    """A refused layer or obs rename registered the file's features first (the registry changed)."""
    adata = ad.read_h5ad(_write(tmp_path / "f.h5ad", ["LEAK1", "LEAK2"]))
    adata.obs["cell_type"], adata.obs["louvain"] = "T", "1"
    adata.write_h5ad(tmp_path / "f.h5ad")
    refused = run("ingest", db, str(tmp_path / "f.h5ad"), *options, check=False)
    assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    _unchanged(db)


def test_obs_columns_on_the_command_line_replace_the_sidecars(tmp_path: Path, db: str) -> None:
    """The sidecar's renames were merged with the command line's: a wrong one in the sidecar stayed."""
    path = _write(tmp_path / "f.h5ad", ["G1", "G2"], {"obs_columns": {"nope": "cell_type"}})
    adata = ad.read_h5ad(path)
    adata.obs["kind"] = "T"
    adata.write_h5ad(path)
    assert "the obs columns to rename ['nope']" in run("ingest", db, str(path), check=False).stderr
    run("ingest", db, str(path), "--obs-columns", "kind=cell_type")
    assert RaggedAtlas.open(db).query().to_pandas()["cell_type"].tolist() == ["T", "T"]


def test_options_for_a_dataset_already_in_the_atlas_are_warned_unused(tmp_path: Path, db: str) -> None:
    """A typo in --obs-columns or --organism passed silently once the dataset was in the atlas."""
    path = _write(tmp_path / "f.h5ad", ["G1", "G2"])
    run("ingest", db, str(path))
    again = run("ingest", db, str(path), "--obs-columns", "cell_typo", "--organism", "martian")
    assert "f: already in the atlas" in again.stdout
    assert "warning: f: --obs-columns, --organism not used: the dataset is in the atlas" in again.stderr


def test_another_file_on_a_stored_uid_is_an_error_and_delete_makes_room(tmp_path: Path, db: str) -> None:
    """Two studies' sample1.h5ad: the second was reported "already in the atlas" (the first's summary) and
    the command exited 0, its cells never read; the CLI had no command to delete a dataset."""
    (tmp_path / "study_a").mkdir()
    (tmp_path / "study_b").mkdir()
    first = _write(tmp_path / "study_a" / "sample1.h5ad", ["G1", "G2"])
    second = _write(tmp_path / "study_b" / "sample1.h5ad", ["G1", "G3"])
    run("ingest", db, str(first))
    clash = run("ingest", db, str(second), check=False)
    assert clash.returncode == 1 and "already in the atlas" not in clash.stdout
    assert f"ingested from another file, {first} (this one was not read)" in clash.stderr
    assert (
        "sample1: already in the atlas" in run("ingest", db, str(first)).stdout
    )  # the same file: idempotent
    missing = run("delete", db, "sample1", "nope", check=False)  # every uid checked first
    assert missing.returncode == 1 and "no dataset 'nope' in the atlas: nothing deleted" in missing.stderr
    assert "sample1: deleted" in run("delete", db, "sample1").stdout
    run("ingest", db, str(second))
    assert _registry(db) == ["G1", "G2", "G3"]
    assert RaggedAtlas.open(db).list_datasets()["source"].tolist() == [str(second)]


def test_files_whose_sidecars_state_other_sources_are_told_apart(tmp_path: Path, db: str) -> None:
    """Two studies' sample1.h5ad, each with a sidecar ``source``: the second was "already in the atlas",
    exit 0, its cells never read (a sidecar's source is no path to compare)."""
    for study in ("study_a", "study_b"):
        (tmp_path / study).mkdir()
        genes = ["G1", "G2"] if study == "study_a" else ["G1", "G3"]
        _write(tmp_path / study / "sample1.h5ad", genes, {"source": f"GEO {study}"})
    run("ingest", db, str(tmp_path / "study_a" / "sample1.h5ad"))
    clash = run("ingest", db, str(tmp_path / "study_b" / "sample1.h5ad"), check=False)
    assert clash.returncode == 1
    assert "another file, source 'GEO study_a' (this file's sidecar says 'GEO study_b')" in clash.stderr
    again = run("ingest", db, str(tmp_path / "study_a" / "sample1.h5ad"))  # the same file: idempotent
    assert "sample1: already in the atlas" in again.stdout


def test_a_file_without_a_source_is_told_apart_from_one_whose_sidecar_stated_one(
    tmp_path: Path, db: str
) -> None:
    """The first study's sidecar stated a source (a label, no absolute path), the second's file none: it was
    "already in the atlas", exit 0, its cells never read."""
    for study in ("study_a", "study_b"):
        (tmp_path / study).mkdir()
    _write(tmp_path / "study_a" / "sample1.h5ad", ["G1", "G2"], {"source": "lab/a/sample1.h5ad"})
    _write(tmp_path / "study_b" / "sample1.h5ad", ["G1", "G3"])
    run("ingest", db, str(tmp_path / "study_a" / "sample1.h5ad"))
    clash = run("ingest", db, str(tmp_path / "study_b" / "sample1.h5ad"), check=False)
    assert clash.returncode == 1 and "already in the atlas (" not in clash.stdout
    assert "another file, source 'lab/a/sample1.h5ad' (this file's sidecar states none" in clash.stderr
    again = run("ingest", db, str(tmp_path / "study_a" / "sample1.h5ad"))  # the same file: idempotent
    assert "sample1: already in the atlas" in again.stdout


def test_a_relative_path_is_told_apart_from_another_folder(tmp_path: Path, db: str) -> None:
    """A source recorded as typed (sample1.h5ad) named another study's file from its folder: that file passed
    as "already in the atlas", and the same file given from elsewhere was refused."""
    for study, genes in (("study_a", ["G1", "G2"]), ("study_b", ["G1", "G3"])):
        (tmp_path / study).mkdir()
        _write(tmp_path / study / "sample1.h5ad", genes)

    def ingest(folder: str, path: str) -> subprocess.CompletedProcess[str]:
        command = [str(LANCELL), "ingest", db, path]
        return subprocess.run(command, cwd=tmp_path / folder, capture_output=True, text=True, timeout=300)

    assert ingest("study_a", "sample1.h5ad").returncode == 0
    other = ingest("study_b", "sample1.h5ad")
    assert other.returncode == 1 and f"another file, {tmp_path / 'study_a' / 'sample1.h5ad'}" in other.stderr
    same = ingest("study_b", "../study_a/sample1.h5ad")
    assert same.returncode == 0 and "sample1: already in the atlas" in same.stdout


def test_a_folder_of_geo_prefixed_10x_files_is_told_how_to_lay_them_out(tmp_path: Path, capsys) -> None:
    """It was told to give its .h5ad files (write an AnnData store first)."""
    db = str(tmp_path / "db")
    assert cli.main(["init", db]) == 0
    series = tmp_path / "GSE1"
    series.mkdir()
    for name in ("matrix.mtx.gz", "barcodes.tsv.gz", "features.tsv.gz"):
        shutil.copyfile(V3_DIR / name, series / f"GSM1_{name}")
    assert cli.main(["ingest", db, str(series)]) == 1
    assert "10x files with GEO's sample prefixes (GSM1_matrix.mtx.gz): put each" in capsys.readouterr().err


def test_folders_and_files_are_named_for_what_they_are(tmp_path: Path, db: str) -> None:
    """A 10x output folder was told to give its *.h5ad files (it has none); ls of a file said it could not
    create a store folder."""
    tenx = tmp_path / "filtered_feature_bc_matrix"
    tenx.mkdir()
    (tenx / "matrix.mtx.gz").write_bytes(b"")
    refused = run("ingest", db, str(tenx), check=False)  # read as the 10x output it is: what it lacks
    assert (
        refused.returncode == 1 and "no features file (features.tsv[.gz] or genes.tsv[.gz])" in refused.stderr
    )
    outs = tmp_path / "run7" / "outs"  # a Cell Ranger output's outs folder itself: its matrices named
    outs.mkdir(parents=True)
    shutil.copyfile(V3_H5, outs / "filtered_feature_bc_matrix.h5")
    refused = run("ingest", db, str(outs), check=False)
    assert f"give its matrices, e.g. {outs / 'filtered_feature_bc_matrix.h5'}" in refused.stderr
    no_matrix = tmp_path / "run9"  # a 10x folder without its matrix: what it lacks
    shutil.copytree(V3_DIR, no_matrix)
    (no_matrix / "matrix.mtx.gz").unlink()
    refused = run("ingest", db, str(no_matrix), check=False)
    assert "it holds a 10x output's barcodes or features but no matrix.mtx or matrix.mtx.gz" in refused.stderr
    named_outs = tmp_path / "results" / "outs"  # a folder merely named outs: its .h5ad files named
    named_outs.mkdir(parents=True)
    _write(named_outs / "s1.h5ad", ["G1"])
    refused = run("ingest", db, str(named_outs), check=False)
    assert (
        f"give the files, e.g. {named_outs / '*.h5ad'}" in refused.stderr
        and "Cell Ranger out" not in refused.stderr
    )
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("")
    refused = run("ingest", db, str(other), check=False)
    assert (
        "is a folder: ingest takes .h5ad files, Cell Ranger .h5 files and 10x Matrix Market" in refused.stderr
    )
    (tmp_path / "notes.h5ad").write_text("not HDF5")
    not_tenx = run("ingest", db, str(tmp_path / "notes.h5ad"), check=False)
    assert not_tenx.returncode == 1 and "cannot read" in not_tenx.stderr and "10x" not in not_tenx.stderr
    _unchanged(db)
    listed = run("ls", str(_write(tmp_path / "f.h5ad", ["G1"])), check=False)
    assert listed.returncode == 1 and "no atlas at" in listed.stderr and "(a file)" in listed.stderr


def test_an_h5ad_of_several_10x_feature_types_is_warned_about(tmp_path: Path, db: str) -> None:
    """Following the old remedy (read_10x(path).write_h5ad) stored a CITE-seq run's antibodies as genes."""
    path = _write(tmp_path / "cite.h5ad", ["G1", "A1"])
    adata = ad.read_h5ad(path)
    adata.var["feature_type"] = ["Gene Expression", "Antibody Capture"]
    adata.write_h5ad(path)
    ingested = run("ingest", db, str(path))
    assert (
        "var['feature_type'] holds 10x feature types ['Antibody Capture', 'Gene Expression']"
        in ingested.stderr
    )
    biotypes = _write(tmp_path / "cxg.h5ad", ["G2", "G3"])  # CELLxGENE's feature_type: gene biotypes
    adata = ad.read_h5ad(biotypes)
    adata.var["feature_type"] = ["protein_coding", "lncRNA"]
    adata.write_h5ad(biotypes)
    assert "feature_type" not in run("ingest", db, str(biotypes)).stderr


def test_every_sidecar_is_checked_before_the_first_file_is_ingested(tmp_path: Path, db: str) -> None:
    good = _write(tmp_path / "good.h5ad", ["G1", "G2"])
    bad = _write(tmp_path / "bad.h5ad", ["G3"], {"zarr_layr": "counts"})
    refused = run("ingest", db, str(good), str(bad), check=False)
    assert refused.returncode == 1 and "unknown keys ['zarr_layr']" in refused.stderr
    assert refused.stdout == ""
    _unchanged(db)
    # and its layer (the first file was ingested, then the second refused)
    _write(tmp_path / "bad.h5ad", ["G3"], {"zarr_layer": "nope"})
    refused = run("ingest", db, str(good), str(bad), check=False)
    assert refused.returncode == 1 and "bad.h5ad (dataset 'bad'): layer 'nope'" in refused.stderr
    assert refused.stdout == ""
    _unchanged(db)


def test_keep_going_ingests_the_files_that_can_be_and_exits_1_naming_the_others(
    tmp_path: Path, db: str
) -> None:
    """Each kind of failure (a sidecar, a layer its space lacks, a file that cannot be read) is reported by
    file and passed over; the other files are ingested; the exit status says that some failed."""
    first = _write(tmp_path / "first.h5ad", ["G1", "G2"])
    sidecar = _write(tmp_path / "sidecar.h5ad", ["G3"], {"zarr_layr": "counts"})
    layer = _write(tmp_path / "layer.h5ad", ["G4"], {"zarr_layer": "nope"})
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(_write(tmp_path / "whole.h5ad", ["G5"]).read_bytes()[:4000])  # cut short
    last = _write(tmp_path / "last.h5ad", ["G6"])
    files = [str(p) for p in (first, sidecar, layer, broken, last)]
    went_on = run("ingest", db, *files, "--keep-going", check=False)
    assert went_on.returncode == 1
    errors = [line for line in went_on.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 4, went_on.stderr
    assert "sidecar.json: unknown keys ['zarr_layr']" in errors[0]
    assert "layer.h5ad (dataset 'layer'): layer 'nope'" in errors[1]
    assert errors[2].startswith(f"lancell ingest: error: {broken}")
    assert errors[3] == (
        "lancell ingest: error: 3 of 5 files failed (above): fix them and run the command again (files "
        "already in the atlas are reported and skipped)"
    )
    assert went_on.stdout.splitlines() == [
        "first: ingested (2 cells, 4 values, layers counts)",
        "last: ingested (2 cells, 2 values, layers counts)",
    ]
    assert _registry(db) == ["G1", "G2", "G6"]
    assert "2 datasets, 4 cells" in run("ls", db).stdout
    again = run("ingest", db, str(first), "--keep-going")  # nothing failed: exit 0
    assert again.stdout.startswith("first: already in the atlas")


def test_a_present_dataset_uid_with_a_missing_file_is_an_error(tmp_path: Path, db: str) -> None:
    run("ingest", db, str(_write(tmp_path / "study.h5ad", ["G1"])))
    missing = run("ingest", db, str(tmp_path / "elsewhere.h5ad"), "--uid", "study", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    present = run("ingest", db, str(tmp_path / "study.h5ad"))
    assert present.stdout.startswith("study: already in the atlas")


def test_organism_given_for_a_file_whose_obs_has_its_own_is_warned(tmp_path: Path, db: str) -> None:
    path = _write(tmp_path / "mouse.h5ad", ["G1"])
    adata = ad.read_h5ad(path)
    adata.obs["organism"] = "Mus musculus"
    adata.write_h5ad(path)
    done = run("ingest", db, str(path), "--organism", "Homo sapiens")
    assert "kept for the cells; organism 'Homo sapiens' is recorded on the new features only" in done.stderr
    obs = RaggedAtlas.open(db).query().to_pandas()
    assert obs["organism"].tolist() == ["Mus musculus"] * 2


def test_features_matched_ignoring_case(tmp_path: Path, db: str) -> None:
    run("ingest", db, str(_write(tmp_path / "plain.h5ad", ["Cd3e", "LYZ", "G3"])))
    out = tmp_path / "out.h5ad"
    exact = run("query", db, "--layer", "counts", "--features", "cd3e,lyz", "-o", str(out), check=False)
    assert exact.returncode == 1 and "['cd3e', 'lyz']" in exact.stderr
    run("query", db, "--layer", "counts", "--features", "cd3e,lyz", "--ignore-case", "-o", str(out))
    written = ad.read_h5ad(out)
    assert written.var_names.tolist() == ["Cd3e", "LYZ"]
    np.testing.assert_array_equal(written.X.toarray(), [[1, 2], [4, 5]])


def test_a_copied_atlas_with_its_store_outside_is_opened_with_store(tmp_path: Path) -> None:
    """A copy (cp -r) whose store lies outside the atlas's folder is refused for writing until the store is
    given: the command line had no way to give it."""
    run("init", str(tmp_path / "a" / "db"), "--store", str(tmp_path / "a" / "arrays"))
    run("ingest", str(tmp_path / "a" / "db"), str(_write(tmp_path / "one.h5ad", ["G1", "G2"])))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    two = str(_write(tmp_path / "two.h5ad", ["G1"]))
    refused = run("ingest", str(tmp_path / "b" / "db"), two, check=False)
    assert refused.returncode != 0 and "(copied or moved)" in refused.stderr
    store = ["--store", str(tmp_path / "b" / "arrays")]
    run("ingest", str(tmp_path / "b" / "db"), two, *store)
    assert "2 datasets, 4 cells" in run("ls", str(tmp_path / "b" / "db"), *store).stdout
    assert "1 dataset, 2 cells" in run("ls", str(tmp_path / "a" / "db")).stdout  # the original's untouched
    assert len(list((tmp_path / "a" / "arrays").iterdir())) == 2  # its one group and zarr.json


def test_reading_commands_read_a_copy_whose_store_lies_outside_with_a_warning(tmp_path: Path) -> None:
    """ls, validate and query of such a copy were refused ("pass store="), although only writing is; and
    --version reads used the original's store without a word."""
    run("init", str(tmp_path / "a" / "db"), "--store", str(tmp_path / "a" / "arrays"))
    run("ingest", str(tmp_path / "a" / "db"), str(_write(tmp_path / "one.h5ad", ["G1", "G2"])))
    run("snapshot", str(tmp_path / "a" / "db"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    db, out = str(tmp_path / "b" / "db"), str(tmp_path / "q.h5ad")
    reads = {
        "ls": ["ls", db],
        "ls --version": ["ls", db, "--version", "0"],
        "validate": ["validate", db],
        "query": ["query", db, "--layer", "counts", "-o", out],
    }
    done = {name: run(*command) for name, command in reads.items()}
    for name, result in done.items():
        command = name.split()[0]
        assert result.stderr.startswith(
            f"lancell {command}: warning: the atlas at {db!r} was copied or moved"
        )
        assert result.stderr.rstrip().endswith("which may be the original's (pass --store to read another)")
    assert done["ls"].stdout.strip().endswith("1 dataset, 2 cells")
    assert done["validate"].stdout.strip() == "consistent"
    assert ad.read_h5ad(out).n_obs == 2
    given = run("ls", db, "--store", str(tmp_path / "b" / "arrays"))
    assert given.stderr == "" and given.stdout.strip().endswith("1 dataset, 2 cells")
    refused = run("ingest", db, str(_write(tmp_path / "two.h5ad", ["G1"])), check=False)
    assert refused.returncode == 1 and "(copied or moved)" in refused.stderr
    assert "pass --store the location" in refused.stderr and "store=" not in refused.stderr


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        (
            ["--registry", "gene_expression"],
            2,
            "lancell init: error: argument --registry: 'gene_expression' is not SPACE=module:Class",
        ),
        (
            ["--registry", "gene_expression=lancell.bundled:GeneFeature"] * 2,
            2,
            "lancell init: error: --registry: feature space 'gene_expression' is given twice",
        ),
        (["--cell-table", "bad name"], 1, "lancell init: error: table name 'bad name': use letters"),
        # the atlas's own tables: init passed, then every command failed (tracebacks, a wrong column)
        (["--cell-table", "datasets"], 1, "cell table name 'datasets' is the name of one of the atlas's own"),
        (["--cell-table", "gene_expression_registry"], 1, "'gene_expression_registry' is the name of one"),
        (["--layers", "gene_expression"], 2, "argument --layers: 'gene_expression' is not SPACE=LAYER,..."),
        (
            ["--layers", "gene_expression=counts", "--layers", "gene_expression=spliced"],
            2,
            "lancell init: error: --layers: feature space 'gene_expression' is given twice",
        ),
        (["--layers", "gene_expression=a/b"], 1, "layers must be names of letters, digits, '_', '.' and '-'"),
        (["--layers", "gene_expression=counts,zarr.json"], 1, "layer names ['zarr.json'] are zarr's own"),
        (["--layers", "protein=counts"], 1, "layers names feature spaces ['protein'] that have no pointer"),
    ],
)
def test_init_command_lines_that_cannot_work_are_refused(tmp_path, options, status, message) -> None:
    """A second --registry of a feature space replaced the first without a word; one without '=' was
    reported as "schema ''"."""
    refused = run("init", str(tmp_path / "db"), *options, check=False)
    assert refused.returncode == status and message in refused.stderr, refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("lancell init: error:")
    assert not (tmp_path / "db").exists()


def test_init_sets_the_layers_a_feature_space_allows(tmp_path: Path) -> None:
    """The allowed layer names (counts, normalized, ...) could not be changed from the command line."""
    db = str(tmp_path / "db")
    run("init", db, "--layers", "gene_expression=counts, spliced")
    run("ingest", db, str(_write(tmp_path / "f.h5ad", ["G1", "G2"])), "--layer", "spliced")
    other = str(_write(tmp_path / "g.h5ad", ["G1"]))
    refused = run("ingest", db, other, "--layer", "normalized", check=False)
    assert "layer 'normalized' is not allowed in feature space 'gene_expression'" in refused.stderr
    assert "allowed: ['counts', 'spliced']" in refused.stderr
    assert list(RaggedAtlas.open(db).list_datasets()["layers"].iloc[0]) == ["spliced"]


def test_init_finds_a_schema_module_in_the_current_folder(tmp_path: Path) -> None:
    """The installed command (unlike python -m lancell.cli) did not search the current folder: a user's own
    schema module beside their data was "No module named ...". A module there that fails is reported."""
    (tmp_path / "myschema.py").write_text(
        "from lancell.bundled import CellSchema\n\nclass Cell(CellSchema):\n    donor: str | None = None\n"
    )
    (tmp_path / "broken.py").write_text("import no_such_package\n")
    command = [str(LANCELL), "init", "db", "--schema"]
    done = subprocess.run(
        [*command, "myschema:Cell"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "donor" in RaggedAtlas.open(str(tmp_path / "db")).cell_arrow_schema.names
    broken = subprocess.run(
        [*command, "broken:Cell"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert broken.returncode == 1 and "No module named 'no_such_package'" in broken.stderr


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("{tmp}/keep.h5ad/", "ends with '/', which names a folder"),
        ("{tmp}/results/", "ends with '/', which names a folder"),
        ("{tmp}/out.zarr", "query writes an .h5ad file; name it with the .h5ad suffix (e.g. {tmp}/out.h5ad)"),
        ("{tmp}/out.csv", "query writes an .h5ad file"),
        ("{tmp}/results", "name it with the .h5ad suffix (e.g. {tmp}/results.h5ad)"),
        ("{tmp}/.h5ad", "name it with the .h5ad suffix (e.g. {tmp}/cells.h5ad)"),  # (it said .h5ad.h5ad)
        ("", "-o is empty"),
    ],
)
def test_query_output_that_is_not_an_h5ad_file_is_refused(tmp_path, db, output, message) -> None:
    """``-o keep.h5ad/`` replaced the file keep.h5ad, ``-o results/`` wrote a file named results, .zarr and
    .csv names got HDF5 content; the errors came with the top-level usage."""
    (tmp_path / "keep.h5ad").write_bytes(b"mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    output, message = (text.replace("{tmp}", str(tmp_path)) for text in (output, message))
    refused = run("query", db, "--layer", "counts", "-o", output, check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("usage: lancell query")
    assert message in refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("lancell query: error:")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "keep.h5ad").read_bytes() == b"mine"


def test_query_errors_name_the_flags_not_python_calls(tmp_path: Path, db: str) -> None:
    """The remedies were worded for Python (``.layers()``, ``.on_unmeasured('drop')``,
    ``atlas.validate()``), and ``--features "G1, G2"`` looked up ' G2'."""
    run("ingest", db, str(_write(tmp_path / "a.h5ad", ["G1", "G2"])), "--layer", "counts")
    run("ingest", db, str(_write(tmp_path / "b.h5ad", ["G1", "G3"])), "--layer", "normalized")
    out = str(tmp_path / "q.h5ad")
    mixed = run("query", db, "-o", out, check=False)
    assert mixed.returncode == 1 and mixed.stderr.rstrip().endswith("; choose one with --layer")
    unmeasured = run("query", db, "--layer", "counts", "-o", out, check=False)
    assert unmeasured.returncode == 1 and ".on_unmeasured" not in unmeasured.stderr
    assert (
        "Choose --on-unmeasured drop to leave them out, or --on-unmeasured keep to return"
        in unmeasured.stderr
    )
    assert unmeasured.stderr.rstrip().endswith("(or select the measured datasets with --where)")
    run("query", db, "--layer", "counts", "--on-unmeasured", "drop", "--features", "G2, G1", "-o", out)
    assert ad.read_h5ad(out).var_names.tolist() == ["G2", "G1"]
    blank = run("query", db, "--layer", "counts", "--features", " , ", "-o", out, check=False)
    assert blank.returncode == 2 and "argument --features: no feature names in ' , '" in blank.stderr
    group = RaggedAtlas.open(db).list_datasets().set_index("uid").loc["a", "zarr_group"]
    shutil.rmtree(Path(db) / "_zarr" / group)
    missing = run("query", db, "--layer", "counts", "--on-unmeasured", "drop", "-o", out, check=False)
    assert missing.returncode == 1
    assert missing.stderr.rstrip().endswith("(lancell validate lists every such problem)")


def test_ingest_errors_name_the_file_the_dataset_and_the_flag(tmp_path: Path, db: str) -> None:
    """A folder was "no such file"; a failed --standardize named neither file nor dataset, and organism=
    for --organism."""
    (tmp_path / "landing").mkdir()
    folder = run("ingest", db, str(tmp_path / "landing"), check=False)
    assert folder.returncode == 1
    assert folder.stderr.startswith(
        f"lancell ingest: error: {tmp_path / 'landing'} is a folder: ingest takes"
    )
    path = _write(tmp_path / "genes.h5ad", ["G1", "G2"])
    standardized = run("ingest", db, str(path), "--standardize", "--uid", "zz", check=False)
    assert standardized.returncode == 1
    assert standardized.stderr == (
        f"lancell ingest: error: {path} (dataset 'zz'): cannot infer the organism: no --organism, no "
        "single-valued obs['organism'], no Ensembl ids in var\n"
    )
    _unchanged(db)


def test_an_anndata_raw_is_warned_as_not_stored(tmp_path: Path, db: str) -> None:
    """Counts kept in .raw (scanpy's layout) were dropped without a word."""
    path = _write(tmp_path / "r.h5ad", ["G1", "G2", "G3"])
    adata = ad.read_h5ad(path)
    adata.raw = adata.copy()
    adata.write_h5ad(path)
    done = run("ingest", db, str(path))
    assert (
        "lancell ingest: warning: dataset 'r': adata.raw (2 x 3) is not stored (only X and adata.layers "
        "are); to keep it, copy it into a layer (adata.layers[NAME] = adata.raw.X) and name that layer"
    ) in done.stderr.splitlines()  # one line (beside the progress bar)
    assert done.stdout.startswith("r: ingested")


def test_ctrl_c_once_the_command_is_done_ends_it_without_a_traceback(tmp_path: Path, db: str) -> None:
    """A Ctrl-C in the second after ingest printed its result interrupted the interpreter's shutdown and
    printed "Exception ignored in ... KeyboardInterrupt". A slow exit handler stands in for that second."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import atexit, time\natexit.register(lambda: (print('exiting'), time.sleep(30)))\n"
    )  # registered first, so run last: after lancell's own exit handler
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [str(LANCELL), "ls", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    assert any(line == "exiting\n" for line in process.stdout)  # stops there: the command has returned
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGINT and err == ""


def test_a_sigterm_during_ingest_rolls_it_back_as_a_ctrl_c_does(tmp_path: Path, db: str) -> None:
    """How a pod is stopped: the process died at once (143), leaving its group, its claim and a lock held."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import time\nfrom lancell.ingest.write_transaction import WriteTransaction\n"
        "def record_added(self):\n    print('writing', flush=True)\n    time.sleep(60)\n"
        "WriteTransaction.record_added = record_added\n"
    )  # stops the ingestion after its group and records are written, before its commit
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    path = _write(tmp_path / "t.h5ad", ["G1", "G2"])
    process = subprocess.Popen(
        [str(LANCELL), "ingest", db, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stdout is not None and process.stdout.readline() == "writing\n"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and err.splitlines()[-1] == "lancell ingest: terminated"
    atlas = RaggedAtlas.open(db)
    assert atlas.list_datasets().empty and atlas.validate() == []
    assert cli.main(["ingest", db, str(path)]) == 0  # no lock left held


def test_a_misplaced_sidecar_is_warned_about_as_not_read(tmp_path: Path) -> None:
    """``p.h5ad.json`` beside a file, or a JSON file inside a 10x folder, was ignored without a word: the
    dataset landed under its default uid with none of the sidecar's values."""
    path = _write(tmp_path / "p.h5ad", ["G1"])
    misnamed = tmp_path / "p.h5ad.json"
    misnamed.write_text(json.dumps({"uid": "donor7"}))
    with pytest.warns(
        LancellWarning, match=f"{misnamed} not read: its sidecar is {tmp_path / 'p.json'} \\(there"
    ):
        assert read_landing_spec(path).uid == "p"
    folder = tmp_path / "runB"
    shutil.copytree(V3_DIR, folder)
    (folder / "runB.json").write_text(json.dumps({"uid": "donor8"}))
    with pytest.warns(
        LancellWarning, match=f"{folder / 'runB.json'} not read: its sidecar is {tmp_path / 'runB.json'}"
    ):
        assert read_landing_spec(folder).uid == "runB"
    (tmp_path / "runB.json").write_text(json.dumps({"uid": "donor8"}))
    with pytest.warns(LancellWarning, match="not read: its sidecar is .*runB.json$"):
        assert read_landing_spec(folder).uid == "donor8"


def test_a_sidecar_link_whose_target_is_gone_is_an_error(tmp_path: Path) -> None:
    """A sidecar linked to a volume no longer mounted was taken for no sidecar: the file was ingested with
    the defaults (no organism, no name), without a word."""
    path = _write(tmp_path / "p.h5ad", ["G1"])
    (tmp_path / "p.json").symlink_to(tmp_path / "unmounted" / "p.json")
    with pytest.raises(IngestError, match=r"p\.json: cannot be read"):
        read_landing_spec(path)


def test_the_librarys_log_warnings_are_the_commands_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A stale lock broken after a kill -9 was printed as a bare logging line among the command's own."""
    import logging

    from lancell.cli_messages import one_line_warnings

    with one_line_warnings("ingest"):
        logging.getLogger("lancell.tables.locks").warning(
            "lock %r: breaking the lock of dead process %s", "d", 7
        )
        logging.getLogger("lancell.ingest").info("not shown")
    logging.getLogger("lancell.tables.locks").warning("after the command: not its line")
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "lancell ingest: warning: lock 'd': breaking the lock of dead process 7"
    assert "not shown" not in err and "lancell ingest: warning: after" not in err


def test_remedies_the_library_words_as_calls_are_named_by_flags() -> None:
    """vacuum's grace warning and a reused snapshot note named vacuum(grace=timedelta(0)) and
    RaggedAtlas.find_snapshot on the command line."""
    from lancell.cli_messages import for_command_line

    vacuum = "kept ...; vacuum() then, or vacuum(grace=timedelta(0)) when no reader is left"
    assert for_command_line(vacuum).endswith(
        "lancell vacuum then, or lancell vacuum --grace-hours 0 when no reader is left"
    )
    note = "a note labels one snapshot only (RaggedAtlas.find_snapshot, the Dagster snapshot partitions)"
    assert "(lancell versions, the Dagster snapshot partitions)" in for_command_line(note)


def test_a_feature_conflict_is_settled_with_on_conflict(tmp_path: Path, db: str) -> None:
    """The conflict's remedy named ``on_conflict='keep'``, which the command line did not take."""

    def study(name: str, symbol: str) -> Path:
        path = _write(tmp_path / f"{name}.h5ad", ["G1", "G2"])
        adata = ad.read_h5ad(path)
        adata.var["gene_symbol"] = [symbol, "S2"]
        adata.write_h5ad(path)
        return path

    def symbols() -> list[str]:
        return RaggedAtlas.open(db).feature_registry("gene_expression")["gene_symbol"].tolist()

    run("ingest", db, str(study("a", "S1")))
    refused = run("ingest", db, str(study("b", "NEW1")), check=False)
    assert refused.returncode == 1 and "registered 'S1', given 'NEW1'" in refused.stderr
    assert "pass --on-conflict keep to keep the registered values or --on-conflict update" in refused.stderr
    kept = run("ingest", db, str(tmp_path / "b.h5ad"), "--on-conflict", "keep")
    assert "b: ingested" in kept.stdout and "kept the registered values" in kept.stderr
    assert symbols() == ["S1", "S2"]
    failing = ad.read_h5ad(study("d", "NEW3"))
    failing.X = failing.X * 0.5  # not counts: the ingestion fails after the features are registered
    failing.write_h5ad(tmp_path / "d.h5ad")
    failed = run("ingest", db, str(tmp_path / "d.h5ad"), "--on-conflict", "update", check=False)
    assert failed.returncode == 1 and "non-integer value" in failed.stderr
    assert symbols() == ["S1", "S2"]  # (updated before the failure, for every dataset)
    run("ingest", db, str(study("c", "NEW2")), "--on-conflict", "update")
    assert symbols() == ["NEW2", "S2"]
    same = run("ingest", db, str(study("c", "NEW4")), "--uid", "c_again", "--on-conflict", "update")
    assert "c_again: skipped" in same.stdout
    assert "values were not updated (--on-conflict update)" in same.stderr
    assert symbols() == ["NEW2", "S2"]
    again = run("ingest", db, str(tmp_path / "c.h5ad"), "--on-conflict", "keep")  # not read: warned unused
    assert "--on-conflict keep not used: the dataset is in the atlas" in again.stderr


def test_two_names_of_one_organism_are_a_conflict_that_says_so(tmp_path: Path, db: str) -> None:
    """``human`` then ``Homo sapiens``: the conflict listed the two without saying they name one organism
    (the atlas keeps what it recorded: a name changed on ingestion split an atlas that said ``human``)."""
    run("ingest", db, str(_write(tmp_path / "a.h5ad", ["G1", "G2"])), "--organism", "human")
    refused = run(
        "ingest",
        db,
        str(_write(tmp_path / "b.h5ad", ["G1", "G3"])),
        "--organism",
        "Homo sapiens",
        check=False,
    )
    assert refused.returncode == 1
    assert (
        "'human' and 'Homo sapiens' name one organism: give the atlas's spelling, 'human'" in refused.stderr
    )  # and standardization, which records 'Homo sapiens' whatever is given, needs --on-conflict keep
    assert "a standardized file needs --on-conflict keep" in refused.stderr
    run("ingest", db, str(tmp_path / "b.h5ad"), "--organism", "human")
    atlas = RaggedAtlas.open(db)
    assert set(atlas.feature_registry("gene_expression")["organism"]) == {"human"}
    assert atlas.query().where(organism="human").count() == 4


def test_an_organism_lancell_does_not_know_is_warned_about(tmp_path: Path, db: str) -> None:
    """``Homo sapien`` was recorded as given without a word, and a filter on Homo sapiens found no cell."""
    warned = run("ingest", db, str(_write(tmp_path / "a.h5ad", ["G1"])), "--organism", "Homo sapien")
    assert "'Homo sapien' is no organism lancell knows (did you mean 'Homo sapiens'?)" in warned.stderr
    known = run("ingest", db, str(_write(tmp_path / "b.h5ad", ["G2"])), "--organism", "mouse")
    assert "no organism lancell knows" not in known.stderr
    standardized = run(  # refused: no warning that it is recorded as given first
        "ingest",
        db,
        str(_write(tmp_path / "c.h5ad", ["G3"])),
        "--organism",
        "Homo sapien",
        "--standardize",
        check=False,
    )
    assert standardized.returncode == 1 and "no organism lancell knows" not in standardized.stderr
    assert "unknown organism 'Homo sapien'" in standardized.stderr
