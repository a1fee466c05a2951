"""The neutral root of the one error tree.

Every error Arrowport reports to a client is an :class:`ArrowportError`: a
short machine-readable ``error`` code and a human ``detail``. The code is the
whole meaning of the error; nothing here knows HTTP or gRPC. Adapters turn a
code into an answer with the one table in ``arrowport/io/status.py``, as h2's
exceptions carry an error code and leave the frame to the connection.

The exception is the sans-IO protocol layer's ``ProtocolError``
(``arrowport/protocol/errors.py``), which, like h11's ``error_status_hint``,
carries HTTP and gRPC status hints of its own: the same code can mean a
different status depending on which framing found the fault.

Codes are ``snake_case`` strings that clients see in JSON bodies
(``{"error": …, "detail": …}``); they never change once published. A
subclass names its code as the class attribute ``error``; a one-off error
passes ``error=`` to the constructor. Every code raised anywhere must have an
entry in the status table (a test checks it).
"""

from __future__ import annotations


class ArrowportError(Exception):
    """Root of every error that is reported to a client."""

    error: str = "error"

    def __init__(self, detail: str, *, error: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if error is not None:
            self.error = error

    def to_json(self) -> dict[str, object]:
        """The JSON body an HTTP adapter sends: ``{error, detail}``."""
        return {"error": self.error, "detail": self.detail}
