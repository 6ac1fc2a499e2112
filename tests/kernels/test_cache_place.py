"""With no writable cache folder of numba's own (a read-only install and home), the kernels get one in the
temporary folder, with a warning: ``import lancell`` had failed with numba's "no locator available"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from numba.core import config

from kernels import cache_place

REPO = Path(__file__).resolve().parents[2]


def test_no_writable_place_of_numbas_gives_a_temporary_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(cache_place, "_writable", lambda folder: False)
    with pytest.warns(RuntimeWarning, match="set NUMBA_CACHE_DIR to a writable folder"):
        cache_place.ensure_writable_place()
    folder = Path(config.CACHE_DIR)
    assert folder.is_dir() and folder.name.startswith("lancell-numba-")
    assert os.environ["NUMBA_CACHE_DIR"] == str(folder)
    folder.rmdir()


def test_a_writable_place_or_the_users_own_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))  # NUMBA_CACHE_DIR given: numba's to judge
    cache_place.ensure_writable_place()
    assert config.CACHE_DIR == str(tmp_path)
    monkeypatch.setattr(config, "CACHE_DIR", "")
    cache_place.ensure_writable_place()  # kernels/__pycache__ is writable here: nothing changes
    assert config.CACHE_DIR == ""


def test_an_unusable_user_cache_does_not_stop_the_import_when_the_install_is_writable(tmp_path: Path) -> None:
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(blocked), "PYTHONWARNINGS": "error::RuntimeWarning"}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", "import kernels.bitpack"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
