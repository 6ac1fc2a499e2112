"""Child process of the modality crash tests: attach a protein panel and SIGKILL itself at a chosen point.

    python attach_crash_child.py DB POINT

``POINT``: ``pointers`` dies right after the attachment's pointer commit (the ``merge_insert`` on the cells),
before its dataset record; no ``finally`` block, roll-back or atexit handler runs.
"""

from __future__ import annotations

import os
import signal
import sys

import lancedb.merge
import numpy as np
import pandas as pd
from anndata import AnnData

from lancell.atlas import RaggedAtlas
from lancell.ingest.modalities import attach_modality

PROTEINS = [f"p{i}" for i in range(6)]
NAMES = [f"c1_{i}" for i in range(30)]  # the cells of the parent's dataset d1


def protein(names: list[str], offset: float = 0.0) -> AnnData:
    """A dense protein panel of cells ``names`` (the parent attaches the same one again)."""
    x = np.arange(len(names) * len(PROTEINS), dtype=np.float32).reshape(len(names), -1) + offset
    return AnnData(X=x, obs=pd.DataFrame(index=names), var=pd.DataFrame(index=PROTEINS))


def main() -> None:
    db, point = sys.argv[1], sys.argv[2]
    if point != "pointers":
        raise SystemExit(f"unknown kill point {point!r}")
    execute = lancedb.merge.LanceMergeInsertBuilder.execute

    def execute_then_die(self: object, *args: object, **kwargs: object) -> object:
        execute(self, *args, **kwargs)
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    lancedb.merge.LanceMergeInsertBuilder.execute = execute_then_die
    atlas = RaggedAtlas.open(db)
    panel = protein(NAMES)
    attach_modality(atlas, panel, cells_of="d1", feature_space="protein", zarr_layer="values", progress=False)


if __name__ == "__main__":
    main()
