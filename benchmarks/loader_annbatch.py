"""annbatch 0.3.1 as a peer of ``benchmarks/loader.py``, run in the Python 3.12 side venv ``.venv-peers``.

``python loader_annbatch.py H5AD COLLECTION CONFIG_JSON``: builds the pre-shuffled collection from the h5ad
once (``DatasetCollection(path).add_adatas([h5ad])``), then times ``Loader(batch_size=B, chunk_size=32,
preload_nchunks=256, shuffle=True, preload_to_gpu=False)`` in this process (annbatch's docs discourage a torch
DataLoader around it) with the zarrs codec pipeline, scipy CSR batches (``to=None``), windows as the parent's
``measure`` (with the CPU time of this process per timed cell); the batch entropy is over the ``dataset`` obs
column of the cells of each batch. Prints one JSON line per batch size.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from annbatch import DatasetCollection, Loader


def entropy(labels: np.ndarray) -> float:
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main() -> None:
    h5ad, path, config = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    if not (path / "done").exists():
        started = time.perf_counter()
        DatasetCollection(str(path)).add_adatas([str(h5ad)])
        (path / "done").write_text(f"{time.perf_counter() - started:.1f}")
        print(json.dumps({"built_s": float((path / "done").read_text())}), flush=True)
    collection = DatasetCollection(str(path), mode="r")
    for batch_size in config["batch_sizes"]:
        started = time.perf_counter()
        loader = Loader(
            batch_size=batch_size,
            chunk_size=32,
            preload_nchunks=256,
            shuffle=True,
            preload_to_gpu=False,
            to=None,
            rng=np.random.default_rng(0),
        ).use_collection(collection)

        def forever(loader: Loader = loader):
            while True:
                yield from loader

        batches = forever()
        first = next(batches)
        startup = time.perf_counter() - started
        entropies = [entropy(np.asarray(first["obs"]["dataset"]))]
        rates, timed_cells, cpu = [], 0, 0.0
        for window in range(config["windows"] + 1):
            cells, t0, c0 = 0, time.perf_counter(), time.process_time()  # all of this process's threads
            while cells < config["window_cells"] and (
                cells == 0 or time.perf_counter() - t0 < config["max_window_s"]
            ):
                out = next(batches)
                cells += out["X"].shape[0]
                entropies.append(entropy(np.asarray(out["obs"]["dataset"])))
            if window:
                rates.append(cells / (time.perf_counter() - t0))
                cpu += time.process_time() - c0
                timed_cells += cells
        result = {
            "loader": "annbatch",
            "batch_size": batch_size,
            "workers": 0,
            "min": min(rates),
            "median": statistics.median(rates),
            "max": max(rates),
            "startup_s": startup,
            "entropy": float(np.mean(entropies)),
            "cpu_us_per_cell": cpu / timed_cells * 1e6,
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
