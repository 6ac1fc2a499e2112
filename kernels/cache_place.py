"""Where numba keeps the kernels' compiled code (``cache=True``): beside them (``kernels/__pycache__``) or in
the user's cache folder, whichever it can write. With neither (a read-only install and home folder, as a
container's read-only root has them), numba refuses to define the kernels at import ("cannot cache
function ...: no locator available"), and ``import lancell`` failed. :func:`ensure_writable_place` then
points numba at a folder of its own in the temporary folder, removed at exit (the kernels compile again in
each such process, seconds at first use; forked workers share it), and logs a warning naming
``NUMBA_CACHE_DIR`` (a log, not a Python warning: ``-W error`` must not turn it into a failed import).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

from numba.core import config
from numba.misc.appdirs import AppDirs

__all__ = ["ensure_writable_place"]

log = logging.getLogger(__name__)


def ensure_writable_place() -> None:
    """Give numba a writable cache folder when neither of its own choices is writable (see the module)."""
    if config.CACHE_DIR:  # the user's own (NUMBA_CACHE_DIR): numba's to judge
        return
    beside = Path(__file__).resolve().parent / "__pycache__"
    users = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir)
    if _writable(beside) or _writable(users):
        return
    try:
        folder = tempfile.mkdtemp(prefix="lancell-numba-")
    except OSError as exc:  # (no writable temporary folder either: a read-only root without TMPDIR)
        raise OSError(
            exc.errno,
            f"numba cannot write its cache beside lancell's kernels ({beside}), in the user's cache folder "
            f"({users}) nor in a temporary folder ({exc}): set NUMBA_CACHE_DIR (or TMPDIR) to a writable "
            "folder",
        ) from exc
    # numba's config only: set in the environment, it would reach every subprocess (spawned workers, other
    # numba programs), whose folder this process removes at its exit; numba keeps a value set here
    config.CACHE_DIR = folder
    creator = os.getpid()
    atexit.register(lambda: os.getpid() == creator and shutil.rmtree(folder, ignore_errors=True))
    log.warning(
        "numba cannot write its cache beside lancell's kernels (%s) nor in the user's cache folder (%s): the "
        "kernels are compiled into %s for this process (slower first calls); set NUMBA_CACHE_DIR to a "
        "writable folder to keep them",
        beside,
        users,
        folder,
    )


def _writable(folder: Path) -> bool:
    """Whether a file can be made in ``folder`` (made if missing), as numba's cache locators test it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True
