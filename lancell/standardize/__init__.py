"""The standardize room: gene identifiers, ontology terms and var merging, applied before an ingest.

See ``docs/standardization.md``; the entry points are ``lancell.standardize_anndata`` and
``lancell.standardize_and_ingest`` (defined in :mod:`lancell.standardize.pipeline`).
"""
