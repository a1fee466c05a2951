"""The encoding side: an in-memory file for pyarrow's IPC stream writer.

``pa.ipc.new_stream(IpcSink(), schema)`` writes into it; ``take()`` returns
what was written since the last call, as one ``bytes``. The buffers pyarrow
hands to ``write`` are kept as they are (it never reuses them), so each
written byte is copied once, by ``take``.
"""

from __future__ import annotations

from typing import Any


class IpcSink:
    """A write-only, in-memory file (the methods pyarrow's writer calls)."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[Any] = []
        self._position = 0

    def write(self, data: Any) -> int:
        self._parts.append(data)
        n = memoryview(data).nbytes
        self._position += n
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        """Everything written since the last ``take``, and empty the sink."""
        data = b"".join(self._parts)
        self._parts.clear()
        return data
