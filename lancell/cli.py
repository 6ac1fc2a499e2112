"""The ``lancell`` command: build, inspect, snapshot and query an atlas without writing Python.

Every command takes the atlas's database location (a path or an object-store URL) first. Errors are printed
as one line naming what went wrong and where, with exit status 1 (2 for a malformed command line, printed
with the command's usage); a ``validate`` that finds problems also exits 1. Warnings are printed as one line
each. This module reads the command line (:mod:`lancell.cli_arguments` checks its values and options);
:mod:`lancell.cli_commands` does what each command does
(:mod:`lancell.cli_maintenance` the ones that change or remove what is stored: ``add-csc``, ``delete``,
``optimize``, ``delete-snapshot``, ``vacuum``), and :mod:`lancell.cli_messages` words the library's errors
for the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from lancell import cli_arguments, cli_commands, cli_maintenance

__all__ = ["main"]


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``lancell`` parser and each command's own (which reports that command's misuse)."""
    from lancell.version import __version__

    parser = argparse.ArgumentParser(
        prog="lancell", description="Build, inspect, snapshot and query a lancell atlas."
    )
    parser.add_argument("--version", action="version", version=f"lancell {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(
        name: str, run: Callable[[argparse.Namespace], int], help_: str, *, store: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands[name] = subparsers.add_parser(name, help=help_, description=help_)
        sub.add_argument("db", help="the atlas's database location (a path or an object-store URL)")
        if store:
            sub.add_argument(
                "--store",
                help="where the zarr arrays live (default: <db>/_zarr for init, else the store the atlas "
                "recorded; needed to write to a copied or moved atlas whose store lies outside its folder, "
                "which is read from the recorded store with a warning)",
            )
        sub.set_defaults(run=run)
        return sub

    init = command("init", cli_commands.init, "create an empty atlas")
    init.add_argument("--cell-table", default="cells", help="name of the cell table (default: cells)")
    init.add_argument(
        "--schema",
        default="lancell.bundled:CellSchema",
        help="cell schema as module:Class (default: %(default)s)",
    )
    init.add_argument(
        "--registry",
        action="append",
        type=cli_arguments.registry,
        metavar="SPACE=module:Class",
        help="registry schema of a feature space, once per space "
        f"(default: {'='.join(cli_arguments.DEFAULT_REGISTRY)})",
    )
    init.add_argument(
        "--layers",
        action="append",
        type=cli_arguments.space_layers,
        metavar="SPACE=LAYER,...",
        help="the layer names a feature space allows, once per space (default: counts, normalized, "
        "log_normalized, scaled; a dense space also values)",
    )

    ingest = command(
        "ingest",
        cli_commands.ingest,
        "ingest .h5ad files and 10x outputs (each with an optional JSON sidecar)",
    )
    ingest.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help=".h5ad files, Cell Ranger .h5 files, 10x Matrix Market folders",
    )
    ingest.add_argument(
        "--uid",
        help="dataset uid (one file only; default: the sidecar's, else the file stem or folder name; for "
        "Cell Ranger's own names such as filtered_feature_bc_matrix, the sample folder's)",
    )
    stored = ingest.add_mutually_exclusive_group()
    stored.add_argument(
        "--layer", help="store X under this layer name (default: the sidecar's layers, else counts)"
    )
    stored.add_argument(
        "--layers",
        action="append",
        metavar="STORED=SOURCE,...",
        help="store several layers: each adata.layers[SOURCE] (or X) under STORED; the first is the "
        "record's layer (e.g. counts=counts,log_normalized=X; a bare NAME is NAME=NAME)",
    )
    ingest.add_argument(
        "--obs-columns",
        action="append",
        metavar="FILE=SCHEMA,...",
        help="obs columns to store under a cell schema column: FILE is renamed SCHEMA (a bare NAME is "
        "NAME=NAME); each must be in the file and declared by the schema; other obs columns follow the "
        "usual rule (declared: stored; others: not stored, listed as dropped_obs_columns)",
    )
    ingest.add_argument(
        "--standardize",
        action="store_true",
        help="map genes to Ensembl ids (registered and stored under them; genes sharing an id summed for "
        "counts, else the first kept) and obs labels to ontology term ids first, and print what was "
        "resolved (lancell.standardize.pipeline)",
    )
    ingest.add_argument(
        "--feature-space",
        help="feature space (default: the sidecar's, else gene_expression; a 10x output's feature types "
        "each to theirs: Gene Expression to gene_expression, Antibody Capture to protein, this keeps one)",
    )
    ingest.add_argument(
        "--var-uid-column",
        help="var column holding the registry uids (default: var index; a 10x output's gene_ids, or "
        "gene_symbol)",
    )
    ingest.add_argument("--genome", help="a 10x output's genome, where it holds several")
    ingest.add_argument(
        "--csc",
        action=argparse.BooleanOptionalAction,
        help="write the feature-major (CSC) copy feature-filtered queries read, or not (--no-csc: about "
        "half the ingest time of integer counts; add-csc writes it later) (default: the sidecar's csc, else "
        "for sparse datasets of at least 250,000 values)",
    )
    ingest.add_argument(
        "--on-conflict",
        choices=["error", "keep", "update"],
        default="error",
        help="a registered feature given with other values (a newer reference's symbol): the file is "
        "refused (error, the default), the registered values kept (keep, warned) or the given ones written "
        "(update)",
    )
    ingest.add_argument(
        "--keep-going",
        action="store_true",
        help="a file that fails (its sidecar, its content) is reported and the next ones are ingested; "
        "exit status 1 if any failed (default: stop at the first)",
    )
    ingest.add_argument(
        "--organism", help="organism recorded for the new features (for the cells too, when obs has none)"
    )

    ls = command("ls", cli_commands.ls, "list the datasets")
    ls.add_argument("--version", type=int, help="read this snapshot")
    ls.add_argument(
        "--csc",
        action="store_true",
        help="also list the layers of each dataset with a CSC copy (reads each dataset's group attributes)",
    )

    snapshot = command("snapshot", cli_commands.snapshot, "validate and record a snapshot of the atlas")
    snapshot.add_argument(
        "--note", help="a label stored with the snapshot; unique: a note another snapshot has is refused"
    )
    snapshot.add_argument("--optimize", action="store_true", help="compact the tables first")

    versions = command("versions", cli_commands.versions, "list the snapshots", store=False)
    versions.add_argument("--deleted", action="store_true", help="list deleted snapshots too")

    query = command("query", cli_commands.query, "write the cells a query selects to an .h5ad file")
    query.add_argument("--version", type=int, help="read this snapshot (default: the live tables)")
    query.add_argument(
        "--where", action="append", default=[], metavar="SQL", help="a filter (repeatable: AND)"
    )
    query.add_argument(
        "--layer", metavar="[SPACE:]LAYER", help="the layer to read, e.g. gene_expression:counts"
    )
    query.add_argument(
        "--features",
        action="append",
        type=cli_arguments.names,
        metavar="A,B,...",
        help="feature symbols or uids",
    )
    query.add_argument(
        "--feature-space",
        help="feature space of --features (default: that of --layer SPACE:LAYER, else gene_expression)",
    )
    query.add_argument(
        "--ignore-case", action="store_true", help="match --features to uids and symbols ignoring case"
    )
    query.add_argument(
        "--join",
        choices=["union", "intersection"],
        default="union",
        help="the output's features when datasets measure different panels: every one any selected dataset "
        "measured (union, the default) or those all of them measured (intersection); the output's "
        "varm['presence'] says which dataset measured which",
    )
    query.add_argument(
        "--on-unmeasured",
        choices=["error", "drop", "keep"],
        default="error",
        help="cells whose dataset lacks the layer: an error (default), left out, or kept as empty rows",
    )
    query.add_argument(
        "-o", "--output", required=True, help="the .h5ad file to write (replaced if it exists)"
    )

    add_csc = command(
        "add-csc",
        cli_maintenance.add_csc,
        "write the feature-major (CSC) copy of datasets ingested without one (every stored layer)",
    )
    add_csc.add_argument("uids", nargs="*", metavar="UID", help="dataset uids")
    add_csc.add_argument(
        "--all", action="store_true", help="every sparse dataset lacking a copy of any of its layers"
    )

    delete = command(
        "delete",
        cli_maintenance.delete,
        "delete datasets (their cells and records; their zarr groups stay for snapshots until vacuum)",
    )
    delete.add_argument("uids", nargs="+", metavar="UID", help="dataset uids")

    optimize = command(
        "optimize",
        cli_maintenance.optimize,
        "compact the tables, build the cell table's indexes and prune old table versions no snapshot tags",
    )
    optimize.add_argument(
        "--keep-hours",
        type=cli_arguments.hours,
        default=None,
        help="prune untagged table versions older than this (default: 168, a week; 0 keeps only the "
        "current and the snapshots' versions)",
    )

    delete_snapshot = command(
        "delete-snapshot",
        cli_maintenance.delete_snapshot,
        "delete a snapshot (its number and note are not reused; optimize and vacuum then reclaim what only "
        "it kept)",
    )
    delete_snapshot.add_argument(
        "versions", type=int, nargs="+", metavar="VERSION", help="the snapshots' numbers"
    )

    vacuum = command(
        "vacuum", cli_maintenance.vacuum, "delete zarr groups no dataset and no snapshot references"
    )
    vacuum.add_argument(
        "--grace-hours",
        type=cli_arguments.hours,
        default=1.0,
        help="keep groups needed less than this long ago: released (their dataset deleted), kept by a "
        "snapshot deleted since, or claimed by an ingestion that never finished (default: 1)",
    )
    vacuum.add_argument(
        "--dry-run", action="store_true", help="name the groups it would delete, and delete nothing"
    )

    validating = command("validate", cli_commands.validate, "check tables and zarr groups agree")
    validating.add_argument("--version", type=int, help="check this snapshot")
    validating.add_argument(
        "--checksums",
        action="store_true",
        help="also read every stored chunk and check its CRC32C (the cost of reading the data)",
    )
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); return the exit status.

    Run as the program (``argv`` None, in the main thread), a Ctrl-C once the command is done ends the
    process at once (killed by SIGINT) instead of interrupting the interpreter's shutdown, and a SIGTERM (how
    Kubernetes and most schedulers stop a process) stops the command as a Ctrl-C does: what it was writing
    is rolled back, and it exits with 143.
    """
    from lancell.cli_messages import one_line_warnings, print_error
    from lancell.errors import LancellError

    _usable_streams()
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command == "add-csc" and not any(item.startswith("-") for item in unknown):
        args.uids += unknown  # uids after an option (argparse gave the '*' list none at its place)
        unknown = []
    if unknown:  # the command's own usage names what it takes (the top-level one only the commands)
        given = list(sys.argv[1:] if argv is None else argv)
        before = given.index(unknown[0]) < given.index(args.command) if args.command in given else False
        (parser if before else commands[args.command]).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command in cli_arguments.CHECKS:
        cli_arguments.CHECKS[args.command](commands[args.command], args)
    as_program = argv is None and threading.current_thread() is threading.main_thread()
    if as_program:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        with one_line_warnings(args.command):
            status = args.run(args)
    except BrokenPipeError as exc:  # stdout's reader left (lancell ls | head -1)?
        if _stdout_closed():
            if as_program:  # nothing left to flush at exit (Python's "Exception ignored ... BrokenPipeError")
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            status = 141  # silent, as a program SIGPIPE ended (128 + 13)
        else:
            print_error(args.command, str(exc))
            status = 1
    except (LancellError, OSError) as exc:  # OSError: a file or folder named on the command line
        print_error(args.command, str(exc))
        status = 1
    except KeyboardInterrupt as exc:  # what was being written is rolled back as after any other error
        terminated = isinstance(exc, Terminated) or _TERMINATED.is_set()  # (one a library said again)
        print(f"lancell {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        status = 143 if terminated else 130
    finally:
        if as_program:
            with contextlib.suppress(OSError):  # a closed pipe: Python reports it at exit, as before
                sys.stdout.flush()  # what was printed is out before a Ctrl-C can end the process
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if as_program and status != 0 and _hdf5_files_open():
        # a file HDF5 could not close (`query -o` on a full disk): its exit would print hundreds of lines
        # and crash (SIGSEGV); the command has said its error and removed the file
        with contextlib.suppress(OSError):
            sys.stderr.flush()
        os._exit(status)
    return status


def _hdf5_files_open() -> bool:
    """Whether HDF5 (through h5py, if it was imported) still holds an object (a file, or a group or dataset
    of one) open."""
    h5f = getattr(sys.modules.get("h5py"), "h5f", None)
    return h5f is not None and bool(h5f.get_obj_count(types=h5f.OBJ_ALL))


def _usable_streams() -> None:
    """Standard output and error, closed by the caller (``lancell snapshot DB >&-``: Python sets them to
    None), become the null device (the command did its work, then failed to flush: a retry took a second
    snapshot); text the terminal's encoding cannot show is written escaped (``PYTHONIOENCODING=ascii``)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w"))
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _stdout_closed() -> bool:
    """Whether standard output's reader has gone (poll reports an error on a pipe's write end, a hang-up on a
    socket's)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # (no poll on this system, no descriptor)
        return False


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised where the command is, so that it is rolled back as a Ctrl-C is."""


# set by a SIGTERM: a library that raised it again as a plain KeyboardInterrupt (Lance's "External error:
# Terminated") still ends the command as terminated
_TERMINATED = threading.Event()


def _terminate(signum: int, frame: object) -> None:
    _TERMINATED.set()
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
