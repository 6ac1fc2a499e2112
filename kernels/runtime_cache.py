"""numba's runtime (NRT) loaded from disk, like the kernels, instead of compiled in every process.

Before a compiled kernel runs, numba readies its runtime: it compiles a small LLVM module (reference-count
increments and decrements, the meminfo accessors) with the whole optimizing pipeline, ~35 ms of every
process's first kernel call, in every DataLoader worker, Dagster run and command; a kernel loaded from the
cache compiles nothing else. :func:`compile_nrt_functions` replaces ``nrtdynmod.compile_nrt_functions``
(:func:`kernels.cache_guard.install`): once the kernels' cache folder is known (:func:`keep_in`, at the
first cached load of a kernel of this package), the module's object code is kept there, in
``nrt-<key>.nbo``, and loaded (~3 ms). The key is numba's and llvmlite's versions and the machine numba
compiles for (target triple, CPU name and features, ``codegen.magic_tuple()``, as numba keys its own cached
kernels), so code is never loaded on another CPU or version; numba's debug runtime (``NUMBA_DEBUG_NRT``) is
neither kept nor loaded. A file that does not hold what its digest says (a torn write, another program's
bytes) or does not unpickle to a library is compiled again and replaced (object code written under a valid
digest by hand is LLVM's to read: delete the file); a file is written whole or not at all
(written beside, then renamed).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid
from pathlib import Path

import llvmlite
import numba
from numba.core import config
from numba.core.runtime import nrtdynmod

__all__ = ["compile_nrt_functions", "keep_in"]

_numba_compile = nrtdynmod.compile_nrt_functions
_folder: list[Path] = []  # where the object code is kept: the first cached kernel's folder


def keep_in(folder: str | os.PathLike[str]) -> None:
    """Keep the runtime's object code in ``folder`` (a kernel cache folder), unless a folder is set."""
    if not _folder:
        _folder.append(Path(folder))


def compile_nrt_functions(ctx: object) -> object:
    """``nrtdynmod.compile_nrt_functions``: the runtime's library, loaded from the kept object code where
    it is there and intact, else compiled (and kept, once a folder is set)."""
    if not _folder or config.DEBUG_NRT:  # (a debug runtime prints and counts: never kept, never loaded)
        return _numba_compile(ctx)
    codegen = ctx.codegen()
    path = _folder[0] / f"nrt-{_key(codegen)}.nbo"
    library = _load(codegen, path)
    if library is not None:
        return library
    ir_module, library = nrtdynmod.create_nrt_module(ctx)
    library.enable_object_caching()
    library.add_ir_module(ir_module)
    library.finalize()
    _save(library.serialize_using_object_code(), path)
    return library


def _key(codegen: object) -> str:
    """What the kept code depends on, digested."""
    what = (numba.__version__, llvmlite.__version__, codegen.magic_tuple())
    return hashlib.sha256(repr(what).encode()).hexdigest()[:20]


def _load(codegen: object, path: Path) -> object | None:
    """The library kept at ``path``, or None where there is none or it is not intact."""
    try:
        stored = path.read_bytes()
    except OSError:
        return None
    digest, payload = stored[:32], stored[32:]
    if hashlib.sha256(payload).digest() != digest:
        return None
    try:  # (intact bytes of something else: any error unpickling or reading it) compiled again
        return codegen.unserialize_library(pickle.loads(payload))
    except Exception:
        return None


def _save(serialized: object, path: Path) -> None:
    """Write ``serialized`` to ``path`` whole (beside, then renamed); a folder that cannot take it is
    passed over (the runtime is compiled again next time)."""
    payload = pickle.dumps(serialized, protocol=pickle.HIGHEST_PROTOCOL)
    written = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        # created as numba creates its cache files (the umask applies), so a shared cache stays shared
        with os.fdopen(os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(hashlib.sha256(payload).digest() + payload)
        os.replace(written, path)
    except OSError:
        written.unlink(missing_ok=True)
