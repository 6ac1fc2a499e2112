"""The CPU cores this process may run on: what sizes its thread pools and readahead."""

import os

__all__ = ["USABLE_CORES"]

# the affinity mask where the platform has one (a container or `taskset` may allow fewer than the machine has)
USABLE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
