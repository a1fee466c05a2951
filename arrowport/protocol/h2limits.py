"""Budgets that stop HTTP/2 floods: each frame a client sends is counted here.

``FloodGuard.frame`` sees every frame before h2 acts on it (the frame buffer
calls it) and raises ``EnhanceYourCalm`` once a budget is spent; h2 then
queues a GOAWAY with that error code and the session closes the connection.
The budgets follow Envoy's and Go's (after CVE-2019-9512..9518 and
CVE-2023-44487): per-window counts for frames that cost an answer (PING,
SETTINGS, RST_STREAM), counts relative to useful work for frames that cost
none (PRIORITY per stream opened, WINDOW_UPDATE per DATA frame sent), and a
run of frames that carry nothing.

No clock: the session sets ``now`` before each batch of frames.
"""

from __future__ import annotations

import enum

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from ..config import Http2Settings

HEADER_BLOCK_SLACK = 16 * 1024  # an encoded block may exceed the decoded limit by this


class CloseReason(enum.Enum):
    """Why a connection was closed; the values are the metric's ``reason`` label."""

    RAPID_RESET = "rapid_reset"
    PING_FLOOD = "ping_flood"
    PING_ACK_FLOOD = "ping_ack_flood"
    SETTINGS_FLOOD = "settings_flood"
    PRIORITY_FLOOD = "priority_flood"
    WINDOW_UPDATE_FLOOD = "window_update_flood"
    EMPTY_FRAMES = "empty_frames"
    HEADER_BLOCK = "header_block"
    NOT_READING = "not_reading"
    PROTOCOL_ERROR = "protocol_error"
    IDLE = "idle"


class EnhanceYourCalm(ProtocolError):
    """A budget is spent: h2 answers with GOAWAY ``ENHANCE_YOUR_CALM``."""

    error_code = ErrorCodes.ENHANCE_YOUR_CALM

    def __init__(self, reason: CloseReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _Window:
    """Events counted over fixed windows of ``length`` seconds."""

    __slots__ = ("count", "length", "start")

    def __init__(self, length: float) -> None:
        self.length = length
        self.start = 0.0
        self.count = 0

    def add(self, now: float) -> int:
        if now - self.start >= self.length:
            self.start, self.count = now, 0
        self.count += 1
        return self.count


class FloodGuard:
    """Per-connection frame budgets."""

    def __init__(self, settings: Http2Settings) -> None:
        self.settings = settings
        self.now = 0.0
        self.streams_opened = 0
        self.data_frames_sent = 0
        window = settings.flood_window
        self._resets = _Window(window)
        self._pings = _Window(window)
        self._ping_acks = _Window(window)
        self._settings = _Window(window)
        self._priority = 0
        self._window_updates = 0
        self._empty = 0
        self.highest_stream = 0
        self.max_header_block = settings.max_header_list_size + HEADER_BLOCK_SLACK

    def frame(self, frame: Frame) -> None:
        """Count one received frame; raise ``EnhanceYourCalm`` over a budget."""
        s = self.settings
        if isinstance(frame, DataFrame):
            empty = not frame.data and "END_STREAM" not in frame.flags
            self._count_empty(empty)
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            if isinstance(frame, HeadersFrame) and frame.stream_id > self.highest_stream:
                self.highest_stream = frame.stream_id  # a new stream (h2 checks the rest)
                self.streams_opened += 1
            self._count_empty(not frame.data and "END_HEADERS" not in frame.flags)
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                if self._ping_acks.add(self.now) > s.max_ping_acks:
                    raise EnhanceYourCalm(CloseReason.PING_ACK_FLOOD, "too many PING ACKs")
            elif self._pings.add(self.now) > s.max_pings:
                raise EnhanceYourCalm(CloseReason.PING_FLOOD, "too many PINGs")
        elif isinstance(frame, SettingsFrame):
            if self._settings.add(self.now) > s.max_settings:
                raise EnhanceYourCalm(CloseReason.SETTINGS_FLOOD, "too many SETTINGS")
        elif isinstance(frame, RstStreamFrame):
            self.count_reset()
        elif isinstance(frame, PriorityFrame):
            self._priority += 1
            if self._priority > s.max_priority_per_stream * (1 + self.streams_opened):
                raise EnhanceYourCalm(CloseReason.PRIORITY_FLOOD, "too many PRIORITY frames")
        elif isinstance(frame, WindowUpdateFrame):
            self._window_updates += 1
            allowed = 5 + 2 * (
                self.streams_opened + s.max_window_updates_per_data_frame * self.data_frames_sent
            )
            if self._window_updates > allowed:
                raise EnhanceYourCalm(
                    CloseReason.WINDOW_UPDATE_FLOOD, "too many WINDOW_UPDATE frames"
                )

    def count_reset(self) -> None:
        """A stream reset by the client, or refused by us (Rapid Reset)."""
        if self._resets.add(self.now) > self.settings.max_stream_resets:
            raise EnhanceYourCalm(CloseReason.RAPID_RESET, "too many streams reset")

    def check_header_block(self, size: int) -> None:
        if size > self.max_header_block:
            raise EnhanceYourCalm(
                CloseReason.HEADER_BLOCK, f"header block over {self.max_header_block} bytes"
            )

    def _count_empty(self, empty: bool) -> None:
        if not empty:
            self._empty = 0
            return
        self._empty += 1
        if self._empty > self.settings.max_empty_frames:
            raise EnhanceYourCalm(CloseReason.EMPTY_FRAMES, "too many frames without payload")
