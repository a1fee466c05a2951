"""The one refusal for a backend the server does not run, and the warning that foresees it.

A server opens its backends at start: DuckDB and Delta always, DuckLake when
the config names it (``storage_backend``, or a stream's). A request for a
backend it does not run, over HTTP or Flight, gets ``BackendUnavailable``:
HTTP 400 ``backend_unavailable``, gRPC FAILED_PRECONDITION, with a message
saying what to configure. A stream that routes to such a backend (one added
by a config reload) is logged as a warning at start and on every reload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..config import Config
from ..errors import ArrowportError

log = logging.getLogger("arrowport.server")


class BackendUnavailable(ArrowportError):
    """A stream or request names a backend this server did not open."""

    error = "backend_unavailable"


def backend_unavailable(backend: str, stream: str | None = None) -> BackendUnavailable:
    """The refusal for ``backend``; ``stream`` is the stream that routes there, if any."""
    what = (
        f"stream {stream!r} routes to the {backend!r} backend"
        if stream is not None
        else f"the {backend!r} backend was asked for"
    )
    return BackendUnavailable(
        f"{what}, which this server does not run: a server opens a backend at start when its "
        f"config names it, so set storage_backend: {backend} (or a stream's "
        f"storage_backend: {backend}) and restart the server"
    )


def unserved_streams(config: Config, store_for: Callable[[str], object]) -> list[tuple[str, str]]:
    """The configured streams, with their backends, whose backend ``store_for`` has no store of."""
    unserved = []
    for name, conf in config.streams.items():
        backend = conf.storage_backend or config.storage_backend
        if store_for(backend) is None:
            unserved.append((name, backend))
    return unserved


def warn_unserved(config: Config, store_for: Callable[[str], object]) -> None:
    """Log a warning for each configured stream routed to a backend the server does not run."""
    for stream, backend in unserved_streams(config, store_for):
        log.warning(
            "stream %r routes to the %r backend, which this server does not run; its requests "
            "are refused (backend_unavailable) until a restart opens that backend",
            stream,
            backend,
        )
