"""CPU time per batch of iterating a ``CellSampler`` alone (positions only, no data read), both modes.

    .venv/bin/python benchmarks/sampler_overhead.py DB [--label NAME]

DB: an atlas database (e.g. the bundled atlas, ``lancell.bundled.build_bundled_atlas``); its latest
snapshot's cells in the first feature space, batches of 64, 20 epochs per repetition, the minimum of 5.
Run it on two checkouts (``PYTHONPATH``) to compare them.
"""

from __future__ import annotations

import argparse
import time
import warnings

from lancell.atlas import RaggedAtlas
from lancell.dataloader import CellSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    atlas = RaggedAtlas.checkout_latest(args.db)
    dataset = atlas.query().on_unmeasured("keep").to_cell_dataset(next(iter(atlas.feature_spaces)), "counts")
    for mode in ("random", "locality"):
        sampler = CellSampler(dataset, 64, mode=mode, seed=0)
        per_batch = []
        for _ in range(5):
            start, batches = time.process_time(), 0
            for epoch in range(20):
                sampler.set_epoch(epoch)
                batches += sum(1 for _ in sampler)
            per_batch.append((time.process_time() - start) / batches * 1e6)
        print(
            f"{args.label} {mode}: {min(per_batch):.1f} us of CPU per batch (min of 5, {batches} batches each)"
        )


if __name__ == "__main__":
    main()
