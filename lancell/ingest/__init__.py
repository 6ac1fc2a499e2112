"""The ingest room: sources (AnnData, 10x, GEO, landing sidecars), the ingest plan and the write transaction.

See ``docs/architecture.md`` (Rooms; Data flow of an ingest).
"""

TENX_REMEDY = (
    "ingest it with lancell.ingest.tenx.add_from_10x(atlas, path) in Python (each feature type into its "
    "feature space, a CITE-seq run's protein on the same cells), or write an .h5ad of its Gene Expression: "
    "a = lancell.ingest.tenx.read_10x(path); a[:, a.var['feature_type'] == 'Gene Expression'].write_h5ad(...)"
)
"""What to do with a 10x output where an ``.h5ad`` was expected, as the messages about one say (all of it as
one .h5ad would put antibodies among the genes; this package's ``__init__`` imports nothing: the Dagster
definitions and the CLI name it without loading anndata)."""
