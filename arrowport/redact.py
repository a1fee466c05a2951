"""Hide credentials in text that reaches logs, answers and ``arrowport config``;
keep internals out of answers (``public_detail``).

A DuckLake catalog is a libpq connection string, and drivers quote it back in
their errors (``... "dbname=lake password=s3cret" ...``); an S3 error can
echo the access key id and the signature's inputs. Everything that shows such
text passes it through ``redact``: the log formatters, the answers to
unexpected errors, the stores' error messages and ``arrowport config check``.

Invariant: redaction errs towards hiding. A value after a password key runs
to the next whitespace (libpq's own rule), so a URI query's later parameters
may be hidden with it; the literal credentials of the running config
(``remember``) are hidden wherever they appear as a whole token.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REDACTED = "<redacted>"
SECRET_WORDS = re.compile(r"secret|token|password", re.IGNORECASE)  # option names

# key=value, key: value, "key": "value"; PGPASSWORD and AWS_SECRET_ACCESS_KEY too
_KEY_VALUE = re.compile(
    r"""(?P<key>\b\w*(?:password|passwd|secret_access_key|session_token)\b|\bpwd\b)
        (?P<sep>["']?\s*[=:]\s*)
        (?:'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|\S+)""",
    re.IGNORECASE | re.VERBOSE,
)
# URI userinfo: postgresql://user:secret@host
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
# what an S3 error can echo of the request's credentials: the access key id (in
# SignatureDoesNotMatch bodies and presigned URLs) and the signature's inputs
_S3 = (
    (
        re.compile(
            r"<(AWSAccessKeyId|StringToSign(?:Bytes)?|SignatureProvided|CanonicalRequest"
            r"(?:Bytes)?)>.*?</\1>",
            re.S,
        ),
        rf"<\1>{REDACTED}</\1>",
    ),
    (
        re.compile(r"(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s\"']+", re.I),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b"), REDACTED),
)
_MIN_LITERAL = 4  # shorter literals would hide common words, and guess little
_remembered: set[str] = set()


def remember(secrets: Iterable[str]) -> None:
    """Hide ``secrets`` (the running config's credentials) in every later ``redact``."""
    _remembered.update(s for s in secrets if len(s) >= _MIN_LITERAL)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with passwords in connection strings and URIs, S3 credentials, and
    every one of ``secrets`` and the remembered ones replaced by ``<redacted>``."""
    literals = {s for s in secrets if len(s) >= _MIN_LITERAL} | _remembered
    for secret in sorted(literals, key=len, reverse=True):
        if secret in text:
            bounded = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
            text = re.sub(bounded, REDACTED, text)
    text = _KEY_VALUE.sub(lambda m: m.group("key") + m.group("sep") + REDACTED, text)
    text = _USERINFO.sub(lambda m: m.group("head") + ":" + REDACTED + "@", text)
    for pattern, replacement in _S3:
        text = pattern.sub(replacement, text)
    return text


def conninfo_secrets(conninfo: str) -> list[str]:
    """The password of a libpq connection string (key=value or URI), as literals
    to hide wherever a driver quotes it back in another form."""
    found = []
    uri = re.search(r"\b[a-z][a-z0-9+.-]*://\S+", conninfo, re.IGNORECASE)
    if uri:
        parts = urlsplit(uri.group(0))
        raw = re.match(r"[^:@/]*:([^@]*)@", parts.netloc)
        if raw:
            found += [raw.group(1), unquote(raw.group(1))]
        found += parse_qs(parts.query).get("password", [])
    else:
        for match in re.finditer(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", conninfo, re.I):
            value = match.group(1)
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            found.append(value)
    return list(dict.fromkeys(v for v in found if v))


def option_secrets(options: Mapping[str, Any]) -> list[str]:
    """The values of ``options`` whose names say they are secret (storage options)."""
    return [str(v) for k, v in options.items() if SECRET_WORDS.search(str(k)) and v]


# Internals an answer never shows (the log has the full text, with the request id)
_STACK = re.compile(r"\s*\bStack Trace:.*", re.S)  # DuckDB's C++ backtrace
_URL_PATH = re.compile(r"\b(?:file|s3a?|gs|gcs|az|abfss?|memory)://[^\s'\"),;]*", re.I)
_QUOTED_PATH = re.compile(r"""(['"`])(?:~|\.{1,2})?/[^'"`\n]*\1""")
_BARE_PATH = re.compile(r"(?<![\w.:/~@-])(?:~|\.{1,2})?/[\w.@+=-]+(?:/[\w.@+=-]*)*")
PATH = "<path>"


def public_detail(text: str, *, paths: bool = True) -> str:
    """``text`` as an answer may show it: credentials redacted, one line (an engine's
    first), without C++ stack traces, and (``paths``) without file and object-store
    paths. (Messages about the client's own request, which may quote its routes, keep
    their slashes: ``paths=False``.)"""
    text = _STACK.sub("", redact(text)).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not paths:
        return first
    first = _URL_PATH.sub(PATH, first)
    first = _QUOTED_PATH.sub(lambda m: m.group(1) + PATH + m.group(1), first)
    return _BARE_PATH.sub(PATH, first)
