"""The values and option combinations of the ``lancell`` command line (:mod:`lancell.cli`): argument types,
and each command's checks, which refuse a malformed command line with its usage (exit 2) before the atlas is
opened."""

from __future__ import annotations

import argparse
import math
import os
from datetime import timedelta
from pathlib import Path

from lancell import cli_commands

__all__ = ["CHECKS", "DEFAULT_REGISTRY", "hours", "names", "registry", "space_layers"]

DEFAULT_REGISTRY = ("gene_expression", "lancell.bundled:GeneFeature")


def hours(text: str) -> float:
    """A ``--grace-hours`` value: a finite number of hours, at least 0."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if not math.isfinite(hours) or hours < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of hours, at least 0: {text!r}")
    try:
        timedelta(hours=hours)
    except OverflowError:  # (1e300: a number, past what a time span holds)
        days = timedelta.max.days
        raise argparse.ArgumentTypeError(f"must be at most {days * 24:,} hours: {text!r}") from None
    return hours


def registry(text: str) -> tuple[str, str]:
    """A ``--registry`` value: ``(feature space, module:Class)``."""
    space, sep, schema = (part.strip() for part in text.partition("="))
    if not sep or not space or not schema:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SPACE=module:Class (e.g. {'='.join(DEFAULT_REGISTRY)})"
        )
    return space, schema


def space_layers(text: str) -> tuple[str, list[str]]:
    """An ``init --layers`` value: ``(feature space, allowed layer names)``."""
    space, sep, names = (part.strip() for part in text.partition("="))
    layers = [name.strip() for name in names.split(",") if name.strip()]
    if not sep or not space or not layers:
        example = "gene_expression=counts,spliced"
        raise argparse.ArgumentTypeError(f"{text!r} is not SPACE=LAYER,... (e.g. {example})")
    return space, layers


def names(text: str) -> list[str]:
    """A ``--features`` value: the comma-separated names, each stripped of surrounding spaces (an empty one
    is refused: it was dropped without a word)."""
    names = [name.strip() for name in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(f"no feature names in {text!r}")
    if "" in names:
        raise argparse.ArgumentTypeError(
            f"an empty feature name in {text!r} (name {names.index('') + 1}): separate names by one comma"
        )
    return names


def check_init_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a feature space given two registry schemas; give ``gene_expression`` the default one when
    ``--registry`` is not given."""
    args.registry = args.registry or [DEFAULT_REGISTRY]
    spaces = [space for space, _ in args.registry]
    twice = sorted({space for space in spaces if spaces.count(space) > 1})
    if twice:
        parser.error(f"--registry: feature space {twice[0]!r} is given twice (one registry schema each)")
    spaces = [space for space, _ in args.layers or []]
    twice = sorted({space for space in spaces if spaces.count(space) > 1})
    if twice:
        parser.error(f"--layers: feature space {twice[0]!r} is given twice (list its layers once)")


def check_query_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a query command line whose output cannot be written or whose options would be ignored,
    before the atlas is read."""
    if args.feature_space is not None and not args.features and args.layer is None:
        parser.error("--feature-space applies to --features and --layer, and neither was given")
    if args.ignore_case and not args.features:
        parser.error("--ignore-case applies to --features, and no --features were given")
    layer_space = args.layer.rpartition(":")[0] if args.layer is not None else ""
    if args.feature_space is not None and layer_space and layer_space != args.feature_space:
        parser.error(
            f"--layer {args.layer} reads feature space {layer_space!r}, --feature-space names "
            f"{args.feature_space!r}: a query reads one"
        )
    text, output = args.output, Path(args.output)
    if "" in (where.strip() for where in args.where):
        parser.error("--where is empty: give a filter, or leave the option out")
    if not text:
        parser.error("-o is empty: give the .h5ad file to write")
    if text.endswith(("/", os.sep)):
        parser.error(f"-o {text}: ends with {text[-1]!r}, which names a folder; give the .h5ad file to write")
    try:
        folder = output.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system takes
        parser.error(f"-o {text}: {exc.strerror or exc}")
    if folder:
        parser.error(f"-o {text}: is a folder, not a file")
    if output.suffix.lower() != ".h5ad":
        bare = output.name.lower() == ".h5ad"  # (a name that is the suffix alone: ".h5ad.h5ad" was suggested)
        example = output.with_name("cells.h5ad") if bare else output.with_suffix(".h5ad")
        parser.error(f"-o {text}: query writes an .h5ad file; name it with the .h5ad suffix (e.g. {example})")
    if not output.parent.is_dir():
        parser.error(f"-o {text}: the folder {str(output.parent)!r} does not exist")
    if not os.access(output.parent, os.W_OK):  # (before the query runs; EROFS binds root as well)
        parser.error(
            f"-o {text}: the folder {str(output.parent)!r} cannot be written (read-only or not yours)"
        )


def check_add_csc_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Take dataset uids or ``--all``: one of the two."""
    if args.all and args.uids:
        parser.error(f"give dataset uids or --all, not both (--all with {', '.join(args.uids)})")
    if not args.all and not args.uids:
        parser.error("give the dataset uids, or --all for every sparse dataset lacking a copy")


def check_ingest_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a malformed ingest command line (its usage, exit 2) before the atlas is opened."""
    from lancell.errors import IngestError

    if args.uid is not None and len(args.paths) > 1:
        parser.error(f"--uid names one dataset but {len(args.paths)} files were given")
    for option, items in (("--layers", args.layers), ("--obs-columns", args.obs_columns)):
        try:
            cli_commands.name_pairs(option, items or [])
        except IngestError as exc:
            parser.error(str(exc))


def check_snapshot_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a blank ``--note`` before the atlas is opened (``--optimize`` compacted the tables first)."""
    if args.note is not None and not args.note.strip():
        parser.error(f"--note {args.note!r} is blank: give a label, or leave the option out")


CHECKS = {
    "add-csc": check_add_csc_arguments,
    "init": check_init_arguments,
    "ingest": check_ingest_arguments,
    "query": check_query_arguments,
    "snapshot": check_snapshot_arguments,
}
