"""The ingest room: sources (AnnData, 10x, GEO, landing sidecars), the ingest plan and the write transaction.

See ``docs/architecture.md`` ("The four rooms"; "Ingestion").
"""
