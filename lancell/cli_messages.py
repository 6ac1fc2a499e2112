"""The library's errors and warnings as the ``lancell`` command prints them: one line led by the command,
with the remedies the library words for Python callers (``.layers()``, ``store=``) named by their flags."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["about_file", "for_command_line", "one_line_warnings", "print_error", "progress_bars"]

# (the library's words, the command line's), replaced in this order
_FLAGS = (
    ("choose with .layers()", "choose one with --layer"),
    (".on_unmeasured('drop')", "--on-unmeasured drop"),
    (".on_unmeasured('keep')", "--on-unmeasured keep"),
    ("with .where()", "with --where"),
    ("atlas.validate()", "lancell validate"),
    ("pass store= (--store on the command line)", "pass --store"),
    ("pass store=", "pass --store"),
    ("no organism=", "no --organism"),
    ("pass organism=", "pass --organism"),
    ("call atlas.snapshot() first", "run lancell snapshot first"),
    ("registry_schemas names feature spaces", "--registry names feature spaces"),
    ("have no registry schema in registry_schemas", "have no --registry"),
    ("layers names feature spaces", "--layers names feature spaces"),
    ("pass case_sensitive=False to query.features() (lancell query --ignore-case)", "pass --ignore-case"),
    ("; nothing was ingested (on_duplicate='skip')", "; nothing was ingested"),
    ("on_conflict='keep'", "--on-conflict keep"),
    ("on_conflict='update'", "--on-conflict update"),
    (
        "vacuum() then, or vacuum(grace=timedelta(0)) when no reader is left",
        "lancell vacuum then, or lancell vacuum --grace-hours 0 when no reader is left",
    ),
    (
        "(RaggedAtlas.find_snapshot, the Dagster snapshot partitions)",
        "(lancell versions, the Dagster snapshot partitions)",
    ),
    ("feature_join('union')", "--join union"),
    ("feature_join('intersection')", "--join intersection"),
    (
        "read the file without backed mode or convert X to CSR",
        "convert X to CSR in the file first (adata.X = adata.X.tocsr(), then adata.write_h5ad(path))",
    ),
    (
        "call adata.obs_names_make_unique() first",
        "make them unique in the file first (adata.obs_names_make_unique(), then adata.write_h5ad(path))",
    ),
)


def progress_bars() -> bool:
    """Whether a command shows progress bars: on a terminal's stderr only (a log or a pipe gets none)."""
    return sys.stderr is not None and sys.stderr.isatty()


def for_command_line(message: str) -> str:
    """``message`` with the Python calls it names as remedies replaced by the command line's flags."""
    for python, flag in _FLAGS:
        message = message.replace(python, flag)
    return message


def print_error(command: str, message: str) -> None:
    """Print ``message`` as the command's one error line on stderr, Python remedies named by their flags."""
    print(f"lancell {command}: error: {for_command_line(message)}", file=sys.stderr)


def about_file(exc: Exception, path: Path, uid: str | None) -> None:
    """Lead the message of ``exc``, raised while ingesting ``path`` as dataset ``uid`` (None: before its uid
    was known), by the file (and the dataset, unless it names them already); its type and cause stay."""
    message = str(exc)
    if not message.startswith(str(path)):
        dataset = "" if uid is None or repr(uid) in message else f" (dataset {uid!r})"
        exc.args = (f"{path}{dataset}: {message}",)


class _OneLine(logging.Handler):
    """The library's log records of warning level and above as the command's lines (a stale lock broken
    after a kill printed a bare line)."""

    def __init__(self, command: str) -> None:
        super().__init__(logging.WARNING)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        print(f"lancell {self.command}: {level}: {for_command_line(record.getMessage())}", file=sys.stderr)


@contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Print each warning raised inside, and each log record of the library of warning level and above, as
    one line, ``lancell COMMAND: warning: ...``, on stderr (the previous warning display is restored and the
    handler removed on leaving)."""

    def show(message: Warning | str, *_: object, **__: object) -> None:
        print(f"lancell {command}: warning: {for_command_line(str(message))}", file=sys.stderr)

    handler, logger = _OneLine(command), logging.getLogger("lancell")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        logger.removeHandler(handler)
