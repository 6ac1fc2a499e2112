"""docs/cli.md runs as written: its python and bash blocks, in order, from an empty folder (the ``lancell``
console script on the PATH); marked ``docs``, so ``make test-docs`` runs it with the other pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest

from lancell.bundled import BUNDLED

LANCELL = Path(sys.executable).with_name("lancell")
CLI_PAGE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.mark.docs
def test_the_command_line_page_runs_as_written(tmp_path: Path) -> None:
    """Every python and bash block of docs/cli.md, in order, from an empty folder."""
    blocks = re.findall(r"^```(python|bash)\n(.*?)^```$", CLI_PAGE.read_text(), flags=re.S | re.M)
    assert [kind for kind, _ in blocks] == ["python", "bash", "bash", "python", "bash", "bash"]
    env = {**os.environ, "PATH": f"{LANCELL.parent}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for kind, block in blocks:
        command = (
            [sys.executable, "-c", block] if kind == "python" else ["bash", "-euo", "pipefail", "-c", block]
        )
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{kind} block failed:\n{block}\n{done.stderr}"
        outputs.append(done.stdout)
    assert outputs[1].splitlines()[-1] == "3 datasets, 11259 cells"
    assert (
        "celltypist_sample: var: resolved 19359, kept 13427, dropped 0, summed 1, n_vars 32785" in outputs[2]
    )
    assert "run7: ingested (1107 cells, 23866 values, layers counts)" in outputs[4]
    assert outputs[4].splitlines()[-1] == "1 dataset, 1107 cells"
    myeloid, markers = ad.read_h5ad(tmp_path / "myeloid.h5ad"), ad.read_h5ad(tmp_path / "markers.h5ad")
    assert myeloid.shape == (369, 765) and set(myeloid.obs["dataset_uid"]) == {"pbmc68k"}
    assert markers.shape == (559, 3) and markers.var["gene_symbol"].tolist() == ["CD3E", "MS4A1", "LYZ"]
    assert markers.obs["obs_name"].tolist() == BUNDLED[1].read().obs_names.tolist()
