"""Damaged atlases: every read path raises a typed error naming the array, shard and chunk, never wrong
numbers.

A small real atlas (the bundled celltypist counts, BP-128, and PBMC log-normalized floats, zstd, both with
their CSC copies) is written once in a geometry of many shards; each test damages a copy of it on disk and
reads it through ``query().to_anndata()``, the batched reader (``lancell.storage.reader.read_element_ranges``)
and the dataloader (``to_cell_dataset(...).__getitems__``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import obstore.store
import pandas as pd
import pytest
import zarr
import zarr.codecs
import zarr.storage

from lancell.atlas import RaggedAtlas
from lancell.bundled import BUNDLED, CellSchema, GeneFeature, gene_features
from lancell.errors import (
    ChecksumError,
    GroupNotFoundError,
    LancellError,
    OutOfBoundsError,
    ShardFormatError,
)
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import csc, groups
from lancell.storage.codecs import BitpackingCodec
from lancell.storage.reader import array_reader, read_element_ranges, read_rows
from lancell.storage.shard_reader import ShardedArrayReader
from lancell.synthetic import synthetic_counts
from lancell.tables.schema import DatasetRecord

CHUNK, SHARD = 1024, 16 * 1024  # celltypist: ~1M values in 63 shards; PBMC: 11 shards
DATASETS = {"celltypist_sample": "counts", "pbmc68k": "log_normalized"}
GENES = ["CD3E", "MS4A1", "LYZ", "NKG7"]  # measured by both datasets: a feature read takes the CSC copy
SHARD_NO, CHUNK_NO = 3, 5


def _old_value_codecs(dtype: np.dtype, role: str) -> dict[str, object]:
    """The chunk pipeline before chunk checksums: BP-128 or zstd alone, empty chunks not written."""
    if np.dtype(dtype) == np.uint32:
        return {"compressors": [BitpackingCodec(transform="delta" if role == "indices" else "none")]}
    return {"compressors": [zarr.codecs.ZstdCodec(level=3)]}


def _build(root: Path, datasets: tuple[str, ...] = tuple(DATASETS), *, old_pipeline: bool = False) -> None:
    geometry = groups.GroupGeometry(sparse_chunk=CHUNK, sparse_shard=SHARD)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(groups, "DEFAULT_GEOMETRY", geometry)
        if old_pipeline:
            for module in (groups, csc):
                patch.setattr(module, "value_codecs", _old_value_codecs)
        atlas = RaggedAtlas.create(
            str(root / "db"),
            "cells",
            CellSchema,
            store=str(root / "arrays"),
            registry_schemas={"gene_expression": GeneFeature},
        )
        bundled = tuple(d for d in BUNDLED if d.uid in DATASETS)
        atlas.register_features("gene_expression", gene_features(bundled))  # the same registry every time
        for dataset in (d for d in bundled if d.uid in datasets):
            add_from_anndata(
                atlas,
                dataset.read(),
                feature_space="gene_expression",
                zarr_layer=dataset.zarr_layer,
                dataset_record=DatasetRecord(uid=dataset.uid),
                csc=True,
                progress=False,
            )
        atlas.optimize()
        atlas.snapshot()


class Atlas:
    """A copy of a built atlas on disk, opened read-only, with the reads every test makes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.atlas = RaggedAtlas.checkout_latest(str(root / "db"), store=str(root / "arrays"))

    def group(self, uid: str) -> str:
        return next(p.name for p in (self.root / "arrays").iterdir() if p.name.startswith(f"{uid}-"))

    def array_dir(self, uid: str, array: str) -> Path:
        return self.root / "arrays" / self.group(uid) / array

    def query(self, uid: str):
        return self.atlas.query().where(f"dataset_uid = '{uid}'")

    def reads(self, uid: str) -> dict[str, Callable[[], object]]:
        """The three read paths over every cell of dataset ``uid``, each returning what it read."""
        layer = DATASETS[uid]

        def batched() -> tuple[np.ndarray, np.ndarray]:
            group = self.atlas.core.zarr_root[self.group(uid)]
            indptr = group["csr/indptr"][:]
            pair = [group["csr/indices"], group[f"csr/layers/{layer}"]]
            assert all(array_reader(array) is not None for array in pair)
            return tuple(read_element_ranges(array, indptr[:-1], indptr[1:])[0] for array in pair)

        def loader() -> tuple[np.ndarray, np.ndarray]:
            dataset = self.query(uid).to_cell_dataset("gene_expression", layer)
            batch = dataset.__getitems__(np.arange(len(dataset)))
            return batch.indices, batch.values

        return {
            "to_anndata": lambda: self.query(uid).to_anndata().X,
            "batched": batched,
            "dataloader": loader,
        }

    def feature_read(self, uid: str):
        """A read of a few features: planned on the CSC copy."""
        return self.query(uid).features(GENES, "gene_expression").to_anndata().X


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("built")
    _build(root)
    return root


