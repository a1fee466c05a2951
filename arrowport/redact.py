"""Hide credentials in text that reaches logs, answers and ``arrowport config``.

A DuckLake catalog is a libpq connection string, and drivers quote it back in
their errors (``... "dbname=lake password=s3cret" ...``). Everything that shows
such text passes it through ``redact`` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "<redacted>"

# libpq key=value: password=secret, password = 'it''s \' secret'
_KEY_VALUE = re.compile(
    r"""(?P<key>\b(?:password|passwd|secret|session_token)\s*=\s*)
        (?:'(?:[^'\\]|\\.|'')*'|[^\s'",;)&]+)""",
    re.IGNORECASE | re.VERBOSE,
)
# URI userinfo: postgresql://user:secret@host
_USERINFO = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s/]*@", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with passwords in connection strings and URIs, and every one of
    ``secrets`` (literal values, e.g. storage keys), replaced by ``<redacted>``."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _KEY_VALUE.sub(lambda m: m.group("key") + REDACTED, text)
    return _USERINFO.sub(lambda m: m.group("head") + ":" + REDACTED + "@", text)


def conninfo_secrets(conninfo: str) -> list[str]:
    """The password of a libpq connection string (key=value or URI), as literals
    to hide wherever a driver quotes it back in another form."""
    found = []
    for match in re.finditer(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", conninfo, re.I):
        value = match.group(1)
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        found.append(value)
    uri = re.search(r"://[^:/@\s]*:([^@\s/]+)@", conninfo)
    if uri:
        found.append(uri.group(1))
    return [v for v in found if v]
