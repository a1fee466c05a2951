"""A file-like object that hands queued IPC messages to pyarrow zero-copy.

pyarrow has no push-style IPC reader, and ``read_record_batch`` needs a
``DictionaryMemo`` that Python cannot fill. So the decoder queues complete,
canonical messages here and lets ``pyarrow.ipc.open_stream`` pull them.
pyarrow calls ``read_buffer`` for metadata and bodies; slices of the queued
``pa.Buffer`` keep the batch's memory zero-copy. The decoder only asks
pyarrow for a batch once that batch's message is queued, so reads never run
past the queued bytes.
"""

from __future__ import annotations

import collections

import pyarrow as pa


class MessageFeed:
    closed = False

    def __init__(self) -> None:
        self._buffers: collections.deque[pa.Buffer] = collections.deque()
        self._offset = 0
        self._position = 0

    def push(self, message: pa.Buffer) -> None:
        self._buffers.append(message)

    # -- the file protocol pyarrow uses -------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._buffers.clear()

    def read_buffer(self, nbytes: int = -1) -> pa.Buffer:
        if nbytes < 0:
            nbytes = sum(b.size for b in self._buffers) - self._offset
        if not self._buffers:
            return pa.py_buffer(b"")
        head = self._buffers[0]
        available = head.size - self._offset
        if nbytes <= available:
            out = head.slice(self._offset, nbytes)
            self._advance(nbytes)
            return out
        parts = []
        remaining = nbytes
        while remaining and self._buffers:
            head = self._buffers[0]
            n = min(remaining, head.size - self._offset)
            parts.append(head.slice(self._offset, n).to_pybytes())
            self._advance(n)
            remaining -= n
        return pa.py_buffer(b"".join(parts))

    def read(self, nbytes: int = -1) -> bytes:
        return bytes(self.read_buffer(nbytes))

    def _advance(self, n: int) -> None:
        self._offset += n
        self._position += n
        if self._offset == self._buffers[0].size:
            self._buffers.popleft()
            self._offset = 0
