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


@pytest.mark.parametrize(
    ("old", "new", "name"),
    [
        ("lancell.schema", "lancell.tables.schema", "LancellBaseSchema"),
        ("lancell.ingestion", "lancell.ingest.from_anndata", "add_from_anndata"),
    ],
)
def test_a_moved_module_path_warns_and_gives_the_same_names(old: str, new: str, name: str) -> None:
    code = (
        "import importlib, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    old = importlib.import_module({old!r})\n"
        f"print(getattr(old, {name!r}) is getattr(importlib.import_module({new!r}), {name!r}))\n"
        "print([str(w.message) for w in caught if w.category is DeprecationWarning])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    same, warned = out.splitlines()
    assert same == "True"
    assert f"{old} moved to {new}" in warned
