"""Cold start: what a fresh process pays before its first query or batch (issue 19).

Timings are measured by ``benchmarks/cold_start.py``; these tests check the structure that keeps them low.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.bundled import CellSchema
from lancell.tables.registry_view import registry_view
from lancell.tables.schema import FeatureBaseSchema


class SymbolFeature(FeatureBaseSchema):
    gene_symbol: str | None = None


def test_registry_view_groups_repeated_symbols_in_index_order(tmp_path: Path) -> None:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": SymbolFeature},
    )
    features = pd.DataFrame(
        {
            "uid": ["ENSG5", "ENSG1", "ENSG4", "ENSG2", "ENSG3", "ENSG6"],
            "gene_symbol": ["Rp1", "CD3D", None, "Rp1", "AAA", "Rp1"],
        }
    )
    atlas.register_features("gene_expression", features)
    view = registry_view(atlas.core, "gene_expression")
    # global indices follow registration order: ENSG5 0, ENSG1 1, ENSG4 2, ENSG2 3, ENSG3 4, ENSG6 5
    assert view.by_symbol == {"AAA": [4], "CD3D": [1], "Rp1": [0, 3, 5]}
    assert list(view.by_symbol) == ["AAA", "CD3D", "Rp1"]
    assert all(type(i) is int for ids in view.by_symbol.values() for i in ids)
    assert view.by_uid.to_dict() == {
        "ENSG5": 0,
        "ENSG1": 1,
        "ENSG4": 2,
        "ENSG2": 3,
        "ENSG3": 4,
        "ENSG6": 5,
    }


def _loaded(code: str, modules: list[str]) -> list[str]:
    """The ``modules`` that a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_atlas_leaves_anndata_and_torch_to_first_use() -> None:
    heavy = ["lancedb", "anndata", "h5py", "dask", "torch", "polars", "mudata"]
    assert _loaded("import lancell.atlas", heavy) == []
    with_query = "import lancell.atlas\nimport lancell.query.atlas_query"
    assert _loaded(with_query, heavy) == ["anndata", "h5py", "dask"]


def test_checked_out_atlas_reads_without_lancedb(bundled_root: Path) -> None:
    # the first query of a read-only process: checkout, a SQL filter (checked), counts, to_anndata
    db = str(bundled_root / "db")
    code = f"""
from lancell.atlas import RaggedAtlas
atlas = RaggedAtlas.checkout_latest({db!r})
query = atlas.query().where("dataset_uid = 'celltypist_sample'").layers("gene_expression", "counts")
assert query.to_anndata().shape == (559, 32786)
assert atlas.query().where("\\"cell_type\\" = 'Dendritic'").count() == 240  # lancedb's "name" is a column
assert atlas.query().where(dataset_uid="pbmc68k").count() == 700  # (the uids were checked through lancedb)
assert atlas.validate() == []  # (its scan of the cells went through lancedb)
"""
    assert _loaded(code, ["lancedb", "torch"]) == []
    # what only lancedb offers (index listings, searches) is answered by lancedb at the snapshot's version
    lancedb_only = f"""{code}
cells = atlas.core.tables.cells
assert cells.list_indices() == cells.lancedb_table().list_indices()
assert cells.lancedb_table().version == atlas.table_versions()["cells"]
"""
    assert _loaded(lancedb_only, ["lancedb"]) == ["lancedb"]


def test_datasets_in_scan_order_fill_their_rows_without_the_scatter_kernel(
    bundled_root: Path, celltypist: ad.AnnData, mouse: ad.AnnData
) -> None:
    db = str(bundled_root / "db")
    code = f"""
import kernels.scatter
from lancell.atlas import RaggedAtlas
atlas = RaggedAtlas.checkout_latest({db!r})
atlas.query().layers("gene_expression", "counts").on_unmeasured("drop").to_anndata()
assert kernels.scatter.scatter_rows.signatures == [], kernels.scatter.scatter_rows.signatures
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    # the same query in this process: every value where its dataset put it
    query = RaggedAtlas.checkout_latest(db).query().layers("gene_expression", "counts")
    adata = query.on_unmeasured("drop").to_anndata()
    for uid, source in [("celltypist_sample", celltypist), ("mouse_10k", mouse)]:
        part = adata[(adata.obs["dataset_uid"] == uid).to_numpy()]
        assert list(part.obs_names) == [f"{uid}:{name}" for name in source.obs_names]
        expected = sp.csr_matrix(source.X)
        columns = adata.var_names.get_indexer(source.var_names)
        np.testing.assert_array_equal(part.X[:, columns].toarray(), expected.toarray())
        assert part.X.nnz == expected.count_nonzero()


def test_forkserver_preload_imports_no_database_or_anndata() -> None:
    # what every DataLoader worker forks from, besides the main module
    assert _loaded("import lancell.dataloader._forkserver", ["lancedb", "lance", "anndata", "pandas"]) == []


def test_an_ingestion_loads_its_kernels_without_numbas_compiler_registries(tmp_path: Path) -> None:
    """A kernel loaded from numba's cache needs numba's runtime only; numba's own load imports its NumPy
    implementations (and, through ``arraymath``, SciPy's BLAS) first: half a second of every fresh
    ingestion (kernels.cache_guard). The first process may compile (a cold cache); the second loads."""
    db = str(tmp_path / "db")
    RaggedAtlas.create(
        db,
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": SymbolFeature},
    ).register_features("gene_expression", pd.DataFrame({"uid": [f"g{i}" for i in range(50)]}))
    code = f"""
import numpy as np, scipy.sparse as sp, anndata as ad, pandas as pd
from lancell.atlas import RaggedAtlas
from lancell.ingest.from_anndata import add_from_anndata
x = sp.random(300, 50, density=0.3, format="csr", random_state=1)
x.data = np.ceil(x.data * 100)
var = pd.DataFrame(index=[f"g{{i}}" for i in range(50)])
adata = ad.AnnData(x, var=var, obs=pd.DataFrame(index=[f"c{{i}}" for i in range(300)]))
atlas = RaggedAtlas.open({db!r})
add_from_anndata(atlas, adata, feature_space="gene_expression", zarr_layer="counts", csc=True, progress=False,
                 on_duplicate="allow")
got = atlas.query().layers("gene_expression", "counts").to_anndata().X
assert (got != sp.vstack([x] * (got.shape[0] // 300))).nnz == 0
"""
    registries = ["numba.np.arraymath", "numba.typed.typeddict", "numba.np.random.generator_methods"]
    _loaded(code, registries)  # compiles what the cache lacks
    assert _loaded(code, registries) == []
