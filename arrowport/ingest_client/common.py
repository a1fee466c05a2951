"""What the inputs, the senders and the command share: exit codes, errors, the target."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

EXIT_OK, EXIT_REFUSED, EXIT_INPUT, EXIT_CONNECT, EXIT_SERVER = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


class Failure(Exception):
    """An input that was not committed; ``code`` is the exit status."""

    def __init__(self, code: int, message: str, answer: object = None) -> None:
        super().__init__(message)
        self.code, self.answer = code, answer


class InputError(Failure):
    def __init__(self, message: str) -> None:
        super().__init__(EXIT_INPUT, message)


class Retryable(Exception):
    """An attempt worth repeating: the connection failed, or the server asked us to wait."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    base: str
    tls: bool
    flight: bool
    token: str | None
    cafile: str | None
    timeout: float
    options: pa.ipc.IpcWriteOptions


def first_line(exc: object) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
