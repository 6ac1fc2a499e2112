"""Content fingerprints of ingested datasets, and the check that refuses to ingest the same content twice.

A fingerprint is a digest of what a dataset stores, fed with the blocks ingestion already streams (no second
pass over the input): per-cell lengths, column indices and values in stored order and stored dtype (three
separate streams, so the digest does not depend on how rows were split into blocks), or the dense rows; then
the obs names, the feature space, the stored layer name and the feature uids of the panel in stored order.
Hashing runs on one background thread (the hashers release the GIL on large buffers), so it overlaps with
encoding and writing.

Two inputs have equal fingerprints exactly when they would be stored identically under the same dataset uid:
a re-ingested AnnData, the same file landed under another name, the same data in a different var order.

Formats (the hex length tells them apart):

- **2** (current, 32 hex digits): XXH3-128 streams, ~10 GB/s on one core. A fingerprint detects repeated
  content, as dataset fingerprints in other data tools do; it is not a defence against content crafted to
  collide.
- **1** (64 hex digits): SHA-256 streams, ~1.5 GB/s with SHA extensions; written by lancell until 2026-12-04.
  While an atlas holds a format-1 fingerprint, ingestion computes both formats and matches either, so content
  stored before the change is still found; the new record stores format 2.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import xxhash

from lancell.errors import DuplicateContentError, IngestError, LancellWarning, caller_outside_lancell
from lancell.tables.registry import sql_literal

if TYPE_CHECKING:
    from lancell.core import AtlasCore
    from lancell.tables.schema import DatasetRecord

__all__ = [
    "FINGERPRINT_FORMAT",
    "ContentHasher",
    "OnDuplicate",
    "check_on_duplicate",
    "combined_fingerprint",
    "committed_duplicate",
    "content_lock_name",
    "find_duplicate",
    "find_duplicates",
    "formats_to_match",
]

OnDuplicate = Literal["error", "skip", "allow"]
FINGERPRINT_FORMAT = 2
_DIGESTS = {1: hashlib.sha256, 2: xxhash.xxh3_128}  # format -> digest constructor
_HEX_DIGITS = {1: 64, 2: 32}


def formats_to_match(core: AtlasCore) -> tuple[int, ...]:
    """The fingerprint formats a new dataset of ``core``'s atlas is hashed in: the current one first, and
    format 1 while a committed record holds a format-1 fingerprint (so its content is still matched)."""
    if "content_fingerprint" not in core.dataset_arrow.names:
        return (FINGERPRINT_FORMAT,)
    legacy = core.tables.datasets.count_rows(f"length(content_fingerprint) = {_HEX_DIGITS[1]}")
    return (FINGERPRINT_FORMAT, 1) if legacy else (FINGERPRINT_FORMAT,)


class ContentHasher:
    """Streaming fingerprint of one dataset's stored matrix; use as a context manager.

    Parameters
    ----------
    kind
        ``"sparse"`` (feed :meth:`add_csr`) or ``"dense"`` (feed :meth:`add_dense`).
    dtype
        The stored value dtype (``uint32`` or ``float32``).
    shape
        ``(n_cells, n_features)``.
    formats
        The fingerprint formats to compute (:func:`formats_to_match`).
    """

    def __init__(
        self,
        kind: str,
        dtype: np.dtype,
        shape: tuple[int, int],
        formats: Sequence[int] = (FINGERPRINT_FORMAT,),
    ) -> None:
        self._header = {"kind": kind, "dtype": np.dtype(dtype).str, "shape": [int(shape[0]), int(shape[1])]}
        # per format: lengths, indices, values (dense: values only)
        self._streams = {fmt: tuple(_DIGESTS[fmt]() for _ in range(3)) for fmt in formats}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lancell-fingerprint")
        self._pending: Future[None] | None = None

    def __enter__(self) -> ContentHasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, *arrays: np.ndarray | None) -> None:
        """Hash ``arrays`` (one per stream, None: nothing) after the previous block: at most one in flight."""
        self._wait()
        self._pending = self._pool.submit(self._update, arrays)

    def _update(self, arrays: tuple[np.ndarray | None, ...]) -> None:
        for i, array in enumerate(arrays):
            if array is not None and array.size:
                data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).view(np.uint8)
                for streams in self._streams.values():
                    streams[i].update(data)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def add_csr(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> None:
        """Feed one stored CSR row block (``indptr`` from 0); the arrays must not change afterwards."""
        self._submit(np.diff(indptr).astype(np.int64), indices, values)

    def add_dense(self, rows: np.ndarray) -> None:
        """Feed one block of stored dense rows (features in stored order)."""
        self._submit(None, None, rows)

    def finish(
        self, *, obs_names: pd.Index, feature_space: str, layer: str, feature_uids: Sequence[str]
    ) -> dict[int, str]:
        """``{format: fingerprint}`` (hex) of everything fed plus the obs names, layer and panel."""
        self._wait()
        names = obs_names.astype(str)
        fingerprints = {}
        for fmt, streams in self._streams.items():
            final = _DIGESTS[fmt]()
            header = self._header | {"format": fmt, "feature_space": feature_space, "layer": layer}
            final.update(json.dumps(header, sort_keys=True).encode())
            for stream in streams:
                final.update(stream.digest())
            final.update(_text_digest(fmt, names))
            final.update(_text_digest(fmt, feature_uids))
            fingerprints[fmt] = final.hexdigest()
        return fingerprints


def _text_digest(fmt: int, values: Sequence[str]) -> bytes:
    """Digest (format ``fmt``) of a list of strings (NUL-separated: obs names and uids never contain NUL)."""
    digest = _DIGESTS[fmt]()
    for start in range(0, len(values), 65_536):
        digest.update("\0".join(values[start : start + 65_536]).encode() + b"\0")
    return digest.digest()


def combined_fingerprint(layers: Mapping[str, Mapping[int, str]]) -> dict[int, str]:
    """``{format: fingerprint}`` of a dataset from its layers' (``{layer: ContentHasher.finish()}``, in stored
    order): a single layer's own, else a digest of every ``name=fingerprint``."""
    if len(layers) == 1:
        return dict(next(iter(layers.values())))
    formats = next(iter(layers.values()))
    combined = {}
    for fmt in formats:
        text = "\0".join(f"{name}={values[fmt]}" for name, values in layers.items())
        combined[fmt] = _DIGESTS[fmt](text.encode()).hexdigest()
    return combined