@pytest.fixture(scope="module")
def expected(built: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], object]:
    """What each read path returns from the undamaged atlas."""
    atlas = Atlas(_copy(built, tmp_path_factory.mktemp("expected")))
    results = {(uid, name): read() for uid in DATASETS for name, read in atlas.reads(uid).items()}
    results.update({(uid, "features"): atlas.feature_read(uid) for uid in DATASETS})
    return results


def _copy(built: Path, tmp_path: Path) -> Path:
    shutil.copytree(built, tmp_path / "atlas")
    return tmp_path / "atlas"


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple):
        return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    return (a != b).nnz == 0


def _chunks_per_shard(array_dir: Path) -> int:
    meta = json.loads((array_dir / "zarr.json").read_text())
    sharding = meta["codecs"][0]["configuration"]
    return meta["chunk_grid"]["configuration"]["chunk_shape"][0] // sharding["chunk_shape"][0]


def _index(shard_file: Path, chunks_per_shard: int) -> np.ndarray:
    """The (offset, nbytes) entries of a shard's index (stored at the end, crc32c after it)."""
    raw = shard_file.read_bytes()
    return np.frombuffer(raw[-(16 * chunks_per_shard + 4) : -4], "<u8").reshape(-1, 2)


def _flip(path: Path, *positions: int, mask: int = 0x10) -> None:
    raw = bytearray(path.read_bytes())
    for position in positions:
        raw[position] ^= mask
    path.write_bytes(bytes(raw))


def _flip_in_chunk(array_dir: Path, shard: int | str, chunk: int, where: float = 0.5) -> None:
    """Flip one bit of a byte ``where`` of the way into chunk ``chunk`` of shard ``shard`` (its key)."""
    shard_file = array_dir / "c" / str(shard)
    offset, nbytes = (int(v) for v in _index(shard_file, _chunks_per_shard(array_dir))[chunk])
    _flip(shard_file, offset + min(int(nbytes * where), nbytes - 1))


def _where(uid: str, array: str, shard: int | str, chunk: int | str | None = None) -> str:
    """The message pattern that names the array, its shard object and (when known) the chunk."""
    path = rf"{uid}-[0-9a-f]+/{array}"
    named = rf"array '{path}', shard '{path}/c/{shard}'"
    return named + (rf", chunk {chunk}:" if chunk is not None else ":")


def _all_raise(reads: dict[str, Callable[[], object]], error: type[LancellError], match: str) -> None:
    for name, read in reads.items():
        with pytest.raises(error, match=match):
            read()
            pytest.fail(f"{name} returned data from a damaged atlas")


@pytest.mark.parametrize(
    ("uid", "array", "where"),
    [
        ("celltypist_sample", "csr/indices", 0.5),  # BP-128 delta: packed words
        ("celltypist_sample", "csr/indices", 0.02),  # BP-128 header and block heads
        ("celltypist_sample", "csr/layers/counts", 0.5),  # BP-128 plain
        ("celltypist_sample", "csr/layers/counts", 0.99),  # exception lists / the crc32c itself
        ("pbmc68k", "csr/indices", 0.5),
        ("pbmc68k", "csr/layers/log_normalized", 0.5),  # zstd of float32
    ],
)
def test_flipped_bit_in_a_chunk(built: Path, tmp_path: Path, uid: str, array: str, where: float) -> None:
    atlas = Atlas(_copy(built, tmp_path))
    _flip_in_chunk(atlas.array_dir(uid, array), SHARD_NO, CHUNK_NO, where)
    _all_raise(atlas.reads(uid), ChecksumError, _where(uid, array, SHARD_NO, CHUNK_NO) + " chunk checksum")


