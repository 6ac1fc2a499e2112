"""The ``lancell.bitpacking`` zarr codec: round trips through zarr, configuration, errors, registration."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype

from lancell.errors import CodecError
from lancell.storage.codecs import CODEC_NAME, BitpackingCodec


def csr_indices(n_cells: int = 40, nnz: int = 2000, n_genes: int = 30_000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = [np.sort(rng.choice(n_genes, nnz, replace=False)) for _ in range(n_cells)]
    return np.concatenate(rows).astype(np.uint32)


def counts(n: int = 80_000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).negative_binomial(1.0, 0.3, n).astype(np.uint32)


def write(path: Path, x: np.ndarray, transform: str, sharded: bool) -> zarr.Array:
    store = zarr.storage.LocalStore(path)
    kwargs = {"shards": (8192,), "chunks": (1024,)} if sharded else {"chunks": (5000,)}
    arr = zarr.create_array(
        store, shape=x.shape, dtype="uint32", compressors=[BitpackingCodec(transform)], **kwargs
    )
    arr[:] = x
    return arr


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize(("transform", "data"), [("none", counts), ("delta", csr_indices)])
def test_zarr_round_trip(tmp_path: Path, transform: str, data, sharded: bool) -> None:
    x = data()
    write(tmp_path / "a.zarr", x, transform, sharded)
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "a.zarr"), mode="r")
    assert back.dtype == np.uint32
    assert np.array_equal(back[:], x)
    assert np.array_equal(back[1234:5678], x[1234:5678])
    meta = json.loads((tmp_path / "a.zarr" / "zarr.json").read_text())
    codecs = meta["codecs"][0]["configuration"]["codecs"] if sharded else meta["codecs"]
    assert {"name": CODEC_NAME, "configuration": {"transform": transform, "element_size": 4}} in codecs


@pytest.mark.parametrize(
    ("n_cells", "nnz", "n_genes", "limit"),
    [(40, 2000, 30_000, 1.2), (1000, 70, 1000, 1.1), (4000, 5, 100, 1.3)],
)
def test_delta_compresses_csr_indices(
    tmp_path: Path, n_cells: int, nnz: int, n_genes: int, limit: float
) -> None:
    """Bytes per index well below 4 (raw), also with a cell boundary every few values (~1 per 8 bits)."""
    x = csr_indices(n_cells, nnz, n_genes)
    write(tmp_path / "a.zarr", x, "delta", sharded=True)
    stored = sum(f.stat().st_size for f in (tmp_path / "a.zarr").rglob("*") if f.name != "zarr.json")
    assert stored < limit * x.size
    back = zarr.open_array(zarr.storage.LocalStore(tmp_path / "a.zarr"), mode="r")
    assert np.array_equal(back[:], x)


def test_dict_round_trip() -> None:
    for codec in (
        BitpackingCodec(),
        BitpackingCodec("delta"),
        BitpackingCodec(transform="none", element_size=4),
    ):
        assert BitpackingCodec.from_dict(codec.to_dict()) == codec
    assert BitpackingCodec("delta").to_dict() == {
        "name": "lancell.bitpacking",
        "configuration": {"transform": "delta", "element_size": 4},
    }
    assert BitpackingCodec.from_dict({"name": CODEC_NAME}) == BitpackingCodec()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transform": "zigzag"}, "'zigzag'"),
        ({"transform": 1}, "transform"),
        ({"transform": None}, "transform"),
        ({"element_size": 2}, "element_size must be 4, got 2"),
        ({"element_size": True}, "element_size"),
        ({"element_size": "4"}, "element_size"),
    ],
)
def test_bad_configuration_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        BitpackingCodec(**kwargs)


@pytest.mark.parametrize(
    "data",
    [
        {"name": "zstd", "configuration": {"transform": "none"}},
        {"name": CODEC_NAME, "configuration": {"transform": "none", "level": 3}},
        {"name": CODEC_NAME, "configuration": {"transform": "delta", "element_size": 8}},
    ],
)
def test_bad_dict_raises(data: dict) -> None:
    with pytest.raises(CodecError):
        BitpackingCodec.from_dict(data)


def test_non_4_byte_dtype_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CodecError, match="4-byte"):
        zarr.create_array(
            zarr.storage.LocalStore(tmp_path / "a.zarr"),
            shape=(100,),
            dtype="uint16",
            chunks=(100,),
            compressors=[BitpackingCodec()],
        )


def test_chunk_not_a_multiple_of_4_bytes_raises() -> None:
    buf = default_buffer_prototype().buffer.from_bytes(b"\x01\x02\x03\x04\x05\x06")
    with pytest.raises(CodecError, match="6 bytes"):
        BitpackingCodec()._encode_sync(buf, None)  # type: ignore[arg-type]


def test_corrupted_chunk_raises_codec_error(tmp_path: Path) -> None:
    write(tmp_path / "a.zarr", counts(20_000), "none", sharded=False)
    chunk = tmp_path / "a.zarr" / "c" / "1"
    chunk.write_bytes(chunk.read_bytes()[:-8])
    arr = zarr.open_array(zarr.storage.LocalStore(tmp_path / "a.zarr"), mode="r")
    assert np.array_equal(arr[:5000], counts(20_000)[:5000])
    with pytest.raises(CodecError, match="truncated"):
        arr[5000:10000]


FRESH_READER = """
import sys, zarr
for name in sys.argv[1:]:
    a = zarr.open_array(name, mode="r")
    x = a[:]
    print(name, x.dtype, x.size, int(x.astype("uint64").sum()), int(x[-1]))
"""


def test_fresh_process_reads_without_importing_lancell(tmp_path: Path) -> None:
    """The zarr.codecs entry point alone lets a plain zarr process decode both layouts."""
    plain, indices = counts(), csr_indices()
    write(tmp_path / "plain.zarr", plain, "none", sharded=False)
    write(tmp_path / "sharded.zarr", indices, "delta", sharded=True)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_READER, "plain.zarr", "sharded.zarr"],
        cwd=tmp_path,  # keep the source checkout off sys.path: only the installed entry point can help
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        f"{name} uint32 {x.size} {int(x.astype(np.uint64).sum())} {int(x[-1])}"
        for name, x in (("plain.zarr", plain), ("sharded.zarr", indices))
    ]
    assert result.stdout.split("\n")[:2] == expected


def test_large_chunks_round_trip(tmp_path: Path) -> None:
    """Chunks above the inline threshold are coded on worker threads."""
    x = np.random.default_rng(2).integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    store = zarr.storage.LocalStore(tmp_path / "a.zarr")
    arr = zarr.create_array(
        store, shape=x.shape, dtype="uint32", chunks=(100_000,), compressors=[BitpackingCodec()]
    )
    arr[:] = x
    assert np.array_equal(zarr.open_array(store, mode="r")[:], x)
