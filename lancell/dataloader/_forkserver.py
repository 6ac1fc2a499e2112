"""Preloaded by the DataLoader's forkserver: ``lancell.dataloader`` (torch, zarr, numba) and the batch
kernel's machine code, before any worker forks; the main module only where a worker needs it.

A forkserver child re-runs the training script (as ``__mp_main__``) unless the server's ``__main__`` has the
script's ``__file__`` (``multiprocessing.spawn._fixup_main_from_path``): seconds per worker for a script that
imports lancedb or anndata, and as many in the server if it ran the script once for all. Workers of
:func:`lancell.dataloader.make_loader` need nothing from it (dataset, sampler and collates are lancell's), so
the server's ``__main__`` is a stand-in with the script's path (``LANCELL_FORKSERVER_MAIN``): the script runs
in a worker at the first name taken from it (a collate or ``worker_init_fn`` the script defines, found by
unpickling), as multiprocessing would have run it. (Not imported by the package itself: the main module may
import ``lancell.dataloader``.)
"""

from __future__ import annotations

import os
import runpy
import sys
import types
import warnings
from typing import Any

from lancell.dataloader.loader import MAIN_ENV
from lancell.dataloader.mapped import warm_kernel


class _LazyMain(types.ModuleType):
    """The training script's module, run the first time one of its names is looked up."""

    def __init__(self, path: str) -> None:
        super().__init__("__mp_main__")
        self.__file__ = path

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # probes (``__path__``, ``__warningregistry__``) do not run the script
            raise AttributeError(name)
        namespace = runpy.run_path(self.__file__, run_name="__mp_main__")
        for key, value in namespace.items():
            if not key.startswith("__"):
                setattr(self, key, value)
        self.__class__ = types.ModuleType  # run once: a name it lacks is an AttributeError from here on
        return getattr(self, name)


def _install_main() -> None:
    path = os.environ.get(MAIN_ENV)
    if path and os.path.exists(path):
        sys.modules["__main__"] = sys.modules["__mp_main__"] = _LazyMain(path)


# A script that imports lancedb makes its fork hook warn in every worker that runs the script; workers never
# use lancedb, so the warning is silenced in this process (and its workers) only.
warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
_install_main()
warm_kernel()  # workers fork with the batch kernel's machine code loaded
