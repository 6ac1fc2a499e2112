"""kernels.lzf: LZF streams as h5py's lzf filter writes them, decompressed exactly; damaged ones refused."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from kernels.lzf import BAD_REFERENCE, TOO_LONG, TRUNCATED, lzf_decompress


def _lzf_chunks(path: Path, values: np.ndarray, chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(stored stream, plain bytes)`` of each chunk of ``values`` written with h5py's lzf filter."""
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("x", data=values, chunks=(chunk,), compression="lzf")
        chunks = []
        for j in range(dataset.id.get_num_chunks()):
            start = dataset.id.get_chunk_info(j).chunk_offset
            mask, stored = dataset.id.read_direct_chunk(start)
            assert mask == 0  # compressed, not stored as it is
            plain = np.zeros(chunk, values.dtype)  # the last chunk is stored whole, past the values
            part = values[start[0] : start[0] + chunk]
            plain[: part.size] = part
            chunks.append((np.frombuffer(stored, np.uint8), plain.view(np.uint8)))
    return chunks


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(1).negative_binomial(2, 0.5, 50_000).astype(np.int32),  # counts
        np.repeat(np.arange(40, dtype=np.int64), 1_500),  # long runs: 7 + extra-byte lengths, overlaps
        np.round(np.random.default_rng(2).random(20_000) * 300).astype(np.float32),  # many literals
    ],
    ids=["counts", "runs", "floats"],
)
def test_h5py_lzf_chunks_decompress_exactly(tmp_path: Path, values: np.ndarray) -> None:
    for stored, plain in _lzf_chunks(tmp_path / "l.h5", values, 4_096):
        out = np.empty(plain.size, np.uint8)
        assert lzf_decompress(stored, out) == plain.size
        np.testing.assert_array_equal(out, plain)


def test_damaged_streams_are_error_codes_not_writes_outside_the_output(tmp_path: Path) -> None:
    stored, plain = _lzf_chunks(tmp_path / "d.h5", np.repeat(np.arange(8, dtype=np.int32), 700), 4_096)[0]
    out = np.zeros(plain.size + 16, np.uint8)
    assert lzf_decompress(stored[:-1], out[: plain.size]) == TRUNCATED  # cut inside the last item
    guarded = np.full(plain.size + 16, 7, np.uint8)
    assert lzf_decompress(stored, guarded[: plain.size - 1]) == TOO_LONG  # one byte short
    assert (guarded[plain.size - 1 :] == 7).all()  # nothing written past the output it was given
    back_first = np.array([0b0010_0000, 5], np.uint8)  # a back-reference before any output
    assert lzf_decompress(back_first, out) == BAD_REFERENCE
    assert lzf_decompress(np.array([2, 65, 66], np.uint8), out) == TRUNCATED  # 3 literals promised, 2 given
    assert lzf_decompress(np.zeros(0, np.uint8), out) == 0
