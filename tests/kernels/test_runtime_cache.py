"""numba's runtime (NRT) is loaded from the kernels' cache folder, not compiled in every process
(kernels.runtime_cache): compiled again where its file is damaged, never kept in a user's cache folder,
never kept or loaded for numba's debug runtime.

Each case runs in fresh processes whose numba cache (``NUMBA_CACHE_DIR``) is in ``tmp_path``: a user's small
``cache=True`` kernel first, then one of lancell's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KERNEL = textwrap.dedent(
    """
    import numba

    @numba.njit(cache=True)
    def scaled(a, k):
        out = a.copy()  # an array allocated and returned: the runtime's reference counting at work
        for i in range(out.size):
            out[i] *= k
        return out
    """
)
RUN = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import kernels
    from numba.core.runtime import nrtdynmod
    compiled = []
    real = nrtdynmod.create_nrt_module
    nrtdynmod.create_nrt_module = lambda ctx: (compiled.append(1), real(ctx))[1]
    import numpy as np, toy
    from kernels.crc32c import crc32c
    calls = {
        "crc": lambda: int(crc32c(np.frombuffer(b"123456789", np.uint8), 0, 9)),
        "sum": lambda: int(toy.scaled(np.arange(1000), 3).sum()),
    }
    result = {name: calls[name]() for name in sys.argv[2].split(",")}  # in this order
    print("RESULT " + json.dumps(result | {"runtime_compiled": len(compiled)}))
    """
)
EXPECTED = {"sum": 3 * sum(range(1000)), "crc": 0xE3069283}


def _run(folder: Path, order: str = "crc,sum", **env: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(folder), order],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(folder / "cache"), **env},
        timeout=600,
        check=True,
    )
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def _kept(folder: Path) -> list[Path]:
    return sorted((folder / "cache").rglob("nrt-*.nbo"))


def test_the_runtime_is_kept_beside_the_kernels_loaded_and_compiled_again_when_damaged(
    tmp_path: Path,
) -> None:
    (tmp_path / "toy.py").write_text(KERNEL)
    # nothing cached yet: the runtime compiled and kept beside lancell's kernels
    assert _run(tmp_path) == EXPECTED | {"runtime_compiled": 1}
    [kept] = _kept(tmp_path)
    assert list(kept.parent.glob("crc32c*.nbi")) and not list(kept.parent.glob("toy*.nbi"))
    assert _run(tmp_path) == EXPECTED | {"runtime_compiled": 0}
    damaged = bytearray(kept.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    kept.write_bytes(bytes(damaged))
    assert _run(tmp_path) == EXPECTED | {"runtime_compiled": 1}  # compiled again, the file replaced
    assert _run(tmp_path) == EXPECTED | {"runtime_compiled": 0}
    assert [p.name for p in kept.parent.glob(".nrt-*")] == []  # no partial file left


def test_a_users_kernel_first_or_numbas_debug_runtime_keeps_nothing(tmp_path: Path) -> None:
    """The runtime was kept in the folder of whichever cached kernel loaded first (a user's); a debug run's
    runtime (it prints every reference count) was kept and loaded by every later process: debug lines on
    every command's stdout (with ``NUMBA_DEBUG_NRT_STACK_LIMIT``, whose functions take other arguments, a
    segfault)."""
    (tmp_path / "toy.py").write_text(KERNEL)
    assert _run(tmp_path, "sum,crc") == EXPECTED | {"runtime_compiled": 1}
    assert _run(tmp_path, "sum,crc") == EXPECTED | {"runtime_compiled": 1}  # readied by numba, as without us
    assert _kept(tmp_path) == []
    debug = {"NUMBA_DEBUG_NRT": "1"}
    assert _run(tmp_path, **debug) == EXPECTED | {"runtime_compiled": 1}
    assert _kept(tmp_path) == []
    assert _run(tmp_path) == EXPECTED | {"runtime_compiled": 1}
    assert len(_kept(tmp_path)) == 1
    assert _run(tmp_path, **debug) == EXPECTED | {"runtime_compiled": 1}  # the kept one is not loaded either


def test_a_users_kernel_without_a_module_name_still_loads(tmp_path: Path) -> None:
    """A ``cache=True`` kernel whose function has no ``__module__`` (code exec'd by a plugin loader) failed
    with an AttributeError in every process that imported lancell's kernels."""
    plugin = "import numba\n\n@numba.njit(cache=True)\ndef add1(x):\n    return x + 1\n"
    (tmp_path / "plugin.py").write_text(plugin)
    script = textwrap.dedent(
        f"""
        import kernels
        path = {str(tmp_path / "plugin.py")!r}
        namespace = {{}}
        exec(compile(open(path).read(), path, "exec"), namespace)
        assert namespace["add1"].py_func.__module__ is None
        print(namespace["add1"](11))
        """
    )
    # (the first call: numba looks in its cache before compiling; a later process's load fails in numba
    # itself, which rebuilds the kernel's environment by importing its module by name)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "NUMBA_CACHE_DIR": str(tmp_path / "cache")},
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.split() == ["12"], done.stderr
