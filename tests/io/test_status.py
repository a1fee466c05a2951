"""The status table: every error code has one answer, and only adapters know it."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from pathlib import Path

import pytest

import arrowport
from arrowport.config import ConfigError
from arrowport.errors import ArrowportError
from arrowport.io.backends import BackendUnavailable
from arrowport.io.status import STATUSES, grpc_status, http_status, statuses
from arrowport.names import InvalidIdempotencyKeyError, InvalidNameError
from arrowport.protocol.errors import (
    GrpcStatus,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    limit_exceeded,
)
from arrowport.protocol.protobuf import ERROR_CODE
from arrowport.storage import errors as storage_errors

PACKAGE = Path(arrowport.__file__).parent
# `error = "code"` (a class's code), `error="code"` (a one-off), `error: str = "code"` (a default)
CODE = re.compile(r'(?<![\w.])error(?:\s*:\s*str)?\s*=\s*"([a-z_]+)"')


def _codes_in_source() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in CODE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(match.group(1), []).append(f"{path.relative_to(PACKAGE)}:{line}")
    return found


def _all_error_classes() -> set[type[ArrowportError]]:
    for module in pkgutil.walk_packages([str(PACKAGE)], "arrowport."):
        if module.name != "arrowport.__main__":
            importlib.import_module(module.name)
    seen: set[type[ArrowportError]] = set()
    todo: list[type[ArrowportError]] = [ArrowportError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(cls.__subclasses__())
    return seen


def test_every_code_in_the_source_has_a_table_entry() -> None:
    """Each code written in arrowport/ (`error = "..."`, `error="..."`) maps to a status."""
    found = _codes_in_source()
    assert {"schema_mismatch", "invalid_ipc_framing", "body_timeout"} <= set(found)  # scan works
    missing = {code: where for code, where in found.items() if code not in STATUSES}
    assert not missing, f"codes without an entry in arrowport/io/status.py: {missing}"
    assert ERROR_CODE in STATUSES


def test_every_error_class_has_a_table_entry() -> None:
    """Every ArrowportError subclass in the package names a code the table knows."""
    classes = _all_error_classes()
    assert storage_errors.StorageError in classes and ConfigError in classes
    missing = sorted(
        f"{c.__module__}.{c.__qualname__}: {c.error!r}" for c in classes if c.error not in STATUSES
    )
    assert not missing, missing


def test_only_protocol_errors_carry_status_hints() -> None:
    """Storage, names, config and adapter errors carry codes only; protocol errors, hints."""
    for cls in _all_error_classes():
        hinted = hasattr(cls, "http_status") or hasattr(cls, "grpc_status")
        assert hinted == issubclass(cls, ProtocolError), cls
    root = (PACKAGE / "errors.py").read_text(encoding="utf-8").lower()
    assert "status =" not in root and "import" not in root.replace("from __future__ import", "")


@pytest.mark.parametrize(
    ("exc", "http", "grpc"),
    [
        (storage_errors.SchemaMismatchError("x"), 422, GrpcStatus.INVALID_ARGUMENT),
        (storage_errors.UnsupportedTypeError("x"), 422, GrpcStatus.INVALID_ARGUMENT),
        (storage_errors.UnrepresentableValueError("x"), 422, GrpcStatus.INVALID_ARGUMENT),
        (storage_errors.WriteRejectedError("x"), 422, GrpcStatus.INVALID_ARGUMENT),
        (
            storage_errors.WriteRejectedError("x", error="idempotency_unsupported"),
            400,
            GrpcStatus.INVALID_ARGUMENT,
        ),
        (storage_errors.StorageError("x"), 503, GrpcStatus.UNAVAILABLE),
        (storage_errors.IngestAborted("x"), 400, GrpcStatus.CANCELLED),
        (storage_errors.TableNotFoundError("x", table="t"), 404, GrpcStatus.NOT_FOUND),
        (storage_errors.InvalidReadError("x"), 400, GrpcStatus.INVALID_ARGUMENT),
        (
            storage_errors.ColumnNotFoundError("x", table="t", missing=(), columns=()),
            400,
            GrpcStatus.INVALID_ARGUMENT,
        ),
        (InvalidNameError("x"), 400, GrpcStatus.INVALID_ARGUMENT),
        (InvalidIdempotencyKeyError("x"), 400, GrpcStatus.INVALID_ARGUMENT),
        (BackendUnavailable("x"), 400, GrpcStatus.FAILED_PRECONDITION),
        (ArrowportError("x", error="body_timeout"), 408, GrpcStatus.DEADLINE_EXCEEDED),
        (ArrowportError("x", error="too_many_requests"), 429, GrpcStatus.RESOURCE_EXHAUSTED),
    ],
    ids=lambda v: v.error if isinstance(v, ArrowportError) else str(v),
)
def test_codes_keep_the_statuses_clients_see(
    exc: ArrowportError, http: int, grpc: GrpcStatus
) -> None:
    """The table gives each error the HTTP and gRPC status it was answered with before."""
    assert (http_status(exc), grpc_status(exc)) == (http, grpc)


def test_a_protocol_errors_hint_wins_over_the_table() -> None:
    """A ProtocolError is answered with its own hints, not the table's entry for its code."""
    grpc_encoding = LocalProtocolError(
        "x", error="unsupported_compression", http_status=415, grpc_status=GrpcStatus.UNIMPLEMENTED
    )
    assert statuses(grpc_encoding) == (415, GrpcStatus.UNIMPLEMENTED)
    assert STATUSES["unsupported_compression"] == (400, GrpcStatus.INVALID_ARGUMENT)
    remote = limit_exceeded("too big")._reraise_as_remote_protocol_error()
    assert isinstance(remote, RemoteProtocolError)
    assert statuses(remote) == (413, GrpcStatus.RESOURCE_EXHAUSTED)


def test_an_unknown_code_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    """A code without an entry is answered 500/INTERNAL and logged as a bug."""
    with caplog.at_level(logging.ERROR, logger="arrowport.errors"):
        assert statuses(ArrowportError("x", error="no_such_code")) == (500, GrpcStatus.INTERNAL)
    assert "no_such_code" in caplog.text


def test_config_errors_are_still_value_errors() -> None:
    """ConfigError joined the tree (code invalid_config) and is still a ValueError."""
    exc = ConfigError("limits.x: must be positive")
    assert isinstance(exc, ValueError) and isinstance(exc, ArrowportError)
    assert (str(exc), exc.to_json()) == (
        "limits.x: must be positive",
        {"error": "invalid_config", "detail": "limits.x: must be positive"},
    )
