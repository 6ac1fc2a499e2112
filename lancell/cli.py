"""The ``lancell`` command: build, inspect, snapshot and query an atlas without writing Python.

Every command takes the atlas's database location (a path or an object-store URL) first. Errors are printed
as one line naming what went wrong and where, with exit status 1 (2 for a malformed command line); a
``validate`` that finds problems also exits 1. Heavy modules are imported by the command that needs them, so
``lancell --help`` answers at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _init(args: argparse.Namespace) -> int:
    from lancell.atlas import RaggedAtlas
    from lancell.tables.schema import load_schema_class

    cell_schema = load_schema_class(args.schema)
    registries = {}
    for item in args.registry:
        space, _, schema = item.partition("=")
        registries[space] = load_schema_class(schema)
    atlas = RaggedAtlas.create(
        args.db,
        args.cell_table,
        cell_schema,
        store=args.store,
        registry_schemas=registries,
    )
    print(f"created {atlas!r}; arrays in {atlas.store!r}")
    return 0


def _pairs(option: str, items: Sequence[str]) -> dict[str, str]:
    """``NAME`` or ``KEY=VALUE`` entries of repeatable, comma-separated ``items`` as an ordered mapping
    (``NAME`` is ``NAME=NAME``).

    Raises
    ------
    IngestError
        An empty name, or a key given twice.
    """
    from lancell.errors import IngestError

    pairs: dict[str, str] = {}
    for entry in (part.strip() for item in items for part in item.split(",")):
        key, _, value = entry.partition("=")
        key, value = key.strip(), (value.strip() if "=" in entry else key.strip())
        if not key or not value:
            raise IngestError(f"{option}: {entry!r} is not NAME or NAME=NAME")
        if key in pairs:
            raise IngestError(f"{option}: {key!r} is given twice")
        pairs[key] = value
    return pairs


def _spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The landing-spec fields the command line sets (over each file's sidecar)."""
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "uid": args.uid,
            "feature_space": args.feature_space,
            "var_uid_column": args.var_uid_column,
            "organism": args.organism,
        }.items()
        if value is not None
    }
    if args.layer is not None:  # one layer stored from X, whatever layers a sidecar names
        overrides |= {"zarr_layer": args.layer, "layers": {}}
    if args.layers:
        overrides["layers"] = _pairs("--layers", args.layers)
    if args.standardize:
        overrides["standardize"] = True
    return overrides


