"""The dataset record an ingestion stores: the caller's, else one of the atlas's dataset schema."""

from __future__ import annotations

from typing import Any

import pydantic

from lancell.errors import IngestError
from lancell.tables.schema import DatasetRecord

__all__ = ["given_or_default", "modality_record"]


def given_or_default(
    schema: type[DatasetRecord], given: DatasetRecord | None, **defaults: Any
) -> DatasetRecord:
    """A copy of ``given``, else a record of ``schema`` holding ``defaults``.

    Raises
    ------
    IngestError
        No record was given and ``schema`` requires fields (a subclass of ``DatasetRecord`` with a field
        without a default): the message names them.
    """
    if given is not None:
        return given.model_copy()
    try:
        return schema(**defaults)
    except pydantic.ValidationError as exc:
        missing = [str(error["loc"][0]) for error in exc.errors() if error["type"] == "missing"]
        first = exc.errors()[0]["msg"]
        raise IngestError(
            f"the atlas's dataset schema {schema.__name__} requires {missing or 'other values'} ({first}): "
            f"pass dataset_record={schema.__name__}(...) with them"
        ) from exc


def modality_record(record: DatasetRecord, uid: str) -> DatasetRecord:
    """The record of a further modality ``uid`` of ``record``'s cells: the fields its caller set on
    ``record`` (provenance, a schema's own fields), not those filled per record (``created_at``, a
    ``default_factory`` of the schema)."""
    given = {name: getattr(record, name) for name in record.model_fields_set if name != "uid"}
    return type(record)(**given, uid=uid)
