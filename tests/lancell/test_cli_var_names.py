"""Repeated var names on the command line: lancell's own message names a var column that could be the uid,
and anndata's advice to make the names unique (which would register made-up uids such as ``Rp1-1``) is not
passed on."""

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
