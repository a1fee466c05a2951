"""A queue of received chunks that can be consumed without joining them.

Chunks are kept as the caller handed them (no copy on receive); ``take_into``
copies straight from them into a message buffer, so every body byte is
copied exactly once on its way to pyarrow.

A ``memoryview`` may be a small window on a large buffer, which it keeps
alive. So views are held only until the next ``feed``: whatever of them is
still unconsumed then is copied into bytes the buffer owns (each byte at most
once). Bodies are consumed as they arrive and are not copied; a field that
is still being collected costs one copy of itself.
"""

from __future__ import annotations

import collections


class InputBuffer:
    __slots__ = ("_chunks", "_offset", "_view_held", "eof", "size")

    def __init__(self) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._view_held = False  # the last chunk is a caller's memoryview
        self._offset = 0  # bytes already consumed from the first chunk
        self.size = 0
        self.eof = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self.eof = True
            return
        if self.eof:
            raise RuntimeError("received data after EOF")
        if self._view_held and self._chunks:
            self._own_last()
        self._view_held = isinstance(data, memoryview)
        view = data.cast("B") if isinstance(data, memoryview) else memoryview(data)
        self._chunks.append(view)
        self.size += len(view)

    def _own_last(self) -> None:
        """Copy the unconsumed part of the last chunk (a caller's view) into bytes."""
        last = self._chunks.pop()
        if not self._chunks:  # it is also the first chunk: drop what was consumed
            last, self._offset = last[self._offset :], 0
        self._chunks.append(memoryview(bytes(last)))

    def take_into(self, dest: memoryview, start: int, count: int) -> int:
        """Copy up to ``count`` bytes into ``dest[start:]``; return how many."""
        done = 0
        chunks = self._chunks
        while done < count and chunks:
            head = chunks[0]
            available = len(head) - self._offset
            n = min(available, count - done)
            dest[start + done : start + done + n] = head[self._offset : self._offset + n]
            done += n
            if n == available:
                chunks.popleft()
                self._offset = 0
            else:
                self._offset += n
        self.size -= done
        return done

    def discard(self, count: int) -> int:
        """Drop up to ``count`` bytes; return how many."""
        done = 0
        chunks = self._chunks
        while done < count and chunks:
            available = len(chunks[0]) - self._offset
            n = min(available, count - done)
            done += n
            if n == available:
                chunks.popleft()
                self._offset = 0
            else:
                self._offset += n
        self.size -= done
        return done

    def take(self, count: int) -> bytes:
        """Remove and return exactly ``count`` bytes (the caller checked ``size``)."""
        head = self._chunks[0] if self._chunks else None
        if head is not None and len(head) - self._offset >= count:
            out = bytes(head[self._offset : self._offset + count])
            self._offset += count
            if self._offset == len(head):
                self._chunks.popleft()
                self._offset = 0
            self.size -= count
            return out
        buf = bytearray(count)
        got = self.take_into(memoryview(buf), 0, count)
        assert got == count
        return bytes(buf)

    def peek(self, count: int) -> bytes:
        """Return the first ``count`` bytes without consuming them."""
        out = bytearray()
        offset = self._offset
        for chunk in self._chunks:
            out += chunk[offset : offset + count - len(out)]
            offset = 0
            if len(out) >= count:
                break
        return bytes(out)

    def peek_all(self) -> bytes:
        return self.peek(self.size)
