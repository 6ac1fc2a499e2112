"""Landing-zone files: an ``.h5ad`` plus an optional JSON sidecar saying how to ingest it.

``<stem>.h5ad`` becomes dataset ``<stem>`` unless the sidecar ``<stem>.json`` says otherwise. Every key is
optional; an unknown key is an error naming the sidecar (the file is not ingested)::

    {"uid": "pbmc68k", "feature_space": "gene_expression", "zarr_layer": "log_normalized",
     "var_uid_column": null, "symbol_column": "gene_symbol", "organism": "Homo sapiens",
     "name": "PBMC 68k", "source": "scanpy 1.11.5", "accession": null,
     "obs_columns": {"celltype_fine": "cell_type"}, "layers": {"counts": "raw_counts"},
     "standardize": false, "csc": false}

``uid``
    The dataset uid (default: the file stem).
``feature_space``, ``zarr_layer``
    The feature space and the name the matrix is stored under (``counts`` by default).
``var_uid_column``, ``symbol_column``
    The ``var`` columns holding the registry uids (default: the var index) and the gene symbols (default:
    var's ``gene_symbol`` column if it has one, else the var index). A named column var lacks is an error.
``organism``
    Recorded on the new features and, when ``obs`` has no ``organism`` column, on the cells.
``name``, ``source``, ``accession``
    Provenance on the dataset record (``source`` defaults to the file's path).
``obs_columns``
    ``{column in the file: cell schema column}``: obs columns renamed before ingestion, so a file's own
    names (``celltype_fine``, ``donor``) land in the schema's columns. A source column the file lacks or a
    target the cell schema does not declare is an error. Other undeclared columns are not stored and are
    listed as ``dropped_obs_columns`` on the dataset record.
``layers``
    ``{stored name: AnnData source}``, one entry or several: store each ``adata.layers[source]`` (or ``"X"``)
    under its name (``{"counts": "counts", "log_normalized": "X"}``), instead of ``X`` under ``zarr_layer``
    (give one of the two keys, not both; :func:`lancell.ingest.from_anndata.add_from_anndata`'s ``layers``).
``standardize``
    ``true``: map obs labels to ontology term ids and genes to Ensembl ids first
    (:func:`lancell.standardize.pipeline.standardize_anndata` on the ``var_uid_column`` or var index; loads
    the file into memory). Genes are registered and stored under their Ensembl id (an unresolved gene under
    its name); genes that resolve to one id are summed in X and each layer that hold counts (integers,
    or floats that are all whole numbers), the first is kept in the others (warned). The term id columns
    are stored where the cell schema declares them.
``csc``
    ``true`` or ``false``: write the feature-major (CSC) copy or not; by default lancell's rule
    (:func:`lancell.ingest.from_anndata.add_from_anndata`'s ``csc``: sparse datasets of at least
    ``lancell.storage.csc.CSC_MIN_VALUES`` values). ``lancell.ingest.add_csc.add_csc`` adds it later.

:func:`ingest_landing_file` registers the file's features (registry columns found in ``var`` are copied) and
ingests it in backed mode; it is what the Dagster ``dataset_group`` asset calls. A file whose content is
already in the atlas (the same file landed again under another name) is not ingested again: the outcome says
``"duplicate"`` and names the dataset that holds it. :func:`landing_fingerprint` tells whether a landing file
(and its sidecar's options) is still the one a dataset was ingested from.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import pydantic
import xxhash

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError, LancellWarning
from lancell.ingest.from_anndata import add_from_anndata, open_h5ad
from lancell.tables.feature_spaces import resolve_feature_space
from lancell.tables.registry import sql_literal
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
    "present_record",
    "read_landing_spec",
]

LandingOutcome = Literal["ingested", "present", "duplicate"]


@dataclass(frozen=True)
class LandingSpec:
    """How one landing file is ingested."""

    path: Path
    uid: str
    feature_space: str = "gene_expression"
    zarr_layer: str = "counts"
    var_uid_column: str | None = None
    symbol_column: str | None = None  # None: var's "gene_symbol" column if it has one, else the var index
    organism: str | None = None
    name: str | None = None
    source: str | None = None
    accession: str | None = None
    obs_columns: Mapping[str, str] = field(default_factory=dict)
    layers: Mapping[str, str] = field(default_factory=dict)  # stored name -> "X" or an adata.layers key
    standardize: bool = False
    csc: bool | None = None  # the CSC copy: None = add_from_anndata's default


_SIDECAR_KEYS = frozenset({f.name for f in fields(LandingSpec)} - {"path"})
_TEXT_KEYS = frozenset({f.name for f in fields(LandingSpec) if f.type in ("str", "str | None")})
_REQUIRED_TEXT = frozenset({f.name for f in fields(LandingSpec) if f.type == "str"})


def _sidecar_options(sidecar: Path) -> dict[str, Any]:
    """The sidecar's keys, type-checked."""
    try:
        options = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IngestError(f"{sidecar}: not valid JSON ({exc})") from exc
    except OSError as exc:  # a folder, unreadable
        raise IngestError(f"{sidecar}: cannot be read ({exc})") from exc
    if not isinstance(options, dict):
        raise IngestError(f"{sidecar}: must hold a JSON object, not {type(options).__name__}")
    unknown = sorted(set(options) - _SIDECAR_KEYS)
    if unknown:
        raise IngestError(f"{sidecar}: unknown keys {unknown} (known: {sorted(_SIDECAR_KEYS)})")
    for key in _TEXT_KEYS & set(options):
        value = options[key]
        if not (isinstance(value, str) and value) and not (value is None and key not in _REQUIRED_TEXT):
            wanted = "a non-empty string" if key in _REQUIRED_TEXT else "a non-empty string or null"
            raise IngestError(f"{sidecar}: {key} must be {wanted}, got {value!r}")
    renames = options.get("obs_columns", {})
    if not isinstance(renames, dict) or not all(isinstance(v, str) for v in renames.values()):
        raise IngestError(f"{sidecar}: obs_columns must map file columns to cell schema columns")
    if not isinstance(options.get("standardize", False), bool):
        raise IngestError(f"{sidecar}: standardize must be true or false")
    if not isinstance(options.get("csc", False), bool):
        raise IngestError(f"{sidecar}: csc must be true or false, got {options['csc']!r}")
    if "layers" in options:
        layers = options["layers"]
        valid = isinstance(layers, dict) and all(isinstance(v, str) and v for v in layers.values())
        if not valid or not layers:
            raise IngestError(
                f"{sidecar}: layers must map stored layer names to their AnnData sources, got {layers!r}"
            )
        if "zarr_layer" in options:
            raise IngestError(f"{sidecar}: give layers or zarr_layer, not both")
    return options


