"""Append-only writing of a sharded zarr array that stores whole shards (zarr never reads-modifies-writes a
shard), each while the next is encoded where the codecs allow
(:class:`~lancell.storage.shard_writer.ShardWriter`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import zarr

from lancell.storage.shard_writer import ShardWriter

__all__ = ["ShardBuffer", "exit_all"]


class ShardBuffer:
    """Append-only writer of a sharded array (1-D, or 2-D by rows) that stores whole shards and the tail.

    Where the array's codecs allow, a :class:`~lancell.storage.shard_writer.ShardWriter` encodes the rows as
    they are appended (no copy of them) and each full shard is stored; otherwise rows are copied into one
    reused shard-sized buffer and each full shard is written through zarr-python.
    """

    def __init__(self, array: zarr.Array, shard: int, guard: Callable[[], None] | None = None) -> None:
        self.array = array
        self.shard = shard
        self._guard = guard  # called before each store (a lease's check: a writer that lost it stops)
        self.buffered = 0
        self.written = 0
        self._buffer: np.ndarray | None = None
        self._direct = ShardWriter.for_array(array) if array.shards and array.shards[0] == shard else None

    def append(self, values: np.ndarray) -> None:
        if self.written + self.buffered + values.shape[0] > self.array.shape[0]:
            raise ValueError(
                f"{self.array.path}: appending {values.shape[0]} rows after {self.written + self.buffered} "
                f"overflows the array's {self.array.shape[0]}"
            )
        while values.shape[0]:
            capacity = min(self.shard, self.array.shape[0] - self.written)  # rows of the current shard
            take = min(capacity - self.buffered, values.shape[0])
            if self._direct is not None:
                self._direct.add(values[:take])
            else:
                if self._buffer is None or self._buffer.shape[0] != capacity:  # first, or the shorter last
                    self._buffer = np.empty((capacity, *self.array.shape[1:]), self.array.dtype)
                self._buffer[self.buffered : self.buffered + take] = values[:take]
            self.buffered += take
            values = values[take:]
            if self.buffered == capacity:
                self._flush()

    def _flush(self) -> None:
        if not self.buffered:
            return
        if self._direct is not None:
            self._write(self._direct.shard_bytes())
        elif self._buffer is not None:
            self._write(self._buffer[: self.buffered])
        self.written += self.buffered
        self.buffered = 0

    def _write(self, shard: np.ndarray) -> None:
        """Store the current shard: its encoded object (direct writes), else its rows through zarr-python."""
        if self._guard is not None:
            self._guard()
        if self._direct is not None:
            self._direct.store(self.written // self.shard, shard)
        else:
            self.array[self.written : self.written + shard.shape[0]] = shard

    def close(self) -> int:
        """Store what is buffered (the last shard) and wait for every store; return the rows written."""
        try:
            self._flush()
        finally:
            if self._direct is not None:
                self._direct.close()
        return self.written

    def __enter__(self) -> ShardBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        """Wait for a store in flight (a direct writer stores a shard while the next is encoded): nothing is
        left running for a roll-back to race with. Its error is raised unless another is propagating."""
        if self._direct is not None:
            try:
                self._direct.close()
            except Exception:
                if exc[0] is None:
                    raise


def exit_all(buffers: Iterable[ShardBuffer], exc: tuple[object, ...]) -> None:
    """Exit every buffer (each waits for its store in flight); raise the first error if none propagates."""
    errors = []
    for buffer in buffers:
        try:
            buffer.__exit__(*exc)
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]
