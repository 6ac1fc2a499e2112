"""With no writable cache folder of numba's own (a read-only install and home), the kernels get one in the
temporary folder, with a warning: ``import lancell`` had failed with numba's "no locator available"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from numba.core import config

from kernels import cache_place

REPO = Path(__file__).resolve().parents[2]


def test_no_writable_place_of_numbas_gives_a_temporary_one(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setattr(cache_place, "_writable", lambda folder: False)
    with caplog.at_level("WARNING", logger="kernels.cache_place"):
        cache_place.ensure_writable_place()
    assert "set NUMBA_CACHE_DIR to a writable folder" in caplog.text
    folder = Path(config.CACHE_DIR)
    assert folder.is_dir() and folder.name.startswith("lancell-numba-")
    assert "NUMBA_CACHE_DIR" not in os.environ  # (subprocesses would share a folder this one removes)
    folder.rmdir()


def test_no_temporary_folder_either_names_the_settings_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only root without TMPDIR: ``import lancell`` raised tempfile's bare "No usable temporary
    directory"."""
    import tempfile

    def none_usable(**_: object) -> str:
        raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp']")

    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setattr(cache_place, "_writable", lambda folder: False)
    monkeypatch.setattr(tempfile, "mkdtemp", none_usable)
    with pytest.raises(
        FileNotFoundError, match=r"nor in a temporary folder .*set NUMBA_CACHE_DIR \(or TMPDIR\)"
    ):
        cache_place.ensure_writable_place()
    assert config.CACHE_DIR == ""


def test_a_writable_place_or_the_users_own_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path))  # NUMBA_CACHE_DIR given: numba's to judge
    cache_place.ensure_writable_place()
    assert config.CACHE_DIR == str(tmp_path)
    monkeypatch.setattr(config, "CACHE_DIR", "")
    cache_place.ensure_writable_place()  # kernels/__pycache__ is writable here: nothing changes
    assert config.CACHE_DIR == ""


def test_the_import_runs_where_numba_can_write_no_cache_of_its_own(tmp_path: Path) -> None:
    """Neither kernels/__pycache__ nor the user's cache writable (the first made a file, as a read-only
    install refuses it): the import ran into numba's "no locator available"; under -W error, too."""
    install = tmp_path / "install"
    shutil.copytree(REPO / "kernels", install / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    (install / "kernels" / "__pycache__").write_text("")  # a file where numba's folder would be
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(blocked), "PYTHONPATH": str(install)}
    env.pop("NUMBA_CACHE_DIR", None)
    code = "import kernels.bitpack, numba; print(numba.config.CACHE_DIR)"  # (kernels are made at import)
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip())
    assert folder.name.startswith("lancell-numba-") and not folder.exists()  # removed at exit
    assert "set NUMBA_CACHE_DIR to a writable folder" in done.stderr


def test_an_unusable_user_cache_does_not_stop_the_import_when_the_install_is_writable(tmp_path: Path) -> None:
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("")
    env = {**os.environ, "XDG_CACHE_HOME": str(blocked), "PYTHONWARNINGS": "error::RuntimeWarning"}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", "import kernels.bitpack"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