def read_landing_spec(path: Path) -> LandingSpec:
    """The spec of ``path`` (defaults overridden by its ``.json`` sidecar, if any; keys in the module doc).

    Raises
    ------
    IngestError
        The sidecar is not a JSON object, has an unknown key or a malformed value; the message names it.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    options = _sidecar_options(sidecar) if sidecar.exists() else {}
    options.setdefault("uid", path.stem)
    return LandingSpec(path=path, **options)


def landing_files(folder: Path) -> list[LandingSpec]:
    """Every ``.h5ad`` in ``folder`` (the suffix in any case; sorted by name) with its spec.

    Raises
    ------
    IngestError
        ``folder`` does not exist or is not a folder, or a sidecar is malformed (see
        :func:`read_landing_spec`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IngestError(f"landing folder {folder} does not exist or is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".h5ad" and p.is_file())
    return [read_landing_spec(p) for p in paths]


def landing_fingerprint(spec: LandingSpec) -> str:
    """XXH3-128 (hex) of the landing file's bytes and of the options its sidecar gives (every field of
    ``spec`` but ``path``): equal exactly when the same bytes land with the same options.

    Unlike a dataset's ``content_fingerprint`` (:mod:`lancell.ingest.fingerprint`), which digests what was
    stored, it is computed from the file alone, in one read.

    Raises
    ------
    IngestError
        The file cannot be read (the message names it).
    """
    digest = xxhash.xxh3_128()
    options = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name != "path"}
    digest.update(json.dumps(options, sort_keys=True, default=dict).encode())
    try:
        with spec.path.open("rb") as file:
            while block := file.read(1 << 24):
                digest.update(block)
    except OSError as exc:
        raise IngestError(f"landing file {spec.path} cannot be read: {exc}") from exc
    return digest.hexdigest()


def present_record(atlas: RaggedAtlas, uid: str) -> DatasetRecord | None:
    """The record of dataset ``uid`` if the atlas has it, else None."""
    rows = atlas.core.tables.datasets.search().where(f"uid = {sql_literal(uid)}").to_arrow().to_pylist()
    return atlas.dataset_schema(**rows[0]) if rows else None


def _features(atlas: RaggedAtlas, spec: LandingSpec, var: pd.DataFrame) -> pd.DataFrame:
    for key in ("var_uid_column", "symbol_column"):
        column = getattr(spec, key)
        if column is not None and column not in var.columns:
            raise IngestError(f"{spec.path}: {key} {column!r} is not a column of var ({list(var.columns)})")
    uids = pd.Series(_column(var, spec.var_uid_column), index=var.index)
    if uids.isna().any():  # as text they became the feature "nan"
        missing = uids.index[uids.isna().to_numpy()].tolist()
        raise IngestError(
            f"{spec.path}: {len(missing)} var entries have no feature uid "
            f"({spec.var_uid_column or 'the var index'}), e.g. {missing[:5]}"
        )
    frame = pd.DataFrame({"uid": uids.astype(str).to_numpy()})
    schema = atlas.core.tables.registry(spec.feature_space).schema
    if "gene_symbol" in schema.names:
        symbol_column = spec.symbol_column or "gene_symbol"
        symbol_column = symbol_column if symbol_column in var.columns else None  # else the var index
        symbols = pd.Series(_column(var, symbol_column), index=var.index)
        frame["gene_symbol"] = _symbols(spec, symbols, frame["uid"], schema.field("gene_symbol").nullable)
    if "organism" in schema.names and spec.organism is not None:
        frame["organism"] = spec.organism
    for name in set(schema.names) & set(var.columns) - set(frame.columns):
        frame[name] = var[name].to_numpy()
    return frame.drop_duplicates("uid")


def _column(var: pd.DataFrame, name: str | None) -> np.ndarray:
    """The values of var column ``name``, or of the var index (None)."""
    return (var.index if name is None else var[name]).to_numpy()


def _symbols(spec: LandingSpec, symbols: pd.Series, uids: pd.Series, nullable: bool) -> np.ndarray:
    """The registry's ``gene_symbol`` values: missing ones stay missing where the registry allows it, else
    are the feature's uid (warned); as text they were the symbol "nan"."""
    missing = symbols.isna().to_numpy()
    values = np.where(missing, None, symbols.astype(str).to_numpy()).astype(object)
    if missing.any() and not nullable:
        values[missing] = uids.to_numpy()[missing]
        warnings.warn(
            f"{spec.path}: {int(missing.sum())} var entries have no gene symbol, e.g. "
            f"{symbols.index[missing][:5].tolist()}; the registry requires one: their uid is registered as "
            "their symbol",
            LancellWarning,
            stacklevel=4,
        )
    return values


def _prepared(
    atlas: RaggedAtlas, spec: LandingSpec, adata: ad.AnnData
) -> tuple[ad.AnnData, StandardizationReport | None]:
    """``adata`` with the sidecar's obs renames, organism column and standardization applied, and the
    standardization report (None without ``standardize``)."""
    declared = {f.name for f in obs_fields(atlas.cell_arrow_schema)}
    missing = sorted(set(spec.obs_columns) - set(adata.obs.columns))
    if missing:
        raise IngestError(f"{spec.path}: obs_columns renames {missing}, which obs does not have")
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
        raise IngestError(f"{spec.path}: layers names {missing_layers}, not in {list(adata.layers)}{raw}")
    adata.obs = adata.obs.rename(columns=dict(spec.obs_columns))
    organism = spec.organism
    if spec.standardize and organism is not None:  # the name standardization records on the features
        from lancell.standardize.genes import canonical_organism

        organism = canonical_organism(organism)
    if organism is not None and "organism" not in adata.obs.columns:
        adata.obs["organism"] = organism
    elif organism is not None and (adata.obs["organism"].astype(str) != organism).any():
        warnings.warn(
            f"{spec.path}: obs has an organism column of its own, kept for the cells; organism "
            f"{organism!r} is recorded on the new features only",
            LancellWarning,
            stacklevel=3,
        )
    if not spec.standardize:
        return adata, None
    from lancell.standardize.pipeline import standardize_anndata

    return standardize_anndata(
        adata, organism=spec.organism, gene_column=spec.var_uid_column, duplicates="auto"
    )


def check_landing_spec(atlas: RaggedAtlas, spec: LandingSpec) -> None:
    """Refuse a spec whose feature space the atlas lacks or whose layers that space does not allow (before
    any file is read: ``lancell ingest`` checks every file's first).

    Raises
    ------
    FeatureSpaceError
        Naming the space or the layer.
    """
    space = resolve_feature_space(atlas.feature_spaces, spec.feature_space)
    for layer in spec.layers or [spec.zarr_layer]:
        space.check_layer(layer)


def ingest_landing_file(
    atlas: RaggedAtlas,
    spec: LandingSpec,
    *,
    on_standardized: Callable[[StandardizationReport], None] | None = None,
) -> tuple[DatasetRecord, LandingOutcome]:
    """Register the file's features and ingest it; return ``(record, outcome)``.

    With ``spec.standardize``, ``on_standardized`` (if given) receives the
    :class:`~lancell.standardize.pipeline.StandardizationReport` before anything is registered.

    ``outcome`` is ``"ingested"``; ``"present"`` when dataset ``spec.uid`` is already in the atlas
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
        feature's ``global_index`` is never reused.
    FeatureSpaceError
        The spec names a feature space the atlas does not have.
    """
    check_landing_spec(atlas, spec)  # before anything is registered (or a typo passes)
    existing = present_record(atlas, spec.uid)
    if existing is not None:  # the file is not read (it may be gone: the dataset stays as ingested)
        return existing, "present"
    if not spec.path.exists():
        raise IngestError(f"landing file {spec.path} does not exist")
    try:
        record = atlas.dataset_schema(
            uid=spec.uid, name=spec.name, source=spec.source or str(spec.path), accession=spec.accession
        )
    except pydantic.ValidationError as exc:
        raise IngestError(f"{spec.path}: the dataset record is invalid: {exc}") from exc
    check_dataset_uid(spec.uid)  # before anything is registered
    adata = open_h5ad(spec.path)
    adata, report = _prepared(atlas, spec, adata)
    if report is None:
        features, uid_column = _features(atlas, spec, adata.var), spec.var_uid_column
    else:
        from lancell.standardize.pipeline import feature_rows

        if on_standardized is not None:
            on_standardized(report)
        columns = pd.Index(atlas.core.tables.registry(spec.feature_space).schema.names)
        features, uid_column = feature_rows(adata, report, columns).drop_duplicates("uid"), "feature_uid"
    # Registered features stay registered if the ingestion then fails: another ingestion may already use
    # them (a dataset of theirs, committed or still being written), and a global_index is never reused.
    atlas.register_features(spec.feature_space, features)
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
    )
    return stored, "ingested" if stored.uid == spec.uid else "duplicate"
