"""numba kernels: arrays in, arrays out, no I/O. Their on-disk cache is guarded against processes that
compile one kernel at the same time (:mod:`kernels.cache_guard`)."""

from kernels.cache_guard import install

install()
