"""The storage room: how a dataset's arrays are laid out and read in the zarr store.

Codecs (BP-128 bitpacking), shard index, layout and decode, the batched shard reader and the shard writer,
the dataset group layout (CSR/dense, layers) and its feature-major (CSC) copy. Nothing here imports the
tables, ingestion, query or loader modules above it (``tests/lancell/test_import_graph.py``); see
``docs/architecture.md``, "The internal handle".
"""
