"""Schemas: the Arrow contract between the cell table, the feature registries and the dataset records.

A user describes cells by subclassing :class:`LancellBaseSchema` (at any depth). Every field typed
``SparseZarrPointer | None`` or ``DenseZarrPointer | None`` declares a *feature space* of the same name; the
remaining fields are obs columns. Feature registries subclass :class:`FeatureBaseSchema`, dataset records
:class:`DatasetRecord`.

Pointer fields are found from pydantic's ``model_fields``, which merges the whole MRO, so a
sub-subclass sees the pointers of every ancestor (upstream read one class's ``__annotations__`` and broke).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import typing
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pyarrow as pa
from lancedb.pydantic import LanceModel, pydantic_to_schema
from pydantic import BaseModel, Field, create_model

from lancell.errors import IngestError, SchemaError
from lancell.storage.groups import PointerKind
from lancell.tables.names import named_characters
from lancell.tables.stored_fields import (
    OBS_NAME,
    obs_fields,
    pointer_fields_from_arrow,
    vector_fields,
)

__all__ = [
    "ASSIGNED_FIELDS",
    "CELL_UID_SEPARATOR",
    "OBS_NAME",
    "DatasetRecord",
    "DenseZarrPointer",
    "FeatureBaseSchema",
    "LancellBaseSchema",
    "SparseZarrPointer",
    "check_assigned_fields",
    "check_dataset_uid",
    "load_schema_class",
    "obs_fields",
    "obs_name_of",
    "pointer_fields",
    "pointer_fields_from_arrow",
    "vector_fields",
]

# a cell's uid is "<dataset uid>:<obs name>": a dataset uid holds no ':' (check_dataset_uid), so the first
# one ends it
CELL_UID_SEPARATOR = ":"
_UID_FORBIDDEN = frozenset(CELL_UID_SEPARATOR + "\\")
# a group is named "<uid>-<8 hex>" and claimed by "<group>.json": within a file name's 255 bytes
_UID_MAX_BYTES = 200


class SparseZarrPointer(BaseModel):
    """Where one cell's sparse row lives: element range ``[start, end)`` of its group's flat CSR arrays.

    ``zarr_row`` is the cell's row number inside the group (used by CSC reads and dense lookups).
    """

    feature_space: str
    zarr_group: str
    start: int
    end: int
    zarr_row: int


class DenseZarrPointer(BaseModel):
    """Where one cell's dense row lives: row ``position`` of its group's 2-D layer arrays."""

    feature_space: str
    zarr_group: str
    position: int


_POINTER_KINDS: dict[type[BaseModel], PointerKind] = {SparseZarrPointer: "sparse", DenseZarrPointer: "dense"}
_POINTER_ARROW: dict[PointerKind, pa.DataType] = {
    "sparse": pa.struct(
        [
            pa.field("feature_space", pa.string(), nullable=False),
            pa.field("zarr_group", pa.string(), nullable=False),
            pa.field("start", pa.int64(), nullable=False),
            pa.field("end", pa.int64(), nullable=False),
            pa.field("zarr_row", pa.int64(), nullable=False),
        ]
    ),
    "dense": pa.struct(
        [
            pa.field("feature_space", pa.string(), nullable=False),
            pa.field("zarr_group", pa.string(), nullable=False),
            pa.field("position", pa.int64(), nullable=False),
        ]
    ),
}


def _unconvertible_field(model: type[BaseModel]) -> str:
    """Name the first field of ``model`` that lancedb cannot give an Arrow type."""
    for name, info in model.model_fields.items():
        try:
            pydantic_to_schema(create_model("_Probe", **{name: (info.annotation, None)}))
        except (TypeError, ValueError, NotImplementedError):
            return f"field {name!r} ({info.annotation})"
    return "a field"


def _checked_arrow_schema(
    model: type[BaseModel], role: str, convert: Callable[[], pa.Schema], string_keys: tuple[str, ...]
) -> pa.Schema:
    """``convert()``, with a :class:`SchemaError` naming the field that has no Arrow type, a name Lance
    refuses (a ``.``: R's ``n.genes``; Lance reads it as a nested field's path) or a key field
    (``string_keys``) that is not a non-optional ``str``."""
    try:
        schema = convert()
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise SchemaError(
            f"{role} {model.__name__}: {_unconvertible_field(model)} has no Arrow type: {exc}"
        ) from exc
    dotted = [name for name in schema.names if "." in name]
    if dotted:
        raise SchemaError(
            f"{role} {model.__name__}: field names {dotted} contain '.', which Lance reads as a nested "
            "field's path; name them with '_' (rename the obs columns to match: obs.rename(columns=...))"
        )
    for key in string_keys:
        field = schema.field(key)
        if not pa.types.is_string(field.type) or field.nullable:
            raise SchemaError(
                f"{role} {model.__name__}: field {key!r} must be a non-optional str, "
                f"got {field.type}{' (optional)' if field.nullable else ''}"
            )
    return schema


class LancellBaseSchema(LanceModel):
    """Base of every cell schema: one row per cell.

    ``uid`` is unique over the atlas (``"<dataset_uid>:<obs_name>"`` when ingested from AnnData),
    ``dataset_uid`` names the :class:`DatasetRecord` the cell came from and ``obs_name`` is the cell's name
    in its input (the AnnData obs index, a 10x barcode), filled by ingestion. Atlases created before
    ``obs_name`` existed lack the column: they open, ingest and query as before, without it.
    """

    uid: str
    dataset_uid: str
    obs_name: str | None = None

    @classmethod
    def to_arrow_schema(cls) -> pa.Schema:
        """The cell table's Arrow schema.

        Raises
        ------
        SchemaError
            A field has no Arrow type or is an Enum or a list, ``uid`` / ``dataset_uid`` is redeclared as
            something but ``str``, or ``obs_name`` as something but an optional ``str``.
        """
        schema = _checked_arrow_schema(cls, "cell schema", super().to_arrow_schema, ("uid", "dataset_uid"))
        lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
        if lists:  # (a vector is a fixed-size list: Vector(n))
            raise SchemaError(
                f"cell schema {cls.__name__}: fields {lists} are lists, which obs columns are not converted "
                "to (int, float, bool, str, date and datetime are; an embedding is Vector(n))"
            )
        if not pa.types.is_string(schema.field("obs_name").type):
            raise SchemaError(
                f"cell schema {cls.__name__}: field 'obs_name' (the cell's name in its input, filled by "
                f"ingestion) must be an optional str, got {schema.field('obs_name').type}"
            )
        return schema


class FeatureBaseSchema(LanceModel):
    """Base of every feature registry schema: one row per feature of a feature space.

    ``uid`` is the stable identifier matched against the input's var names; ``global_index`` is assigned
    once (max + 1) when the feature is registered and is never reused.
    """

    uid: str
    global_index: int | None = None

    @classmethod
    def to_arrow_schema(cls) -> pa.Schema:
        """The registry table's Arrow schema.

        Raises
        ------
        SchemaError
            A field has no Arrow type or is an Enum, ``uid`` is redeclared as something but ``str``, or
            ``global_index`` as something but an optional ``int``.
        """
        schema = _checked_arrow_schema(cls, "registry schema", super().to_arrow_schema, ("uid",))
        index = schema.field("global_index")
        if index.type != pa.int64() or not index.nullable:  # registration numbers features itself
            raise SchemaError(
                f"registry schema {cls.__name__}: field 'global_index' (the number registration gives each "
                f"feature) must be an optional int, got {index.type}{'' if index.nullable else ' (required)'}"
            )
        return schema


def _new_dataset_uid() -> str:
    return uuid.uuid4().hex[:16]


class DatasetRecord(LanceModel):
    """One row per ingested dataset group. Ingestion fills the storage fields; users fill provenance.

    ``layers`` lists the stored layers readers see (``layer`` is the first): a layer added later
    (:func:`lancell.ingest.add_layer.add_layer`) becomes visible with the record's new table version, so a
    snapshot taken before never sees it (docs/architecture.md, "A dataset's zarr group"). ``cells_of`` is set
    on a further modality of existing cells: the dataset whose cell rows it points from.
    ``dropped_obs_columns`` lists the obs columns of the input that the cell schema does not declare (not
    stored); ``content_fingerprint`` identifies the stored content (:mod:`lancell.ingest.fingerprint`). The
    storage fields (:data:`ASSIGNED_FIELDS`) are assigned by lancell: a caller who sets one is refused.
    """

    uid: str = Field(default_factory=_new_dataset_uid)
    name: str | None = None
    zarr_group: str = ""
    feature_space: str = ""
    layer: str = ""
    layers: list[str] = Field(default_factory=list)
    n_cells: int = 0
    n_features: int = 0
    nnz: int = 0
    layout_uid: str = ""
    source: str | None = None
    accession: str | None = None
    cells_of: str | None = None
    dropped_obs_columns: list[str] = Field(default_factory=list)
    content_fingerprint: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def to_arrow_schema(cls) -> pa.Schema:
        """The dataset table's Arrow schema.

        Raises
        ------
        SchemaError
            A field has no Arrow type, or ``uid`` is redeclared as something but ``str``.
        """
        return _checked_arrow_schema(cls, "dataset schema", super().to_arrow_schema, ("uid",))


ASSIGNED_FIELDS = (
    "zarr_group",
    "feature_space",
    "layer",
    "layers",
    "n_cells",
    "n_features",
    "nnz",
    "layout_uid",
    "dropped_obs_columns",
    "content_fingerprint",
)


def check_assigned_fields(record: DatasetRecord, cells_of: str | None = None) -> None:
    """Refuse a caller's record that sets a field lancell assigns (:data:`ASSIGNED_FIELDS`), or a
    ``cells_of`` other than ``cells_of`` (the dataset a further modality is attached to; None otherwise).

    Raises
    ------
    IngestError
        Naming the dataset and each such field with the value given.
    """
    fields = type(record).model_fields
    given = {
        name: getattr(record, name)
        for name in ASSIGNED_FIELDS
        if getattr(record, name) != fields[name].get_default(call_default_factory=True)
    }
    if record.cells_of not in (None, cells_of):
        given["cells_of"] = record.cells_of
    if given:
        shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise IngestError(
            f"dataset {record.uid!r}: DatasetRecord fields {shown} are assigned by lancell at ingestion; "
            "leave them unset (pass a fresh DatasetRecord with only uid and provenance)"
        )


def obs_name_of(cell_uid: str) -> str:
    """The obs name (the cell's name in its input) of a cell uid ``"<dataset uid>:<obs name>"``."""
    return cell_uid.split(CELL_UID_SEPARATOR, 1)[1]


def check_dataset_uid(dataset: str, *, owns_cells: bool) -> None:
    """Refuse uids that would make cell uids (``<dataset uid>:<obs name>``) ambiguous or that are not a
    path of the object store (the zarr group is ``<dataset uid>-<random>``, a ``/`` written ``_``).

    ``owns_cells``: the dataset brings new cells (not a modality attached to another's). Its uid keys the
    columns of query results' ``varm["presence"]``, which AnnData cannot write with a ``/`` in a key.

    Raises
    ------
    IngestError
        The uid is empty, longer than 200 bytes (UTF-8), has surrounding spaces, contains ``:``, ``\\`` or a
        control character, starts with ``_``, or has an empty or dot-led ``/``-separated part; a ``/`` in the
        uid of a dataset that owns cells.
    """
    if not isinstance(dataset, str) or not dataset or dataset != dataset.strip():
        raise IngestError(f"dataset uid {dataset!r} must be a non-empty string without surrounding spaces")
    bad = sorted({c for c in dataset if c in _UID_FORBIDDEN or not c.isprintable()})
    if bad:
        raise IngestError(
            f"dataset uid {dataset!r} contains {named_characters(bad)}: ':' would make cell uids "
            "('<dataset uid>:<obs name>') ambiguous; '\\' and characters that do not print (controls, spaces "
            "but ' ', invisible formatting) are not allowed in store paths"
        )
    if len(dataset.encode()) > _UID_MAX_BYTES:
        raise IngestError(
            f"dataset uid {dataset[:40]!r}... is {len(dataset.encode())} bytes long; at most "
            f"{_UID_MAX_BYTES} (it names the dataset's folder and files in the store; file systems limit "
            "a name to 255 bytes)"
        )
    if dataset.startswith("_") or any(not part or part.startswith(".") for part in dataset.split("/")):
        raise IngestError(
            f"dataset uid {dataset!r} is not a valid zarr group path: it may not start with '_' (reserved), "
            "and every '/'-separated part must be non-empty and not start with '.'"
        )
    if owns_cells and "/" in dataset:
        raise IngestError(
            f"dataset uid {dataset!r} contains '/': a dataset's uid keys the columns of query results' "
            "varm['presence'], which AnnData cannot write to .zarr or .h5ad with a '/' in a key; use '-' or "
            "'.' ('/' names a modality attached to a dataset: '<dataset uid>/<modality>')"
        )


def _pointer_kind(annotation: object) -> PointerKind | None:
    """Return the pointer kind of a field annotation (``X | None``, ``Optional[X]`` or ``X``), else None."""
    if isinstance(annotation, type) and annotation in _POINTER_KINDS:
        return _POINTER_KINDS[annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = {_pointer_kind(arg) for arg in typing.get_args(annotation)} - {None}
        if len(kinds) > 1:
            raise SchemaError(f"a field cannot be both a sparse and a dense pointer: {annotation!r}")
        return kinds.pop() if kinds else None
    return None


def pointer_fields(cell_schema: type[LancellBaseSchema]) -> dict[str, PointerKind]:
    """Map each pointer field of ``cell_schema`` (all ancestors included) to its kind.

    Raises
    ------
    SchemaError
        If ``cell_schema`` does not derive from :class:`LancellBaseSchema`, or a pointer field is not
        optional (cells of the other feature spaces carry no pointer in it).
    """
    if not (isinstance(cell_schema, type) and issubclass(cell_schema, LancellBaseSchema)):
        raise SchemaError(f"cell schema must subclass LancellBaseSchema, got {cell_schema!r}")
    found: dict[str, PointerKind] = {}
    for name, field in cell_schema.model_fields.items():
        kind = _pointer_kind(field.annotation)
        if kind is None:
            continue
        if type(None) not in typing.get_args(field.annotation):
            pointer = "SparseZarrPointer" if kind == "sparse" else "DenseZarrPointer"
            raise SchemaError(
                f"cell schema {cell_schema.__name__}: pointer field {name!r} must be optional "
                f"({name}: {pointer} | None = None): cells of other feature spaces have no {name!r} pointer"
            )
        found[name] = kind
    return found


def pointer_arrow_type(kind: PointerKind) -> pa.DataType:
    """The Arrow struct type a pointer of ``kind`` is stored as."""
    return _POINTER_ARROW[kind]


def load_schema_class(spec: str) -> type:
    """The class named ``module:Class`` (a schema given on the command line or in configuration); a module
    that is not importable is also looked for in the current folder, as ``python -m`` would find it (the
    ``lancell`` command, unlike ``python -m lancell.cli``, does not search there).

    Raises
    ------
    SchemaError
        ``spec`` is not written ``module:Class``, or the module or class cannot be loaded.
    """
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise SchemaError(f"schema {spec!r} must be written module:Class (e.g. lancell.bundled:CellSchema)")
    try:
        return getattr(_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise SchemaError(f"cannot load schema {spec!r}: {exc}") from exc


def _module(module_name: str) -> types.ModuleType:
    """Module ``module_name``, from the import path or else from the current folder."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        here = os.getcwd()
        if exc.name != module_name.partition(".")[0] or here in sys.path:
            raise
    sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(here)
