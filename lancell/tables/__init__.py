"""The tables room: lancell's LanceDB tables, their schemas, the feature registry, versions and locks.

See ``docs/architecture.md`` (Rooms). Nothing here reads zarr arrays; the storage room holds those.
"""
