"""The ingest room: sources (AnnData, 10x, GEO, landing sidecars), the ingest plan and the write transaction.

See ``docs/architecture.md`` (Rooms; Data flow of an ingest).
"""

TENX_TO_H5AD = "lancell.ingest.tenx.read_10x(path).write_h5ad(...)"
"""How a 10x output becomes a landing file (an ``.h5ad``), as the messages about one say (this package's
``__init__`` imports nothing: the Dagster definitions and the CLI name it without loading anndata)."""
