"""Two h2 hot spots, worked around: the frame buffer's copies, and frame reprs.

h2's ``FrameBuffer`` appends every received chunk to a bytearray, slices each
frame out of it (a copy) and DATA frames copy their payload once more
(``tobytes``): three copies of every uploaded byte before Arrowport's own.
This buffer keeps the received ``bytes`` chunks as they are and parses frames
from views of them; a DATA frame's payload stays a view of the chunk it
arrived in. Only a frame that straddles two reads is joined (one copy).

Invariants: views are only ever taken of memory nobody writes again
(``bytes``, or a receive buffer that the driver hands over for good), so
nothing can change under a payload that a stream has not consumed yet; framing
and size rules are h2's own (``_validate_frame_length``).

Two defenses live here because only here is a frame seen before h2 acts on it:

* every frame is shown to the ``FloodGuard`` first (its budgets may end the
  connection with ENHANCE_YOUR_CALM);
* a header block is bounded as it arrives: h2's ``_update_header_buffer``
  keeps up to 64 CONTINUATION frames of up to ``MAX_FRAME_SIZE`` each before
  any check (CVE-2024-27316); this one counts the bytes first.

Parsing is sliced: ``budget`` frames (and ``byte_budget`` bytes) per call of
h2's ``receive_data``; the rest stays buffered for the next call.
"""

from __future__ import annotations

import collections

import hyperframe.frame
from h2.exceptions import FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidDataError, InvalidFrameError, InvalidPaddingError
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame

from .h2limits import FloodGuard


def quiet_data_frame_repr() -> None:
    """Make ``repr`` of a DATA frame cheap (h2 calls it for every frame received)."""

    def _body_repr(self: hyperframe.frame.DataFrame) -> str:
        return f"<{len(self.data)} bytes, padding {self.pad_length}>"

    hyperframe.frame.DataFrame._body_repr = _body_repr  # type: ignore[method-assign,assignment]


class ChunkedFrameBuffer(FrameBuffer):
    def __init__(self, guard: FloodGuard) -> None:
        super().__init__(server=True)
        self.guard = guard
        self.budget = 0  # frames left in this slice
        self.byte_budget = 0  # ... and bytes
        self._header_bytes = 0  # of the header block being received
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._offset = 0  # consumed bytes of the first chunk
        self._size = 0
        self._span: tuple[memoryview, int, int] | None = None  # where the last chunk lies
        self.goaway_received = False
        self.goaway_after = 0  # the last stream the client opened before its GOAWAY

    def add_span(self, base: memoryview, start: int, end: int) -> None:
        """Add ``base[start:end]``, received just after the previous span of ``base``.

        Consecutive reads into one buffer become one chunk, so a frame that
        arrived over several reads is still parsed without a copy.
        """
        if end <= start:
            return
        if self._preamble_len:  # the client preface is not through yet: check it
            self.add_data(base[start:end])
            return
        last = self._span
        if last is not None and last[0] is base and last[2] == start and self._chunks:
            self._chunks[-1] = base[last[1] : end]  # the first chunk's offset stays valid
            self._span = (base, last[1], end)
        else:
            self._chunks.append(base[start:end])
            self._span = (base, start, end)
        self._size += end - start

    def add_data(self, data: bytes | bytearray | memoryview) -> None:  # type: ignore[override]
        # bytes, or a view of a buffer nobody writes again (H2Server._receive)
        view = memoryview(data if isinstance(data, bytes | memoryview) else bytes(data))
        if self._preamble_len:
            n = min(self._preamble_len, len(view))
            if self._preamble[:n] != view[:n]:
                raise ProtocolError("Invalid HTTP/2 preamble.")
            view = view[n:]
            self._preamble_len -= n
            self._preamble = self._preamble[n:]
        if view:
            self._chunks.append(view)
            self._size += len(view)
            self._span = None

    def _peek(self, n: int) -> memoryview:
        head = self._chunks[0]
        if len(head) - self._offset >= n:
            return head[self._offset : self._offset + n]
        parts = []
        offset, need = self._offset, n
        for chunk in self._chunks:
            part = chunk[offset : offset + need]
            parts.append(part)
            need -= len(part)
            offset = 0
            if not need:
                break
        return memoryview(b"".join(parts))

    def _consume(self, n: int) -> None:
        self._size -= n
        while n:
            head = self._chunks[0]
            available = len(head) - self._offset
            if n < available:
                self._offset += n
                return
            n -= available
            self._chunks.popleft()
            self._offset = 0
            if not self._chunks:
                self._span = None

    @property
    def buffered(self) -> int:
        """Received bytes not parsed yet."""
        return self._size

    def has_frame(self) -> bool:
        """A whole frame is buffered (the next slice has work)."""
        if self._size < 9:
            return False
        length = int.from_bytes(bytes(self._peek(3)), "big")
        return self._size >= 9 + length or length > self.max_frame_size

    def __next__(self) -> Frame:
        while True:
            if self._size < 9 or self.budget <= 0 or self.byte_budget <= 0:
                raise StopIteration
            try:
                frame, length = Frame.parse_frame_header(self._peek(9))
            except (InvalidDataError, InvalidFrameError) as err:
                raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
            self._validate_frame_length(length)  # before waiting for the body: never buffer it
            if self._size < 9 + length:
                raise StopIteration
            body = self._peek(9 + length)[9:]
            try:
                if isinstance(frame, DataFrame):
                    _parse_data(frame, body)
                else:
                    frame.parse_body(body)
            except InvalidDataError as err:
                raise ProtocolError("Received frame with non-compliant data") from err
            except InvalidFrameError as err:
                raise FrameDataMissingError("Frame data missing or invalid") from err
            self._consume(9 + length)
            self.budget -= 1
            self.byte_budget -= 9 + length
            self.guard.frame(frame)
            if isinstance(frame, GoAwayFrame) and frame.stream_id == 0:
                # h2 would close the connection at once, cutting off the answers of
                # streams in flight; the client wants no new streams, and none come.
                if not self.goaway_received:  # streams opened after it are refused
                    self.goaway_received = True
                    self.goaway_after = self.guard.highest_stream
                continue
            complete = self._update_header_buffer(frame)
            if complete is not None:
                return complete

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        """h2's, with the header block's size checked before it is kept."""
        if isinstance(f, HeadersFrame | ContinuationFrame):
            if isinstance(f, HeadersFrame) or not self._headers_buffer:
                self._header_bytes = 0
            self._header_bytes += len(f.data)
            self.guard.check_header_block(self._header_bytes)
        return super()._update_header_buffer(f)  # type: ignore[no-any-return]


def _parse_data(frame: DataFrame, body: memoryview) -> None:
    """``DataFrame.parse_body`` without copying the payload."""
    start = frame.parse_padding_data(body)
    frame.body_len = len(body)
    if frame.pad_length and frame.pad_length >= frame.body_len:
        raise InvalidPaddingError("Padding is too long.")
    frame.data = body[start : len(body) - frame.pad_length]  # type: ignore[assignment]
