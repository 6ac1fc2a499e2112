"""lancell: a cell-centric ML training backend (LanceDB cell metadata, sharded Zarr v3 arrays)."""

from lancell.version import __version__

__all__ = ["__version__"]
