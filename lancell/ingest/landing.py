"""Landing files ingested: an ``.h5ad`` or a 10x output, each with an optional JSON sidecar.

What a landing file is, its default dataset uid and the sidecar's keys are in
:mod:`lancell.ingest.landing_spec` (:class:`LandingSpec`, :func:`read_landing_spec`, re-exported here).

:func:`ingest_landing_file` registers the file's features (registry columns found in ``var`` are copied) and
ingests it streamed (an ``.h5ad`` in backed mode, a 10x output through
:func:`lancell.ingest.tenx.add_from_10x`); it is what ``lancell ingest`` and the Dagster ``dataset_group``
asset call. A file whose content is already in the atlas (the same file landed again under another name) is
not ingested again: the outcome says ``"duplicate"`` and names the dataset that holds it.
:func:`landing_fingerprint` tells whether a landing file (and its sidecar's options) is still the one a
dataset was ingested from.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import pandas as pd
import pydantic
import xxhash

from lancell.atlas import RaggedAtlas
from lancell.errors import DuplicateDatasetError, IngestError, LancellWarning, caller_outside_lancell
from lancell.ingest.from_anndata import add_from_anndata, open_h5ad
from lancell.ingest.landing_features import register_for_ingestion, registry_rows, updated
from lancell.ingest.landing_spec import (
    LandingOutcome,
    LandingSpec,
    cell_ranger_forms,
    check_applies,
    is_tenx_output,
    landing_contents,
    landing_paths,
    read_landing_spec,
    sidecar_path,
)
from lancell.ingest.plan import check_cells, check_layer_sources
from lancell.ingest.tenx import DEFAULT_FEATURE_TYPES
from lancell.ingest.tenx_landing import ingest_tenx_output
from lancell.ingest.tenx_matrix import check_tenx_layer
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import OnConflict, sql_literal
from lancell.tables.schema import DatasetRecord, check_dataset_uid, obs_fields

if TYPE_CHECKING:
    from lancell.standardize.pipeline import StandardizationReport

__all__ = [
    "LandingOutcome",
    "LandingSpec",
    "check_landing_spec",
    "ingest_landing_file",
    "landing_files",
    "landing_fingerprint",
    "landing_options",
    "other_landing_file",
    "present_record",
    "read_landing_spec",
    "recorded_source",
]


def landing_files(folder: Path) -> list[LandingSpec]:
    """Every landing file in ``folder`` (sorted by name; :func:`~lancell.ingest.landing_spec.landing_paths`)
    with its spec.

    Raises
    ------
    IngestError
        ``folder`` does not exist or is not a folder, or a sidecar is malformed (see
        :func:`read_landing_spec`).
    """
    return [read_landing_spec(p) for p in landing_paths(folder)[0]]


def landing_options(spec: LandingSpec) -> dict[str, object]:
    """The options a landing file's sidecar gives (every field of ``spec`` but ``path``; ``genome`` only
    when set, so that fingerprints recorded before it existed still compare), as JSON values."""
    options = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name != "path"}
    if options["genome"] is None:
        del options["genome"]
    return json.loads(json.dumps(options, sort_keys=True, default=dict))


def landing_fingerprint(spec: LandingSpec) -> str:
    """XXH3-128 (hex) of the landing file's bytes (a folder's: each file's relative path, size and bytes, in
    name order: :func:`~lancell.ingest.landing_spec.landing_contents`) and of the options its sidecar gives
    (every field of ``spec`` but ``path``; ``genome`` only when set, so that fingerprints recorded before it
    existed still compare): equal exactly when the same bytes land with the same options.

    Unlike a dataset's ``content_fingerprint`` (:mod:`lancell.ingest.fingerprint`), which digests what was
    stored, it is computed from the file alone, in one read.

    Raises
    ------
    IngestError
        The file cannot be read (the message names it).
    """
    digest = xxhash.xxh3_128()
    digest.update(json.dumps(landing_options(spec), sort_keys=True).encode())
    try:
        for path in landing_contents(spec.path):
            if path != spec.path:  # a folder's file: named, and its size, so no two listings digest alike
                digest.update(f"{path.relative_to(spec.path).as_posix()}\0{path.stat().st_size}\0".encode())
            with path.open("rb") as file:
                while block := file.read(1 << 24):
                    digest.update(block)
    except OSError as exc:
        raise IngestError(f"landing file {spec.path} cannot be read: {exc}") from exc
    return digest.hexdigest()


def landing_state(spec: LandingSpec) -> list[tuple[str, int, int, int]]:
    """``(name, inode, size, mtime_ns)`` of the landing file's files and its sidecar: equal before and after
    an ingestion exactly when nothing replaced or wrote them meanwhile (what :func:`landing_fingerprint`
    read is then what was ingested). A file gone is left out."""
    paths = [*landing_contents(spec.path), sidecar_path(spec.path)]
    state = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        state.append((str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return state


def present_record(atlas: RaggedAtlas, uid: str) -> DatasetRecord | None:
    """The record of dataset ``uid`` if the atlas has it, else None."""
    rows = atlas.core.tables.datasets.search().where(f"uid = {sql_literal(uid)}").to_arrow().to_pylist()
    return atlas.dataset_schema(**rows[0]) if rows else None


def recorded_source(spec: LandingSpec) -> str:
    """The ``source`` a landing file's dataset records: the sidecar's ``source``, else the file's absolute
    path (a relative one would name another file from another folder)."""
    return spec.source or os.path.abspath(spec.path)


def other_landing_file(record: DatasetRecord, spec: LandingSpec) -> str | None:
    """Where dataset ``record`` was ingested from, when that is another file than ``spec``'s (two files
    landing on one uid, e.g. ``study_a/sample1.h5ad`` and ``study_b/sample1.h5ad``): the other file, still
    there, or the other sidecar ``source`` when both files state one and they differ.

    A recorded source that is not an absolute path (a sidecar's label, or a path recorded before sources were
    absolute) is another file's unless it names this file from the working folder: a file without a sidecar
    ``source`` cannot be told to be that dataset (two studies' ``sample1.h5ad``, the first with a sidecar).

    None when it is the same file (under any path), when its recorded absolute path is gone (the file moved:
    nothing tells them apart without reading it), and when the two are the two forms of one matrix that Cell
    Ranger writes side by side (``filtered_feature_bc_matrix.h5`` and the folder
    ``filtered_feature_bc_matrix``: :func:`~lancell.ingest.landing_spec.cell_ranger_forms`)."""
    recorded = record.source
    if not recorded or recorded == recorded_source(spec):
        return None
    if not os.path.isabs(recorded):
        if spec.source:
            return f"source {recorded!r} (this file's sidecar says {spec.source!r})"
        try:
            if Path(recorded).exists() and Path(recorded).samefile(spec.path):
                return None
        except OSError:  # (spec.path gone: the dataset is what the atlas holds)
            return None
        return f"source {recorded!r} (this file's sidecar states none: state that source if it is the same)"
    path = Path(recorded)
    try:
        if not path.exists() or path.samefile(spec.path) or cell_ranger_forms(path, spec.path):
            return None
    except OSError:  # (spec.path gone: the dataset is what the atlas holds)
        return None
    return str(path)


def _prepared(
    atlas: RaggedAtlas, spec: LandingSpec, adata: ad.AnnData
) -> tuple[ad.AnnData, StandardizationReport | None]:
    """``adata`` with the sidecar's obs renames, organism column and standardization applied, and the
    standardization report (None without ``standardize``)."""
    declared = {f.name for f in obs_fields(atlas.cell_arrow_schema)}
    missing = sorted(set(spec.obs_columns) - set(adata.obs.columns))
    if missing:
        raise IngestError(f"{spec.path}: the obs columns to rename {missing} are not columns of obs")
    undeclared = sorted(set(spec.obs_columns.values()) - declared)
    if undeclared:
        raise IngestError(
            f"{spec.path}: obs_columns targets {undeclared} are not columns of the cell schema "
            f"(declared: {sorted(declared)})"
        )
    targets = pd.Series(list(spec.obs_columns.values()), dtype=object)
    if targets.duplicated().any():
        raise IngestError(f"{spec.path}: obs_columns give {sorted(set(targets[targets.duplicated()]))} twice")
    clashes = sorted(set(spec.obs_columns.values()) & (set(adata.obs.columns) - set(spec.obs_columns)))
    if clashes:
        raise IngestError(f"{spec.path}: obs_columns targets {clashes} are already columns of obs")
    missing_layers = sorted({s for s in spec.layers.values() if s != "X"} - set(adata.layers))
    if missing_layers:
        raw = "; adata.raw is not a layer" if "raw" in missing_layers else ""
        raise IngestError(
            f"{spec.path}: the layers to store name {missing_layers}, which the file does not hold: a "
            f"layer's source is 'X' or a key of adata.layers ({list(adata.layers) or 'none'}){raw}"
        )
    adata.obs = adata.obs.rename(columns=dict(spec.obs_columns))
    organism = spec.organism
    if spec.standardize and organism is not None:  # the name standardization records on the features
        from lancell.standardize.genes import canonical_organism

        organism = canonical_organism(organism)  # (an unknown one is an error here)
    if organism is not None and "organism" not in adata.obs.columns:
        adata.obs["organism"] = organism
    elif organism is not None and (adata.obs["organism"].astype(str) != organism).any():
        warnings.warn(
            f"{spec.path}: obs has an organism column of its own, kept for the cells; organism "
            f"{organism!r} is recorded on the new features only",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
    if not spec.standardize:
        return adata, None
    from lancell.standardize.pipeline import standardize_anndata

    sources = {"X" if name is None else name for name in spec.layers.values()} or {"X"}
    return standardize_anndata(
        adata,
        matrices=sources,  # (what is standardized and reported is what is stored)
        organism=spec.organism,
        gene_column=spec.var_uid_column,
        duplicates="auto",
    )


def check_landing_spec(atlas: RaggedAtlas, spec: LandingSpec) -> None:
    """Refuse a spec whose keys its file's kind does not use, whose feature space the atlas lacks or whose
    layers that space does not allow (before any file is read: ``lancell ingest`` checks every file's
    first; a 10x output's layer, unless ``feature_space`` names one space, against the spaces its feature
    types may go to: allowed in none is refused here, in some once its feature types are read).

    Raises
    ------
    IngestError
        A key that does not apply (see :func:`~lancell.ingest.landing_spec.check_applies`), a 10x output's
        layer of computed values (:func:`~lancell.ingest.tenx_matrix.check_tenx_layer`), or a path that is
        not valid UTF-8.
    FeatureSpaceError
        Naming the space or the layer.
    """
    try:
        str(spec.path).encode()
    except UnicodeEncodeError:  # a name in another system's encoding (an old share, a zip from Windows)
        raise IngestError(
            f"landing file {os.fsencode(spec.path)!r}: its path is not valid UTF-8, and the atlas records it "
            "(and the dataset uid taken from its name) as text: rename it"
        ) from None
    check_applies(spec)
    if is_tenx_output(spec.path):
        check_tenx_layer(spec.path, spec.zarr_layer)
    if spec.feature_space is None:  # a 10x output: a layer no space of its feature types allows is refused
        spaces = [
            atlas.feature_spaces[s] for s in DEFAULT_FEATURE_TYPES.values() if s in atlas.feature_spaces
        ]
        if spaces and not any(spec.zarr_layer in space.layers for space in spaces):
            spaces[0].check_layer(spec.zarr_layer)
        return
    space = resolve_feature_space(atlas.feature_spaces, spec.feature_space)
    for layer in spec.layers or [spec.zarr_layer]:
        space.check_layer(layer)


def _warn_unknown_organism(spec: LandingSpec) -> None:
    """Warn when the spec's organism is no name of an organism lancell knows (a typo, ``Homo sapien``, would
    be recorded on the features and cells as given, and missed by a filter on the right name)."""
    from lancell.errors import UnknownOrganismError
    from lancell.standardize.genes import canonical_organism
    from lancell.standardize.ontology import ORGANISMS

    if spec.organism is None:
        return
    try:
        canonical_organism(spec.organism)
    except UnknownOrganismError:
        names = [n for scientific, term in ORGANISMS.items() for n in (scientific, *term.synonyms)]
        close = difflib.get_close_matches(spec.organism, names, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        warnings.warn(
            f"{spec.path}: organism {spec.organism!r} is no organism lancell knows{guess}; it is recorded as "
            f"given (known: {sorted(ORGANISMS)})",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def ingest_landing_file(
    atlas: RaggedAtlas,
    spec: LandingSpec,
    *,
    on_standardized: Callable[[StandardizationReport], None] | None = None,
    on_conflict: OnConflict = "error",
    progress: bool = True,
) -> tuple[DatasetRecord, LandingOutcome]:
    """Register the file's features and ingest it; return ``(record, outcome)``.

    ``on_conflict``: a registered feature given with other values (a newer reference's symbol), as for
    :meth:`~lancell.atlas.RaggedAtlas.register_features`. ``progress``: show progress bars.

    With ``spec.standardize``, ``on_standardized`` (if given) receives the
    :class:`~lancell.standardize.pipeline.StandardizationReport` before anything is registered.

    ``record`` is the dataset adding the cells (a 10x output's other feature spaces are attached to them as
    ``<uid>/<feature space>``); ``outcome`` is ``"ingested"``; ``"present"`` when dataset ``spec.uid`` is
    already in the atlas
    (re-materializing a partition is idempotent; the file is not read, and need not exist any more: delete
    the dataset to replace it with another file's content; a :func:`landing_fingerprint` recorded at
    ingestion tells whether the file is still the one ingested); ``"duplicate"`` when the file's content is
    already in the atlas as another dataset, whose record is returned (nothing is ingested; see
    :mod:`lancell.ingest.fingerprint`).

    Raises
    ------
    IngestError
        The file is missing or invalid, or its features conflict with registered ones
        (:class:`~lancell.errors.FeatureConflictError`). The atlas is unchanged, except that features
        registered before the failure stay registered: another ingestion may already be using them, and a
        feature's ``global_index`` is never reused (``on_conflict="update"`` writes the registered features'
        new values only once the dataset is committed).
    FeatureSpaceError
        The spec names a feature space the atlas does not have.
    """
    check_landing_spec(atlas, spec)  # before anything is registered (or a typo passes)
    existing = present_record(atlas, spec.uid)
    if existing is not None:  # the file is not read (it may be gone: the dataset stays as ingested)
        _warn_conflict_policy_unused(spec, on_conflict)
        return existing, "present"
    if not spec.path.exists():
        raise IngestError(f"landing file {spec.path} does not exist")
    if not spec.standardize:  # (standardization refuses an unknown organism)
        _warn_unknown_organism(spec)
    try:
        record = atlas.dataset_schema(
            uid=spec.uid, name=spec.name, source=recorded_source(spec), accession=spec.accession
        )
    except pydantic.ValidationError as exc:
        raise IngestError(f"{spec.path}: the dataset record is invalid: {exc}") from exc
    check_dataset_uid(spec.uid, owns_cells=True)  # before anything is registered
    try:
        return _ingest_new(atlas, spec, record, on_conflict, on_standardized, progress)
    except DuplicateDatasetError:  # another process ingested it meanwhile (its lock held): present now
        existing = present_record(atlas, spec.uid)
        if existing is None:
            raise
        return existing, "present"


def _warn_conflict_policy_unused(spec: LandingSpec, on_conflict: OnConflict) -> None:
    """Say that ``on_conflict`` (other than ``"error"``) was not used for dataset ``spec.uid``, present: its
    file is not read, so no registered value is kept or updated (an update an earlier ingestion stopped
    before, after its dataset committed, included)."""
    if on_conflict != "error":
        warnings.warn(
            f"{spec.uid}: on_conflict={on_conflict!r} not used: the dataset is in the atlas (file not read), "
            "so no registered feature was kept or updated from it",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )


def _ingest_new(
    atlas: RaggedAtlas,
    spec: LandingSpec,
    record: DatasetRecord,
    on_conflict: OnConflict,
    on_standardized: Callable[[StandardizationReport], None] | None,
    progress: bool,
) -> tuple[DatasetRecord, LandingOutcome]:
    """Ingest landing file ``spec`` as ``record`` (:func:`ingest_landing_file`, once the dataset is known
    not to be present)."""
    if is_tenx_output(spec.path):
        stored = ingest_tenx_output(atlas, spec, record, on_conflict, progress)
        return stored, "ingested" if stored.uid == spec.uid else "duplicate"
    adata = open_h5ad(spec.path)
    adata, report = _prepared(atlas, spec, adata)
    if report is None:
        features, uid_column = registry_rows(atlas, spec, adata.var), spec.var_uid_column
    else:
        from lancell.standardize.pipeline import feature_rows

        if on_standardized is not None:
            on_standardized(report)
        columns = pd.Index(atlas.core.tables.registry(spec.feature_space).schema.names)
        features, uid_column = feature_rows(adata, report, columns).drop_duplicates("uid"), "feature_uid"
    check_cells(atlas.core, record, adata.obs)  # (what needs no registry, refused before it changes)
    check_layer_sources(adata, spec.uid, dict(spec.layers) or {spec.zarr_layer: "X"})
    update = register_for_ingestion(atlas, spec.feature_space, features, on_conflict)
    stored = add_from_anndata(
        atlas,
        adata,
        feature_space=spec.feature_space,
        zarr_layer=None if spec.layers else spec.zarr_layer,
        layers=dict(spec.layers) or None,
        dataset_record=record,
        var_uid_column=uid_column,
        csc=spec.csc,
        on_duplicate="skip",
        progress=progress,
    )
    updated(spec, stored.uid, [update])
    return stored, "ingested" if stored.uid == spec.uid else "duplicate"
