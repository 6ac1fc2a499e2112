"""The ``lancell`` console script, run as a user runs it: a real subprocess on the bundled files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import lancell
from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, land_bundled_data

LANCELL = Path(sys.executable).with_name("lancell")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(LANCELL), *args], capture_output=True, text=True, timeout=600)
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
