"""Dagster pools (concurrency limits, ``dagster.yaml``) the assets run in."""

__all__ = ["WRITER_POOL"]

# every asset that writes LanceDB tables: one at a time (LanceDB's commits of one table conflict otherwise)
WRITER_POOL = "lancedb_writer"
