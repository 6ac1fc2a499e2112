"""Public calls allocate on small pages, and local object writes go in pieces below a huge page."""

import asyncio
import inspect
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import obstore
import pandas as pd
import pytest
import scipy.sparse as sp
from obstore.store import LocalStore, MemoryStore
from zarr.core.buffer import default_buffer_prototype

from lancell.atlas import RaggedAtlas
from lancell.errors import LancellWarning
from lancell.ingest.from_anndata import add_from_anndata
from lancell.storage import small_pages
from lancell.storage.small_pages import WRITE_PIECE, numpy_small_pages, pwrite_all, write_pieces
from lancell.storage.store_failures import store_boundary
from lancell.storage.zarr_store import zarr_store


@pytest.fixture(autouse=True)
def _small_pages_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism under test, whatever this machine's balloon (the tests of the switch set it again)."""
    monkeypatch.setenv("LANCELL_SMALL_PAGES", "1")


def _vm_flags(address: int) -> list[str]:
    """The ``VmFlags`` of this process's mapping holding ``address`` (Linux ``/proc/self/smaps``)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(part, 16) for part in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def _numpy_advises_huge_pages() -> bool:
    """numpy's current huge-page advice, read without changing it."""
    setter = small_pages._madvise_setter()
    now = setter(False)
    setter(now)
    return now


_ADVICE_IN_A_FRESH_PROCESS = """
from pathlib import Path
import numpy as np
from lancell.storage.small_pages import numpy_small_pages

def advised():
    array = np.ones(8 << 20, np.uint8)  # numpy advises huge pages from 4 MiB, on the aligned middle
    return "hg" in _vm_flags(array.ctypes.data + array.nbytes // 2)

with numpy_small_pages():
    inside = advised()
print(inside, advised())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmFlags are Linux's")
def test_arrays_made_inside_are_not_advised_huge_pages() -> None:
    # in a fresh process: in a long-lived one an array may land in heap memory an earlier array had advised
    done = subprocess.run(
        [sys.executable, "-c", inspect.getsource(_vm_flags) + _ADVICE_IN_A_FRESH_PROCESS],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "LANCELL_SMALL_PAGES": "1"},
    )
    inside, outside = done.stdout.split()
    if outside != "True":
        pytest.skip(
            "numpy advises no huge pages here (NUMPY_MADVISE_HUGEPAGE=0 or no transparent huge pages)"
        )
    assert inside == "False"


@pytest.mark.parametrize("numpys", [True, False])
def test_numpys_setting_is_back_once_the_last_of_nested_and_concurrent_uses_leaves(numpys: bool) -> None:
    setter = small_pages._madvise_setter()
    before = setter(numpys)
    try:
        entered, release = threading.Event(), threading.Event()

        def other() -> None:
            with numpy_small_pages():
                entered.set()
                release.wait(10)

        thread = threading.Thread(target=other)
        with numpy_small_pages():
            thread.start()
            entered.wait(10)
            with numpy_small_pages():
                assert not _numpy_advises_huge_pages()
            assert not _numpy_advises_huge_pages()
        assert not _numpy_advises_huge_pages()  # the other thread is still inside
        release.set()
        thread.join()
        assert _numpy_advises_huge_pages() is numpys
    finally:
        setter(before)


def test_a_public_method_runs_on_small_pages_and_leaves_numpys_setting() -> None:
    class Public:
        @store_boundary(lambda _: "here")
        def call(self) -> bool:
            return _numpy_advises_huge_pages()

        @store_boundary(lambda _: "here")
        def batches(self) -> Iterator[bool]:
            yield _numpy_advises_huge_pages()

    before = _numpy_advises_huge_pages()
    assert Public().call() is False and list(Public().batches()) == [False]
    assert _numpy_advises_huge_pages() is before
    suspended = Public().batches()
    assert next(suspended) is False
    assert _numpy_advises_huge_pages() is before  # not while the caller holds it suspended
    suspended.close()


def test_numpys_advice_turned_on_during_a_call_stays_on() -> None:
    setter = small_pages._madvise_setter()
    before = setter(False)
    try:
        with numpy_small_pages():
            setter(True)
        assert _numpy_advises_huge_pages() is True
    finally:
        setter(before)


@pytest.mark.parametrize("size", [0, 1, WRITE_PIECE, WRITE_PIECE + 1, 3 * WRITE_PIECE - 5])
def test_write_pieces_cover_the_bytes_in_order_none_above_a_piece(size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    pieces = write_pieces(data)
    assert all(len(piece) <= WRITE_PIECE for piece in pieces)
    assert b"".join(bytes(piece) for piece in pieces) == data.tobytes()
    assert len(pieces) == max(1, -(-size // WRITE_PIECE))


def test_pwrite_all_writes_at_the_position_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = small_pages.os.pwrite

    def pwrite(fd: int, data: memoryview, position: int) -> int:
        sizes.append(len(data))
        return real(fd, data, position)

    monkeypatch.setattr(small_pages.os, "pwrite", pwrite)
    data = np.arange(700_000, dtype=np.uint32)  # 2.8 MB
    with tempfile.TemporaryFile(dir=tmp_path) as file:
        file.write(b"head")
        file.flush()
        end = pwrite_all(file.fileno(), data, 4)
        file.seek(0)
        assert file.read() == b"head" + data.tobytes()
    assert end == 4 + data.nbytes
    assert max(sizes) <= WRITE_PIECE and sum(sizes) == data.nbytes


def _puts(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Record the piece sizes of every ``obstore.put_async`` (the real put still runs)."""
    calls: list[list[int]] = []
    real = obstore.put_async

    async def put_async(store, path, file, **kwargs):
        calls.append([len(piece) for piece in file] if isinstance(file, list) else [len(memoryview(file))])
        return await real(store, path, file, **kwargs)

    monkeypatch.setattr(obstore, "put_async", put_async)
    return calls


