"""The public facade: ``import lancell as lc`` gives every public name, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lancell


@pytest.mark.parametrize("name", lancell.__all__)
def test_every_public_name_resolves(name: str) -> None:
    value = getattr(lancell, name)
    assert value is not None
    if name not in {"__version__", "errors"}:
        assert value.__name__ == name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'RaggedAtlass'"):
        _ = lancell.RaggedAtlass


def test_import_lancell_imports_no_heavy_module() -> None:
    heavy = ["lancedb", "lance", "torch", "anndata", "zarr", "numba", "pandas", "pyarrow"]
    code = f"import sys, lancell; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
