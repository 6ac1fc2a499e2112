"""Direct reads of unfiltered and compressed HDF5 datasets: the same values as h5py, or h5py reads them.

:class:`~lancell.ingest.h5_direct.DirectRead` serves what an ingestion of a backed ``.h5ad`` reads (``X/data``
and ``X/indices`` as anndata writes them: chunked, unfiltered) and
:class:`~lancell.ingest.h5_direct.CompressedRead` the same written with ``compression="gzip"`` or ``"lzf"``;
every layout or filter they do not handle must give None, and a file that ends early or a chunk that does not
decompress must raise.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lancell.atlas import RaggedAtlas
from lancell.errors import IngestError
from lancell.ingest.from_anndata import add_from_anndata
from lancell.ingest.h5_direct import CompressedRead, DirectRead
from lancell.ingest.sources import MatrixSource
from lancell.tables.schema import FeatureBaseSchema, LancellBaseSchema, SparseZarrPointer


def _ranges(size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Ranges that start and end inside, at and across chunk edges, and the whole dataset."""
    cuts = [(0, size), (0, 1), (size - 1, size), (5, 5)]
    for _ in range(40):
        lo = int(rng.integers(0, size))
        cuts.append((lo, int(rng.integers(lo, size + 1))))
    return cuts


def _assert_reads_like_h5py(dataset: h5py.Dataset, direct: DirectRead | CompressedRead, **pool) -> None:
    expected = dataset[:]
    for lo, hi in _ranges(dataset.shape[0], np.random.default_rng(0)):
        out = np.empty(hi - lo, dataset.dtype)
        direct.read_into(out, lo, hi, **pool)
        np.testing.assert_array_equal(out, expected[lo:hi])


def test_an_anndata_file_is_read_directly_and_exactly(tmp_path: Path) -> None:
    x = sp.random(3_000, 500, density=0.05, format="csr", random_state=1, dtype=np.float64)
    x.data = np.ceil(x.data * 100).astype(np.int32)
    ad.AnnData(x).write_h5ad(tmp_path / "a.h5ad")
    with h5py.File(tmp_path / "a.h5ad", "r") as f:
        for name in ("data", "indices"):
            dataset = f["X"][name]
            assert dataset.chunks is not None and dataset.compression is None  # anndata's own layout
            direct = DirectRead.of(dataset)
            assert direct is not None
            _assert_reads_like_h5py(dataset, direct)


def test_chunks_stored_out_of_order_and_interleaved_are_read_in_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = {name: rng.integers(0, 2**31, 10_000, dtype=np.int32) for name in "ab"}
    with h5py.File(tmp_path / "i.h5", "w") as f:
        arrays = {name: f.create_dataset(name, (10_000,), np.int32, chunks=(700,)) for name in "ab"}
        for start in rng.permutation(np.arange(0, 10_000, 700)):  # chunks allocated in a random order
            for name in "ab":  # and the two datasets' chunks interleaved in the file
                arrays[name][start : start + 700] = values[name][start : start + 700]
    with h5py.File(tmp_path / "i.h5", "r") as f:
        direct = DirectRead.of(f["a"])
        assert direct is not None and direct.starts.size > 1
        assert not np.all(np.diff(direct.offsets) > 0)  # runs are not in file order
        _assert_reads_like_h5py(f["a"], direct)