def test_a_large_object_goes_to_a_local_disk_in_pieces_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _puts(monkeypatch)
    store = zarr_store(LocalStore(tmp_path))
    payload = np.random.default_rng(3).integers(0, 256, 3 * WRITE_PIECE + 123, dtype=np.uint8)
    small = payload[:1000]
    prototype = default_buffer_prototype()
    asyncio.run(store.set("g/big", prototype.buffer.from_array_like(payload)))
    asyncio.run(store.set("g/small", prototype.buffer.from_array_like(small)))
    assert calls[0] == [WRITE_PIECE] * 3 + [123] and calls[1] == [1000]
    assert (tmp_path / "g" / "big").read_bytes() == payload.tobytes()
    assert (tmp_path / "g" / "small").read_bytes() == small.tobytes()
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["big", "small"]  # no staging file left


def test_other_stores_take_an_object_in_one_put(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _puts(monkeypatch)
    memory = MemoryStore()
    payload = np.ones(2 * WRITE_PIECE, np.uint8)
    asyncio.run(zarr_store(memory).set("big", default_buffer_prototype().buffer.from_array_like(payload)))
    assert calls == [[2 * WRITE_PIECE]]
    assert bytes(obstore.get(memory, "big").bytes()) == payload.tobytes()


def test_a_read_only_local_store_refuses_a_large_object(tmp_path: Path) -> None:
    store = zarr_store(LocalStore(tmp_path), read_only=True)
    payload = default_buffer_prototype().buffer.from_array_like(np.ones(2 * WRITE_PIECE, np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        asyncio.run(store.set("big", payload))
    assert not any(tmp_path.iterdir())


def test_a_dataset_whose_shards_span_several_pieces_reads_back_exactly(
    tmp_path: Path, atlas: RaggedAtlas
) -> None:
    rng = np.random.default_rng(11)
    n_cells, n_genes = 3_000, 4_000
    x = sp.random(n_cells, n_genes, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    x.data = rng.negative_binomial(2, 0.3, x.nnz).astype(np.float32) + 1
    genes = [f"g{i}" for i in range(n_genes)]
    adata = ad.AnnData(
        x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]), var=pd.DataFrame(index=genes)
    )
    atlas.register_features("gene_expression", pd.DataFrame({"uid": genes, "gene_symbol": genes}))
    record = add_from_anndata(
        atlas, adata, feature_space="gene_expression", zarr_layer="counts", progress=False
    )
    shards = [p for p in (tmp_path / "arrays" / record.zarr_group).rglob("c/*") if p.is_file()]
    assert max(p.stat().st_size for p in shards) > 2 * WRITE_PIECE  # the case under test
    back = atlas.query().to_anndata()
    assert list(back.obs_names) == [f"{record.uid}:{name}" for name in adata.obs_names]
    assert (back[:, genes].X != x).nnz == 0


@pytest.mark.parametrize("value", ["0", "off", " False "])
def test_lancell_small_pages_off_leaves_numpys_advice_alone(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LANCELL_SMALL_PAGES", value)
    setter = small_pages._madvise_setter()
    before = setter(True)
    try:
        with numpy_small_pages():
            assert _numpy_advises_huge_pages() is True
    finally:
        setter(before)


def test_an_unknown_lancell_small_pages_value_warns_at_the_caller_and_is_taken_as_auto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LANCELL_SMALL_PAGES", "maybe")
    with pytest.warns(LancellWarning, match="LANCELL_SMALL_PAGES='maybe'") as caught, numpy_small_pages():
        assert _numpy_advises_huge_pages() is not small_pages.reports_free_memory()
    assert caught[0].filename == __file__


def _sysfs(root: Path, devices: dict[str, tuple[str, str]]) -> Path:
    """A ``/sys/bus/virtio/devices`` tree: ``{name: (device id, negotiated feature bits)}``."""
    for name, (device, features) in devices.items():
        (root / name).mkdir(parents=True)
        (root / name / "device").write_text(device + "\n")
        (root / name / "features").write_text(features + "\n")
    return root


@pytest.mark.parametrize(
    ("devices", "reports"),
    [
        ({"virtio0": ("0x0005", "0110010100"), "virtio1": ("0x0002", "0010001")}, True),  # this machine's
        ({"virtio0": ("0x0005", "0110000000")}, False),  # a balloon without free page reporting
        ({"virtio2": ("0x0001", "0000010000")}, False),  # bit 5 of a network device
        ({}, False),
    ],
)
def test_a_balloon_reporting_free_memory_is_found_in_sysfs(
    tmp_path: Path, devices: dict[str, tuple[str, str]], reports: bool
) -> None:
    assert small_pages.reports_free_memory(_sysfs(tmp_path / "devices", devices)) is reports


def test_no_sysfs_means_memory_stays_with_the_machine(tmp_path: Path) -> None:
    assert small_pages.reports_free_memory(tmp_path / "absent") is False


@pytest.mark.parametrize("value", ["auto", None])
def test_auto_follows_the_balloon(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("LANCELL_SMALL_PAGES")
    else:
        monkeypatch.setenv("LANCELL_SMALL_PAGES", value)
    setter = small_pages._madvise_setter()
    before = setter(True)
    try:
        with numpy_small_pages():
            assert _numpy_advises_huge_pages() is not small_pages.reports_free_memory()
    finally:
        setter(before)
