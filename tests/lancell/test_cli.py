"""The ``lancell`` console script, run as a user runs it: a real subprocess on the bundled files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import lancell
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, GeneFeature, land_bundled_data
from lancell.standardize.pipeline import standardize_and_ingest
from lancell.tables.schema import DatasetRecord

LANCELL = Path(sys.executable).with_name("lancell")


def run(
    *args: str, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(LANCELL), *args], capture_output=True, text=True, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"lancell {args} exited {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An atlas built from the bundled landing files by the CLI alone: init, ingest, snapshot."""
    root = tmp_path_factory.mktemp("cli")
    land_bundled_data(root / "landing")
    db = str(root / "db")
    run("init", db, "--store", str(root / "arrays"))
    run("ingest", db, *sorted(str(p) for p in (root / "landing").glob("*.h5ad")))
    assert run("snapshot", db, "--optimize", "--note", "first").stdout.strip() == "snapshot 0"
    return root


def test_help_and_version_answer_without_an_atlas() -> None:
    assert "ingest" in run("--help").stdout
    assert run("--version").stdout.strip() == f"lancell {lancell.__version__}"
    assert lancell.__version__ != "0+unknown"


def test_python_dash_m_lancell_is_the_command(tmp_path: Path) -> None:
    """``python -m lancell`` (no ``lancell.__main__``: "'lancell' is a package and cannot be directly
    executed") runs the command, its name and exit status as ``lancell``'s."""
    module = [sys.executable, "-m", "lancell"]
    shown = subprocess.run([*module, "--version"], capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0 and shown.stdout.strip() == f"lancell {lancell.__version__}"
    nowhere = str(tmp_path / "nowhere")
    refused = subprocess.run([*module, "ls", nowhere], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"lancell ls: error: no atlas at {nowhere!r}")


def test_ls_versions_and_validate(built: Path) -> None:
    db = str(built / "db")
    listing = run("ls", db).stdout
    for dataset in BUNDLED:
        assert dataset.uid in listing
    assert listing.strip().endswith("3 datasets, 11259 cells")
    versions = run("versions", db).stdout
    assert "first" in versions and "11259" in versions
    checked = run("validate", db, "--version", "0")
    assert checked.stdout.strip() == "consistent"


def test_a_reader_that_leaves_early_ends_the_listing_silently(built: Path) -> None:
    """lancell ls DB | head -1 printed "lancell ls: error: [Errno 32] Broken pipe" and exited 1."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    try:
        result = subprocess.run(
            [str(LANCELL), "ls", str(built / "db")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")
    import socket

    ours, theirs = socket.socketpair()  # a socket's reader gone: poll says "hang-up", not "error"
    ours.close()
    try:
        command = [str(LANCELL), "ls", str(built / "db")]
        result = subprocess.run(command, stdout=theirs, stderr=subprocess.PIPE, text=True, timeout=600)
    finally:
        theirs.close()
    assert (result.returncode, result.stderr) == (141, "")


def test_a_snapshot_without_note_lists_a_blank_note(tmp_path: Path) -> None:
    """``lancell versions`` printed ``None`` for a snapshot taken without ``--note``."""
    db = str(tmp_path / "db")
    run("init", db, "--store", str(tmp_path / "arrays"))
    run("snapshot", db)
    header, row = run("versions", db).stdout.splitlines()
    assert header.split()[-1] == "note" and "None" not in row and row.split()[-1] == "0"


def _display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_wide_characters_keep_the_listing_aligned_and_one_of_a_noun_is_singular(tmp_path: Path) -> None:
    """A dataset named in Japanese shifted every column after it in ``lancell ls`` (pandas counted each
    character as one column; a terminal shows it as two), and one dataset was listed as "1 datasets"."""
    shutil.copyfile(BUNDLED[0].path, tmp_path / "脳の細胞.h5ad")
    db = str(tmp_path / "db")
    run("init", db, "--store", str(tmp_path / "arrays"))
    run("ingest", db, str(tmp_path / "脳の細胞.h5ad"), "--layer", BUNDLED[0].zarr_layer)
    *table, total = run("ls", db).stdout.splitlines()
    assert re.fullmatch(r"1 dataset, \d+ cells", total), total
    shutil.copyfile(BUNDLED[1].path, tmp_path / "p.h5ad")
    run("ingest", db, str(tmp_path / "p.h5ad"), "--layer", BUNDLED[1].zarr_layer)
    *table, total = run("ls", db).stdout.splitlines()
    assert re.fullmatch(r"2 datasets, \d+ cells", total), total
    assert any("脳の細胞" in line for line in table)

    def end_of(line: str, word: str) -> int:  # where ``word`` ends on a terminal
        return _display_width(line[: line.index(word) + len(word)])

    ends = {end_of(line, "gene_expression") for line in table[1:]}
    assert ends == {end_of(table[0], "feature_space")}, table


def test_query_output_equals_the_python_api(built: Path) -> None:
    db, out = str(built / "db"), built / "x.h5ad"
    where = "dataset_uid IN ('celltypist_sample', 'mouse_10k')"
    result = run(
        "query", db, "--version", "0", "--where", where, "--layer", "gene_expression:counts", "-o", str(out)
    )
    cli = ad.read_h5ad(out)
    assert result.stdout.startswith(f"wrote {cli.n_obs} cells x {cli.n_vars} features")
    api = RaggedAtlas.checkout(db, 0).query().where(where).layers("gene_expression", "counts").to_anndata()
    assert cli.n_obs > 0
    assert (cli.X != api.X).nnz == 0 and cli.X.dtype == api.X.dtype
    pd.testing.assert_index_equal(cli.obs_names, api.obs_names)
    pd.testing.assert_index_equal(cli.var_names, api.var_names)
    pd.testing.assert_frame_equal(cli.obs, api.obs)
    np.testing.assert_array_equal(cli.varm["presence"].to_numpy(), api.varm["presence"].to_numpy())


def test_a_query_output_is_ingested_into_another_atlas(built: Path, tmp_path: Path) -> None:
    """`lancell ingest` of a `lancell query -o` file was refused (exit 1): its var column global_index was
    taken for registry values the atlas assigns."""
    out = tmp_path / "cells.h5ad"
    run("query", str(built / "db"), "--where", "dataset_uid = 'celltypist_sample'", "-o", str(out))
    db = str(tmp_path / "db")
    run("init", db)
    ingested = run("ingest", db, str(out))
    assert "var column 'global_index' (another atlas's numbering" in ingested.stderr
    exported, again = ad.read_h5ad(out), RaggedAtlas.open(db).query().to_anndata()
    assert (again.X != exported[:, again.var_names].X).nnz == 0 and again.n_obs == exported.n_obs


def test_query_with_features_by_symbol(built: Path) -> None:
    out = built / "genes.h5ad"
    run(
        "query",
        str(built / "db"),
        "--where",
        "dataset_uid = 'celltypist_sample'",
        "--layer",
        "counts",
        "--features",
        "CD3E,MS4A1",
        "--features",
        "LYZ",
        "-o",
        str(out),
    )
    assert ad.read_h5ad(out).var["gene_symbol"].tolist() == ["CD3E", "MS4A1", "LYZ"]


def test_query_unmeasured_cells_are_an_error_unless_dropped(built: Path) -> None:
    db, out = str(built / "db"), built / "counts.h5ad"
    refused = run("query", db, "--layer", "counts", "-o", str(out), check=False)
    assert refused.returncode == 1 and "pbmc68k" in refused.stderr and not out.exists()
    run("query", db, "--layer", "counts", "--on-unmeasured", "drop", "-o", str(out))
    dropped = ad.read_h5ad(out)
    assert dropped.n_obs == 559 + 10_000
    assert set(dropped.obs["dataset_uid"]) == {"celltypist_sample", "mouse_10k"}


def test_errors_are_one_line_naming_what_and_where(tmp_path: Path, built: Path) -> None:
    missing = run("ls", str(tmp_path / "nowhere"), check=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "nowhere" in missing.stderr
    assert missing.stderr.startswith("lancell ls: error: no atlas at")
    assert not (tmp_path / "nowhere").exists()
    bad = run(
        "query",
        str(built / "db"),
        "--where",
        "cell_type in ['a']",
        "-o",
        str(tmp_path / "q.h5ad"),
        check=False,
    )
    assert bad.returncode == 1 and bad.stderr.startswith("lancell query: error:")
    assert not (tmp_path / "q.h5ad").exists()
    again = run("ingest", str(built / "db"), str(built / "landing" / "pbmc68k.h5ad"))
    assert again.stdout.strip().startswith("pbmc68k: already in the atlas")
    renamed = run("ingest", str(built / "db"), str(built / "landing" / "pbmc68k.h5ad"), "--uid", "pbmc_again")
    assert renamed.stdout.strip().endswith("holds the same content as dataset pbmc68k")
    assert "pbmc_again" not in run("ls", str(built / "db")).stdout
    usage = run("ingest", str(built / "db"), check=False)
    assert usage.returncode == 2
    schema = run("init", str(tmp_path / "new"), "--schema", "lancell.bundled:NoSuchSchema", check=False)
    assert schema.returncode == 1
    assert schema.stderr.startswith("lancell init: error: cannot load schema 'lancell.bundled:NoSuchSchema'")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------ ingest --layers / --standardize

SCHEMA_MODULE = """
from lancell.tables.schema import LancellBaseSchema, SparseZarrPointer


class StandardCells(LancellBaseSchema):
    sample_id: str | None = None
    organism: str | None = None
    organism_ontology_term_id: str | None = None
    gene_expression: SparseZarrPointer | None = None
"""


def test_ingest_layers_are_stored_together_and_listed(tmp_path: Path) -> None:
    pbmc = BUNDLED[0].read()
    pbmc.layers["counts"] = sp.csr_matrix(np.rint(np.expm1(pbmc.X.toarray())).astype(np.int32))
    pbmc.write_h5ad(tmp_path / "two.h5ad")
    db = str(tmp_path / "db")
    run("init", db)
    both = "counts=counts,log_normalized=X"
    ingested = run("ingest", db, str(tmp_path / "two.h5ad"), "--layers", both).stdout
    nnz = pbmc.X.nnz
    assert ingested.strip() == f"two: ingested (700 cells, {nnz} values, layers counts, log_normalized)"
    listing = run("ls", db).stdout.splitlines()
    row = ["two", "gene_expression", "[counts,", "log_normalized]", "700", "765", str(nnz)]  # no cells_of
    assert listing[1].split() == row
    out = RaggedAtlas.open(db).query().layers("gene_expression", ["counts", "log_normalized"]).to_anndata()
    order = [list(pbmc.var_names).index(name) for name in out.var["gene_symbol"]]
    assert (out.X != pbmc.layers["counts"][:, order]).nnz == 0 and out.X.dtype == np.int64
    assert (out.layers["log_normalized"] != pbmc.X[:, order]).nnz == 0
    assert out.obs["obs_name"].tolist() == pbmc.obs_names.tolist()


def test_ingest_layer_replaces_the_sidecars_layers(tmp_path: Path) -> None:
    shutil.copyfile(BUNDLED[0].path, tmp_path / "p.h5ad")
    (tmp_path / "p.json").write_text('{"layers": {"counts": "X", "log_normalized": "X"}}')
    db = str(tmp_path / "db")
    run("init", db)
    nnz = BUNDLED[0].read().X.nnz
    out = run("ingest", db, str(tmp_path / "p.h5ad"), "--layer", "normalized").stdout
    assert out.strip() == f"p: ingested (700 cells, {nnz} values, layers normalized)"
    assert list(RaggedAtlas.open(db).list_datasets()["layers"].iloc[0]) == ["normalized"]


def test_ingest_chooses_the_csc_copy_and_add_csc_writes_it_later(tmp_path: Path) -> None:
    """``--no-csc`` leaves out the copy a dataset of its size gets by default (the sidecar's ``csc`` was the
    only way), ``--csc`` writes one below that size (and is warned about for a dataset already in the atlas),
    and ``add-csc`` writes a missing copy once, after checking every uid."""
    db = str(tmp_path / "db")
    run("init", db, "--store", str(tmp_path / "arrays"))
    run("ingest", db, str(BUNDLED[1].path), "--uid", "ct", "--no-csc")  # 1,027,859 values
    run("ingest", db, str(BUNDLED[0].path), "--uid", "pbmc", "--layer", "log_normalized", "--csc")  # 174,400

    def copied() -> dict[str, list[str]]:
        atlas = RaggedAtlas.open(db)
        groups = atlas.list_datasets().set_index("uid")["zarr_group"]
        root = atlas.core.zarr_root
        return {uid: list(root[group].attrs.get("csc_layers", [])) for uid, group in groups.items()}

    assert copied() == {"ct": [], "pbmc": ["log_normalized"]}
    again = run("ingest", db, str(BUNDLED[1].path), "--uid", "ct", "--csc")  # the file is not read again
    hint = f"--csc not used: the dataset is in the atlas (file not read) (lancell add-csc {db} ct"
    assert hint in again.stderr
    store = str(tmp_path / "arrays")  # the same content under another uid: skipped, the store passed on
    copy = run("ingest", db, str(BUNDLED[1].path), "--uid", "ct_copy", "--csc", "--store", store)
    hint = f"--csc not used: its content is stored as dataset ct (lancell add-csc {db} --store {store} ct"
    assert hint in copy.stderr
    missing = run("add-csc", db, "ct", "nope", check=False)  # every uid checked before any copy is written
    assert missing.returncode == 1 and "nope" in missing.stderr and len(missing.stderr.splitlines()) == 1
    assert copied() == {"ct": [], "pbmc": ["log_normalized"]}
    written = run("add-csc", db, "ct", "pbmc", "ct").stdout.splitlines()
    assert written == ["ct: CSC copy of counts written", "pbmc: has a CSC copy"]
    assert copied() == {"ct": ["counts"], "pbmc": ["log_normalized"]}
    again = run("ingest", db, str(BUNDLED[1].path), "--uid", "ct", "--csc")  # it has its copy: no hint
    assert "--csc not used" in again.stderr and "add-csc" not in again.stderr
    assert run("validate", db).stdout.strip() == "consistent"


def test_add_csc_all_writes_every_missing_copy(tmp_path: Path) -> None:
    """``add-csc --all`` writes the copy of every sparse dataset lacking one; it takes uids or ``--all``."""
    db = str(tmp_path / "db")
    run("init", db)
    run("ingest", db, str(BUNDLED[1].path), "--uid", "ct", "--no-csc")
    run("ingest", db, str(BUNDLED[0].path), "--uid", "pbmc", "--layer", "log_normalized", "--csc")
    for args, message in [
        (("ct", "--all"), "give dataset uids or --all, not both (--all with ct)"),
        (("--all", "ct"), "give dataset uids or --all, not both (--all with ct)"),  # (was "unrecognized")
        ((), "give the dataset uids, or --all for every sparse dataset lacking a copy"),
    ]:
        refused = run("add-csc", db, *args, check=False)
        assert refused.returncode == 2 and message in refused.stderr

    def listed() -> dict[str, str]:  # ``ls --csc``: each dataset's layers with a copy, last column
        header, *rows, total = run("ls", db, "--csc").stdout.splitlines()
        assert header.split()[-1] == "csc" and total.endswith("cells")
        return {row.split()[0]: row.split()[-1] for row in rows}

    assert listed() == {"ct": "-", "pbmc": "log_normalized"}
    assert run("add-csc", db, "--all").stdout.splitlines() == ["ct: CSC copy of counts written"]
    assert listed() == {"ct": "counts", "pbmc": "log_normalized"}
    assert run("add-csc", db, "--all").stdout.splitlines() == ["every sparse dataset has its CSC copy"]
    given = run("add-csc", db, "--store", str(Path(db) / "_zarr"), "pbmc")  # as ingest's hint prints it
    assert given.stdout.splitlines() == ["pbmc: has a CSC copy"]
    atlas = RaggedAtlas.open(db)
    groups = atlas.list_datasets().set_index("uid")["zarr_group"]
    assert atlas.core.zarr_root[groups["ct"]].attrs["csc_layers"] == ["counts"]


def test_ingest_option_errors_are_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    run("init", db)
    path = str(BUNDLED[0].path)
    both = run("ingest", db, path, "--layer", "counts", "--layers", "counts=X", check=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    # a malformed command line: its usage, exit 2 (docs/cli.md; these exited 1)
    empty = run("ingest", db, path, "--layers", "counts=", check=False)
    assert empty.returncode == 2 and empty.stderr.startswith("usage: lancell ingest")
    assert empty.stderr.endswith("lancell ingest: error: --layers: 'counts=' is not NAME or NAME=NAME\n")
    renames = ["--obs-columns", "louvain=cell_type", "--obs-columns", "louvain"]
    twice = run("ingest", db, path, *renames, check=False)
    assert twice.returncode == 2
    assert twice.stderr.endswith("lancell ingest: error: --obs-columns: 'louvain' is given twice\n")
    two_files = run("ingest", db, path, str(BUNDLED[1].path), "--uid", "z", check=False)
    assert two_files.returncode == 2 and "--uid names one dataset but 2 files were given" in two_files.stderr
    nothing = run("query", db, "-o", str(tmp_path / "out.h5ad"), "--where", " ", check=False)
    assert nothing.returncode == 2 and "--where is empty" in nothing.stderr
    absent = run("ingest", db, path, "--obs-columns", "tissue", check=False)
    assert absent.returncode == 1
    assert "the obs columns to rename ['tissue'] are not columns of obs" in absent.stderr
    assert run("ls", db).stdout == "0 datasets, 0 cells\n"  # (no empty table)


@pytest.fixture(scope="module")
def standardized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, tuple]:
    """The celltypist sample ingested with ``--standardize`` by the CLI, and by the Python API."""
    root = tmp_path_factory.mktemp("standardize")
    (root / "standard_schema.py").write_text(SCHEMA_MODULE)
    env = {**os.environ, "PYTHONPATH": str(root)}
    shutil.copyfile(BUNDLED[1].path, root / "celltypist_sample.h5ad")
    run("init", str(root / "cli"), "--schema", "standard_schema:StandardCells", env=env)
    options = ["--standardize", "--organism", "Homo sapiens", "--obs-columns", "sample=sample_id"]
    output = run("ingest", str(root / "cli"), str(root / "celltypist_sample.h5ad"), *options, env=env).stdout

    sys.path.insert(0, str(root))
    try:
        from standard_schema import StandardCells  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(root))
    atlas = RaggedAtlas.create(
        str(root / "api"),
        "cells",
        StandardCells,
        registry_schemas={"gene_expression": GeneFeature},
    )
    adata = BUNDLED[1].read()  # obs["organism"] = "Homo sapiens", as --organism adds it
    adata.obs = adata.obs.rename(columns={"sample": "sample_id"})
    api = standardize_and_ingest(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="celltypist_sample"),
        organism="Homo sapiens",
        progress=False,
    )
    return root, output, api


def test_ingest_standardize_equals_standardize_and_ingest(standardized: tuple[Path, str, tuple]) -> None:
    root, output, (record, report) = standardized
    lines = output.strip().splitlines()
    assert lines[:-1] == [f"celltypist_sample: {line}" for line in report.summary().splitlines()]
    assert "var: resolved 19359, kept 13427, dropped 0, summed 1, n_vars 32785" in lines[1]
    assert lines[-1] == f"celltypist_sample: ingested (559 cells, {record.nnz} values, layers counts)"
    cli_atlas, api_atlas = RaggedAtlas.open(str(root / "cli")), RaggedAtlas.open(str(root / "api"))
    pd.testing.assert_frame_equal(
        cli_atlas.feature_registry("gene_expression"), api_atlas.feature_registry("gene_expression")
    )
    cli, api = (a.query().layers("gene_expression", "counts").to_anndata() for a in (cli_atlas, api_atlas))
    assert cli.shape == (559, 32785) and cli.X.dtype == api.X.dtype == np.int64
    assert (cli.X != api.X).nnz == 0
    pd.testing.assert_index_equal(cli.var_names, api.var_names)
    pd.testing.assert_frame_equal(cli.obs, api.obs)
    assert set(cli.obs["organism_ontology_term_id"]) == {"NCBITaxon:9606"}
    assert cli.obs["sample_id"].tolist() == BUNDLED[1].read().obs["sample"].tolist()
    stored = cli_atlas.list_datasets().iloc[0]
    assert (stored["n_features"], stored["nnz"]) == (32785, record.nnz)
    assert list(stored["dropped_obs_columns"]) == []


def test_an_atlas_under_a_path_with_spaces_percent_and_non_ascii_stays_usable(tmp_path: Path) -> None:
    """The store's location is recorded as a ``file://`` URL (percent-encoded); reopening decodes it."""
    root = tmp_path / "my atlas %41 ü"
    shutil.copyfile(BUNDLED[0].path, tmp_path / "p.h5ad")
    db = str(root / "db")
    run("init", db, "--store", str(root / "the arrays"))
    run("ingest", db, str(tmp_path / "p.h5ad"), "--layer", "log_normalized")
    assert run("ls", db).stdout.strip().endswith("1 dataset, 700 cells")
    assert run("snapshot", db).stdout.strip() == "snapshot 0"
    assert (root / "the arrays").is_dir() and not (tmp_path / "my atlas A ü").exists()
    out = RaggedAtlas.checkout(db, 0).query().layers("gene_expression", "log_normalized").to_anndata()
    assert out.n_obs == 700 and out.X.nnz == BUNDLED[0].read().X.nnz
