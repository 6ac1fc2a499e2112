"""``AtlasResource``: where the atlas lives (LanceDB URI + zarr store URL/config) and how to open it."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:  # lancell is imported at first use: loading the definitions must stay fast
    import pandas as pd

    from lancell.atlas import RaggedAtlas

_CREATE_WAIT_S = 60.0
DEFAULT_CELL_SCHEMA = "lancell.bundled:CellSchema"
DEFAULT_FEATURE_SCHEMA = "lancell.bundled:GeneFeature"


def _import(path: str, setting: str) -> Any:
    """``module:Class`` -> the class (:func:`lancell.tables.schema.load_schema_class`); an error names
    ``setting``, the resource's field and its environment variable."""
    from lancell.errors import SchemaError
    from lancell.tables.schema import load_schema_class

    try:
        return load_schema_class(path)
    except SchemaError as exc:
        raise SchemaError(f"{setting}: {exc}") from exc


_CELL_SCHEMA = "AtlasResource.cell_schema (LANCELL_CELL_SCHEMA)"
_FEATURE_SCHEMA = "AtlasResource.feature_schema (LANCELL_FEATURE_SCHEMA)"


class AtlasResource(dg.ConfigurableResource):
    """A lancell atlas. Local paths by default; ``s3://`` URLs with ``store_config`` for object storage."""

    db_uri: str = Field(description="LanceDB location (directory or s3:// URL)")
    store_url: str | None = Field(default=None, description="zarr store URL; <db_uri>/_zarr when unset")
    store_config: dict[str, str] = Field(
        default_factory=dict, description="obstore config (endpoint, region); credentials from AWS_* env vars"
    )
    client_options: dict[str, str] = Field(
        default_factory=dict, description='obstore client options, e.g. {"allow_http": "true"} for http://'
    )
    max_retries: int | None = Field(
        default=None, description="retries of a failed request (obstore's retry_config; its default: 10)"
    )
    retry_timeout_seconds: float | None = Field(
        default=None,
        description="give up retrying a request after this long (obstore's retry_config; its default: "
        "180 s): set it, and client_options timeout, for a server that may freeze",
    )
    cell_schema: str = Field(
        default=DEFAULT_CELL_SCHEMA,
        description="module:Class of the cell schema a new atlas is created with (LANCELL_CELL_SCHEMA); an "
        "existing atlas must have every column it declares",
    )
    feature_schema: str = Field(default=DEFAULT_FEATURE_SCHEMA, description="module:Class of genes")
    feature_space: str = Field(default="gene_expression", description="the feature space of feature_schema")
    create_if_missing: bool = Field(
        default=False,
        description="create an empty atlas at db_uri when none is there (LANCELL_CREATE_ATLAS); off, a "
        "missing atlas is an AtlasNotFoundError naming db_uri, so that a mistyped or unmounted location is "
        "never filled with a new atlas",
    )

    def _store_kwargs(self) -> dict[str, Any] | None:
        """obstore ``from_url`` kwargs; LanceDB's storage options are derived from the same settings.

        Raises
        ------
        StoreError
            ``store_config``, ``client_options`` or a retry setting is set while ``db_uri`` and
            ``store_url`` (unset: ``<db_uri>/_zarr``) are local paths, which take no options (each given key
            is named).
        """
        from lancell.storage.stores import check_options_used

        kwargs: dict[str, Any] = {}
        if self.store_config:
            kwargs["config"] = dict(self.store_config)
        if self.client_options:
            kwargs["client_options"] = dict(self.client_options)
        retry: dict[str, Any] = {}
        if self.max_retries is not None:
            retry["max_retries"] = self.max_retries
        if self.retry_timeout_seconds is not None:
            retry["retry_timeout"] = timedelta(seconds=self.retry_timeout_seconds)
        if retry:
            kwargs["retry_config"] = retry
        check_options_used([self.db_uri, self.store_url or self.db_uri], kwargs)
        return kwargs or None

    def open(self) -> RaggedAtlas:
        """The live atlas; created (empty) when there is none only with ``create_if_missing``.

        Runs of several partitions may start at once: the one that loses the race to create the atlas
        waits until the winner has finished creating it, then opens it.

        Raises
        ------
        AtlasNotFoundError
            No atlas at ``db_uri`` and ``create_if_missing`` is off (the message names ``db_uri``).
        SchemaError
            The atlas lacks a column of the configured cell schema.
        """
        from lancell.atlas import RaggedAtlas
        from lancell.errors import AtlasExistsError, AtlasNotFoundError

        deadline = time.monotonic() + _CREATE_WAIT_S
        while True:
            try:
                atlas = RaggedAtlas.open(self.db_uri, store=self.store_url, store_kwargs=self._store_kwargs())
            except AtlasNotFoundError as exc:
                if Path(self.db_uri).is_file():  # (a URL is never a local file)
                    raise AtlasNotFoundError(
                        f"AtlasResource.db_uri: {exc}: it names a file; an atlas is a folder (or a URL)"
                    ) from exc
                if not self.create_if_missing:
                    raise AtlasNotFoundError(
                        f"AtlasResource.db_uri: {exc}. Is the location mistyped or its volume not mounted? "
                        "Nothing was created: set create_if_missing=True (LANCELL_CREATE_ATLAS=1) to create "
                        "an atlas there"
                    ) from exc
                try:
                    atlas = RaggedAtlas.create(
                        self.db_uri,
                        "cells",
                        _import(self.cell_schema, _CELL_SCHEMA),
                        store=self.store_url,
                        registry_schemas={self.feature_space: _import(self.feature_schema, _FEATURE_SCHEMA)},
                        store_kwargs=self._store_kwargs(),
                    )
                except AtlasExistsError:  # another run is creating it right now
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                else:
                    dg.get_dagster_logger().warning(
                        f"created a new, empty atlas at {self.db_uri} (arrays in {atlas.store!r}): "
                        "create_if_missing is set"
                    )
                    return atlas
            else:
                self._check_schemas(atlas)
                return atlas

    def _check_schemas(self, atlas: RaggedAtlas) -> None:
        """An existing atlas must store every column of the configured cell schema (else it would be
        ignored); a feature schema whose columns its registry of ``feature_space`` lacks is warned about (it
        serves only to create an atlas: atlases created with another keep theirs)."""
        from lancell.errors import SchemaError
        from lancell.tables.schema_fit import cell_schema_misfits

        schema = _import(self.cell_schema, _CELL_SCHEMA)
        if misfits := cell_schema_misfits(schema, atlas.cell_arrow_schema):
            raise SchemaError(
                f"{_CELL_SCHEMA} {self.cell_schema} does not match the cell table of the atlas at "
                f"{self.db_uri}: {'; '.join(misfits)} (it was created with another schema)"
            )
        features = _import(self.feature_schema, _FEATURE_SCHEMA)
        if self.feature_space not in atlas.feature_spaces:  # (only a new atlas is created with it)
            dg.get_dagster_logger().warning(
                f"AtlasResource.feature_space {self.feature_space!r} is not a feature space of the atlas at "
                f"{self.db_uri} (it has {sorted(atlas.feature_spaces)}): feature_schema is not checked"
            )
            return
        stored = atlas.core.tables.registry(self.feature_space).schema.names
        if missing := sorted(set(features.model_fields) - set(stored)):  # (used only to create an atlas)
            dg.get_dagster_logger().warning(
                f"{_FEATURE_SCHEMA} {self.feature_schema} declares {missing}, which the "
                f"{self.feature_space!r} registry of the atlas at {self.db_uri} does not have (it was "
                "created with another schema): the registry keeps its own columns"
            )

    def checkout(self, version: int) -> RaggedAtlas:
        """Snapshot ``version``, read-only."""
        from lancell.atlas import RaggedAtlas

        return RaggedAtlas.checkout(
            self.db_uri, version, store=self.store_url, store_kwargs=self._store_kwargs()
        )

    def find_snapshot(self, label: str) -> int | None:
        """The snapshot labelled ``label`` (its note: ``snapshot()`` refuses a note in use), or None."""
        from lancell.atlas import RaggedAtlas

        return RaggedAtlas.find_snapshot(self.db_uri, label, store_kwargs=self._store_kwargs())

    def dataset_uids(self) -> set[str]:
        """The uids of the live atlas's datasets, read without writing (never creates the atlas).

        Raises
        ------
        AtlasNotFoundError
            No atlas at ``db_uri``.
        """
        from lancell.atlas import RaggedAtlas

        handle = RaggedAtlas.open(
            self.db_uri, store=self.store_url, store_kwargs=self._store_kwargs(), read_only=True
        )
        return set(handle.list_datasets()["uid"])

    def list_versions(self, *, deleted: bool = False) -> pd.DataFrame:
        """Every snapshot (``deleted``: deleted ones too): version, cell and dataset counts, note (see
        ``RaggedAtlas.list_versions``)."""
        from lancell.atlas import RaggedAtlas

        return RaggedAtlas.list_versions(self.db_uri, store_kwargs=self._store_kwargs(), deleted=deleted)