def _ingest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lancell.atlas import RaggedAtlas
    from lancell.errors import IngestError
    from lancell.ingest.landing import ingest_landing_file, read_landing_spec

    if args.uid is not None and len(args.paths) > 1:
        raise IngestError(f"--uid names one dataset but {len(args.paths)} files were given")
    atlas = RaggedAtlas.open(args.db, store=args.store)
    overrides = _spec_overrides(args)
    renames = _pairs("--obs-columns", args.obs_columns or [])
    missing = [path for path in args.paths if not Path(path).is_file()]
    if missing:
        raise IngestError(f"no such file: {', '.join(missing)}")
    specs = [read_landing_spec(Path(path)) for path in args.paths]  # every sidecar checked before any ingest
    for spec in specs:
        spec = replace(spec, **overrides, obs_columns={**spec.obs_columns, **renames})

        def standardized(report: Any, uid: str = spec.uid) -> None:
            print("\n".join(f"{uid}: {line}" for line in report.summary().splitlines()))

        record, outcome = ingest_landing_file(atlas, spec, on_standardized=standardized)
        layers = ", ".join(record.layers or [record.layer])
        summary = f"{record.n_cells} cells, {record.nnz} values, layers {layers}"
        if outcome == "ingested":
            print(f"{record.uid}: ingested ({summary})")
        elif outcome == "present":
            print(f"{spec.uid}: already in the atlas ({summary})")
        else:
            print(f"{spec.uid}: skipped, {spec.path} holds the same content as dataset {record.uid}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    atlas = _open_for_reading(args)
    frame = atlas.list_datasets()
    columns = ["uid", "feature_space", "layers", "n_cells", "n_features", "nnz", "cells_of"]
    print(frame[columns].to_string(index=False))
    print(f"{len(frame)} datasets, {int(frame['n_cells'][frame['cells_of'].isna()].sum())} cells")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from lancell.atlas import RaggedAtlas

    atlas = RaggedAtlas.open(args.db, store=args.store)
    if args.optimize:
        atlas.optimize()
    version = atlas.snapshot(note=args.note)
    print(f"snapshot {version}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    from lancell.atlas import RaggedAtlas

    frame = RaggedAtlas.list_versions(args.db)
    columns = ["version", "created_at", "total_cells", "n_datasets", "note"]
    print(frame[columns].to_string(index=False) if len(frame) else "no snapshot yet")
    return 0


def _query(args: argparse.Namespace) -> int:
    atlas = _open_for_reading(args)
    query = atlas.query()
    for sql in args.where:
        query = query.where(sql)
    if args.layer is not None:
        space, _, layer = args.layer.rpartition(":")
        query = query.layers(space or "gene_expression", layer)
    if args.features:
        names = [name for item in args.features for name in item.split(",") if name]
        query = query.features(
            names, args.feature_space or "gene_expression", case_sensitive=not args.ignore_case
        )
    query = query.feature_join(args.join).on_unmeasured(args.on_unmeasured)
    adata = query.to_anndata()
    output = Path(args.output)
    partial = output.with_name(f".{output.name}.{os.getpid()}.part")  # no half-written file at -o
    try:
        adata.write_h5ad(partial)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {adata.n_obs} cells x {adata.n_vars} features to {args.output}")
    return 0


def _vacuum(args: argparse.Namespace) -> int:
    from lancell.atlas import RaggedAtlas

    removed = RaggedAtlas.open(args.db, store=args.store).vacuum(grace=timedelta(hours=args.grace_hours))
    print(", ".join(f"{name}: {count}" for name, count in removed.items()))
    return 0


def _validate(args: argparse.Namespace) -> int:
    problems = _open_for_reading(args).validate()
    for problem in problems:
        print(problem)
    print("consistent" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


def _open_for_reading(args: argparse.Namespace) -> Any:
    from lancell.atlas import RaggedAtlas

    if args.version is None:
        return RaggedAtlas.open(args.db, store=args.store)
    return RaggedAtlas.checkout(args.db, args.version, store=args.store)


def _hours(text: str) -> float:
    """A ``--grace-hours`` value: a finite number of hours, at least 0."""
    try:
        hours = float(text)
        timedelta(hours=hours)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not math.isfinite(hours) or hours < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of hours, at least 0: {text!r}")
    return hours


def _check_query_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a query command line whose output cannot be written or whose options would be ignored,
    before the atlas is read."""
    for given, option in (
        (args.feature_space is not None, "--feature-space"),
        (args.ignore_case, "--ignore-case"),
    ):
        if given and not args.features:
            parser.error(f"{option} applies to --features, and no --features were given")
    output = Path(args.output)
    if output.is_dir():
        parser.error(f"-o {args.output}: is a folder, not a file")
    if not output.parent.is_dir():
        parser.error(f"-o {args.output}: the folder {str(output.parent)!r} does not exist")


def _parser() -> argparse.ArgumentParser:
    from lancell.version import __version__

    parser = argparse.ArgumentParser(
        prog="lancell", description="Build, inspect, snapshot and query a lancell atlas."
    )
    parser.add_argument("--version", action="version", version=f"lancell {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], int], help_: str, *, store: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, description=help_)
        sub.add_argument("db", help="the atlas's database location (a path or an object-store URL)")
        if store:
            sub.add_argument(
                "--store",
                help="where the zarr arrays live (default: <db>/_zarr for init, else the store the atlas "
                "recorded; give it for a copied or moved atlas whose store lies outside its folder)",
            )
        sub.set_defaults(run=run)
        return sub

    init = command("init", _init, "create an empty atlas")
    init.add_argument("--cell-table", default="cells", help="name of the cell table (default: cells)")
    init.add_argument(
        "--schema",
        default="lancell.bundled:CellSchema",
        help="cell schema as module:Class (default: %(default)s)",
    )
    init.add_argument(
        "--registry",
        action="append",
        default=None,
        metavar="SPACE=module:Class",
        help="registry schema of a feature space (default: gene_expression=lancell.bundled:GeneFeature)",
    )

    ingest = command("ingest", _ingest, "ingest .h5ad files (each with an optional JSON sidecar)")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help=".h5ad files")
    ingest.add_argument("--uid", help="dataset uid (one file only; default: the sidecar's or the file stem)")
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
        "--feature-space", help="feature space (default: the sidecar's, else gene_expression)"
    )
    ingest.add_argument("--var-uid-column", help="var column holding the registry uids (default: var index)")
    ingest.add_argument(
        "--organism", help="organism recorded for the new features (for the cells too, when obs has none)"
    )

    command("ls", _ls, "list the datasets").add_argument("--version", type=int, help="read this snapshot")

    snapshot = command("snapshot", _snapshot, "validate and record a snapshot of the atlas")
    snapshot.add_argument(
        "--note", help="a label stored with the snapshot; unique: a note another snapshot has is refused"
    )
    snapshot.add_argument("--optimize", action="store_true", help="compact the tables first")

    command("versions", _versions, "list the snapshots", store=False)

    query = command("query", _query, "write the cells a query selects to an .h5ad file")
    query.add_argument("--version", type=int, help="read this snapshot (default: the live tables)")
    query.add_argument(
        "--where", action="append", default=[], metavar="SQL", help="a filter (repeatable: AND)"
    )
    query.add_argument(
        "--layer", metavar="[SPACE:]LAYER", help="the layer to read, e.g. gene_expression:counts"
    )
    query.add_argument("--features", action="append", metavar="A,B,...", help="feature symbols or uids")
    query.add_argument("--feature-space", help="feature space of --features (default: gene_expression)")
    query.add_argument(
        "--ignore-case", action="store_true", help="match --features to uids and symbols ignoring case"
    )
    query.add_argument("--join", choices=["union", "intersection"], default="union")
    query.add_argument(
        "--on-unmeasured",
        choices=["error", "drop", "keep"],
        default="error",
        help="cells whose dataset lacks the layer: an error (default), left out, or kept as empty rows",
    )
    query.add_argument("-o", "--output", required=True, help="the .h5ad file to write")

    vacuum = command("vacuum", _vacuum, "delete zarr groups no dataset and no snapshot references")
    vacuum.add_argument("--grace-hours", type=_hours, default=1.0, help="keep groups younger than this")

    command("validate", _validate, "check tables and zarr groups agree").add_argument(
        "--version", type=int, help="check this snapshot"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default); return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "registry", False) is None:
        args.registry = ["gene_expression=lancell.bundled:GeneFeature"]
    if args.command == "query":
        _check_query_arguments(parser, args)
    from lancell.errors import LancellError

    try:
        return args.run(args)
    except (LancellError, OSError) as exc:  # OSError: a file or folder named on the command line
        print(f"lancell {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # what was being written is rolled back as after any other error
        print(f"lancell {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
