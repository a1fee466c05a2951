"""The events only the Flight decoder emits, and its protobuf varint reader."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import invalid
from .events import Event
from .flight_pb import FlightDescriptor


@dataclass(frozen=True, slots=True, kw_only=True)
class DescriptorReceived(Event):
    """A ``FlightData`` carried a descriptor (DoPut's first message does)."""

    descriptor: FlightDescriptor


@dataclass(frozen=True, slots=True, kw_only=True)
class MetadataReceived(Event):
    """A ``FlightData`` carried ``app_metadata`` but no record batch."""

    app_metadata: bytes


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """Decode a varint at ``pos``; None if ``data`` ends first."""
    value = shift = 0
    for i in range(pos, min(len(data), pos + 10)):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(data) - pos >= 10:
        raise invalid("a protobuf varint in FlightData is longer than 10 bytes")
    return None