@pytest.mark.parametrize("array", ["csr/layers/counts", "csc/indices"])
def test_validate_with_checksums_names_a_flipped_bit(built: Path, tmp_path: Path, array: str) -> None:
    """A flipped bit passed validate() (the structure is whole) and the Dagster checks that call it: a
    corrupt dataset's snapshot was labelled, and only training met the ChecksumError."""
    atlas = Atlas(_copy(built, tmp_path))
    uid = "celltypist_sample"
    _flip_in_chunk(atlas.array_dir(uid, array), SHARD_NO, CHUNK_NO)
    assert atlas.atlas.validate() == []  # (no read of the data)
    (problem,) = atlas.atlas.validate(checksums=True)
    assert problem.startswith(f"dataset {uid!r}: array {array!r}: shard {SHARD_NO} is damaged: ")
    assert "chunk checksum" in problem
    assert atlas.atlas.validate("pbmc68k", checksums=True) == []


def test_validate_with_checksums_reads_what_is_stored_beside_a_missing_shard(
    built: Path, tmp_path: Path
) -> None:
    """One missing shard object made validate(checksums=True) skip the dataset's reads: a flipped bit in
    another array went unreported."""
    atlas = Atlas(_copy(built, tmp_path))
    uid = "celltypist_sample"
    _flip_in_chunk(atlas.array_dir(uid, "csr/layers/counts"), SHARD_NO, CHUNK_NO)
    (shard, *_) = sorted(p for p in (atlas.array_dir(uid, "csc/indices") / "c").rglob("*") if p.is_file())
    shard.unlink()
    problems = atlas.atlas.validate(uid, checksums=True)
    assert len(problems) == 2 and "array 'csc/indices'" in problems[0] and "missing" in problems[0]
    assert problems[1].startswith(f"dataset {uid!r}: array 'csr/layers/counts': shard {SHARD_NO} is damaged")


