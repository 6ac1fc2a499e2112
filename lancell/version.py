"""The installed lancell version (``lancell.__version__``), read from the package metadata."""

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("lancell")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
