"""Messages of the command line: repeated var names name a var column that could be the uid (anndata's
advice to make the names unique, which would register made-up uids such as ``Rp1-1``, is not passed on), and
the library's Python remedies are named by their flags."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from tests.lancell.test_cli import run


def test_repeated_var_names_suggest_a_unique_column(tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    run("init", db)
    var = pd.DataFrame({"gene_ids": ["E1", "E2", "E3"], "n": [1, 1, 2]}, index=["Rp1", "Rp1", "Actb"])
    x = sp.csr_matrix(np.ones((2, 3), np.int32))
    path = tmp_path / "dup.h5ad"
    ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=var).write_h5ad(path)
    refused = run("ingest", db, str(path), check=False)
    assert refused.returncode == 1
    assert (
        "duplicate feature ids in var ['Rp1']; the var index must name each feature once; of var's columns, "
        "['gene_ids'] do: pass one as --var-uid-column (the sidecar's var_uid_column)"
    ) in refused.stderr
    done = run("ingest", db, str(path), "--var-uid-column", "gene_ids")
    assert "not unique" not in done.stderr and "make_unique" not in done.stderr
    registry = RaggedAtlas.open(db).core.tables.registry("gene_expression").to_pandas()
    assert sorted(registry["uid"]) == ["E1", "E2", "E3"]


def test_remedies_are_named_as_the_command_line_has_them(tmp_path: Path) -> None:
    """Errors shown to the command line named Python calls: atlas.snapshot(), case_sensitive=False."""
    db = str(tmp_path / "db")
    run("init", db)
    no_snapshot = run("validate", db, "--version", "0", check=False)
    assert no_snapshot.returncode == 1 and "run lancell snapshot first" in no_snapshot.stderr
    path = tmp_path / "p.h5ad"
    x = sp.csr_matrix(np.ones((2, 2), np.int32))
    var = pd.DataFrame(index=["CD3E", "LYZ"])
    ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=var).write_h5ad(path)
    run("ingest", db, str(path))
    lower = run("query", db, "-o", str(tmp_path / "q.h5ad"), "--features", "cd3e", check=False)
    assert lower.returncode == 1
    assert lower.stderr.rstrip().endswith("'cd3e' is 'CD3E': name them so, or pass --ignore-case")
    twice = tmp_path / "twice.h5ad"
    ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c1"]), var=var).write_h5ad(twice)
    repeated = run("ingest", db, str(twice), check=False)
    assert "duplicate obs names ['c1'] (as text); make them unique in the file first" in repeated.stderr
    csc = tmp_path / "csc.h5ad"  # the command line reads files backed: "read without backed mode" is no help
    ad.AnnData(sp.csc_matrix(x), obs=pd.DataFrame(index=["c3", "c4"]), var=var).write_h5ad(csc)
    refused = run("ingest", db, str(csc), check=False)
    assert "convert X to CSR in the file first (adata.X = adata.X.tocsr()" in refused.stderr
    other = tmp_path / "other.h5ad"  # no feature in common with p.h5ad
    elsewhere = pd.DataFrame(index=["MS4A1", "NKG7"])
    ad.AnnData(x, obs=pd.DataFrame(index=["c5", "c6"]), var=elsewhere).write_h5ad(other)
    run("ingest", db, str(other))
    empty = run("query", db, "-o", str(tmp_path / "none.h5ad"), "--join", "intersection")
    assert "has no columns (--join union reads them)" in empty.stderr


def test_any_output_name_the_file_system_takes_is_written(tmp_path: Path) -> None:
    """A name too long was a traceback; one that fit failed on the temporary name beside it, longer (the
    error named that hidden file, ``.<name>.<pid>.part``)."""
    db = str(tmp_path / "db")
    run("init", db)
    path = tmp_path / "p.h5ad"
    x = sp.csr_matrix(np.ones((2, 2), np.int32))
    ad.AnnData(x, obs=pd.DataFrame(index=["c1", "c2"]), var=pd.DataFrame(index=["A", "B"])).write_h5ad(path)
    run("ingest", db, str(path))
    output = str(tmp_path / ("o" * 251 + ".h5ad"))  # a name longer than the file system takes: a traceback
    refused = run("query", db, "-o", output, check=False)
    assert refused.returncode == 2 and refused.stderr.endswith(f"-o {output}: File name too long\n")
    output = str(tmp_path / ("o" * 245 + ".h5ad"))
    assert run("query", db, "-o", output).stdout.startswith("wrote 2 cells")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
