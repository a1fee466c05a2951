"""Flight servers on a discard sink, for the transport benchmark.

    python bench/flight_servers.py native PORT     # pyarrow FlightServerBase (baseline only)
    python bench/flight_servers.py arrowport PORT  # Arrowport's h2 transport + FlightData decoder

Both accept DoPut, decode every batch and drop it, then answer one PutResult.
Neither validates: in Arrowport's real pipeline full validation runs in the
writer's thread, next to the INSERT, not in the transport. Each prints
"ready" once listening. The native server lives here, never in arrowport/.
"""

from __future__ import annotations

import sys
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl


class NativeDiscard(fl.FlightServerBase):
    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        rows = 0
        for chunk in reader:
            rows += chunk.data.num_rows
        writer.write(pa.py_buffer(str(rows).encode()))


def run_native(port: int) -> None:
    server = NativeDiscard(f"grpc://127.0.0.1:{port}")
    print("ready", flush=True)
    server.serve()


def run_arrowport(port: int) -> None:
    import trio
    from hypercorn.config import Config as HypercornConfig
    from quart_trio import QuartTrio

    from arrowport.io import listener
    from arrowport.io.flight import FlightService, _first_descriptor
    from arrowport.io.grpc import GrpcCall
    from arrowport.protocol import NEED_DATA, BatchReceived
    from arrowport.protocol.flight import FlightDataDecoder
    from arrowport.protocol.flight_pb import PutResult

    class DiscardService(FlightService):
        def __init__(self) -> None:
            self.methods = {"DoPut": self.do_put}

        def _authenticate(self, stream: object) -> None:  # no auth in the bench
            return None

        async def do_put(self, call: GrpcCall) -> None:
            decoder = FlightDataDecoder(validate=False)
            chunks = aiter(call.chunks())
            await _first_descriptor(decoder, chunks)
            rows = 0
            while True:
                event = decoder.next_event()
                if event is NEED_DATA:
                    decoder.receive_data(await anext(chunks, b""))
                    continue
                if isinstance(event, BatchReceived):
                    rows += event.batch.num_rows
                elif type(event).__name__ == "StreamEnded":
                    break
            await call.send_message(PutResult(app_metadata=str(rows).encode()).encode())

    async def main() -> None:
        hc = HypercornConfig()
        hc.bind = [f"127.0.0.1:{port}"]
        hc.accesslog = None
        print("ready", flush=True)
        await listener.serve(
            QuartTrio("discard"), hc, DiscardService(), shutdown_trigger=trio.sleep_forever
        )

    trio.run(main)


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    {"native": run_native, "arrowport": run_arrowport}[kind](port)
