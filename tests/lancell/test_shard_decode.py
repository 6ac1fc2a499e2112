"""The one shard decode path: whole-shard reads equal zarr-python's, and the missing-shard rule is decided
once, from the enclosing dataset group's attributes, for every array of the group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import obstore.store
import pytest
import zarr
import zarr.codecs
import zarr.storage

from lancell.errors import ChecksumError, OutOfBoundsError, ShardFormatError
from lancell.storage import groups
from lancell.storage.reader import array_reader
from lancell.storage.shard_reader import ShardedArrayReader

CHUNK, SHARD = 256, 256 * 8


def _root(path: Path) -> tuple[obstore.store.LocalStore, zarr.Group]:
    store = obstore.store.LocalStore(str(path), mkdir=True)
    return store, zarr.open_group(zarr.storage.ObjectStore(store), mode="w")


def _dataset_group(root: zarr.Group, name: str, nnz: int) -> zarr.Group:
    return root.create_group(name, attributes={"lancell_format": 1, "nnz": nnz})


def _values(n: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(n)
    if dtype == "float32":
        return rng.standard_normal(n).astype(np.float32)
    values = rng.integers(0, 5000, n)
    return values[np.lexsort((values, np.arange(n) // 8))].astype(np.uint32)  # sorted runs, as CSR rows


@pytest.mark.parametrize("dtype", ["uint32", "float32"])
@pytest.mark.parametrize("index_location", ["end", "start"])
def test_read_shard_equals_zarr(tmp_path: Path, dtype: str, index_location: str) -> None:
    _, root = _root(tmp_path)
    n = 3 * SHARD + 5 * CHUNK + 17  # a short last shard ending in an edge chunk
    data = _values(n, dtype)
    compressors = groups.value_codecs(np.dtype(dtype), "indices")["compressors"]
    sharding = zarr.codecs.ShardingCodec(
        chunk_shape=(CHUNK,), codecs=[zarr.codecs.BytesCodec(), *compressors], index_location=index_location
    )
    array = _dataset_group(root, "g", n).create_array(
        "x", shape=(n,), dtype=dtype, chunks=(SHARD,), serializer=sharding, compressors=None
    )
    array[:] = data
    reader = array_reader(array)
    assert reader is not None and reader.complete
    shards = [reader.read_shard(k) for k in range(4)]
    assert [s.size for s in shards] == [SHARD, SHARD, SHARD, 5 * CHUNK + 17]
    np.testing.assert_array_equal(np.concatenate(shards), data)
    with pytest.raises(OutOfBoundsError, match=r"g/x: shard 4 is not within \[0, 4\)"):
        reader.read_shard(4)


def test_read_shard_fill_values_and_missing_objects(tmp_path: Path) -> None:
    """Unwritten chunks read as the fill value; a missing shard object too, unless every shard was written."""
    store, root = _root(tmp_path)
    data = np.full(4 * SHARD, 7, np.uint32)
    data[SHARD + 2 * CHUNK : SHARD + 3 * CHUNK] = np.arange(CHUNK)
    array = root.create_array(
        "sparse", shape=data.shape, dtype="uint32", chunks=(CHUNK,), shards=(SHARD,), fill_value=7
    )
    array[:] = data  # chunks and shards equal to the fill value are not written
    assert not (tmp_path / "sparse/c/0").exists()
    reader = ShardedArrayReader(store, "sparse")
    np.testing.assert_array_equal(np.concatenate([reader.read_shard(k) for k in range(4)]), data)
    with pytest.raises(ShardFormatError, match=r"shard 'sparse/c/0': the shard object is missing"):
        ShardedArrayReader(store, "sparse", complete=True).read_shard(0)


def test_read_shard_names_a_damaged_chunk(tmp_path: Path) -> None:
    _, root = _root(tmp_path)
    array = _dataset_group(root, "g", 2 * SHARD).create_array(
        "x",
        shape=(2 * SHARD,),
        dtype="uint32",
        chunks=(CHUNK,),
        shards=(SHARD,),
        **groups.value_codecs(np.dtype("uint32"), "values"),
    )
    array[:] = _values(2 * SHARD, "uint32")
    shard = tmp_path / "g/x/c/1"
    raw = bytearray(shard.read_bytes())
    offset = int(np.frombuffer(bytes(raw[-(16 * 8 + 4) :][:-4]), "<u8").reshape(-1, 2)[3, 0])
    raw[offset + 5] ^= 0x10
    shard.write_bytes(bytes(raw))
    reader = array_reader(array)
    np.testing.assert_array_equal(reader.read_shard(0), array[:SHARD])
    with pytest.raises(ChecksumError, match=r"array 'g/x', shard 'g/x/c/1', chunk 3: chunk checksum"):
        reader.read_shard(1)


def _written(root: zarr.Group, path: str, codecs: dict[str, object], n: int = SHARD) -> bool:
    array = root.create_array(path, shape=(n,), dtype="uint32", chunks=(CHUNK,), shards=(SHARD,), **codecs)
    array[:] = np.arange(1, n + 1, dtype=np.uint32)
    reader = array_reader(array)
    assert reader is not None
    return reader.complete


def test_every_array_of_a_dataset_group_is_written_whole(tmp_path: Path) -> None:
    """The rule reads the nearest enclosing group's attributes, whatever the array's name or depth."""
    _, root = _root(tmp_path)
    checked = groups.value_codecs(np.dtype("uint32"), "values")
    plain = {"compressors": [zarr.codecs.ZstdCodec(level=1)]}
    _dataset_group(root, "ds-1", 10)
    _dataset_group(root, "empty-1", 0)
    root.create_group("other")
    assert _written(root, "ds-1/csr/indices", checked)
    assert _written(root, "ds-1/obsm/extra/values", checked)  # no name pattern: the group decides
    assert _written(root, "ds-1/a/b", plain)  # 1-D: values never fill a whole shard
    assert not _written(root, "empty-1/csr/indices", checked)  # the group holds no values
    assert not _written(root, "other/csr/indices", checked)  # not a dataset group
    assert not _written(root, "top", checked)


def test_a_damaged_group_zarr_json_is_an_error(tmp_path: Path) -> None:
    """A group whose zarr.json cannot be read must not turn a missing shard into silent fill values."""
    _, root = _root(tmp_path)
    array = _dataset_group(root, "ds-1", SHARD).create_array(
        "x", shape=(SHARD,), dtype="uint32", chunks=(CHUNK,), shards=(SHARD,)
    )
    array[:] = np.arange(SHARD, dtype=np.uint32)
    (tmp_path / "ds-1/zarr.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ShardFormatError, match=r"ds-1/zarr.json: not a zarr.json object"):
        array_reader(array)
    (tmp_path / "ds-1/zarr.json").write_text("{not json")
    with pytest.raises(ShardFormatError, match=r"ds-1/zarr.json: not a zarr.json"):
        array_reader(array)
