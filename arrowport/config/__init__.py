"""Configuration: YAML file, environment overrides, CLI overrides, validation.

Precedence, lowest first: built-in defaults, the YAML file, ``ARROWPORT_*``
environment variables, command-line flags. Every problem is reported as a
``ConfigError`` whose message starts with the dotted key it concerns.

One module per group of sections: ``values`` (the scalar parsers), ``streams``,
``backends`` (duckdb, delta_config, ducklake), ``transport`` (limits, flight,
flight_sql, http2), ``access`` (auth, tls, idempotency, metrics); this one puts them together.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..names import InvalidNameError, validate_delta_table, validate_name
from ..redact import conninfo_secrets, option_secrets
from .access import (
    _AUTH_KEYS,
    _IDEMPOTENCY_KEYS,
    _METRICS_KEYS,
    _TLS_KEYS,
    _TOKEN_KEYS,
    ENV_TOKEN,
    MIN_TOKEN_LENGTH,
    AuthSettings,
    IdempotencySettings,
    MetricsSettings,
    TlsSettings,
    Token,
    _auth,
    _tls,
)
from .backends import (
    _DELTA_CONFIG_KEYS,
    _DELTA_OPTION_KEYS,
    _DUCKLAKE_KEYS,
    DEFAULT_DELTA_PATH,
    DEFAULT_DUCKLAKE_CATALOG,
    DEFAULT_DUCKLAKE_DATA,
    PARQUET_COMPRESSIONS,
    PARQUET_LEVELS,
    SCHEMA_MODES,
    DeltaConfig,
    DeltaOptions,
    DuckDBSettings,
    DuckLakeConfig,
    _delta_config,
    _duckdb,
    _ducklake,
)
from .streams import (
    _STREAM_KEYS,
    BACKENDS,
    COMMIT_MODES,
    COMPRESSIONS,
    Compression,
    Route,
    StreamConfig,
    _compression,
    _stream,
)
from .transport import (
    _FLIGHT_SQL_KEYS,
    FlightSettings,
    FlightSqlSettings,
    GroupCommitSettings,
    Http2Settings,
    Limits,
    _flight_sql,
    _group_commit,
    _http2,
    _limits,
)
from .values import (
    ConfigError,
    _bool,
    _check_keys,
    _choice,
    _float,
    _int,
    _interval,
    _mapping,
    _str,
    parse_size,
)

__all__ = [
    "BACKENDS",
    "COMMIT_MODES",
    "COMPRESSIONS",
    "DEFAULT_DB",
    "DEFAULT_DELTA_PATH",
    "DEFAULT_DUCKLAKE_CATALOG",
    "DEFAULT_DUCKLAKE_DATA",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_CONFIG_PATH",
    "ENV_OVERRIDES",
    "ENV_TOKEN",
    "MIN_TOKEN_LENGTH",
    "PARQUET_COMPRESSIONS",
    "PARQUET_LEVELS",
    "SCHEMA_MODES",
    "AuthSettings",
    "Compression",
    "Config",
    "ConfigError",
    "DeltaConfig",
    "DeltaOptions",
    "DuckDBSettings",
    "DuckLakeConfig",
    "FlightSettings",
    "FlightSqlSettings",
    "GroupCommitSettings",
    "Http2Settings",
    "IdempotencySettings",
    "Limits",
    "MetricsSettings",
    "Route",
    "StreamConfig",
    "TlsSettings",
    "Token",
    "load_config",
    "parse_config",
    "parse_size",
    "read_yaml",
]

DEFAULT_PORT = 8888
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DB = "arrowport.duckdb"

ENV_OVERRIDES = {
    "ARROWPORT_DB": "db_path",
    "ARROWPORT_DELTA_PATH": "delta_config.table_path",
    "ARROWPORT_CERTFILE": "tls.certfile",
    "ARROWPORT_KEYFILE": "tls.keyfile",
    "ARROWPORT_PORT": "port",
    "ARROWPORT_HOST": "host",
    "ARROWPORT_COMPRESSION": "compression",
    "ARROWPORT_STORAGE_BACKEND": "storage_backend",
    "ARROWPORT_METRICS_PORT": "metrics.port",
    "ARROWPORT_DUCKLAKE_CATALOG": "ducklake.catalog",
    "ARROWPORT_DUCKLAKE_DATA_PATH": "ducklake.data_path",
}
ENV_CONFIG_PATH = "ARROWPORT_STREAMS_PATH"


@dataclass(frozen=True, slots=True)
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_path: str = DEFAULT_DB
    storage_backend: str = "duckdb"
    compression: Compression = field(default_factory=Compression)
    streams: Mapping[str, StreamConfig] = field(default_factory=dict)
    duckdb_extensions: tuple[str, ...] = ()
    duckdb: DuckDBSettings = field(default_factory=DuckDBSettings)
    delta_config: DeltaConfig = field(default_factory=DeltaConfig)
    ducklake: DuckLakeConfig = field(default_factory=DuckLakeConfig)
    limits: Limits = field(default_factory=Limits)
    flight: FlightSettings = field(default_factory=FlightSettings)
    flight_sql: FlightSqlSettings = field(default_factory=FlightSqlSettings)
    http2: Http2Settings = field(default_factory=Http2Settings)
    group_commit: GroupCommitSettings = field(default_factory=GroupCommitSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    idempotency: IdempotencySettings = field(default_factory=IdempotencySettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    reload_interval: float = 1.0
    source: str | None = None

    def route(self, stream: str) -> Route:
        """Route ``stream``; an unconfigured stream goes to a table of its own name."""
        validate_name(stream, "stream")
        conf = self.streams.get(stream)
        if conf is None:
            key = stream.lower()
            conf = next((c for n, c in self.streams.items() if n.lower() == key), None)
        if conf is None:
            if self.storage_backend == "delta":
                validate_delta_table(stream)
            return Route(stream, stream, self.storage_backend, "request", configured=False)
        backend = conf.storage_backend or self.storage_backend
        return Route(
            conf.name,
            conf.target_table,
            backend,
            conf.commit,
            configured=True,
            delta=conf.delta_options,
        )

    def table_route(self, table: str, backend: str) -> Route:
        """Route a write to one table of one backend, whatever the streams say.

        ``POST /delta/{table}`` writes that Delta table; a Flight DoPut whose
        descriptor is ``{"table": …, "backend": …}`` (as ListFlights and
        GetFlightInfo describe tables not of the default backend) writes that
        table of that backend. The commit mode is ``request``; the
        ``delta_options`` of a configured stream writing ``table`` apply.
        """
        validate_name(table, "table")
        if backend == "delta":
            validate_delta_table(table)
        key = table.lower()
        conf = next((c for c in self.streams.values() if c.target_table.lower() == key), None)
        options = conf.delta_options if conf is not None else DeltaOptions()
        return Route(table, table, backend, "request", configured=conf is not None, delta=options)

    def credentials(self) -> list[str]:
        """The literal secrets in this config (the catalog's password, secret storage
        options), for ``redact.remember``; auth tokens are never echoed by drivers."""
        return (
            conninfo_secrets(self.ducklake.catalog)
            + option_secrets(self.ducklake.storage_options)
            + option_secrets(self.delta_config.storage_options)
        )

    def uses(self, backend: str) -> bool:
        """Whether the default or any configured stream writes to ``backend``."""
        return self.storage_backend == backend or any(
            s.storage_backend == backend for s in self.streams.values()
        )


# -- parsing ---------------------------------------------------------------


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "host": _str,
    "port": lambda v, k: _int(v, k, minimum=0, maximum=65535),
    "db_path": _str,
    "storage_backend": lambda v, k: _choice(v, k, BACKENDS),
    "compression": _compression,
    "reload_interval": lambda v, k: _interval(_float(v, k), k),
}
_TOP_KEYS = set(_PARSERS) | {
    "streams",
    "duckdb_extensions",
    "duckdb",
    "delta_config",
    "ducklake",
    "limits",
    "flight",
    "flight_sql",
    "http2",
    "group_commit",
    "auth",
    "tls",
    "idempotency",
    "metrics",
}
# every key a section accepts (tests/test_docs.py checks that the docs name them all)
SECTION_KEYS: tuple[set[str], ...] = (
    _AUTH_KEYS,
    _TOKEN_KEYS,
    _TLS_KEYS,
    _IDEMPOTENCY_KEYS,
    _METRICS_KEYS,
    _DUCKLAKE_KEYS,
    _STREAM_KEYS,
    _DELTA_OPTION_KEYS,
    _DELTA_CONFIG_KEYS,
    _FLIGHT_SQL_KEYS,
)


def parse_config(
    raw: Mapping[str, Any], source: str | None = None, *, env_token: str | None = None
) -> Config:
    """Validate a raw mapping (from YAML, with overrides applied) into a ``Config``.

    ``env_token`` (``$ARROWPORT_TOKEN``) is one more token, allowed every stream.
    """
    raw = _mapping(raw, "config")
    _check_keys(raw, _TOP_KEYS, "")
    values: dict[str, Any] = {"source": source}
    for key, parser in _PARSERS.items():
        if raw.get(key) is not None:
            values[key] = parser(raw[key], key)
    streams = _mapping(raw.get("streams"), "streams")
    seen: dict[str, str] = {}
    for name in streams:
        if not isinstance(name, str):
            raise ConfigError(f"streams.{name}: stream names must be strings")
        if name.lower() in seen:
            raise ConfigError(
                f"streams.{name}: same name as streams.{seen[name.lower()]} "
                "(stream names are case-insensitive, like table names)"
            )
        seen[name.lower()] = name
    values["streams"] = {name: _stream(name, conf) for name, conf in streams.items()}
    default_backend = values.get("storage_backend", "duckdb")
    for conf in values["streams"].values():
        if (conf.storage_backend or default_backend) == "delta":
            try:
                validate_delta_table(conf.target_table)
            except InvalidNameError as exc:
                raise ConfigError(f"streams.{conf.name}.target_table: {exc.detail}") from None
    extensions = raw.get("duckdb_extensions") or []
    if not isinstance(extensions, list) or not all(
        isinstance(e, str) and e.isidentifier() for e in extensions
    ):
        raise ConfigError(
            "duckdb_extensions: expected a list of extension names such as [ducklake]"
        )
    values["duckdb_extensions"] = tuple(extensions)
    values["duckdb"] = _duckdb(_mapping(raw.get("duckdb"), "duckdb"), "duckdb")
    values["delta_config"] = _delta_config(
        _mapping(raw.get("delta_config"), "delta_config"), "delta_config"
    )
    values["ducklake"] = _ducklake(_mapping(raw.get("ducklake"), "ducklake"), "ducklake")
    values["limits"] = _limits(_mapping(raw.get("limits"), "limits"), "limits")
    flight = _mapping(raw.get("flight"), "flight")
    _check_keys(flight, set(FlightSettings.__dataclass_fields__), "flight.")
    message_size = parse_size(
        flight.get("max_message_size", FlightSettings().max_message_size), "flight.max_message_size"
    )
    if message_size < 64 * 1024:
        raise ConfigError("flight.max_message_size: must be at least 64KiB")
    values["flight"] = FlightSettings(
        allow_table_drop=_bool(flight.get("allow_table_drop", False), "flight.allow_table_drop"),
        max_message_size=message_size,
    )
    values["flight_sql"] = _flight_sql(_mapping(raw.get("flight_sql"), "flight_sql"), "flight_sql")
    values["http2"] = _http2(_mapping(raw.get("http2"), "http2"), "http2")
    values["group_commit"] = _group_commit(
        _mapping(raw.get("group_commit"), "group_commit"), "group_commit"
    )
    values["auth"] = _auth(_mapping(raw.get("auth"), "auth"), "auth", env_token)
    values["tls"] = _tls(_mapping(raw.get("tls"), "tls"), "tls")
    idem = _mapping(raw.get("idempotency"), "idempotency")
    _check_keys(idem, _IDEMPOTENCY_KEYS, "idempotency.")
    ttl = _float(idem.get("key_ttl_hours", 168.0), "idempotency.key_ttl_hours")
    if ttl <= 0:
        raise ConfigError("idempotency.key_ttl_hours: must be positive")
    values["idempotency"] = IdempotencySettings(ttl)
    metrics = _mapping(raw.get("metrics"), "metrics")
    _check_keys(metrics, _METRICS_KEYS, "metrics.")
    port, host = metrics.get("port"), metrics.get("host")
    values["metrics"] = MetricsSettings(
        port=None if port is None else _int(port, "metrics.port", minimum=0, maximum=65535),
        host=None if host is None else _str(host, "metrics.host"),
    )
    return Config(**values)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: the top level must be a mapping")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load the effective configuration.

    ``path`` falls back to ``$ARROWPORT_STREAMS_PATH``; with neither, only
    defaults, environment and overrides apply. ``overrides`` (from CLI flags)
    win over the environment, which wins over the file.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get(ENV_CONFIG_PATH) or None
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    for var, key in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            _set(raw, key, value)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(raw, key, value)
    return parse_config(
        raw, source=None if path is None else str(path), env_token=env.get(ENV_TOKEN) or None
    )


def _set(raw: dict[str, Any], key: str, value: object) -> None:
    """Set ``key`` (dotted for a nested mapping: ``delta_config.table_path``)."""
    head, _, rest = key.partition(".")
    if not rest:
        raw[head] = value
        return
    inner = raw.get(head)
    raw[head] = {**(inner if isinstance(inner, Mapping) else {}), rest: value}
