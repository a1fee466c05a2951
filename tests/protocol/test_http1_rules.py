"""protocol.http1.framing_problem: which request heads have ambiguous framing, without a server."""

from __future__ import annotations

import pytest

from arrowport.protocol.http1 import framing_problem


def _lines(*fields: bytes, version: bytes = b"HTTP/1.1") -> list[bytes]:
    return [b"POST /ingest/x " + version, b"Host: x", *fields]


@pytest.mark.parametrize(
    "fields",
    [
        (),
        (b"Content-Length: 10",),
        (b"content-length:10",),
        (b"Transfer-Encoding: chunked",),
        (b"TRANSFER-ENCODING:  Chunked \t",),
        (b"X-Other: a, b", b"Content-Length: 0"),
    ],
)
def test_unambiguous_heads_pass(fields: tuple[bytes, ...]) -> None:
    """Content-Length alone, chunked alone (any case, any spacing) or neither: no problem."""
    assert framing_problem(_lines(*fields)) is None


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ((b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400, "both"),
        ((b"Content-Length: 5", b"Content-Length: 5"), 400, "more than one Content-Length"),
        ((b"Content-Length: 5, 5",), 400, "one decimal number"),
        ((b"Content-Length: 0x5",), 400, "one decimal number"),
        ((b"Content-Length: \xd9\xa1",), 400, "one decimal number"),
        ((b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400, "more than one"),
        ((b"Transfer-Encoding: chunked, identity",), 400, "end with chunked"),
        ((b"Transfer-Encoding: chunked, chunked",), 400, "end with chunked"),
        ((b"Transfer-Encoding: xchunked",), 400, "end with chunked"),
        ((b"Transfer-Encoding: gzip, chunked",), 400, "only Transfer-Encoding: chunked"),
        ((b"Transfer-Encoding:", b" chunked"), 400, "obs-fold"),
        ((b"X-A: 1", b"\tmore"), 400, "obs-fold"),
        ((b"Content-Length : 5",), 400, "whitespace between"),
    ],
)
def test_ambiguous_heads_are_refused(fields: tuple[bytes, ...], status: int, words: str) -> None:
    """Each ambiguous framing gets its status and a detail that says what is wrong."""
    problem = framing_problem(_lines(*fields))
    assert problem is not None and problem.status == status and words in problem.detail


def test_transfer_encoding_in_http_1_0_is_refused() -> None:
    """Transfer-Encoding in an HTTP/1.0 request is faulty framing (RFC 9112 §6.1)."""
    problem = framing_problem(_lines(b"Transfer-Encoding: chunked", version=b"HTTP/1.0"))
    assert problem is not None and problem.status == 400