def test_validate_with_checksums_reads_the_offsets_too(built: Path, tmp_path: Path) -> None:
    """csr/indptr, read by zarr-python (its own crc32c codec), was skipped by validate(checksums=True)."""
    atlas = Atlas(_copy(built, tmp_path))
    uid = "celltypist_sample"
    (chunk, *_) = sorted(p for p in (atlas.array_dir(uid, "csr/indptr") / "c").rglob("*") if p.is_file())
    _flip(chunk, chunk.stat().st_size // 2)
    (problem,) = atlas.atlas.validate(uid, checksums=True)
    assert problem.startswith(f"dataset {uid!r}: array 'csr/indptr' is damaged: ")


@pytest.mark.parametrize("array", ["csr/indices", "csr/layers/counts"])
@pytest.mark.parametrize(
    ("position", "what"),
    [(-4 - 16 * 7 - 3, "an offset"), (-4 - 16 * 7 - 9, "a size"), (-2, "the crc32c trailer")],
)
def test_flipped_bit_in_the_shard_index(
    built: Path, tmp_path: Path, array: str, position: int, what: str
) -> None:
    uid = "celltypist_sample"
    atlas = Atlas(_copy(built, tmp_path))
    _flip(atlas.array_dir(uid, array) / "c" / str(SHARD_NO), position)
    _all_raise(atlas.reads(uid), ChecksumError, _where(uid, array, SHARD_NO) + " index checksum")


@pytest.mark.parametrize("keep", [0, 10, 16 * 16 + 3, 0.5, -1])
def test_truncated_shard(built: Path, tmp_path: Path, keep: float) -> None:
    """Whatever is cut, the index read from the end no longer checks out (or is too short)."""
    uid, array = "celltypist_sample", "csr/layers/counts"
    atlas = Atlas(_copy(built, tmp_path))
    shard_file = atlas.array_dir(uid, array) / "c" / str(SHARD_NO)
    raw = shard_file.read_bytes()
    shard_file.write_bytes(raw[: int(len(raw) * keep) if isinstance(keep, float) else keep % len(raw)])
    for name, read in atlas.reads(uid).items():
        with pytest.raises(
            (ChecksumError, ShardFormatError), match=_where(uid, array, SHARD_NO) + " .*index"
        ):
            read()
            pytest.fail(f"{name} returned data from a damaged atlas")


@pytest.mark.parametrize("array", ["csr/indices", "csr/layers/counts"])
def test_missing_shard(built: Path, tmp_path: Path, array: str) -> None:
    """zarr reads a missing shard as fill values; a dataset whose attributes say nnz > 0 has every shard."""
    uid = "celltypist_sample"
    atlas = Atlas(_copy(built, tmp_path))
    (atlas.array_dir(uid, array) / "c" / str(SHARD_NO)).unlink()
    _all_raise(
        atlas.reads(uid), ShardFormatError, _where(uid, array, SHARD_NO) + " the shard object is missing"
    )


@pytest.mark.parametrize("array", ["csc/indices", "csc/layers/counts"])
def test_damaged_csc_copy(
    built: Path, tmp_path: Path, expected: dict[tuple[str, str], object], array: str
) -> None:
    """Feature reads go to the damaged CSC copy and fail; cell reads of the intact CSR arrays still match."""
    uid = "celltypist_sample"
    atlas = Atlas(_copy(built, tmp_path))
    array_dir = atlas.array_dir(uid, array)
    for shard_file in (array_dir / "c").iterdir():
        entries = _index(shard_file, _chunks_per_shard(array_dir)).tolist()
        # chunks past the end of the array are never written
        _flip(shard_file, *(offset + nbytes // 2 for offset, nbytes in entries if offset != 2**64 - 1))
    with pytest.raises(ChecksumError, match=_where(uid, array, r"\d+", r"\d+") + " chunk checksum"):
        atlas.feature_read(uid)
    for name, read in atlas.reads(uid).items():
        assert _same(read(), expected[uid, name]), name
    for shard_file in (array_dir / "c").iterdir():
        shard_file.unlink()
    with pytest.raises(ShardFormatError, match=_where(uid, array, r"\d+") + " the shard object is missing"):
        Atlas(atlas.root).feature_read(uid)


def _edit_meta(path: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _inner_codecs(meta: dict) -> list[dict]:
    return meta["codecs"][0]["configuration"]["codecs"]


METADATA_DAMAGE = {  # (file under the dataset's group, the damage, the error, what the message says)
    "array zarr.json emptied": (
        "csr/layers/counts/zarr.json",
        lambda path: path.write_text(""),
        ShardFormatError,
        r"csr/layers/counts'.*zarr.json cannot be read",
    ),
    "array zarr.json deleted": (
        "csr/layers/counts/zarr.json",
        Path.unlink,
        GroupNotFoundError,
        r"csr/layers/counts' is missing",
    ),
    "group zarr.json not JSON": (
        "zarr.json",
        lambda path: path.write_text("{"),
        ShardFormatError,
        "cannot be read",
    ),
    "values dtype edited": (
        "csr/layers/counts/zarr.json",
        lambda path: _edit_meta(path, lambda meta: meta.update(data_type="uint16")),
        ShardFormatError,
        r"csr/layers/counts'.* stores uint16; the dataset's group says uint32",
    ),
    "indices dtype edited": (
        "csr/indices/zarr.json",
        lambda path: _edit_meta(path, lambda meta: meta.update(data_type="int64")),
        ShardFormatError,
        r"csr/indices'.* stores int64; lancell writes uint32",
    ),
    "byte order edited": (
        "csr/layers/counts/zarr.json",
        lambda path: _edit_meta(
            path, lambda meta: _inner_codecs(meta)[0]["configuration"].update(endian="big")
        ),
        ShardFormatError,
        r"csr/layers/counts' is not stored as lancell writes it: .*little-endian",
    ),
}


@pytest.mark.parametrize("case", sorted(METADATA_DAMAGE))
def test_damaged_metadata(built: Path, tmp_path: Path, case: str) -> None:
    """zarr.json carries no checksum: damage or edits are caught by its parse and by cross-checks against
    the group's attributes and lancell's format (an edited dtype or byte order read shifted values)."""
    uid = "celltypist_sample"
    relative, damage, error, message = METADATA_DAMAGE[case]
    atlas = Atlas(_copy(built, tmp_path))
    damage(atlas.root / "arrays" / atlas.group(uid) / relative)
    reads = {name: read for name, read in atlas.reads(uid).items() if name != "batched"}  # zarr's own reads
    _all_raise(reads, error, message)
    if relative == "zarr.json":
        assert any("cannot be read" in problem for problem in atlas.atlas.validate())


def test_flipped_bit_in_the_csc_indptr(built: Path, tmp_path: Path) -> None:
    """The CSC indptr is read whole through zarr (zstd + crc32c): its checksum error is typed."""
    uid = "celltypist_sample"
    atlas = Atlas(_copy(built, tmp_path))
    chunk = next(path for path in (atlas.array_dir(uid, "csc/indptr") / "c").rglob("*") if path.is_file())
    _flip(chunk, chunk.stat().st_size // 2)
    with pytest.raises(ChecksumError, match=r"csc/indptr'.*checksum"):
        atlas.feature_read(uid)


def test_swapped_index_arrays_read_past_their_dataset(built: Path, tmp_path: Path) -> None:
    """The CSR and CSC index shards swapped (each checksum is the bytes' own, so both decode): a feature
    read maps stored cell numbers that are feature numbers, past the dataset's cells: OutOfBoundsError, not
    numpy's IndexError (a cell read of such a swap is not detected: docs/integrity.md)."""
    uid = "celltypist_sample"
    atlas = Atlas(_copy(built, tmp_path))
    csr, csc_dir = atlas.array_dir(uid, "csr/indices") / "c", atlas.array_dir(uid, "csc/indices") / "c"
    csr.rename(csr.with_name("swap"))
    csc_dir.rename(csr)
    csr.with_name("swap").rename(csc_dir)
    with pytest.raises(OutOfBoundsError, match=r"csc/indices' holds index \d+ but its dataset has 559"):
        atlas.feature_read(uid)


def test_swapped_index_arrays_of_a_narrow_panel_fail_every_cell_read(tmp_path: Path) -> None:
    """More cells than features: the CSC copy's cell numbers read as CSR feature numbers run past the panel
    (the loader's batch kernel used to drop them as features left out, silently)."""
    genes = [f"g{i}" for i in range(50)]
    atlas = RaggedAtlas.create(
        str(tmp_path / "db"),
        "cells",
        CellSchema,
        store=str(tmp_path / "arrays"),
        registry_schemas={"gene_expression": GeneFeature},
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    x = synthetic_counts(300, len(genes), 15, np.random.default_rng(0))
    adata = ad.AnnData(
        X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(300)]), var=pd.DataFrame(index=genes)
    )
    adata.layers["halved"] = (x / 2).astype(np.float32)
    record = add_from_anndata(
        atlas,
        adata,
        feature_space="gene_expression",
        layers={"counts": "X", "normalized": "halved"},
        dataset_record=DatasetRecord(uid="narrow"),
        csc=True,
        progress=False,
    )
    group = tmp_path / "arrays" / record.zarr_group
    csr, csc_dir = group / "csr" / "indices" / "c", group / "csc" / "indices" / "c"
    csr.rename(csr.with_name("swap"))
    csc_dir.rename(csr)
    csr.with_name("swap").rename(csc_dir)
    fresh = RaggedAtlas.open(str(tmp_path / "db"))
    with pytest.raises(OutOfBoundsError, match=r"csr/indices' holds index \d+ but its dataset has 50"):
        fresh.query().layers("gene_expression", "counts").to_anndata()
    dataset = fresh.query().to_cell_dataset("gene_expression", "counts")
    with pytest.raises(OutOfBoundsError, match=r"csr/indices'.*a stored feature index is past"):
        dataset.__getitems__(np.arange(len(dataset)))
    both = fresh.query().to_cell_dataset("gene_expression", ["counts", "normalized"])  # the batched reader
    with pytest.raises(OutOfBoundsError, match=r"csr/indices' holds index \d+ but its dataset has 50"):
        both.__getitems__(np.arange(len(both)))


def test_undamaged_reads_match_and_other_datasets_are_unaffected(
    built: Path, tmp_path: Path, expected: dict[tuple[str, str], object]
) -> None:
    atlas = Atlas(_copy(built, tmp_path))
    _flip_in_chunk(atlas.array_dir("celltypist_sample", "csr/indices"), SHARD_NO, CHUNK_NO)
    for name, read in atlas.reads("pbmc68k").items():
        assert _same(read(), expected["pbmc68k", name]), name
    for uid in DATASETS:
        assert _same(atlas.feature_read(uid), expected[uid, "features"])
    group = atlas.atlas.core.zarr_root[atlas.group("pbmc68k")]
    reader = array_reader(group["csr/indices"])
    assert reader.complete and reader.layout.chunk_crc  # written with every chunk, each with its crc32c


def test_old_pipeline_without_chunk_crc_still_reads(
    tmp_path: Path, expected: dict[tuple[str, str], object]
) -> None:
    """Atlases written before chunk checksums read through every path; their damage is what chunk checksums
    are for: a flipped bit inside a BP-128 chunk decodes to wrong numbers that look valid."""
    _build(tmp_path / "old", ("celltypist_sample",), old_pipeline=True)
    atlas = Atlas(tmp_path / "old")
    uid = "celltypist_sample"
    meta = json.loads((atlas.array_dir(uid, "csr/indices") / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"][0]["configuration"]["codecs"]] == [
        "bytes",
        "lancell.bitpacking",
    ]
    for name, read in atlas.reads(uid).items():
        assert _same(read(), expected[uid, name]), name
    assert _same(atlas.feature_read(uid), expected[uid, "features"])
    _flip_in_chunk(atlas.array_dir(uid, "csr/layers/counts"), SHARD_NO, CHUNK_NO)
    damaged = Atlas(atlas.root).reads(uid)["batched"]()
    assert np.array_equal(damaged[0], expected[uid, "batched"][0])
    assert not np.array_equal(damaged[1], expected[uid, "batched"][1])  # no error: silently wrong counts
    (atlas.array_dir(uid, "csr/indices") / "c" / str(SHARD_NO)).unlink()  # 1-D arrays: every shard written
    with pytest.raises(ShardFormatError, match="the shard object is missing"):
        Atlas(atlas.root).reads(uid)["batched"]()


def _dense_group(root: zarr.Group, name: str, codecs: dict[str, object]) -> tuple[zarr.Array, np.ndarray]:
    """A dense dataset group (lancell attributes, 2-D layer of 4 shards) whose shard 1 is all zeros."""
    data = np.random.default_rng(0).integers(1, 50, (64, 10)).astype(np.uint32)
    data[16:32] = 0
    group = root.create_group(name, attributes={"lancell_format": 1, "nnz": data.size})
    array = group.create_group("layers").create_array(
        "counts", shape=data.shape, dtype="uint32", chunks=(4, 10), shards=(16, 10), **codecs
    )
    array[:] = data
    return array, data


def test_dense_layers(tmp_path: Path) -> None:
    """New dense layers have every shard (a missing one raises); older ones left all-zero shards unwritten."""
    root = zarr.open_group(zarr.storage.ObjectStore(obstore.store.LocalStore(str(tmp_path))), mode="w")
    new, data = _dense_group(root, "new-1", groups.value_codecs(np.dtype("uint32"), "values"))
    old, _ = _dense_group(root, "old-1", _old_value_codecs(np.dtype("uint32"), "values"))
    assert not (tmp_path / "old-1/layers/counts/c/1/0").exists()
    rows = np.arange(64)[::-1]
    np.testing.assert_array_equal(read_rows(old, rows), data[rows])
    np.testing.assert_array_equal(read_rows(new, rows), data[rows])
    _flip_in_chunk(tmp_path / "new-1/layers/counts", "2/0", 1)
    with pytest.raises(
        ChecksumError, match=r"array 'new-1/layers/counts', shard 'new-1/layers/counts/c/2/0', chunk 1"
    ):
        read_rows(new, [0, 37])
    (tmp_path / "new-1/layers/counts/c/1/0").unlink()
    with pytest.raises(
        ShardFormatError, match=r"shard 'new-1/layers/counts/c/1/0': the shard object is gone"
    ):
        read_rows(new, [20])  # the reader had read its index
    with pytest.raises(
        ShardFormatError, match=r"shard 'new-1/layers/counts/c/1/0': the shard object is missing"
    ):
        ShardedArrayReader(new.store.store, new.path, complete=True).read_rows([20])


FRESH_READER = """
import sys, zarr
for path in sys.argv[1:]:
    x = zarr.open_array(path, mode="r")[:]
    print(x.dtype, x.size, int(x.astype("uint64").sum()))
"""


def test_plain_zarr_reads_checksummed_arrays(built: Path, expected: dict[tuple[str, str], object]) -> None:
    """A zarr-python process that never imports lancell decodes the new pipeline (BP-128 or zstd, crc32c)."""
    atlas = Atlas(built)
    arrays = [("celltypist_sample", "csr/indices", 0), ("pbmc68k", "csr/layers/log_normalized", 1)]
    result = subprocess.run(
        [sys.executable, "-c", FRESH_READER, *(str(atlas.array_dir(uid, a)) for uid, a, _ in arrays)],
        cwd=built,  # keep the source checkout off sys.path: only the installed entry point can help
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for line, (uid, _, k) in zip(result.stdout.splitlines(), arrays, strict=True):
        flat = expected[uid, "batched"][k]
        assert line.split() == [str(flat.dtype), str(flat.size), str(int(flat.astype(np.uint64).sum()))]
