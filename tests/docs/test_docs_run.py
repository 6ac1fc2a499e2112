"""Docs that run: every ```python block of README.md and of the docs pages executes, in order, from an empty
folder on the bundled data; the site builds with ``mkdocs --strict``; the notebooks run headless.

The README tour runs in ``make test``; the pages, the site and the notebooks are marked ``docs`` and run in
``make test-docs`` (called by .ci/run after ``make test``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# kubernetes.md shows fragments for a cluster and an S3 endpoint (AtlasResource(...), k8s_job_executor)
NOT_RUNNABLE = {"kubernetes.md"}
PAGES = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in NOT_RUNNABLE)
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.py"))


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a markdown file, in order."""
    return re.findall(r"^```python\n(.*?)^```$", path.read_text(), flags=re.S | re.M)


def run_blocks(path: Path) -> dict[str, object]:
    """Execute the blocks of ``path`` in one namespace; return the namespace."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    for number, block in enumerate(python_blocks(path), 1):
        exec(compile(block, f"{path.name}, block {number}", "exec", dont_inherit=True), namespace)
    return namespace


def test_readme_tour_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = run_blocks(ROOT / "README.md")
    assert names["myeloid"].shape == (369, 765)
    assert names["counts"].shape == (559, 32786)
    assert list(names["markers"].var_names) == ["CD3D", "LYZ", "MS4A1"]
    assert names["version"] == 0  # the first snapshot


@pytest.mark.docs
@pytest.mark.parametrize("page", PAGES)
def test_docs_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_blocks(ROOT / "docs" / page)


@pytest.mark.docs
def test_site_builds_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "api" / "index.html").exists()


@pytest.mark.docs
@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_headless(notebook, tmp_path):
    assert NOTEBOOKS == ["ragged_atlas_tour.py", "train_classifier_from_snapshot.py"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "notebooks" / notebook)], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
