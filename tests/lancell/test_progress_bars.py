"""Long work shows progress: ``to_anndata(progress=True)``, the CSC copy's writes (ingestion's and
``add_csc``'s) and the ``lancell`` commands on a terminal draw tqdm bars on stderr; nothing is drawn by
default, nor by a command whose stderr is no terminal (a log or a pipe)."""

from __future__ import annotations

import fcntl
import functools
import os
import pty
import select
import struct
import subprocess
import termios
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tqdm.std import tqdm as std_tqdm

from lancell.atlas import RaggedAtlas
from lancell.ingest.add_csc import add_csc
from lancell.ingest.add_layer import add_layer
from lancell.ingest.from_anndata import add_from_anndata
from lancell.synthetic import write_synthetic_h5ad
from lancell.tables.schema import DatasetRecord
from tests.lancell.test_cli import LANCELL, run

GENES = [f"G{i:03d}" for i in range(300)]


@pytest.fixture(autouse=True)
def every_update_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bars redraw at every update (by default at most every 0.1 s: a quick one is never drawn full;
    ``TQDM_MININTERVAL`` is read when tqdm is imported)."""
    monkeypatch.setattr(std_tqdm, "__init__", functools.partialmethod(std_tqdm.__init__, mininterval=0))


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5,000 synthetic cells of ~60 values each: 300,389 values, past the CSC copy's default threshold."""
    path = tmp_path_factory.mktemp("progress") / "cells.h5ad"
    assert write_synthetic_h5ad(path, 5_000, GENES, nnz_per_cell=60, seed=3) == 300_389
    return path


@pytest.fixture
def ingest(atlas: RaggedAtlas, cells: Path) -> Callable[..., DatasetRecord]:
    """Ingest ``cells`` into ``atlas`` (conftest's, the synthetic genes registered too) as dataset ``uid``."""
    atlas.register_features("gene_expression", pd.DataFrame({"uid": GENES, "gene_symbol": GENES}))

    def ingest(uid: str, *, csc: bool, progress: bool) -> DatasetRecord:
        record = DatasetRecord(uid=uid)
        return add_from_anndata(
            atlas,
            cells,
            feature_space="gene_expression",
            zarr_layer="counts",
            dataset_record=record,
            csc=csc,
            on_duplicate="allow",
            progress=progress,
        )

    return ingest


def _on_terminal(*args: str) -> tuple[str, str]:
    """Run ``lancell args`` with stderr on a pseudo-terminal 120 columns wide; its stdout and stderr."""
    try:
        leader, follower = pty.openpty()
    except OSError as exc:  # (a container without /dev/pts)
        pytest.skip(f"no pseudo-terminal here: {exc}")
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = subprocess.Popen(
        [str(LANCELL), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "TQDM_MININTERVAL": "0"},  # (every update drawn; read as tqdm is imported)
    )
    os.close(follower)
    drawn = b""
    while True:
        if select.select([leader], [], [], 0.2)[0]:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # (the terminal's last writer is gone)
                break
            if not chunk:
                break
            drawn += chunk
        elif command.poll() is not None:
            break
    os.close(leader)
    stdout = command.stdout.read().decode() if command.stdout else ""
    assert command.wait(timeout=600) == 0, drawn.decode(errors="replace")
    return stdout, drawn.decode(errors="replace")


def test_to_anndata_draws_its_bar_only_when_asked_and_answers_the_same(
    atlas: RaggedAtlas, ingest: Callable[..., DatasetRecord], capsys
) -> None:
    ingest("first", csc=False, progress=False)
    capsys.readouterr()
    plain = atlas.query().to_anndata()
    assert capsys.readouterr().err == ""
    shown = atlas.query().to_anndata(progress=True)
    drawn = capsys.readouterr().err
    assert "query: selecting cells" in drawn
    assert "query: reading" in drawn and "5000/5000" in drawn and "100%" in drawn
    assert (shown.X != plain.X).nnz == 0
    pd.testing.assert_frame_equal(shown.obs, plain.obs)

    normalized = plain.X.astype(np.float32) / 2
    add_layer(atlas, "first", "log_normalized", normalized)
    both = atlas.query().layers("gene_expression", ["counts", "log_normalized"]).to_anndata(progress=True)
    drawn = capsys.readouterr().err
    assert "query: reading 2 layers" in drawn and "10000/10000" in drawn  # each layer of each cell
    assert (both.layers["log_normalized"] != normalized).nnz == 0


def test_the_csc_copy_counts_its_values_in_ingestion_and_in_add_csc(
    atlas: RaggedAtlas, ingest: Callable[..., DatasetRecord], capsys
) -> None:
    ingest("later", csc=False, progress=False)
    assert capsys.readouterr().err == ""
    assert add_csc(atlas, "later", progress=True) == ["counts"]
    drawn = capsys.readouterr().err
    assert "CSC copy later: reading" in drawn  # the stored arrays read back, then the copy written
    assert "CSC copy later: 100%" in drawn and "300k/300k" in drawn

    ingest("with", csc=True, progress=True)
    drawn = capsys.readouterr().err
    assert "ingest with" in drawn and "CSC copy with: 100%" in drawn
    assert "CSC copy with: reading" not in drawn  # ingestion sorts the blocks as it writes them
    genes = list(atlas.query().to_anndata().var_names[:3])
    by_feature = atlas.query().features(genes, "gene_expression").to_anndata()
    assert by_feature.n_obs == 10_000 and by_feature.X.nnz > 0
    first, second = by_feature[:5_000].X.toarray(), by_feature[5_000:].X.toarray()
    np.testing.assert_array_equal(first, second)  # (the two copies, read by feature, agree)


def test_the_commands_draw_bars_on_a_terminal_and_never_into_a_pipe(tmp_path: Path, cells: Path) -> None:
    db, out = str(tmp_path / "db"), str(tmp_path / "cells.h5ad")
    run("init", db)
    _, drawn = _on_terminal("ingest", db, str(cells))
    assert "ingest cells" in drawn and "CSC copy cells: 100%" in drawn
    stdout, drawn = _on_terminal("query", db, "-o", out)
    assert "query: reading" in drawn and "5000/5000" in drawn
    assert stdout.strip() == f"wrote 5000 cells x 300 features to {out}"

    piped = run("query", db, "-o", out)
    assert "query:" not in piped.stderr and "%|" not in piped.stderr