def check_on_duplicate(dataset: str, on_duplicate: str) -> None:
    """Raise :class:`IngestError` unless ``on_duplicate`` is ``"error"``, ``"skip"`` or ``"allow"``."""
    if on_duplicate not in ("error", "skip", "allow"):
        raise IngestError(
            f"dataset {dataset!r}: on_duplicate must be 'error', 'skip' or 'allow', got {on_duplicate!r}"
        )


def find_duplicate(core: AtlasCore, fingerprints: Sequence[str]) -> DatasetRecord | None:
    """The record of a committed dataset whose content fingerprint is one of ``fingerprints`` (the same
    content in each format of :func:`formats_to_match`), or None.

    An atlas whose dataset table predates fingerprints has no column to match: it never finds one, and warns
    (:class:`LancellWarning`) that the duplicate policy is not applied.
    """
    found = find_duplicates(core, fingerprints)
    return found[0] if found else None


def find_duplicates(core: AtlasCore, fingerprints: Sequence[str]) -> list[DatasetRecord]:
    """Every committed record holding the content of ``fingerprints``, as :func:`find_duplicate` finds one."""
    if "content_fingerprint" not in core.dataset_arrow.names:
        warnings.warn(
            "this atlas's dataset table has no content_fingerprint column (an older lancell wrote it): "
            "duplicate content is not detected and on_duplicate is not applied",
            LancellWarning,
            stacklevel=caller_outside_lancell(),
        )
        return []
    rows = (
        core.tables.datasets.search()
        .where(f"content_fingerprint IN ({', '.join(sql_literal(f) for f in fingerprints)})")
        .to_arrow()
        .to_pylist()
    )
    return [core.dataset_schema(**row) for row in rows]


def content_lock_name(fingerprints: Sequence[str]) -> str:
    """The lock held while a dataset of this content (its fingerprints, current format first) is committed:
    :func:`committed_duplicate` is asked under it and the record committed before it is released, so two
    processes ingesting identical content at once cannot both commit it (one sees the other's record)."""
    return f"content-{fingerprints[0][:20]}"


def committed_duplicate(
    core: AtlasCore, dataset: str, fingerprints: Sequence[str], on_duplicate: OnDuplicate
) -> DatasetRecord | None:
    """The committed dataset already holding the content of ``fingerprints``, or None (always None for
    ``on_duplicate="allow"``); ask it holding the lock :func:`content_lock_name`.

    Raises
    ------
    DuplicateContentError
        ``on_duplicate="error"`` and the content is already in the atlas.
    """
    existing = None if on_duplicate == "allow" else find_duplicate(core, fingerprints)
    if existing is not None and on_duplicate == "error":
        stored = f"layers {existing.layers}" if len(existing.layers) > 1 else f"layer {existing.layer!r}"
        raise DuplicateContentError(
            f"dataset {dataset!r}: the same content (matrix, obs names, {stored}, "
            f"feature panel) is already in the atlas as dataset {existing.uid!r}; pass "
            "on_duplicate='skip' to get that dataset's record or on_duplicate='allow' to store it again"
        )
    return existing
