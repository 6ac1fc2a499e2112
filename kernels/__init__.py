"""numba kernels: arrays in, arrays out, no I/O. Their on-disk cache is guarded against processes that
compile one kernel at the same time (:mod:`kernels.cache_guard`), and kept in a writable folder
(:mod:`kernels.cache_place`)."""

from kernels.cache_guard import install
from kernels.cache_place import ensure_writable_place

ensure_writable_place()
install()
