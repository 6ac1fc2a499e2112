"""numba's on-disk cache (``cache=True``) made safe for processes that compile one kernel at the same time.

numba 0.68 saves a newly compiled signature of a kernel by reading the kernel's cache index, taking the
first data file number the index does not use, writing the index and then the data file. Two processes
that compile two signatures of one kernel at once (Dask or DataLoader workers, test workers, after an
install or an upgrade) can both take number 1: the index then names one signature's data file while the
file holds the other signature's code, and every later process that loads that signature fails with
"can't unbox array" (or runs code compiled for other argument types) until the cache is deleted. numba
issue 10128 is the same race for gufuncs.

:func:`install` (called once by ``kernels/__init__``) changes three things:

- a save holds an exclusive lock on a file beside the index (``<index>.lock``, POSIX ``flock``) from reading
  the index to writing it, and writes the data file before the index entry that names it, so that no index
  entry ever names a file that is not yet written or written for another signature;
- a load returns nothing (numba then compiles the kernel and saves it again, healing the entry) unless the
  loaded code was compiled for the argument types asked for;
- a CPU load readies only what running compiled code needs (numba's runtime, NRT, itself loaded from the
  kernel's cache folder: :mod:`kernels.runtime_cache`). numba's own load refreshes
  the compiler's registries first, importing its implementations of NumPy, typed containers, random numbers
  and jitclasses and, through ``numba.np.arraymath``, SciPy's BLAS: about half a second of a process's first
  kernel call, spent where nothing is compiled. A compile refreshes them itself (``compiler.compile_extra``).
  The kernels also keep out of ``arraymath`` (no ``ndarray.min``/``max``), whose module a cached kernel
  using it imports on loading.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

from numba.core import caching, sigutils
from numba.core.cpu import CPUContext
from numba.core.runtime import nrtdynmod, rtsys

from kernels import runtime_cache

try:
    import fcntl
except ImportError:  # Windows: saves are not locked; the load check still applies
    fcntl = None

__all__ = ["install"]


def install() -> None:
    """Replace numba's cache save and load with the guarded ones (idempotent)."""
    caching.IndexDataCacheFile.save = _locked_save
    caching.Cache.load_overload = _checked_load
    nrtdynmod.compile_nrt_functions = runtime_cache.compile_nrt_functions


@contextlib.contextmanager
def _exclusive(path: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _locked_save(self: caching.IndexDataCacheFile, key: object, data: object) -> None:
    """``IndexDataCacheFile.save``: the data file first, then the index entry, under the index's lock."""
    with _exclusive(f"{self._index_path}.lock"):
        overloads = self._load_index()
        name = overloads.get(key)
        if name is None:
            used = set(overloads.values())
            name = next(n for n in map(self._data_name, itertools.count(1)) if n not in used)
        self._save_data(name, data)
        if overloads.get(key) != name:
            overloads[key] = name
            self._save_index(overloads)


def _checked_load(self: caching.Cache, sig: object, target_context: object) -> object:
    """``Cache.load_overload`` with the runtime readied, not the registries; None where the cached code is
    not for ``sig``'s argument types."""
    if isinstance(target_context, CPUContext):
        module = getattr(self._py_func, "__module__", None)  # (None for code exec'd without one)
        if isinstance(module, str) and module.startswith(f"{__package__}."):  # this package's, not a user's
            runtime_cache.keep_in(self._cache_path)  # the runtime's code is loaded from there, not compiled
        rtsys.initialize(target_context)
    else:  # another target's cache (numba.cuda in a user's process): numba's own readying
        target_context.refresh()
    loaded = None
    with self._guard_against_spurious_io_errors():  # (numba's: swallows Windows' spurious errors)
        loaded = self._load_overload(sig, target_context)
    compiled_for = getattr(loaded, "signature", None)  # a compiled function (a library cache holds none)
    if compiled_for is None:
        return loaded
    args, _ = sigutils.normalize_signature(sig)
    return loaded if tuple(compiled_for.args) == tuple(args) else None
