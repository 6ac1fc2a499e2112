"""What each ``lancell`` command does, given its parsed and checked command line (:mod:`lancell.cli`).

Each returns the exit status and raises the library's errors, which :func:`lancell.cli.main` prints as one
line. Heavy modules are imported by the command that needs them, so ``lancell --help`` answers at once.
The reading commands (``ls``, ``query``, ``validate``) open the atlas read-only: a copied or moved atlas
whose store lies outside its folder is read from the store it recorded (with a warning), and written only
once ``--store`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lancell.cli_messages import progress_bars
from lancell.cli_tables import counted, plain_table

if TYPE_CHECKING:
    from lancell.atlas import RaggedAtlas

__all__ = ["ingest", "init", "ls", "name_pairs", "query", "snapshot", "validate", "versions"]


def init(args: argparse.Namespace) -> int:
    """``lancell init``: create an empty atlas."""
    from lancell.atlas import RaggedAtlas
    from lancell.tables.schema import load_schema_class

    atlas = RaggedAtlas.create(
        args.db,
        args.cell_table,
        load_schema_class(args.schema),
        store=args.store,
        registry_schemas={space: load_schema_class(schema) for space, schema in args.registry},
        layers=dict(args.layers) if args.layers else None,
    )
    print(f"created {atlas!r}; arrays in {atlas.store!r}")
    return 0


def name_pairs(option: str, items: Sequence[str]) -> dict[str, str]:
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
            "genome": args.genome,
            "csc": args.csc,
        }.items()
        if value is not None
    }
    if args.layer is not None:  # one layer stored from X, whatever layers a sidecar names
        overrides |= {"zarr_layer": args.layer, "layers": {}}
    if args.layers:
        overrides["layers"] = name_pairs("--layers", args.layers)
    if args.standardize:
        overrides["standardize"] = True
    return overrides


def _check_files(paths: Sequence[str]) -> None:
    """Refuse paths that are not landing files.

    Raises
    ------
    IngestError
        A folder that is not a 10x output (naming what ``ingest`` takes), or paths that do not exist.
    """
    from lancell.errors import IngestError
    from lancell.ingest.landing_spec import is_tenx_output

    for path in paths:
        if Path(path).is_dir() and not is_tenx_output(Path(path)):
            names = {child.name for child in Path(path).iterdir()}
            outs = Path(path) if Path(os.path.abspath(path)).name == "outs" else Path(path) / "outs"
            patterns = ("*", "per_sample_outs/*/count/*")  # (count, multi)
            found = (p for pattern in patterns for p in outs.glob(pattern)) if outs.is_dir() else ()
            tenx = sorted(str(p) for p in found if is_tenx_output(p))
            matrices = [p for p in tenx if "filtered" in Path(p).name] or tenx
            if matrices:  # (a folder merely named outs is not one)
                shown = ", ".join(matrices[:4])
                remedy = f"it is a Cell Ranger output folder: give its matrices, e.g. {shown}"
            elif names & {"barcodes.tsv", "barcodes.tsv.gz", "features.tsv", "features.tsv.gz", "genes.tsv"}:
                remedy = "it holds a 10x output's barcodes or features but no matrix.mtx or matrix.mtx.gz"
            elif prefixed := sorted(n for n in names if n.endswith(("_matrix.mtx", "_matrix.mtx.gz"))):
                remedy = (
                    f"it holds 10x files with GEO's sample prefixes ({', '.join(prefixed[:3])}): put each "
                    "sample's matrix, barcodes and features files in a folder of its own, named "
                    "matrix.mtx.gz, barcodes.tsv.gz and features.tsv.gz "
                    "(lancell.ingest.geo_landing.land_geo_series lands a GEO series so)"
                )
            elif any(name.endswith(".h5ad") for name in names):
                remedy = f"give the files, e.g. {os.path.join(path, '*.h5ad')}"
            else:
                remedy = "give its .h5ad files (write an AnnData store with adata.write_h5ad first)"
            raise IngestError(
                f"{path} is a folder: ingest takes .h5ad files, Cell Ranger .h5 files and 10x Matrix Market "
                f"folders (each with an optional JSON sidecar beside it); {remedy}"
            )
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        raise IngestError(f"no such file: {', '.join(missing)}")
    if muddled := [path for path in paths if Path(path).suffix.lower() == ".h5mu"]:  # (read as an .h5ad)
        raise IngestError(
            f"{', '.join(muddled)}: a MuData file, which ingest does not read: ingest it from Python with "
            "lancell.add_from_mudata(atlas, path, {modality: (feature_space, layer), ...})"
        )


# the ingest flags that say how to read a file: unused for a dataset already in the atlas
_FILE_FLAGS = (
    "--layer",
    "--layers",
    "--obs-columns",
    "--standardize",
    "--feature-space",
    "--var-uid-column",
    "--organism",
    "--genome",
)


def ingest(args: argparse.Namespace) -> int:
    """``lancell ingest``: ingest ``.h5ad`` files and 10x outputs one after another, every sidecar checked
    first."""
    from dataclasses import replace

    from lancell.atlas import RaggedAtlas
    from lancell.cli_maintenance import add_csc_hint
    from lancell.errors import (
        DuplicateContentWarning,
        DuplicateDatasetError,
        IngestError,
        LancellError,
        LancellWarning,
    )
    from lancell.ingest.landing import check_landing_spec, other_landing_file, read_landing_spec
    from lancell.ingest.landing_retries import ingest_retrying
    from lancell.ingest.landing_spec import cell_ranger_forms

    atlas = RaggedAtlas.open(args.db, store=args.store)
    overrides = _spec_overrides(args)
    renames = name_pairs("--obs-columns", args.obs_columns or [])
    _check_files(args.paths)
    failed = _Failures(args.keep_going, len(args.paths))
    specs = []
    for path in args.paths:  # every sidecar checked before any ingest
        try:
            specs.append(read_landing_spec(Path(path)))
        except LancellError as exc:  # (its message names the sidecar)
            failed.add(exc, None, None)
    specs = [
        replace(spec, **overrides, obs_columns=renames if args.obs_columns else spec.obs_columns)
        for spec in specs
    ]
    landed: dict[str, Path] = {}
    kept = []
    for spec in specs:  # one dataset per file
        if spec.uid in landed and landed[spec.uid].resolve() == spec.path.resolve():  # (overlapping globs)
            warnings.warn(f"{spec.path} is given more than once: ingested once", LancellWarning, stacklevel=1)
            continue
        if spec.uid in landed and cell_ranger_forms(landed[spec.uid], spec.path):
            warnings.warn(
                f"{spec.path} is the matrix of {landed[spec.uid]} in Cell Ranger's other form: ingested once",
                LancellWarning,
                stacklevel=1,
            )
            continue
        if spec.uid in landed:
            raise IngestError(
                f"{landed[spec.uid]} and {spec.path} both land as dataset uid {spec.uid!r}: give each its "
                "own (a sidecar's uid; --uid names one file's)"
            )
        landed[spec.uid] = spec.path
        kept.append(spec)
    specs = []
    for spec in kept:  # and its feature space and layers
        try:
            check_landing_spec(atlas, spec)
            specs.append(spec)
        except LancellError as exc:
            failed.add(exc, spec.path, spec.uid)
    bars = progress_bars()
    for spec in specs:

        def standardized(report: Any, uid: str = spec.uid) -> None:
            print("\n".join(f"{uid}: {line}" for line in report.summary().splitlines()))

        try:
            with warnings.catch_warnings():  # a skipped duplicate is reported by its own line below
                warnings.simplefilter("ignore", DuplicateContentWarning)
                record, outcome = ingest_retrying(
                    atlas,
                    spec,
                    on_retry=_warn_retry,
                    on_standardized=standardized,
                    on_conflict=args.on_conflict,
                    progress=bars,
                )
        except (LancellError, OSError) as exc:
            failed.add(exc, spec.path, spec.uid)
            continue
        layers = ", ".join(record.layers or [record.layer])
        summary = f"{counted(record.n_cells, 'cell')}, {counted(record.nnz, 'value')}, layers {layers}"
        if outcome == "ingested":
            print(f"{record.uid}: ingested ({summary})")
            modalities = atlas.list_datasets().query("cells_of == @record.uid")
            for row in modalities.itertuples():  # a 10x output's further feature spaces
                print(f"{row.uid}: ingested on the cells of {record.uid} ({counted(row.nnz, 'value')})")
        elif outcome == "present":
            if (other := other_landing_file(record, spec)) is not None:
                clash = DuplicateDatasetError(
                    f"dataset {spec.uid!r} is already in the atlas, ingested from another file, {other} "
                    "(this one was not read): give it its own uid (--uid, or the sidecar's uid), or delete "
                    f"dataset {spec.uid!r} to replace it (lancell delete)"
                )
                failed.add(clash, spec.path, spec.uid)
                continue
            print(f"{spec.uid}: already in the atlas ({summary})")
            unused = [flag for flag in _FILE_FLAGS if getattr(args, flag[2:].replace("-", "_"))]
            unused += (
                [] if args.csc is None else ["--csc" if args.csc else "--no-csc"]
            )  # (--on-conflict: ingestion says)
            if unused:
                warnings.warn(  # (a typo in them would pass unseen)
                    f"{spec.uid}: {', '.join(unused)} not used: the dataset is in the atlas (file not read)"
                    + add_csc_hint(args, atlas, spec.uid),
                    LancellWarning,
                    stacklevel=1,
                )
        else:
            print(f"{spec.uid}: skipped, {spec.path} holds the same content as dataset {record.uid}")
            if args.csc is not None:  # the stored dataset keeps whatever copy it has
                warnings.warn(
                    f"{spec.uid}: {'--csc' if args.csc else '--no-csc'} not used: its content is stored as "
                    f"dataset {record.uid}" + add_csc_hint(args, atlas, record.uid),
                    LancellWarning,
                    stacklevel=1,
                )
    return failed.status()


def _warn_retry(message: str) -> None:
    """Say that a file's ingestion is run again (:mod:`lancell.ingest.landing_retries`)."""
    from lancell.errors import LancellWarning

    warnings.warn(message, LancellWarning, stacklevel=2)


