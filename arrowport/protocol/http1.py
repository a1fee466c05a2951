"""HTTP/1.1 request framing checks h11 does not make (RFC 9112 §5.2, §6.1, §6.3).

h11 reads ``Content-Length`` together with ``Transfer-Encoding: chunked`` as
chunked, merges repeated equal ``Content-Length`` values and a list of them
(``5, 5``), and unfolds obs-fold lines. A proxy in front may frame the same
bytes differently, which is how requests are smuggled. So a request head whose
framing is in any way ambiguous is refused, and the connection closed:

* ``Content-Length`` and ``Transfer-Encoding`` both present: 400 (§6.1);
* more than one ``Content-Length`` field, or a value that is not one decimal
  number: 400 (§6.3);
* more than one ``Transfer-Encoding`` field, or ``chunked`` not its final
  coding (``chunked, identity``, ``xchunked``): 400 (§6.3); ``chunked`` last
  after another coding (``gzip, chunked``): 400 too (§6.1 allows 501, but a
  client's request is never answered with a 5xx here);
* ``Transfer-Encoding`` in an HTTP/1.0 request: 400 (§6.1, faulty framing);
* a header line that starts with whitespace (obs-fold) or a field name
  followed by whitespace: 400 (§5.1, §5.2).

``framing_problem`` takes the head as h11 splits it (the request line first,
then one header line each, CR stripped) and returns ``(status, detail)`` or
None. It never raises.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FramingProblem:
    status: int
    detail: str


def _bad(detail: str) -> FramingProblem:
    return FramingProblem(400, detail)


def framing_problem(lines: list[bytearray] | list[bytes]) -> FramingProblem | None:
    """What is wrong with this request head's framing, or None."""
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return _bad("obs-fold (a header line starting with whitespace) is not accepted")
        name, colon, value = bytes(line).partition(b":")
        if not colon:
            continue  # h11 refuses it with its own message
        if name != name.rstrip(b" \t"):
            return _bad("whitespace between a header field name and its colon")
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value.strip(b" \t"))
        elif lowered == b"transfer-encoding":
            encodings.append(value.strip(b" \t"))
    if lengths and encodings:
        return _bad("a request must not carry both Content-Length and Transfer-Encoding")
    if len(lengths) > 1:
        return _bad("more than one Content-Length header")
    if lengths and not (lengths[0].isdigit() and lengths[0].isascii()):
        return _bad("Content-Length must be one decimal number")
    if encodings and bytes(lines[0]).endswith(b" HTTP/1.0"):
        return _bad("Transfer-Encoding in an HTTP/1.0 request (its framing is faulty)")
    if len(encodings) > 1:
        return _bad("more than one Transfer-Encoding header")
    if encodings:
        codings = [coding.strip(b" \t").lower() for coding in encodings[0].split(b",")]
        if codings == [b"chunked"]:
            return None
        if codings[-1] != b"chunked" or b"chunked" in codings[:-1]:
            return _bad("Transfer-Encoding must end with chunked, once")
        return _bad("only Transfer-Encoding: chunked is supported (no other transfer coding)")
    return None
