"""Logging: text or JSON lines, with the request id on every line a request logs.

Every line passes through ``redact.redact``: credentials never reach the log.

The id lives in a context variable. trio hands context to the tasks a
request starts and to its worker threads, so storage code logging on a
request's behalf carries its id too. A client may send its own id
(``X-Request-Id``, up to 64 characters of ``[A-Za-z0-9._:-]``); otherwise
one is made. Either way the answer carries it back.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time

from .redact import redact

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "arrowport_request_id", default=None
)
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}\Z")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"


def start_request(client_id: str | None = None) -> str:
    """Set (and return) the current request's id: the client's if usable, else a new one."""
    rid = client_id if client_id and _CLIENT_ID.match(client_id) else secrets.token_hex(8)
    REQUEST_ID.set(rid)
    return rid


class RequestIdFilter(logging.Filter):
    """Give every record ``request_id`` (None outside a request) and ``request`` (for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = REQUEST_ID.get()
        record.request_id = rid
        record.request = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            line["request_id"] = rid
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines, credentials redacted (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), replacing other handlers."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
