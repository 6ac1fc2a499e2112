"""The command line as shell scripts run it: closed standard streams, pipes, logs, other encodings, file
names from other systems, output files that cannot be written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell import cli
from lancell.atlas import RaggedAtlas
from tests.lancell.test_cli import LANCELL, run


def _write(path: Path) -> Path:
    x = sp.csr_matrix(np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    obs = pd.DataFrame(index=[f"{path.stem}-a", f"{path.stem}-b"])
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=["G1", "G2", "G3"])).write_h5ad(path)
    return path


@pytest.fixture
def db(tmp_path: Path) -> str:
    db = str(tmp_path / "db")
    run("init", db)
    return db


def _shell(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {script}"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LANCELL": str(LANCELL), **env},
    )


def test_a_command_whose_stdout_or_stderr_is_closed_does_its_work_and_says_so(tmp_path: Path, db: str):
    """``lancell snapshot DB >&-`` took the snapshot, then failed (sys.stdout is None): a retrying script
    took a second one; with stderr closed a new ingest failed without a word (its progress bar)."""
    done = _shell(f'"$LANCELL" snapshot {db} >&-')
    assert done.returncode == 0, done.stderr
    assert RaggedAtlas.list_versions(db)["version"].tolist() == [0]
    ingested = _shell(f'"$LANCELL" ingest {db} {_write(tmp_path / "a.h5ad")} 2>&-')
    assert ingested.returncode == 0 and "a: ingested" in ingested.stdout
    refused = _shell(f'"$LANCELL" delete {db} nothing 2>&- || echo "exit $?"')
    assert refused.stdout.strip() == "exit 1"  # (its error line went nowhere, not to stdout)


def test_progress_bars_are_drawn_on_a_terminal_only(tmp_path: Path, db: str):
    """The ingest progress bar went to any stderr: logs filled with carriage-returned bar lines, and a
    stderr pipe whose reader left (``2>&1 | head -1``) was told to be the object store's failure."""
    ingested = run("ingest", db, str(_write(tmp_path / "a.h5ad")))
    assert "\r" not in ingested.stderr and "cell/s" not in ingested.stderr
    piped = _shell(f'"$LANCELL" ingest {db} {_write(tmp_path / "b.h5ad")} 2>&1 | head -1')
    assert piped.returncode == 0 and piped.stdout.startswith("b: ingested")


def test_ls_writes_its_listing_at_once(tmp_path: Path, db: str):
    """Under PYTHONUNBUFFERED (set in most Python images) ``ls`` wrote the table and its count line in two
    writes: ``lancell ls DB | grep -q uid`` met a closed pipe at the second and failed under pipefail."""
    run("ingest", db, str(_write(tmp_path / "a.h5ad")))
    found = _shell(f'"$LANCELL" ls {db} | grep -q "^ *a "', PYTHONUNBUFFERED="1")
    assert found.returncode == 0, found.stderr


def test_a_file_name_that_is_not_utf8_is_one_error_line(tmp_path: Path, db: str):
    """A Latin-1 file name (an old share, a zip from Windows) ended in a UnicodeEncodeError traceback."""
    name = os.fsencode(tmp_path) + b"/lat\xe9n.h5ad"
    os.rename(_write(tmp_path / "latin.h5ad"), name)
    refused = subprocess.run([str(LANCELL), "ingest", db, name], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "lat\\xe9n.h5ad" in refused.stderr
    assert "is not valid UTF-8" in refused.stderr and "Traceback" not in refused.stderr
    assert "0 datasets" in run("ls", db).stdout


def test_text_the_terminal_cannot_show_is_escaped(tmp_path: Path, db: str):
    run("snapshot", db, "--note", "données")
    listed = run("versions", db, env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert "donn\\xe9es" in listed.stdout


def test_a_query_result_an_h5ad_cannot_hold_is_one_error_line(tmp_path: Path, db: str, monkeypatch, capsys):
    """Older atlases hold list-valued and NUL-holding text columns: h5py's TypeError / ValueError ended
    in a traceback."""
    run("ingest", db, str(_write(tmp_path / "a.h5ad")))

    def unwritable(adata, path, **kwargs):
        error = TypeError("Can't implicitly convert non-string objects to strings")
        error.add_note("Error raised while writing key 'tags' of <class 'h5py._hl.group.Group'> to /obs")
        raise error

    monkeypatch.setattr(ad.AnnData, "write_h5ad", unwritable)
    out = tmp_path / "q.h5ad"
    assert cli.main(["query", db, "--layer", "counts", "-o", str(out)]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write" in error and "key 'tags'" in error
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_hdf5s_runtime_error_on_a_full_file_system_is_a_store_error(tmp_path: Path, monkeypatch):
    """h5py's File.close raises RuntimeError ("Set slist enabled failed ... File too large") when the
    file-size limit or the disk stops the write: a 30-line traceback, then a segfault at exit."""
    from lancell.cli_h5ad import write_result
    from lancell.errors import StoreError

    def too_large(adata, path, **kwargs):
        raise RuntimeError(
            "Set slist enabled failed (file write failed: time = Mon Dec 7, filename = 'q', file descriptor "
            "= 5, errno = 27, error message = 'File too large', buf = 0x55, total write size = 9)"
        )

    monkeypatch.setattr(ad.AnnData, "write_h5ad", too_large)
    adata = ad.AnnData(np.ones((2, 2), np.float32))
    with pytest.raises(StoreError, match=r"cannot write .*q.h5ad: File too large$") as raised:
        write_result(adata, tmp_path / "q.h5ad")
    assert raised.value.errno == 27 and list(tmp_path.iterdir()) == []
