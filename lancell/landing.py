"""Landing-zone files: an ``.h5ad`` plus an optional JSON sidecar saying how to ingest it.

``<stem>.h5ad`` becomes dataset ``<stem>`` unless the sidecar ``<stem>.json`` says otherwise::

    {"uid": "pbmc68k", "feature_space": "gene_expression", "zarr_layer": "log_normalized",
     "var_uid_column": null, "symbol_column": "gene_symbol", "organism": "Homo sapiens",
     "name": "PBMC 68k", "source": "scanpy 1.11.5", "accession": null}

:func:`ingest_landing_file` registers the file's features (registry columns found in ``var`` are copied) and
ingests it in backed mode; it is what the Dagster ``dataset_group`` asset calls. A file whose content is
already in the atlas (the same file landed again under another name) is not ingested again: the outcome says
``"duplicate"`` and names the dataset that holds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import anndata as ad
import pandas as pd

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError
from lancell.ingestion import add_from_anndata
from lancell.registry import registry_index, sql_literal
from lancell.schema import DatasetRecord

__all__ = ["LandingOutcome", "LandingSpec", "ingest_landing_file", "landing_files", "read_landing_spec"]

LandingOutcome = Literal["ingested", "present", "duplicate"]


@dataclass(frozen=True)
class LandingSpec:
    """How one landing file is ingested."""

    path: Path
    uid: str
    feature_space: str = "gene_expression"
    zarr_layer: str = "counts"
    var_uid_column: str | None = None
    symbol_column: str | None = "gene_symbol"
    organism: str | None = None
    name: str | None = None
    source: str | None = None
    accession: str | None = None


def read_landing_spec(path: Path) -> LandingSpec:
    """The spec of ``path`` (defaults overridden by its ``.json`` sidecar, if any)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    options: dict[str, object] = {}
    if sidecar.exists():
        try:
            options = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise IngestError(f"{sidecar}: not valid JSON ({exc})") from exc
        unknown = sorted(set(options) - {f.name for f in fields(LandingSpec)} - {"path"})
        if unknown:
            raise IngestError(f"{sidecar}: unknown keys {unknown}")
        options.pop("path", None)
    options.setdefault("uid", path.stem)
    return LandingSpec(path=path, **options)


def landing_files(folder: Path) -> list[LandingSpec]:
    """Every ``.h5ad`` in ``folder`` (sorted by name) with its spec."""
    return [read_landing_spec(p) for p in sorted(Path(folder).glob("*.h5ad"))]


def _features(atlas: RaggedAtlas, spec: LandingSpec, var: pd.DataFrame) -> pd.DataFrame:
    uids = var.index if spec.var_uid_column is None else var[spec.var_uid_column]
    frame = pd.DataFrame({"uid": uids.astype(str).to_numpy()})
    columns = set(atlas._tables.registry(spec.feature_space).schema.names)
    if "gene_symbol" in columns:
        symbols = var[spec.symbol_column] if spec.symbol_column in var.columns else var.index
        frame["gene_symbol"] = symbols.astype(str).to_numpy()
    if "organism" in columns and spec.organism is not None:
        frame["organism"] = spec.organism
    for name in columns & set(var.columns) - set(frame.columns):
        frame[name] = var[name].to_numpy()
    return frame.drop_duplicates("uid")


def ingest_landing_file(atlas: RaggedAtlas, spec: LandingSpec) -> tuple[DatasetRecord, LandingOutcome]:
    """Register the file's features and ingest it; return ``(record, outcome)``.

    ``outcome`` is ``"ingested"``; ``"present"`` when dataset ``spec.uid`` is already in the atlas
    (re-materializing a partition is idempotent); ``"duplicate"`` when the file's content is already in the
    atlas as another dataset, whose record is returned (nothing is ingested; see
    :mod:`lancell.fingerprint`).

    Raises
    ------
    IngestError
        The file is missing or invalid, or its features conflict with registered ones
        (:class:`~lancell.errors.FeatureConflictError`); the atlas is unchanged.
    """
    existing = atlas._tables.datasets.search().where(f"uid = {sql_literal(spec.uid)}").to_arrow().to_pylist()
    if existing:
        return atlas.dataset_schema(**existing[0]), "present"
    if not spec.path.exists():
        raise IngestError(f"landing file {spec.path} does not exist")
    try:
        adata = ad.read_h5ad(spec.path, backed="r")
    except (OSError, KeyError, ValueError) as exc:
        raise IngestError(f"cannot read {spec.path} as .h5ad: {exc}") from exc
    if spec.organism is not None and "organism" not in adata.obs.columns:
        adata.obs["organism"] = spec.organism
    features = _features(atlas, spec, adata.var)
    registry = atlas._tables.registry(spec.feature_space)
    known = set(registry_index(registry).index)
    new_uids = [uid for uid in features["uid"] if uid not in known]
    atlas.register_features(spec.feature_space, features)
    record = atlas.dataset_schema(
        uid=spec.uid, name=spec.name, source=spec.source or str(spec.path), accession=spec.accession
    )
    try:
        stored = add_from_anndata(
            atlas,
            adata,
            feature_space=spec.feature_space,
            zarr_layer=spec.zarr_layer,
            dataset_record=record,
            var_uid_column=spec.var_uid_column,
            on_duplicate="skip",
        )
    except BaseException:
        # the features were registered for this file only: take them back so the atlas is as it was
        for start in range(0, len(new_uids), 1000):
            chunk = ", ".join(sql_literal(u) for u in new_uids[start : start + 1000])
            registry.delete(f"uid IN ({chunk})")
        raise
    return stored, "ingested" if stored.uid == spec.uid else "duplicate"
