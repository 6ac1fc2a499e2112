"""The tables room: lancell's LanceDB tables, their schemas, the feature registry, versions and locks.

See ``docs/architecture.md`` ("The four rooms"; "Tables"). Nothing here reads zarr arrays; the storage room
holds those.
"""