class _Failures:
    """The files of an ``ingest`` that failed: the first raised, or with ``--keep-going`` each printed as an
    error, the others ingested, and the command's exit status 1 at the end."""

    def __init__(self, keep_going: bool, n_files: int) -> None:
        self.keep_going = keep_going
        self.n_files = n_files
        self.failed = 0

    def add(self, exc: Exception, path: Path | None, uid: str | None) -> None:
        """Record that ``path`` failed with ``exc``, its message led by the path and ``uid`` (None: as it is);
        without ``--keep-going``, raise ``exc``."""
        from lancell.cli_messages import about_file, print_error

        if path is not None:
            about_file(exc, path, uid)
        if not self.keep_going:
            raise exc
        print_error("ingest", str(exc))
        self.failed += 1

    def status(self) -> int:
        """The exit status: 1 (with a line naming the failed files) when any failed, else 0."""
        from lancell.cli_messages import print_error

        if not self.failed:
            return 0
        print_error(
            "ingest",
            f"{self.failed} of {self.n_files} files failed (above): fix them and run the command again "
            "(files already in the atlas are reported and skipped)",
        )
        return 1


def _open_for_reading(args: argparse.Namespace) -> RaggedAtlas:
    """The atlas read-only: live, or at snapshot ``--version``."""
    from lancell.atlas import RaggedAtlas

    if args.version is None:
        return RaggedAtlas.open(args.db, store=args.store, read_only=True)
    return RaggedAtlas.checkout(args.db, args.version, store=args.store)