def test_a_contiguous_dataset_is_read_directly(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("x", data=np.arange(50_000, dtype=np.float64))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        direct = DirectRead.of(f["x"])
        assert direct is not None and direct.starts.size == 1
        _assert_reads_like_h5py(f["x"], direct)


@pytest.mark.parametrize(
    ("dtype", "create"),
    [
        ("i4", {"compression": "gzip"}),
        ("f4", {"compression": "gzip", "compression_opts": 1}),
        ("f8", {"compression": "gzip", "compression_opts": 9, "shuffle": True}),
        ("i8", {"compression": "gzip", "shuffle": True}),
        ("u2", {"compression": "gzip"}),
        ("i4", {"compression": "lzf"}),
        ("f8", {"compression": "lzf", "shuffle": True}),
        ("u2", {"compression": "lzf"}),
    ],
    ids=[
        "int32",
        "float32-level1",
        "float64-level9-shuffle",
        "int64-shuffle",
        "uint16",
        "lzf-int32",
        "lzf-float64-shuffle",
        "lzf-uint16",
    ],
)
def test_compressed_chunks_are_decompressed_exactly_with_and_without_a_pool(
    tmp_path: Path, dtype: str, create: dict
) -> None:
    rng = np.random.default_rng(4)
    values = (rng.negative_binomial(2, 0.3, 30_011) * rng.choice([1, 0], 30_011)).astype(dtype)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("x", data=values, chunks=(977,), **create)  # a partial last chunk
    with h5py.File(tmp_path / "g.h5", "r") as f:
        assert DirectRead.of(f["x"]) is None
        compressed = CompressedRead.of(f["x"])
        assert compressed is not None and compressed.shuffle == create.get("shuffle", False)
        assert compressed.codec == ("lzf" if create["compression"] == "lzf" else "deflate")
        _assert_reads_like_h5py(f["x"], compressed)
        with ThreadPoolExecutor(3) as pool:
            _assert_reads_like_h5py(f["x"], compressed, pool=pool)


@pytest.mark.parametrize("shuffle", [False, True])
def test_lzf_chunks_it_could_not_shrink_are_read_as_stored(tmp_path: Path, shuffle: bool) -> None:
    """h5py's lzf filter is optional: a chunk it cannot shrink is stored as it is, its filter skipped."""
    rng = np.random.default_rng(8)
    noise = rng.integers(0, 2**32, 5_000, dtype=np.uint32)  # incompressible, shuffled or not
    values = np.concatenate([noise, np.zeros(5_000, np.uint32)])
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.create_dataset("x", data=values, chunks=(1_000,), compression="lzf", shuffle=shuffle)
    with h5py.File(tmp_path / "r.h5", "r") as f:
        read = CompressedRead.of(f["x"])
        assert read is not None and read.stored_plain[:5].all() and not read.stored_plain[5:].any()
        _assert_reads_like_h5py(f["x"], read)


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_an_anndata_file_written_compressed_is_decompressed_exactly(tmp_path: Path, compression: str) -> None:
    x = sp.random(3_000, 500, density=0.05, format="csr", random_state=2, dtype=np.float64)
    x.data = np.ceil(x.data * 100).astype(np.int32)
    ad.AnnData(x).write_h5ad(tmp_path / "z.h5ad", compression=compression)
    with h5py.File(tmp_path / "z.h5ad", "r") as f, ThreadPoolExecutor(2) as pool:
        for name in ("data", "indices"):
            compressed = CompressedRead.of(f["X"][name])
            assert compressed is not None
            _assert_reads_like_h5py(f["X"][name], compressed, pool=pool)


def _corrupt_chunk(path: Path, name: str, chunk: int) -> int:
    """Flip 4 bytes in the middle of a stored chunk; return the chunk's first value."""
    with h5py.File(path, "r") as f:
        read = CompressedRead.of(f[name])
        offset, size = int(read.offsets[chunk]), int(read.sizes[chunk])
        first = chunk * read.chunk
    with open(path, "r+b") as file:
        file.seek(offset + size // 2)
        middle = file.read(4)
        file.seek(offset + size // 2)
        file.write(bytes(b ^ 0xFF for b in middle))
    return first


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_a_chunk_that_does_not_decompress_raises_os_error(tmp_path: Path, compression: str) -> None:
    """A damaged deflate stream fails its checksum; this damaged LZF stream (which has none) breaks its
    format (with this file's bytes: flipped bytes can also decode to the right size, as through h5py)."""
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset(
            "x", data=np.arange(100_000, dtype=np.int32) % 1_000, chunks=(4_096,), compression=compression
        )
    first = _corrupt_chunk(tmp_path / "c.h5", "x", 7)
    with h5py.File(tmp_path / "c.h5", "r") as f, ThreadPoolExecutor(2) as pool:
        read = CompressedRead.of(f["x"])  # the first and the last chunk are intact
        assert read is not None
        out = np.empty(100_000, np.int32)
        with pytest.raises(OSError, match=f"the chunk of values from {first} .* does not decompress"):
            read.read_into(out, 0, 100_000, pool=pool)
        read.read_into(out[:first], 0, first, pool=pool)  # the chunks before it read
        np.testing.assert_array_equal(out[:first], np.arange(first) % 1_000)


@pytest.mark.parametrize(
    "create",
    [
        {"compression": "gzip"},
        {"compression": "lzf"},
        {"compression": "lzf", "fletcher32": True},
        {"shuffle": True},
        {"fletcher32": True},
        {"fletcher32": True, "compression": "gzip"},
        {"dtype": ">i4"},  # stored big-endian
        {"dtype": ">i4", "compression": "gzip"},
        {"dtype": "i2", "scaleoffset": 0},
    ],
    ids=[
        "gzip",
        "lzf",
        "lzf-fletcher32",
        "shuffle",
        "fletcher32",
        "gzip-fletcher32",
        "big-endian",
        "gzip-big-endian",
        "scale-offset",
    ],
)
def test_filtered_or_foreign_datasets_are_left_to_h5py(tmp_path: Path, create: dict) -> None:
    options = {"dtype": "i4", "chunks": (1_000,), **create}
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("x", data=np.arange(10_000).astype(options.pop("dtype")), **options)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert DirectRead.of(f["x"]) is None
        taken = create in ({"compression": "gzip"}, {"compression": "lzf"})  # the ones CompressedRead takes
        assert (CompressedRead.of(f["x"]) is not None) == taken


def test_unallocated_chunks_a_user_block_and_other_drivers_are_left_to_h5py(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "u.h5", "w") as f:
        partly = f.create_dataset("x", (10_000,), np.int32, chunks=(1_000,))
        partly[:3_000] = 7  # chunks 3-9 never written: they read as the fill value
        f.create_dataset("two_d", data=np.ones((100, 100), np.int32), chunks=(10, 100))
        f.create_dataset("text", data=np.array([b"a", b"b"]))
    with h5py.File(tmp_path / "u.h5", "r") as f:
        assert DirectRead.of(f["x"]) is None
        assert DirectRead.of(f["two_d"]) is None
        assert DirectRead.of(f["text"]) is None
        assert CompressedRead.of(f["text"]) is None
    with h5py.File(tmp_path / "u.h5", "r", driver="core") as f:
        assert DirectRead.of(f["two_d"]) is None
    with h5py.File(tmp_path / "ub.h5", "w", userblock_size=512) as f:
        f.create_dataset("x", data=np.arange(10_000, dtype=np.int32), chunks=(1_000,))
    with h5py.File(tmp_path / "ub.h5", "r") as f:
        assert DirectRead.of(f["x"]) is None
        np.testing.assert_array_equal(f["x"][:], np.arange(10_000))


def test_a_file_that_shrinks_while_open_raises_os_error(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("x", data=np.arange(100_000, dtype=np.int64), chunks=(4_096,))
    with h5py.File(tmp_path / "t.h5", "r") as f:
        direct = DirectRead.of(f["x"])
        assert direct is not None
        cut = int(direct.offsets.max()) + 100
        os.truncate(tmp_path / "t.h5", cut)
        with pytest.raises(OSError, match="the file ends before byte"):
            direct.read_into(np.empty(100_000, np.int64), 0, 100_000)


# ----------------------------------------------------------------------------------------- through ingestion


class Gene(FeatureBaseSchema):
    gene_symbol: str | None = None


class Cells(LancellBaseSchema):
    gene_expression: SparseZarrPointer | None = None


def _atlas(tmp_path: Path, genes: list[str]) -> RaggedAtlas:
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        Cells,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": Gene},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    return atlas


@pytest.mark.parametrize("compression", [None, "gzip", "lzf"])
def test_many_small_blocks_read_directly_are_stored_exactly(
    tmp_path: Path, monkeypatch, compression: str | None
) -> None:
    """Blocks are stored from the reader's buffers while the next blocks are read: nothing may be overwritten
    before it is written (hundreds of blocks, each a few rows), plain or decompressed on the reader's pool."""
    genes = [f"G{i}" for i in range(300)]
    x = sp.random(4_000, 300, density=0.1, format="csr", random_state=5, dtype=np.float64)
    x.data = np.ceil(x.data * 1_000).astype(np.int32)
    adata = ad.AnnData(
        x, obs=pd.DataFrame(index=[f"c{i}" for i in range(4_000)]), var=pd.DataFrame(index=genes)
    )
    adata.write_h5ad(tmp_path / "m.h5ad", compression=compression)
    with h5py.File(tmp_path / "m.h5ad", "r") as f:
        assert (CompressedRead.of(f["X/data"]) is not None) == (compression is not None)
    monkeypatch.setattr(MatrixSource.csr_blocks, "__defaults__", (500,))
    atlas = _atlas(tmp_path, genes)
    add_from_anndata(
        atlas,
        tmp_path / "m.h5ad",
        feature_space="gene_expression",
        zarr_layer="counts",
        dataset_record=atlas.dataset_schema(uid="m"),
        progress=False,
    )
    got = atlas.query().to_anndata()
    assert list(got.obs_names) == [f"m:c{i}" for i in range(4_000)]
    np.testing.assert_array_equal(got[:, genes].X.toarray(), x.toarray())


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_matrix_without_stored_values_is_ingested(tmp_path: Path, compression: str | None) -> None:
    """An all-zero sparse X has empty ``data`` and ``indices`` (no chunk): its chunk table was indexed."""
    genes = ["G1", "G2", "G3"]
    adata = ad.AnnData(
        sp.csr_matrix((3, 3), dtype=np.int32),
        obs=pd.DataFrame(index=["a", "b", "c"]),
        var=pd.DataFrame(index=genes),
    )
    adata.write_h5ad(tmp_path / "zero.h5ad", compression=compression)
    atlas = _atlas(tmp_path, genes)
    record = add_from_anndata(
        atlas, tmp_path / "zero.h5ad", feature_space="gene_expression", zarr_layer="counts", progress=False
    )
    assert (record.n_cells, record.nnz) == (3, 0)
    got = atlas.query().to_anndata()
    assert got.shape == (3, 3) and got.X.nnz == 0


def test_a_negative_count_read_directly_is_refused_naming_the_row(tmp_path: Path) -> None:
    genes = [f"G{i}" for i in range(50)]
    x = sp.random(200, 50, density=0.2, format="csr", random_state=6, dtype=np.float64)
    x.data = np.ceil(x.data * 10).astype(np.int32)
    x.data[x.indptr[117] + 1] = -3
    ad.AnnData(x, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "n.h5ad")
    atlas = _atlas(tmp_path, genes)
    with pytest.raises(IngestError, match="negative integer value -3"):
        add_from_anndata(
            atlas, tmp_path / "n.h5ad", feature_space="gene_expression", zarr_layer="counts", progress=False
        )
    assert atlas.core.tables.datasets.count_rows() == 0


def test_a_chunk_that_does_not_decompress_is_refused_naming_the_rows_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    genes = [f"G{i}" for i in range(100)]
    x = sp.random(2_000, 100, density=0.2, format="csr", random_state=7, dtype=np.float64)
    x.data = np.ceil(x.data * 10).astype(np.int32)
    ad.AnnData(x, var=pd.DataFrame(index=genes)).write_h5ad(tmp_path / "b.h5ad", compression="gzip")
    with h5py.File(tmp_path / "b.h5ad", "r") as f:
        assert f["X/data"].id.get_num_chunks() > 2
    first = _corrupt_chunk(tmp_path / "b.h5ad", "X/data", 1)
    atlas = _atlas(tmp_path, genes)
    with pytest.raises(
        IngestError, match=f"cannot read rows .* the chunk of values from {first} .* does not decompress"
    ):
        add_from_anndata(
            atlas, tmp_path / "b.h5ad", feature_space="gene_expression", zarr_layer="counts", progress=False
        )
    assert atlas.core.tables.datasets.count_rows() == 0
    assert atlas.core.tables.cells.count_rows() == 0


def test_a_chunk_address_beyond_any_file_is_left_to_h5py_and_refused(tmp_path: Path) -> None:
    """A damaged chunk index whose address no file has (>= 2**63): h5py's read fails, an IngestError."""
    genes = [f"G{i}" for i in range(50)]
    x = sp.random(300, 50, density=0.1, format="csr", random_state=8, dtype=np.float64)
    x.data = np.ceil(x.data * 10).astype(np.int32)
    path = tmp_path / "a.h5ad"
    ad.AnnData(x, var=pd.DataFrame(index=genes)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        attrs = dict(f["X/data"].attrs)
        del f["X/data"]
        f["X"].create_dataset("data", data=x.data, chunks=(97,), compression="gzip")
        f["X/data"].attrs.update(attrs)
        offsets: list[int] = []
        f["X/data"].id.chunk_iter(lambda info: offsets.append(info.byte_offset))
    damaged = bytearray(path.read_bytes())
    where = damaged.find(offsets[1].to_bytes(8, "little"))
    damaged[where + 7] = 0x80  # the chunk's address, now 2**63 bytes further
    path.write_bytes(damaged)
    with h5py.File(path, "r") as f:
        assert CompressedRead.of(f["X/data"]) is None
    atlas = _atlas(tmp_path, genes)
    with pytest.raises(IngestError, match="cannot read rows"):
        add_from_anndata(atlas, path, feature_space="gene_expression", zarr_layer="counts", progress=False)
    assert atlas.core.tables.datasets.count_rows() == 0
