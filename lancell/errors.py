"""The one error hierarchy lancell raises.

Every error names *what* went wrong and *where* (dataset, column, feature, value) so that a user can fix the
input without reading our code. Errors raised during ingestion are raised before anything is written, or the
partial write is rolled back, so the atlas is left as it was.

Every class also derives from the builtin a Python user would catch for that kind of failure (``ValueError``
for bad input, ``FileNotFoundError`` for a missing atlas or group, ``FileExistsError``, ``PermissionError``,
``TimeoutError``, ``KeyError``, ``IndexError``), so ``except ValueError`` written against upstream code keeps
working. Warnings about inputs that were accepted but not used derive from :class:`LancellWarning`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path


def _preview(values: Sequence[object], n: int = 5) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:n])
    more = f", ... ({len(values)} in all)" if len(values) > n else ""
    return f"[{shown}{more}]"


@functools.cache
def _inside_lancell(filename: str, module: str) -> bool:
    if module == "lancell" or module.startswith("lancell."):  # (a dataclass's __init__ is in "<string>")
        return True
    path = Path(filename).resolve()
    return Path(__file__).resolve().parent in path.parents or path.name == "contextlib.py"


def caller_outside_lancell() -> int:
    """The ``stacklevel`` of the first caller outside lancell (and contextlib) of the function that calls
    this (to pass to ``warnings.warn`` there): a warning then points at the user's line, however deep in
    lancell it is raised (every lancell warning passes this, none counts its frames)."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1  # noqa: SLF001 (the documented way)
    level = 1
    while frame.f_back is not None and _inside_lancell(
        frame.f_code.co_filename, str(frame.f_globals.get("__name__", ""))
    ):
        frame = frame.f_back
        level += 1
    return level


class LancellError(Exception):
    """Base class of every error lancell raises."""

    def __str__(self) -> str:  # KeyError would show its message quoted, as repr()
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class LancellWarning(UserWarning):
    """Base class of the warnings lancell emits: an input was accepted but not (entirely) used."""


class DroppedColumnsWarning(LancellWarning):
    """Obs columns that the cell schema does not declare were not stored."""


class FeatureConflictWarning(LancellWarning):
    """``register_features(on_conflict="keep")`` kept registered attributes that differ from the given."""


class DuplicateContentWarning(LancellWarning):
    """``add_from_anndata(on_duplicate="skip")`` met content already in the atlas and ingested nothing."""


class ArgumentError(LancellError, TypeError):
    """An argument of a type the call does not take (the message names the argument and what it takes)."""


class ArgumentValueError(LancellError, ValueError):
    """An argument of the right type with a value the call does not take (the message names the argument
    and the values it takes)."""


def require_type(name: str, value: object, kind: type | tuple[type, ...], what: str) -> None:
    """Raise :class:`ArgumentError` unless ``value`` (argument ``name``) is a ``kind`` (``what`` in words)."""
    if not isinstance(value, kind):
        raise ArgumentError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")


def require_text(name: str, value: str, error: type[LancellError] = ArgumentValueError) -> None:
    """Raise ``error`` unless ``value`` (argument ``name``, a str) is text UTF-8 can store: Python decodes
    bytes that are not UTF-8 (a file name, a shell argument) to lone surrogates, which no table or store
    path can hold.

    Raises
    ------
    LancellError
        ``error`` (:class:`ArgumentValueError` by default), naming ``name``, the value and the first lone
        surrogate's position.
    """
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise error(
            f"{name} {value!r} is not text UTF-8 can store: character {exc.start} ({value[exc.start]!r}) is "
            "a lone surrogate, as Python decodes bytes that are not UTF-8; pass the text decoded from its "
            "real encoding"
        ) from None


LONGEST_AGE = timedelta(days=365_250)
"""An age limit longer than this (a thousand years) is taken as this: it keeps everything either way, and the
clock minus a longer one is no date."""


def require_age(name: str, value: object) -> timedelta:
    """``value`` (argument ``name``, an age limit such as vacuum's grace) as a ``timedelta`` of at most
    :data:`LONGEST_AGE`.

    Raises
    ------
    ArgumentError
        Not a ``datetime.timedelta`` (a number of hours, a string).
    ArgumentValueError
        Negative (it would act as none).
    """
    require_type(name, value, timedelta, "a datetime.timedelta, e.g. timedelta(0) for none")
    if value < timedelta(0):
        raise ArgumentValueError(f"{name} must be at least timedelta(0) (none), got {value!r}")
    return min(value, LONGEST_AGE)


class SchemaError(LancellError, ValueError):
    """A schema class is malformed (unknown feature space in a pointer field, missing required fields)."""


class CodecError(LancellError, ValueError):
    """An encoded chunk is malformed or a codec configuration is invalid."""


class ChecksumError(CodecError):
    """Stored bytes do not match their checksum (a corrupted shard index or chunk)."""


class ShardFormatError(CodecError):
    """A sharded array's metadata or shard index describes a layout the batched reader cannot read."""


class OutOfBoundsError(LancellError, IndexError):
    """A read asked for elements or rows outside an array."""


class StoreError(LancellError, OSError):
    """The object store or database cannot be reached or holds something unexpected."""


class LockTimeoutError(StoreError, TimeoutError):
    """A cross-process lock could not be taken in time (another process holds it)."""


class LockLostError(StoreError):
    """A lock's lease was taken over by another process while its holder was still working.

    Raised before the late holder commits anything (fencing), so the work it guarded is not recorded.
    """


class GroupNotFoundError(StoreError, FileNotFoundError):
    """A dataset's zarr group is missing from the store, or belongs to another atlas."""


