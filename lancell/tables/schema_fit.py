"""Whether user schemas fit the atlas's tables: Enum fields refused at create, a dataset schema's fields
against the dataset table's at open, an ingestion's record against it before anything is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import annotated_types
import pandas as pd
import pyarrow as pa
from pydantic.types import AllowInfNan, Strict
from pydantic_core import PydanticUndefined

from lancell.errors import SchemaError
from lancell.tables.schema import OBS_NAME, DatasetRecord

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "cell_schema_misfits",
    "check_record_fields",
    "check_record_fits",
    "refuse_enum_fields",
    "refuse_unapplied_fields",
]


def refuse_enum_fields(role: str, model: type[BaseModel], schema: pa.Schema) -> None:
    """At ``create``: refuse the Enum fields of ``model`` (``role``, e.g. "cell schema"), whose table would
    keep the labels, not the Enum (any label stored, a member written as ``Color.red``; an atlas created
    before keeps its fields: they are read and written as text).

    Raises
    ------
    SchemaError
        Naming the fields.
    """
    enums = [field.name for field in schema if pa.types.is_dictionary(field.type)]
    if enums:
        raise SchemaError(
            f"{role} {model.__name__}: fields {enums} are Enums, which the table does not keep (any label "
            "would be stored): declare them as str (or int) and check the values before ingestion"
        )


def refuse_unapplied_fields(role: str, model: type[BaseModel]) -> None:
    """At ``create``: refuse the fields of ``model`` (``role``: a cell or registry schema, whose rows come
    from data frames, never built as the model) that declare what lancell would not apply: a default other
    than None (a column absent from a dataset's obs is stored as nulls, or refused where required) or
    constraints (``Field(ge=0)``, ``conint``, ``Annotated[..., Gt(0)]``: any value of the type is stored).

    Raises
    ------
    SchemaError
        Naming the fields and what they declare.
    """
    defaults, constrained = [], []
    for name, info in model.model_fields.items():
        default = info.default
        unset = default is None or default is PydanticUndefined or default is pd.NA
        if info.default_factory is not None or not unset:
            defaults.append(f"{name} = {info.default_factory or default!r}")
        if checks := [repr(check) for check in info.metadata if _constrains(check)]:
            constrained.append(f"{name}: {', '.join(checks)}")
    if defaults:
        raise SchemaError(
            f"{role} {model.__name__}: fields declare defaults lancell does not apply "
            f"({'; '.join(defaults)}): a column a dataset lacks is stored as nulls (refused for a required "
            "field); declare them with no default or None, and give the value in each dataset's columns"
        )
    if constrained:
        raise SchemaError(
            f"{role} {model.__name__}: fields declare constraints lancell does not check "
            f"({'; '.join(constrained)}): any value of the type would be stored; declare the plain type and "
            "check the values before ingestion"
        )


def _constrains(metadata: object) -> bool:
    """Whether a field's ``Annotated`` metadata constrains its values (``Ge``, ``Interval``, ``MaxLen``,
    ``StringConstraints``, ``allow_inf_nan``), not a note (a docstring, ``Doc``) or pydantic's strict mode."""
    constraint = (annotated_types.BaseMetadata, annotated_types.GroupedMetadata, AllowInfNan)
    return isinstance(metadata, constraint) and not isinstance(metadata, Strict)


def _same_type(declared: pa.DataType, stored: pa.DataType) -> bool:
    """Whether a field declared ``declared`` reads and writes a column stored as ``stored`` (an Enum field's
    dictionary of text, written by a lancell that took Enums, is text to a ``str`` field)."""
    if pa.types.is_dictionary(stored) and not pa.types.is_dictionary(declared):
        stored = stored.value_type
    if pa.types.is_dictionary(declared) and not pa.types.is_dictionary(stored):
        declared = declared.value_type
    return declared.equals(stored)


def require_record_schema(dataset_schema: object) -> None:
    """Refuse a ``dataset_schema`` that is no :class:`DatasetRecord` subclass (``SchemaError``)."""
    if not (isinstance(dataset_schema, type) and issubclass(dataset_schema, DatasetRecord)):
        raise SchemaError(f"dataset_schema must subclass DatasetRecord, got {dataset_schema!r}")


def check_record_fields(record_schema: type[DatasetRecord], stored: pa.Schema, *, writable: bool) -> None:
    """Refuse a :class:`DatasetRecord` subclass whose own fields (those it adds) the dataset table
    (``stored``) stores as another type (records would fail to convert), or lacks: on a writable handle any
    (their values would be dropped from every record written), on a read-only one a required one (no record
    could be built).

    Raises
    ------
    SchemaError
        Naming each such field, its type, and the table's columns.
        Also when ``record_schema`` is not a :class:`DatasetRecord` subclass.
    """
    require_record_schema(record_schema)
    declared = record_schema.to_arrow_schema()
    own = [name for name in declared.names if name not in DatasetRecord.model_fields]
    missing = [
        name
        for name in own
        if name not in stored.names and (writable or record_schema.model_fields[name].is_required())
    ]
    other = [  # (a base field redeclared too: its records would not convert)
        f"{name} ({declared.field(name).type}; the table stores {stored.field(name).type})"
        for name in declared.names
        if name in stored.names and not _same_type(declared.field(name).type, stored.field(name).type)
    ]
    if missing or other:
        problems = ([f"fields {missing} the table lacks"] if missing else []) + (
            [f"fields of another type: {', '.join(other)}"] if other else []
        )
        raise SchemaError(
            f"dataset schema {record_schema.__name__} does not match the atlas's dataset table: "
            f"{'; '.join(problems)} (its columns: {stored.names}); open it with the dataset schema it was "
            "created with"
        )


def cell_schema_misfits(cell_schema: type[BaseModel], stored: pa.Schema) -> list[str]:
    """What the cell table (``stored``) would not store as ``cell_schema`` declares, one phrase each: fields
    it lacks (their columns would be left out of every ingestion) and fields it stores as another type (its
    own type is what ingestion converts to). ``obs_name`` is left out: atlases created before it lack it.
    A field whose Arrow type cannot be told (the schema is refused at create) is named as such."""
    try:
        declared = cell_schema.to_arrow_schema()
    except SchemaError as exc:
        return [f"a schema no atlas is created with ({exc})"]
    missing = [name for name in declared.names if name not in stored.names and name != OBS_NAME]
    other = [
        f"{name} ({declared.field(name).type}; the table stores {stored.field(name).type})"
        for name in declared.names
        if name in stored.names and not _same_type(declared.field(name).type, stored.field(name).type)
    ]
    return ([f"fields {missing} the table lacks"] if missing else []) + (
        [f"fields of another type: {', '.join(other)}"] if other else []
    )


def check_record_fits(record: DatasetRecord, stored: pa.Schema) -> None:
    """Refuse ``record`` (an ingestion's ``dataset_record``) where the dataset table (``stored``) would not
    store its values as given: its class's fields the table lacks or stores as another type
    (:func:`check_record_fields`: Arrow dropped them, truncated 3.9 to 3, split "GSE1" into letters), or a
    column the table requires that its class lacks.

    Raises
    ------
    SchemaError
        Naming the fields.
    """
    check_record_fields(type(record), stored, writable=True)
    fields = type(record).model_fields
    required = [f.name for f in stored if not f.nullable and f.name not in fields]
    if required:
        raise SchemaError(
            f"dataset record {type(record).__name__} lacks {required}, which the atlas's dataset table "
            "requires (its class has them): pass a record of that class (lancell ingest cannot: ingest from "
            "Python, RaggedAtlas.open(db, dataset_schema=...))"
        )
