"""Child of test_interrupts: Ctrl-C (SIGINT) arrives 1 ms after an ingestion's add to table ``argv[2]``
begins, while LanceDB commits on its own thread; prints what the atlas holds afterwards as JSON."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import warnings

import lancedb.table  # the class is patched before lancell guards (subclasses) it

ROOT, TABLE = sys.argv[1], sys.argv[2]
armed = [True]
original_add = lancedb.table.LanceTable.add


def add(self, *args, **kwargs):
    if armed[0] and self.name == TABLE:
        armed[0] = False
        threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGINT)).start()
    return original_add(self, *args, **kwargs)


lancedb.table.LanceTable.add = add

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from lancell.atlas import RaggedAtlas  # noqa: E402
from lancell.bundled import CellSchema, GeneFeature  # noqa: E402
from lancell.ingest.from_anndata import add_from_anndata  # noqa: E402
from lancell.tables.schema import DatasetRecord  # noqa: E402

warnings.simplefilter("ignore")
atlas = RaggedAtlas.create(
    f"{ROOT}/db",
    "cells",
    CellSchema,
    store=f"{ROOT}/arrays",
    registry_schemas={"gene_expression": GeneFeature},
)
genes = [f"G{i}" for i in range(50)]
atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
n = 20_000
x = sp.random(n, 50, density=0.3, format="csr", random_state=0, data_rvs=lambda k: np.ones(k)).astype(
    np.float32
)
adata = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{k}" for k in range(n)]), var=pd.DataFrame(index=genes))
interrupted = False
try:
    add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=DatasetRecord(uid="d"),
        progress=False,
    )
except KeyboardInterrupt:
    interrupted = True
rows = atlas.core.tables.cells.count_rows()  # every row, those no record accounts for included
print(
    json.dumps(
        {
            "interrupted": interrupted,
            "records": atlas.list_datasets()["uid"].tolist(),
            "rows": rows,
            "problems": atlas.validate(),
        }
    )
)
