"""Configuration sections for access: ``auth``, ``tls``, ``idempotency``, ``metrics``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..names import InvalidNameError, validate_name
from .values import ConfigError, _bool, _check_keys, _mapping, _names, _str

ENV_TOKEN = "ARROWPORT_TOKEN"  # one more token, allowed every stream


@dataclass(frozen=True, slots=True)
class Token:
    """One accepted bearer token; ``streams`` limits what it may write (None: any)."""

    token: str
    streams: tuple[str, ...] | None = None

    def allows(self, stream: str) -> bool:
        return self.streams is None or stream.lower() in {s.lower() for s in self.streams}


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """``auth``: off without tokens; with tokens every request needs one."""

    tokens: tuple[Token, ...] = ()
    protect_metrics: bool = True

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def enabled(self) -> bool:
        return self.certfile is not None


@dataclass(frozen=True, slots=True)
class IdempotencySettings:
    key_ttl_hours: float = 168.0  # how long a DuckDB ledger entry answers retries


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``metrics``: /metrics is always on the main port; ``port`` adds a port of its own."""

    port: int | None = None
    host: str | None = None  # None: the server's host


_AUTH_KEYS = set(AuthSettings.__dataclass_fields__)
_TOKEN_KEYS = {"token", "streams"}
_TLS_KEYS = set(TlsSettings.__dataclass_fields__)
_IDEMPOTENCY_KEYS = set(IdempotencySettings.__dataclass_fields__)
_METRICS_KEYS = set(MetricsSettings.__dataclass_fields__)
MIN_TOKEN_LENGTH = 16


def _token(value: object, key: str) -> Token:
    raw = {"token": value} if isinstance(value, str) else _mapping(value, key)
    _check_keys(raw, _TOKEN_KEYS, f"{key}.")
    token = raw.get("token")
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH or not token.isprintable():
        raise ConfigError(
            f"{key}: a token must be a string of at least {MIN_TOKEN_LENGTH} printable "
            "characters (e.g. from `openssl rand -hex 32`)"
        )
    if any(c.isspace() for c in token):
        raise ConfigError(f"{key}: a token may not contain spaces")
    streams = raw.get("streams")
    names = None if streams is None else _names(streams, f"{key}.streams")
    for name in names or ():
        try:
            validate_name(name, "stream")  # _arrowport* is no stream a token could write
        except InvalidNameError as exc:
            raise ConfigError(f"{key}.streams: {exc.detail}") from None
    return Token(token, names)


def _auth(raw: Mapping[str, Any], key: str, env_token: str | None) -> AuthSettings:
    _check_keys(raw, _AUTH_KEYS, f"{key}.")
    listed = raw.get("tokens") or []
    if not isinstance(listed, list):
        raise ConfigError(f"{key}.tokens: expected a list of tokens")
    tokens = [_token(t, f"{key}.tokens[{i}]") for i, t in enumerate(listed)]
    if env_token:
        tokens.append(_token(env_token, ENV_TOKEN))
    if len({t.token for t in tokens}) != len(tokens):
        raise ConfigError(f"{key}.tokens: a token is listed twice")
    return AuthSettings(
        tokens=tuple(tokens),
        protect_metrics=_bool(raw.get("protect_metrics", True), f"{key}.protect_metrics"),
    )


def _tls(raw: Mapping[str, Any], key: str) -> TlsSettings:
    _check_keys(raw, _TLS_KEYS, f"{key}.")
    cert, private = raw.get("certfile"), raw.get("keyfile")
    if (cert is None) != (private is None):
        raise ConfigError(f"{key}: set both certfile and keyfile, or neither")
    for name, value in (("certfile", cert), ("keyfile", private)):
        if value is not None and not Path(_str(value, f"{key}.{name}")).is_file():
            raise ConfigError(f"{key}.{name}: no such file: {value!r}")
    return TlsSettings(
        None if cert is None else str(cert), None if private is None else str(private)
    )
