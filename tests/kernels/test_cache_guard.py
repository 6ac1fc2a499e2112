"""numba's on-disk cache under processes that compile one kernel at the same time (kernels.cache_guard).

Each case runs a small ``cache=True`` kernel in fresh processes, with its cache beside it in ``tmp_path``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import kernels  # noqa: F401  (installs the guard in this process too)

REPO = Path(__file__).resolve().parents[2]
KERNEL = textwrap.dedent(
    """
    import numba

    @numba.njit(cache=True)
    def total(a):
        s = 0
        for x in a:
            s += x
        return s
    """
)
DTYPES = ("uint8", "uint16", "int32", "int64", "float32", "float64")


def _run(folder: Path, dtypes: tuple[str, ...], *, guarded: bool = True) -> subprocess.CompletedProcess[str]:
    """Sum ``arange(10) * 3`` as each dtype with the cached kernel, in a fresh process."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(folder)!r})
        {"import kernels" if guarded else ""}
        import numpy as np, toy
        print([int(toy.total(np.arange(10, dtype=d) * 3)) for d in {list(dtypes)!r}])
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO)},
        timeout=300,
    )


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    (tmp_path / "toy.py").write_text(KERNEL)
    return tmp_path


def _data_files(folder: Path) -> list[Path]:
    return sorted((folder / "__pycache__").glob("toy.total-*.nbc"))


def test_an_entry_that_names_another_signatures_code_is_compiled_again(kernel: Path) -> None:
    """What two processes saving at once left behind: the index names, for uint16, a file holding the uint8
    code. Unguarded numba fails on it in every later process; guarded, it compiles and saves it again."""
    assert _run(kernel, ("uint8", "uint16")).stdout.split() == ["[135,", "135]"]
    uint8_code, uint16_code = _data_files(kernel)
    uint16_code.write_bytes(uint8_code.read_bytes())
    unguarded = _run(kernel, ("uint16",), guarded=False)
    assert (
        unguarded.returncode != 0 and "can't unbox array" in unguarded.stderr
    )  # the failure guarded against
    for _ in range(2):  # compiled again, then loaded from the healed entry
        done = _run(kernel, ("uint16",))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[135]"
    assert _run(kernel, ("uint16",), guarded=False).stdout.strip() == "[135]"


def test_processes_compiling_signatures_at_once_leave_every_entry_right(kernel: Path) -> None:
    for round_ in range(2):
        with ThreadPoolExecutor(len(DTYPES)) as pool:  # one process per signature, all started at once
            runs = list(pool.map(lambda d: _run(kernel, (d,)), DTYPES))
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        later = _run(kernel, DTYPES, guarded=False)  # every entry loads as what it says it is
        assert later.returncode == 0, later.stderr
        assert later.stdout.strip() == str([135] * len(DTYPES)), round_
    assert len(_data_files(kernel)) == len(DTYPES)


def test_a_save_that_fails_leaves_no_index_entry(kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data file is written before the index entry that names it."""
    import numpy as np
    from numba.core import caching

    sys.path.insert(0, str(kernel))
    try:
        import toy

        def refuse(self, name, data):
            raise OSError("disk full")

        monkeypatch.setattr(caching.IndexDataCacheFile, "_save_data", refuse)
        with pytest.raises(OSError, match="disk full"):
            toy.total(np.arange(10, dtype=np.uint8))
    finally:
        sys.path.remove(str(kernel))
        sys.modules.pop("toy", None)
    monkeypatch.undo()
    assert _data_files(kernel) == []
    assert _run(kernel, ("uint8",)).stdout.strip() == "[135]"