def ls(args: argparse.Namespace) -> int:
    """``lancell ls``: list the datasets."""
    from lancell.tables.visibility import recorded_cells

    atlas = _open_for_reading(args)
    frame = atlas.list_datasets()
    columns = ["uid", "feature_space", "layers", "n_cells", "n_features", "nnz"]
    if frame["cells_of"].notna().any():  # further modalities: the dataset whose cells they measure
        columns.append("cells_of")
    if args.csc:  # the layers whose copy readers use ("-": none; a dense dataset has none)
        attrs = [atlas.group_attributes(group) or {} for group in frame["zarr_group"]]
        frame["csc"] = [",".join(a.get("csc_layers", [])) or "-" for a in attrs]
        columns.append("csc")
    table = f"{plain_table(frame[columns])}\n" if len(frame) else ""
    # one write (under PYTHONUNBUFFERED, `lancell ls DB | grep -q uid` met a closed pipe at the second;
    # print() writes its end apart)
    sys.stdout.write(f"{table}{counted(len(frame), 'dataset')}, {counted(recorded_cells(frame), 'cell')}\n")
    return 0


def snapshot(args: argparse.Namespace) -> int:
    """``lancell snapshot``: validate and record a snapshot (compacting the tables first with
    ``--optimize``)."""
    from lancell.atlas import RaggedAtlas

    atlas = RaggedAtlas.open(args.db, store=args.store)
    if args.optimize:
        atlas.optimize()
    print(f"snapshot {atlas.snapshot(note=args.note)}")
    return 0


def versions(args: argparse.Namespace) -> int:
    """``lancell versions``: list the snapshots (``--deleted``: deleted ones too)."""
    from lancell.atlas import RaggedAtlas

    every = RaggedAtlas.list_versions(args.db, deleted=True)
    gone = every["deleted_at"].notna()
    frame = every if args.deleted else every[~gone]
    columns = ["version", "created_at", "total_cells", "n_datasets", "note"] + ["deleted_at"] * args.deleted
    shown = frame[columns].astype({"note": object}).fillna({"note": ""})  # a snapshot without note: blank
    empty = f"no snapshot ({gone.sum()} deleted: --deleted lists them)" if gone.any() else "no snapshot yet"
    print(plain_table(shown) if len(frame) else empty)
    return 0


def query(args: argparse.Namespace) -> int:
    """``lancell query``: write the cells a query selects to the ``.h5ad`` file ``-o``
    (:func:`lancell.cli_h5ad.write_result`)."""
    selected = _open_for_reading(args).query()
    for sql in args.where:
        selected = selected.where(sql)
    layer_space, _, layer = (args.layer or "").rpartition(":")
    space = args.feature_space or layer_space or "gene_expression"  # one space (the parser checked them)
    if args.layer is not None:
        selected = selected.layers(space, layer)
    if args.features:
        names = [name for names in args.features for name in names]
        selected = selected.features(names, space, case_sensitive=not args.ignore_case)
    from lancell.cli_h5ad import write_result

    selected = selected.feature_join(args.join).on_unmeasured(args.on_unmeasured)
    adata = selected.to_anndata(progress=progress_bars())
    write_result(adata, Path(args.output))
    print(f"wrote {counted(adata.n_obs, 'cell')} x {counted(adata.n_vars, 'feature')} to {args.output}")
    return 0


def validate(args: argparse.Namespace) -> int:
    """``lancell validate``: print the problems found; exit 1 when there are any."""
    problems = _open_for_reading(args).validate(checksums=args.checksums)
    for problem in problems:
        print(problem)
    print("consistent" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0