class AtlasExistsError(LancellError, FileExistsError):
    """``RaggedAtlas.create`` was asked to create an atlas where one already exists."""


class AtlasNotFoundError(LancellError, FileNotFoundError):
    """No atlas exists at the given location."""


class FormatVersionError(LancellError, ValueError):
    """The atlas was written by an incompatible on-disk format version."""


class ReadOnlyAtlasError(LancellError, PermissionError):
    """A write was attempted on a checked-out (read-only) atlas handle."""


class VersionNotFoundError(LancellError, KeyError):
    """A snapshot version that was never taken was asked for (the atlas exists: not an
    :class:`AtlasNotFoundError`)."""


class ValidationError(LancellError, ValueError):
    """``validate()`` or ``snapshot()`` found the atlas inconsistent."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"atlas is inconsistent ({len(problems)} problems): " + "; ".join(problems[:10]))


class DuplicateNoteError(LancellError, ValueError):
    """``snapshot(note=...)`` was given the note of an existing snapshot: a note labels one snapshot only."""


class SnapshotLabelError(LancellError, ValueError):
    """A snapshot label the platform cannot take: it is a partition key and names the files saved for that
    snapshot (``resources.models.check_label``)."""


class FeatureSpaceError(LancellError, KeyError):
    """An unknown feature space, or a layer the feature space does not allow."""


class FeatureRegistryError(LancellError, ValueError):
    """Features given to ``register_features`` are malformed (duplicates, missing uid, wrong columns)."""


class FeatureConflictError(FeatureRegistryError):
    """``register_features`` met registered uids whose other attributes differ (``on_conflict="error"``).

    ``conflicts``: ``(uid, column, registered, given)`` of each difference.
    """

    def __init__(
        self, message: str, *, conflicts: list[tuple[str, str, object, object]] | None = None
    ) -> None:
        super().__init__(message)
        self.conflicts = list(conflicts or [])


class IngestError(LancellError, ValueError):
    """Input to ingestion is invalid; nothing was written."""


class DatasetNotFoundError(IngestError, KeyError):
    """An operation on one dataset named a dataset uid the atlas does not have."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


class UnknownFeaturesError(IngestError):
    """The input names features that are not in the feature registry."""

    def __init__(
        self, dataset: str, feature_space: str, missing: Sequence[str], remedy: str | None = None
    ) -> None:
        self.missing = list(missing)
        remedy = remedy or "register them with atlas.register_features() first"
        super().__init__(
            f"dataset {dataset!r}: {len(missing)} features are not in the {feature_space!r} registry, "
            f"e.g. {_preview(missing)}; {remedy}"
        )


class DuplicateFeaturesError(IngestError):
    """The input names the same feature more than once."""

    def __init__(self, dataset: str, duplicates: Sequence[str], remedy: str | None = None) -> None:
        self.duplicates = list(duplicates)
        told = "" if remedy is None else f"; {remedy}"
        super().__init__(f"dataset {dataset!r}: duplicate feature ids in var {_preview(duplicates)}{told}")


class ObsConversionError(IngestError):
    """An obs column cannot be converted to the type the cell schema declares."""

    def __init__(self, dataset: str, column: str, reason: str) -> None:
        self.column, self.reason = column, reason
        super().__init__(f"dataset {dataset!r}, obs column {column!r}: {reason}")


class DataValueError(IngestError):
    """The matrix holds values the target layer cannot store (negative counts, NaN, unsupported dtype)."""


class ShapeMismatchError(IngestError):
    """The matrix, obs and var disagree on their sizes."""


class DuplicateDatasetError(IngestError):
    """A dataset with this uid is already in the atlas."""


class DuplicateContentError(IngestError):
    """The input's content (matrix, obs names, layer) is already in the atlas as another dataset."""


class QueryError(LancellError, ValueError):
    """A query is malformed (bad SQL filter, unknown column, unknown feature)."""


class CommitConflictError(LancellError, RuntimeError):
    """A table commit kept losing to other processes' commits (LanceDB's retryable conflict) after retries;
    or a read whose table versions were removed under it (``optimize(cleanup_older_than=...)``: a deleted
    snapshot's, which can then no longer be read, or a live read's, which can read again)."""


class ForkedProcessError(LancellError, RuntimeError):
    """A dataset read in a process forked from one that had used an atlas's stores (a DataLoader's workers
    under the ``fork`` start method): the stores' I/O threads do not survive a fork; the read would hang."""


class BatchTransportError(LancellError, RuntimeError):
    """A batch from a DataLoader worker names a shared-memory slot the training process was never given."""


class WorkerStartError(LancellError, RuntimeError):
    """A DataLoader's workers could not be started (a read-only or full ``/dev/shm``, too few processes or
    threads allowed); the first epoch was read in the training process, the next raises this."""


class UnmeasuredDataError(QueryError):
    """The query selects cells of datasets that did not measure what it asks for (a layer or the joined
    features); choose ``on_unmeasured("drop")`` or ``on_unmeasured("keep")`` to have them anyway."""


class TenxFormatError(IngestError):
    """A 10x Genomics output (Matrix Market folder or HDF5 file) is missing a file or is malformed."""


class GeoError(IngestError):
    """A GEO SOFT file cannot be parsed, or one of its supplementary files cannot be fetched."""


class StandardizationError(LancellError, ValueError):
    """Gene or ontology standardization cannot run (unknown organism, missing reference or backend)."""


class UnknownOrganismError(StandardizationError):
    """The organism is not covered by the gene reference, or cannot be inferred from the input."""


class OntologyBackendError(StandardizationError):
    """An ontology backend is unavailable (bionty not installed) or does not know the asked ontology."""
