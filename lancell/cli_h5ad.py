"""A query result written to an ``.h5ad`` file from the command line (``lancell query -o``): through a
temporary file beside it, so that a failed write leaves nothing there, with the failures an ``.h5ad`` write
meets said on one line.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

__all__ = ["write_result"]


def write_result(adata: ad.AnnData, output: Path) -> None:
    """Write ``adata`` to ``output`` through a temporary file beside it; date and time obs columns become
    their ISO 8601 text (warned).

    Raises
    ------
    StoreError
        The write failed (a full disk): the system's words and number.
    QueryError
        The result holds values an ``.h5ad`` file cannot hold (an older atlas's list-valued or NUL-holding
        text column).
    """
    from lancell.errors import LancellWarning

    if times := _times_as_text(adata.obs):
        warnings.warn(
            f"obs columns {times} hold dates or times, which .h5ad files cannot hold: written as their ISO "
            "8601 text",
            LancellWarning,
            stacklevel=1,
        )
    partial = output.with_name(f".lancell-query-{os.getpid()}.part")  # (short: any name -o takes fits)
    try:
        failed = None
        with _quiet_h5py_releases() as interrupts:
            try:
                adata.write_h5ad(partial)
            except (OSError, RuntimeError, TypeError, ValueError) as exc:  # (HDF5's close: RuntimeError)
                failed = _unwritten(output, exc)
                exc.__traceback__ = None  # (its frames hold h5py's objects: released below, quietly)
            gc.collect()
        if interrupts:  # a Ctrl-C (SIGTERM) Python dropped, raised in a callback while the file was written
            raise interrupts[0]
        if failed is not None:
            raise failed
        partial.replace(output)
    finally:  # (a read-only folder says EROFS even for no file: the write's own error stands)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_h5py_releases() -> Iterator[list[KeyboardInterrupt]]:
    """Drop, in the block, the errors h5py cannot raise while it releases the objects of a file it failed to
    write (a full disk: one traceback per object, hundreds of lines, some printed through
    ``sys.excepthook``): the write's own error says it once. Only errors raised by that release are
    dropped (h5py's ``ObjectID._dealloc``). A Ctrl-C (or the CLI's SIGTERM) that arrives in a callback
    (a weak reference's, an object's release) is not raised there by Python: it is kept in the list
    given, for the caller to raise (it was printed as "Exception ignored", and the command went on)."""
    unraisable_hook, except_hook = sys.unraisablehook, sys.excepthook

    def released(tb: Any) -> bool:
        frames = traceback.extract_tb(tb) if tb is not None else []
        return bool(frames) and frames[-1].filename.endswith("_objects.pyx") and "dealloc" in frames[-1].name

    def on_unraisable(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            interrupts.append(unraisable.exc_value)
        elif not released(unraisable.exc_traceback):
            unraisable_hook(unraisable)

    def on_exception(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not released(tb):
            except_hook(kind, value, tb)

    interrupts: list[KeyboardInterrupt] = []
    sys.unraisablehook, sys.excepthook = on_unraisable, on_exception
    try:
        yield interrupts
    finally:
        sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def _unwritten(output: Path, exc: Exception) -> Exception:
    """The error of a query result that could not be written to ``output``: a ``StoreError`` with the
    system's words and number for a failed write (HDF5's message names its buffers and offsets), a
    ``QueryError`` for values an .h5ad file cannot hold (an older atlas's list-valued or NUL-holding text
    column), on one line."""
    from lancell.errors import QueryError, StoreError

    text = " ".join(" ".join([str(exc), *getattr(exc, "__notes__", ())]).split())  # (anndata: the key)
    if isinstance(exc, OSError) or "errno = " in text:  # a write the system refused (HDF5 names its errno)
        said = re.search(r"error message = '([^']+)'", text)
        error = StoreError(f"cannot write {output}: {said.group(1) if said else text}")
        found = re.search(r"errno = (\d+)", text)
        error.errno = getattr(exc, "errno", None) or (int(found.group(1)) if found else None)
        return error
    return QueryError(f"cannot write {output} (.h5ad): {text}")


def _times_as_text(obs: pd.DataFrame) -> list[str]:
    """Replace ``obs``'s date, time and duration columns by their ISO 8601 text (missing stays missing); the
    columns replaced."""
    import pandas as pd

    replaced = []
    for name in obs.columns:
        column = obs[name]
        if column.dtype.kind in "Mm" or pd.api.types.infer_dtype(column, skipna=True) in ("date", "datetime"):
            text = column.map(lambda value: value.isoformat() if hasattr(value, "isoformat") else str(value))
            obs[name] = text.where(column.notna()).astype("category")  # (a missing one stays missing)
            replaced.append(str(name))
    return replaced
