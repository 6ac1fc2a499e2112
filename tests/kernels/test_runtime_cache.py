"""numba's runtime (NRT) is loaded from a kernel's cache folder, not compiled in every process
(kernels.runtime_cache): keyed to the machine and versions, compiled again where its file is damaged.

Each case runs a small ``cache=True`` kernel in fresh processes, with its cache beside it in ``tmp_path``.
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
    print(json.dumps({"sum": int(toy.scaled(np.arange(1000), 3).sum()), "runtime_compiled": len(compiled)}))
    """
)


def _run(folder: Path) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(folder)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO)},
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_runtime_is_compiled_once_then_loaded_and_compiled_again_when_damaged(tmp_path: Path) -> None:
    (tmp_path / "toy.py").write_text(KERNEL)
    expected = 3 * sum(range(1000))
    # the kernel compiled (nothing cached yet), the runtime too, and kept beside it; then both loaded
    assert _run(tmp_path) == {"sum": expected, "runtime_compiled": 1}
    [kept] = (tmp_path / "__pycache__").glob("nrt-*.nbo")
    assert _run(tmp_path) == {"sum": expected, "runtime_compiled": 0}
    damaged = bytearray(kept.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    kept.write_bytes(bytes(damaged))
    assert _run(tmp_path) == {"sum": expected, "runtime_compiled": 1}  # compiled again, the file replaced
    assert _run(tmp_path) == {"sum": expected, "runtime_compiled": 0}
    assert [p.name for p in (tmp_path / "__pycache__").glob(".nrt-*")] == []  # no partial file left
