"""A raw HTTP/2 client (h2 over a blocking socket) for transport tests.

It does only what it is told: it sends WINDOW_UPDATEs only when asked
(``acknowledge``), and reads the socket only when ``pump`` is called, so tests
can play a client that stalls, floods or misbehaves on purpose.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pyarrow as pa

from arrowport.protocol.flight_pb import FlightDescriptor, Ticket, encode_flight_data_prefix
from arrowport.protocol.grpc import frame, prefix

SERVICE = "/arrow.flight.protocol.FlightService/"
MAX_WINDOW = 2**31 - 1


@dataclass
class Response:
    """What arrived on one stream."""

    headers: list[tuple[bytes, bytes]] | None = None
    data: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code, if the server reset it

    @property
    def status(self) -> int:
        assert self.headers is not None, "no response headers"
        return int(dict(self.headers)[b":status"])

    @property
    def final_headers(self) -> dict[bytes, bytes]:
        """The block that ends the call: the trailers, or a trailers-only response."""
        block = self.trailers if self.trailers is not None else self.headers
        assert block is not None, "no headers at all"
        return dict(block)


class H2Client:
    def __init__(
        self,
        url: str,
        *,
        settings: dict[h2.settings.SettingCodes, int] | None = None,
        connection_window: int | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        u = httpx.URL(url)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((u.host, u.port))
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
            # h2 applies a larger frame size only per receive_data() call after the ACK;
            # accept it from the start, as the server may use it at once.
            frame_size = settings.get(h2.settings.SettingCodes.MAX_FRAME_SIZE)
            if frame_size is not None:
                self.conn.max_inbound_frame_size = frame_size
        self.conn.initiate_connection()
        if connection_window is not None:
            self.conn.increment_flow_control_window(connection_window - 65_535)
        self.events: list[h2.events.Event] = []
        self.responses: dict[int, Response] = {}
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    # -- requests -----------------------------------------------------------

    def request(
        self, path: str, *, method: str = "POST", grpc: bool = True, end_stream: bool = False
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode()),
        ]
        if grpc:
            headers += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.responses[sid] = Response()
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, *, end_stream: bool = False, timeout: float = 10) -> None:
        """Send ``data`` as the server's windows allow, reading frames while blocked."""
        view = memoryview(data)
        while view:
            window = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                if not self.pump(timeout):
                    raise TimeoutError(f"no WINDOW_UPDATE within {timeout} s ({len(view)} unsent)")
                continue
            self.conn.send_data(sid, view[:window].tobytes())
            view = view[window:]
            self.flush()
        if end_stream:
            self.conn.end_stream(sid)
            self.flush()

    def acknowledge(self, sid: int, nbytes: int) -> None:
        self.conn.acknowledge_received_data(nbytes, sid)
        self.flush()

    # -- receiving ----------------------------------------------------------

    def pump(self, timeout: float, *, auto_ack: bool = False) -> bool:
        """Read once (up to ``timeout`` s) and record the events; False on timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return False
        if not data:
            self.closed = True
            raise ConnectionError("the server closed the connection")
        for event in self.conn.receive_data(data):
            self.events.append(event)
            self._record(event, auto_ack)
        self.flush()
        return True

    def _record(self, event: h2.events.Event, auto_ack: bool) -> None:
        sid = getattr(event, "stream_id", None)
        response = self.responses.get(sid) if sid else None
        if response is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            response.headers = list(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            response.trailers = list(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            response.data += event.data
            if auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            response.ended = True
        elif isinstance(event, h2.events.StreamReset):
            response.reset = event.error_code

    def wait(
        self, until: Callable[[], bool], timeout: float = 10, *, auto_ack: bool = True
    ) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("condition not reached")
            self.pump(left, auto_ack=auto_ack)

    def finish(self, sid: int, timeout: float = 10) -> Response:
        """Wait until stream ``sid`` ended or was reset."""
        response = self.responses[sid]
        self.wait(lambda: response.ended or response.reset is not None, timeout)
        return response


# -- gRPC / Flight bytes --------------------------------------------------------


def ipc_messages(batch: pa.RecordBatch) -> list[tuple[pa.Buffer, pa.Buffer | None]]:
    """The schema message and the batch message of ``batch``: (header, body) each."""
    out = []
    for data in (batch.schema.serialize(), batch.serialize()):
        message = pa.ipc.read_message(data)
        out.append((message.metadata, message.body if message.body.size else None))
    return out


def flight_data(
    header: pa.Buffer, body: pa.Buffer | None, descriptor: FlightDescriptor | None = None
) -> bytes:
    """One gRPC-framed FlightData message."""
    size = body.size if body is not None else 0
    head = encode_flight_data_prefix(header.to_pybytes(), None, size, descriptor)
    return prefix(len(head) + size) + head + (body.to_pybytes() if body is not None else b"")


def do_get_request(table: str) -> bytes:
    return frame(Ticket(ticket=table.encode()).encode())
