"""Preloaded by the DataLoader's forkserver: import the main module once, before any worker forks.

CPython 3.11's own ``set_forkserver_preload(["__main__"])`` never imports it (the server looks for a
``main_path`` key that ``multiprocessing.spawn.get_preparation_data`` names ``init_main_from_path``), so
every worker re-ran the main module: seconds per worker for a script that imports lancedb or anndata.
:func:`lancell.dataloader.make_loader` puts the path in ``LANCELL_FORKSERVER_MAIN`` before the server
starts. (Not imported by the package itself: the main module may import ``lancell.dataloader``.)
"""

from __future__ import annotations

import logging
import os
import warnings
from multiprocessing import process, spawn

from lancell.dataloader.loader import MAIN_ENV
from lancell.dataloader.mapped import warm_kernel

log = logging.getLogger(__name__)


def _import_main() -> None:
    path = os.environ.get(MAIN_ENV)
    if not path or not os.path.exists(path):
        return
    process.current_process()._inheriting = True  # noqa: SLF001 (as multiprocessing.spawn does for main)
    try:
        spawn.import_main_path(path)
    except Exception:  # workers then import the main module themselves and report its error there
        log.warning("forkserver could not preload the main module %s", path, exc_info=True)
    finally:
        del process.current_process()._inheriting  # noqa: SLF001


# The main module may import lancedb, whose fork hook then warns in every worker. Workers never use lancedb
# and this server never opens a database, so the warning is silenced in this process (and its workers) only.
warnings.filterwarnings("ignore", message="lancedb fork support is experimental", category=RuntimeWarning)
_import_main()
warm_kernel()  # workers fork with the batch kernel's machine code loaded
