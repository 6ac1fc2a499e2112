"""Positional reads of local files (lancell.storage.byte_ranges) against plain slicing of the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import obstore.store
import pytest

from lancell.errors import ShardFormatError
from lancell.storage.byte_ranges import local_path, pread_edge, pread_ranges


@pytest.fixture
def blob(tmp_path: Path) -> tuple[str, bytes]:
    data = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    path = tmp_path / "blob"
    path.write_bytes(data)
    return str(path), data


def test_ranges_come_back_in_request_order(blob: tuple[str, bytes]) -> None:
    path, data = blob
    rng = np.random.default_rng(1)
    # Unsorted, overlapping, duplicated, empty, adjacent, and far apart (beyond the merge gap).
    starts = np.concatenate([rng.integers(0, len(data), 300), [0, 0, 10, 20, 190_000, 5]])
    lengths = np.concatenate([rng.integers(0, 3_000, 300), [0, 10, 10, 0, 10_000, 50_000]])
    ends = np.minimum(starts + lengths, len(data))
    buffers = pread_ranges(path, starts.astype(np.int64), ends.astype(np.int64))
    assert [bytes(b) for b in buffers] == [data[s:e] for s, e in zip(starts, ends, strict=True)]


def test_range_past_the_end_is_a_format_error(blob: tuple[str, bytes]) -> None:
    path, _ = blob
    with pytest.raises(ShardFormatError, match=r"blob: wanted 20 bytes at offset 199990"):
        pread_ranges(path, np.array([199_990]), np.array([200_010]))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        pread_ranges(str(tmp_path / "nope"), np.array([0]), np.array([1]))
    with pytest.raises(FileNotFoundError):
        pread_edge(str(tmp_path / "nope"), 8, at_end=True)


@pytest.mark.parametrize("nbytes", [1, 16, 200_000, 300_000])
def test_edges(blob: tuple[str, bytes], nbytes: int) -> None:
    path, data = blob
    assert pread_edge(path, nbytes, at_end=True) == (data[-nbytes:], len(data))
    assert pread_edge(path, nbytes, at_end=False) == (data[:nbytes], len(data))


def test_local_path_only_for_plain_keys_of_local_stores(tmp_path: Path) -> None:
    store = obstore.store.LocalStore(str(tmp_path))
    assert local_path(store, "g-1/csr/indices/c/3") == f"{tmp_path}/g-1/csr/indices/c/3"
    assert local_path(store, "/g/a.b_c/") == f"{tmp_path}/g/a.b_c"
    for key in ["a b/c", "a/../b", "./a", "a//b", "ü/c", "a%2Fb"]:
        assert local_path(store, key) is None, key
    assert local_path(obstore.store.MemoryStore(), "g/csr") is None
