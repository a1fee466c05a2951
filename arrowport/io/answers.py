"""What an error answer shows: one line, and no internals (HTTP and gRPC alike).

An answer never carries a stack trace, a file or object-store path, or more
than the first line of an engine's message; the full text goes to the log,
where the request id ties it to the request.
"""

from __future__ import annotations

import logging

from ..protocol import ArrowportError
from ..redact import public_detail

log = logging.getLogger("arrowport.errors")


def shown_detail(exc: ArrowportError) -> str:
    """``exc.detail`` as a client is shown it: one line; a storage error's without paths
    or an engine's stack trace. The full text, if that differs, is logged (with the
    request id)."""
    from_storage = type(exc).__module__.startswith("arrowport.storage")
    shown = public_detail(exc.detail, paths=from_storage)
    if shown != exc.detail:
        log.info("%s answered in short; in full: %s", exc.error, exc.detail)
    return shown


def public_json(exc: ArrowportError) -> dict[str, object]:
    """``exc.to_json()`` with ``shown_detail``."""
    return {**exc.to_json(), "detail": shown_detail(exc)}
