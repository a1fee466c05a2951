"""Configuration: YAML file, environment overrides, CLI overrides, validation.

Precedence, lowest first: built-in defaults, the YAML file, ``ARROWPORT_*``
environment variables, command-line flags. Every problem is reported as a
``ConfigError`` whose message starts with the dotted key it concerns.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ArrowportError
from .names import InvalidNameError, validate_delta_table, validate_name
from .redact import conninfo_secrets, option_secrets

BACKENDS = ("duckdb", "ducklake", "delta")
COMMIT_MODES = ("request", "batch")
COMPRESSIONS = ("zstd", "lz4", "none")
PARQUET_COMPRESSIONS = ("snappy", "zstd", "lz4", "gzip", "none")
PARQUET_LEVELS = {"zstd": (1, 22), "gzip": (1, 9)}  # codecs that take a level
SCHEMA_MODES = ("merge", "strict")
DEFAULT_DELTA_PATH = "arrowport_delta"
DEFAULT_PORT = 8888
DEFAULT_HOST = "127.0.0.1"
DEFAULT_DB = "arrowport.duckdb"
DEFAULT_DUCKLAKE_CATALOG = "arrowport.ducklake"
DEFAULT_DUCKLAKE_DATA = "arrowport_lake"

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
ENV_TOKEN = "ARROWPORT_TOKEN"  # one more token, allowed every stream


class ConfigError(ArrowportError, ValueError):
    """The configuration is invalid; the message names the key."""

    error = "invalid_config"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def parse_size(value: object, key: str) -> int:
    """Parse ``123``, ``"64MiB"``, ``"16MB"`` or ``"1.5GiB"`` into bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(
            f"{key}: expected a size such as 1048576, '64MiB' or '16MB', got {value!r}"
        )
    number, unit = float(match.group(1)), match.group(2).upper()
    binary = "I" in unit
    letter = unit.replace("I", "").replace("B", "")
    scale = 1024 ** " KMGT".index(letter or " ") if binary else _UNITS[letter]
    return int(number * scale)


@dataclass(frozen=True, slots=True)
class Compression:
    algorithm: str = "zstd"
    level: int | None = 3


@dataclass(frozen=True, slots=True)
class Limits:
    max_metadata_size: int = 64 * 1024**2
    max_body_size: int = 256 * 1024**2
    max_decompressed_size: int = 1024**3
    max_dictionary_bytes: int = 256 * 1024**2
    max_nesting_depth: int = 64
    max_columns: int = 10_000
    max_batch_rows: int = 64 * 1024**2
    max_request_size: int | None = None
    queue_depth: int = 4
    body_idle_timeout: float = 60.0
    min_body_rate: int = 1024
    connection_idle_timeout: float = 75.0
    require_eos_marker: bool = True
    max_concurrent_requests: int = 64
    max_inflight_bytes: int = 1024**3
    max_schema_metadata_bytes: int = 256 * 1024
    # whole requests (a Flight batch-mode stream counts everything it sent): None is no limit
    max_request_rows: int | None = 100_000_000
    max_request_decoded_bytes: int | None = 32 * 1024**3
    # connections, HTTP/1.1 and HTTP/2 alike; the server-wide one is also kept below the
    # process's descriptor limit (RLIMIT_NOFILE) minus a headroom for files and sockets
    max_connections: int = 4096
    max_connections_per_client: int = 256

    def decoder_kwargs(self) -> dict[str, Any]:
        """The decoders' limits (``IPCStreamDecoder``, ``FlightDataDecoder``)."""
        return {
            "max_metadata_size": self.max_metadata_size,
            "max_body_size": self.max_body_size,
            "max_decompressed_size": self.max_decompressed_size,
            "max_dictionary_bytes": self.max_dictionary_bytes,
            "max_nesting_depth": self.max_nesting_depth,
            "max_columns": self.max_columns,
            "max_batch_rows": self.max_batch_rows,
            "max_schema_metadata_bytes": self.max_schema_metadata_bytes,
            "max_request_rows": self.max_request_rows,
            "max_request_decoded_bytes": self.max_request_decoded_bytes,
        }


@dataclass(frozen=True, slots=True)
class DuckDBSettings:
    memory_limit: str | None = None
    threads: int | None = None
    checkpoint_threshold: str = "16MB"
    checkpoint_interval: float = 0.0
    checkpoint_on_shutdown: bool = True


@dataclass(frozen=True, slots=True)
class FlightSettings:
    allow_table_drop: bool = False
    # largest gRPC message Arrowport sends (DoGet slices batches to fit); 4 MiB is the
    # receive limit of grpc-go, grpc-java, grpcio and tonic clients by default
    max_message_size: int = 4 * 1024**2


@dataclass(frozen=True, slots=True)
class Http2Settings:
    """``http2``: the HTTP/2 (Flight) transport's limits; docs/configuration.md says why each."""

    max_concurrent_streams: int = 32  # streams open, and handlers running, per connection
    max_header_list_size: int = 64 * 1024  # decoded; a header block may be 16 KiB larger
    flood_window: float = 10.0  # seconds over which the per-window budgets below count
    max_stream_resets: int = 1000  # streams reset by the client or refused, per window
    max_pings: int = 1000  # PING frames per window
    max_ping_acks: int = 10  # PING ACKs per window (Arrowport sends no PING)
    max_settings: int = 100  # SETTINGS frames per window
    max_priority_per_stream: int = 100  # PRIORITY frames per stream opened
    max_window_updates_per_data_frame: int = 10  # WINDOW_UPDATEs per DATA frame sent
    max_empty_frames: int = 10  # consecutive DATA/HEADERS/CONTINUATION with no payload
    max_outbound_control_bytes: int = 256 * 1024  # unsent control frames; then stop reading
    write_timeout: float = 30.0  # a peer that reads nothing for this long is closed
    stream_idle_timeout: float = 90.0  # a stream waiting on its client this long is reset


_HTTP2_SIZES = {"max_header_list_size", "max_outbound_control_bytes"}
_HTTP2_TIMES = {"flood_window", "write_timeout", "stream_idle_timeout"}


def _http2(raw: Mapping[str, Any], key: str) -> Http2Settings:
    _check_keys(raw, set(Http2Settings.__dataclass_fields__), f"{key}.")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{key}.{name}"
        if name in _HTTP2_SIZES:
            values[name] = parse_size(value, where)
        elif name in _HTTP2_TIMES:
            values[name] = _float(value, where)
        else:
            values[name] = _int(value, where, minimum=1)
        if name in ("flood_window", "max_header_list_size") and not values[name]:
            raise ConfigError(f"{where}: must be positive")
    if values.get("max_concurrent_streams", 1) > 256:
        raise ConfigError(f"{key}.max_concurrent_streams: at most 256")
    return Http2Settings(**values)


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


@dataclass(frozen=True, slots=True)
class DeltaConfig:
    """``delta_config``: where Delta tables live and how they are maintained."""

    table_path: str = DEFAULT_DELTA_PATH
    version_retention_hours: float = 168.0
    checkpoint_interval: int = 100
    enable_cdc: bool = False
    compact_every: int = 0  # background compaction after this many commits to a table; 0: off
    # for an s3:// table_path: delta-rs / object_store options (endpoint, region, ...)
    storage_options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DuckLakeConfig:
    """``ducklake``: the DuckLake catalog and data path, and its maintenance."""

    catalog: str = DEFAULT_DUCKLAKE_CATALOG  # a .ducklake file, or postgres:<libpq conninfo>
    data_path: str = DEFAULT_DUCKLAKE_DATA  # a directory, or s3://bucket/prefix/
    # for an s3:// data_path: DuckDB S3 secret options (endpoint, region, key_id, ...)
    storage_options: Mapping[str, str] = field(default_factory=dict)
    merge_interval: float = 300.0  # seconds between background merges of small files; 0: off
    snapshot_retention_hours: float = 168.0  # time travel window; older snapshots expire
    cleanup_interval: float = 3600.0  # seconds between expiry + file cleanup runs; 0: off
    max_retry_count: int = 100  # DuckLake commit retries on a conflict with another writer
    retry_wait_ms: int = 100  # the first retry's wait (a random 50-100% of it)
    retry_backoff: float = 1.5  # each further retry waits this many times longer
    data_inlining_row_limit: int = 0  # inserts up to this many rows go to the catalog; 0: off


@dataclass(frozen=True, slots=True)
class DeltaOptions:
    """``streams.<name>.delta_options``: how one stream's Delta table is written."""

    partition_by: tuple[str, ...] = ()
    z_order_by: tuple[str, ...] = ()
    target_file_size: int = 128 * 1024**2
    compression: str = "snappy"
    compression_level: int | None = None
    schema_mode: str = "merge"


@dataclass(frozen=True, slots=True)
class StreamConfig:
    name: str
    target_table: str
    storage_backend: str | None = None
    chunk_size: int = 122_880
    compression: Compression | None = None
    commit: str = "request"
    delta_options: DeltaOptions = DeltaOptions()


@dataclass(frozen=True, slots=True)
class Route:
    """Where one stream's data goes."""

    stream: str
    table: str
    backend: str
    commit: str
    configured: bool
    delta: DeltaOptions = DeltaOptions()


@dataclass(frozen=True, slots=True)
class Config:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    db_path: str = DEFAULT_DB
    storage_backend: str = "duckdb"
    compression: Compression = Compression()
    streams: Mapping[str, StreamConfig] = field(default_factory=dict)
    duckdb_extensions: tuple[str, ...] = ()
    duckdb: DuckDBSettings = DuckDBSettings()
    delta_config: DeltaConfig = DeltaConfig()
    ducklake: DuckLakeConfig = DuckLakeConfig()
    limits: Limits = Limits()
    flight: FlightSettings = FlightSettings()
    http2: Http2Settings = Http2Settings()
    auth: AuthSettings = AuthSettings()
    tls: TlsSettings = TlsSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    metrics: MetricsSettings = MetricsSettings()
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


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            valid = ", ".join(sorted(allowed))
            raise ConfigError(f"{where}{key}: unknown key{suffix}; valid keys: {valid}")


def _mapping(value: object, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _int(value: object, key: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        raise ConfigError(f"{key}: must be at least {minimum}{upper}, got {number}")
    return number


def _float(value: object, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ConfigError(f"{key}: must be a finite, non-negative number, got {value!r}")
    return number


def _interval(seconds: float, key: str) -> float:
    if 0 < seconds < 0.05:
        raise ConfigError(f"{key}: must be 0 (off) or at least 0.05 seconds, got {seconds:g}")
    return seconds


def _bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "1",
        "on",
        "false",
        "no",
        "0",
        "off",
    ):
        return value.lower() in ("true", "yes", "1", "on")
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _choice(value: object, key: str, choices: tuple[str, ...]) -> str:
    text = str(value).lower() if value is not None else ""
    if text not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
    return text


def _str(value: object, key: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or value == "":
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return str(value)


def _compression(value: object, key: str) -> Compression:
    if isinstance(value, str):  # "zstd", "lz4", "none" or "zstd:3"
        name, _, given = value.partition(":")
        value = {"algorithm": name, "level": given or None}
    raw = _mapping(value, key)
    _check_keys(raw, {"algorithm", "level"}, f"{key}.")
    algorithm = _choice(raw.get("algorithm", "zstd"), f"{key}.algorithm", COMPRESSIONS)
    raw_level = raw.get("level", 3 if algorithm == "zstd" else None)
    level = None if raw_level is None else _int(raw_level, f"{key}.level", minimum=-7, maximum=22)
    return Compression(algorithm, None if algorithm == "none" else level)


def _limits(raw: Mapping[str, Any], key: str) -> Limits:
    defaults = Limits()
    allowed = set(Limits.__dataclass_fields__)
    _check_keys(raw, allowed, f"{key}.")
    values: dict[str, Any] = {}
    for name in allowed:
        if name not in raw:
            continue
        value, where = raw[name], f"{key}.{name}"
        if name in (
            "max_nesting_depth",
            "max_columns",
            "max_batch_rows",
            "queue_depth",
            "max_concurrent_requests",
            "max_connections",
            "max_connections_per_client",
        ):
            values[name] = _int(value, where, minimum=1)
        elif name in ("body_idle_timeout", "connection_idle_timeout"):
            values[name] = _float(value, where)
        elif name == "require_eos_marker":
            values[name] = _bool(value, where)
        elif name == "min_body_rate":  # bytes per second; 0 turns it off
            values[name] = parse_size(value, where)
        elif name == "max_request_rows":
            values[name] = (
                None if value in (None, 0, "0", "unlimited") else _int(value, where, minimum=1)
            )
        elif name in ("max_request_size", "max_request_decoded_bytes") and value in (
            None,
            0,
            "0",
            "unlimited",
        ):
            values[name] = None
        else:
            values[name] = parse_size(value, where)
            if values[name] <= 0:
                raise ConfigError(f"{where}: must be positive")
    return Limits(**{**{n: getattr(defaults, n) for n in allowed}, **values})


def _duckdb_size(value: object, key: str) -> str:
    """A size DuckDB understands, validated here so that a typo names its key."""
    size = parse_size(value, key)
    if size <= 0:
        raise ConfigError(f"{key}: must be positive")
    return f"{size}B"


def _duckdb(raw: Mapping[str, Any], key: str) -> DuckDBSettings:
    _check_keys(raw, set(DuckDBSettings.__dataclass_fields__), f"{key}.")
    base = DuckDBSettings()
    memory = raw.get("memory_limit", base.memory_limit)
    threads = raw.get("threads", base.threads)
    return DuckDBSettings(
        memory_limit=None if memory is None else _duckdb_size(memory, f"{key}.memory_limit"),
        threads=None if threads is None else _int(threads, f"{key}.threads", minimum=1),
        checkpoint_threshold=_duckdb_size(
            raw.get("checkpoint_threshold", base.checkpoint_threshold),
            f"{key}.checkpoint_threshold",
        ),
        checkpoint_interval=_float(
            raw.get("checkpoint_interval", base.checkpoint_interval), f"{key}.checkpoint_interval"
        ),
        checkpoint_on_shutdown=_bool(
            raw.get("checkpoint_on_shutdown", base.checkpoint_on_shutdown),
            f"{key}.checkpoint_on_shutdown",
        ),
    )


_STREAM_KEYS = {
    "target_table",
    "storage_backend",
    "chunk_size",
    "compression",
    "commit",
    "delta_options",
}
_DELTA_OPTION_KEYS = {
    "partition_by",
    "z_order_by",
    "target_file_size",
    "compression",
    "schema_mode",
}


def _names(value: object, key: str) -> tuple[str, ...]:
    """A column list: ``[a, b]`` or ``"a,b"``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{key}: expected a list of column names, got {value!r}")
    names = []
    for item in items:
        name = str(item).strip() if isinstance(item, str) else item
        if not isinstance(name, str):
            raise ConfigError(f"{key}: expected a list of column names, got {value!r}")
        try:
            validate_name(name, "column")
        except InvalidNameError as exc:
            raise ConfigError(f"{key}: {exc.detail}") from None
        names.append(name)
    if len({n.lower() for n in names}) != len(names):
        raise ConfigError(f"{key}: a column is listed twice")
    return tuple(names)


def _delta_options(raw: Mapping[str, Any], key: str) -> DeltaOptions:
    _check_keys(raw, _DELTA_OPTION_KEYS, f"{key}.")
    base = DeltaOptions()
    compression, level = base.compression, base.compression_level
    if raw.get("compression") is not None:
        value = raw["compression"]
        if isinstance(value, str):  # "zstd", "zstd:3"
            name, _, given = value.partition(":")
            value = {"algorithm": name, "level": given or None}
        spec = _mapping(value, f"{key}.compression")
        _check_keys(spec, {"algorithm", "level"}, f"{key}.compression.")
        compression = _choice(
            spec.get("algorithm", "snappy"), f"{key}.compression.algorithm", PARQUET_COMPRESSIONS
        )
        level = None
        if spec.get("level") is not None:
            if compression not in PARQUET_LEVELS:
                raise ConfigError(
                    f"{key}.compression.level: {compression} takes no level "
                    f"(only {', '.join(PARQUET_LEVELS)} do)"
                )
            low, high = PARQUET_LEVELS[compression]
            level = _int(spec["level"], f"{key}.compression.level", minimum=low, maximum=high)
    partition_by = _names(raw.get("partition_by"), f"{key}.partition_by")
    z_order_by = _names(raw.get("z_order_by"), f"{key}.z_order_by")
    overlap = {c.lower() for c in partition_by} & {c.lower() for c in z_order_by}
    if overlap:
        raise ConfigError(
            f"{key}.z_order_by: {', '.join(sorted(overlap))} is a partition column; "
            "z-order only orders data within a partition"
        )
    size = parse_size(raw.get("target_file_size", base.target_file_size), f"{key}.target_file_size")
    if size < 1024**2:
        raise ConfigError(f"{key}.target_file_size: must be at least 1MiB, got {size}")
    return DeltaOptions(
        partition_by=partition_by,
        z_order_by=z_order_by,
        target_file_size=size,
        compression=compression,
        compression_level=level,
        schema_mode=_choice(
            raw.get("schema_mode", base.schema_mode), f"{key}.schema_mode", SCHEMA_MODES
        ),
    )


_DELTA_CONFIG_KEYS = set(DeltaConfig.__dataclass_fields__)


def _delta_config(raw: Mapping[str, Any], key: str) -> DeltaConfig:
    _check_keys(raw, _DELTA_CONFIG_KEYS, f"{key}.")
    base = DeltaConfig()
    return DeltaConfig(
        table_path=_str(raw.get("table_path", base.table_path), f"{key}.table_path"),
        version_retention_hours=float(  # whole hours: Delta's interval and vacuum take no less
            _int(
                raw.get("version_retention_hours", int(base.version_retention_hours)),
                f"{key}.version_retention_hours",
            )
        ),
        checkpoint_interval=_int(
            raw.get("checkpoint_interval", base.checkpoint_interval),
            f"{key}.checkpoint_interval",
            minimum=1,
        ),
        enable_cdc=_bool(raw.get("enable_cdc", base.enable_cdc), f"{key}.enable_cdc"),
        compact_every=_int(
            raw.get("compact_every", base.compact_every), f"{key}.compact_every", minimum=0
        ),
        storage_options=_str_map(raw.get("storage_options"), f"{key}.storage_options"),
    )


def _str_map(value: object, key: str) -> dict[str, str]:
    """A mapping of option names to scalar values, as strings (booleans as true/false)."""
    out = {}
    for name, item in _mapping(value, key).items():
        if isinstance(item, Mapping | list) or item is None:
            raise ConfigError(f"{key}.{name}: expected a string, number or boolean")
        out[str(name)] = str(item).lower() if isinstance(item, bool) else str(item)
    return out


_DUCKLAKE_KEYS = set(DuckLakeConfig.__dataclass_fields__)


def _ducklake(raw: Mapping[str, Any], key: str) -> DuckLakeConfig:
    _check_keys(raw, _DUCKLAKE_KEYS, f"{key}.")
    base = DuckLakeConfig()
    catalog = _str(raw.get("catalog", base.catalog), f"{key}.catalog")
    if not catalog.strip():
        raise ConfigError(f"{key}.catalog: must not be empty")
    if catalog.startswith("ducklake:"):
        raise ConfigError(
            f"{key}.catalog: give the catalog without the 'ducklake:' prefix "
            "(a .ducklake file path, or postgres:<connection string>)"
        )
    data_path = _str(raw.get("data_path", base.data_path), f"{key}.data_path")
    if not data_path.strip():
        raise ConfigError(f"{key}.data_path: must not be empty")

    def seconds(name: str) -> float:
        value = _float(raw.get(name, getattr(base, name)), f"{key}.{name}")
        if value < 0:
            raise ConfigError(f"{key}.{name}: must not be negative (0 turns it off)")
        return value

    return DuckLakeConfig(
        catalog=catalog,
        data_path=data_path,
        storage_options=_str_map(raw.get("storage_options"), f"{key}.storage_options"),
        merge_interval=seconds("merge_interval"),
        snapshot_retention_hours=seconds("snapshot_retention_hours"),
        cleanup_interval=seconds("cleanup_interval"),
        max_retry_count=_int(
            raw.get("max_retry_count", base.max_retry_count), f"{key}.max_retry_count", minimum=0
        ),
        retry_wait_ms=_int(
            raw.get("retry_wait_ms", base.retry_wait_ms),
            f"{key}.retry_wait_ms",
            minimum=0,
            maximum=60_000,
        ),
        retry_backoff=_backoff(raw.get("retry_backoff", base.retry_backoff), key),
        data_inlining_row_limit=_int(
            raw.get("data_inlining_row_limit", base.data_inlining_row_limit),
            f"{key}.data_inlining_row_limit",
            minimum=0,
        ),
    )


def _backoff(value: object, key: str) -> float:
    backoff = _float(value, f"{key}.retry_backoff")
    if not 1.0 <= backoff <= 4.0:  # the waits grow as backoff ** attempt
        raise ConfigError(
            f"{key}.retry_backoff: must be from 1 (the same wait every retry) to 4, got {backoff:g}"
        )
    return backoff


def _stream(name: str, value: object) -> StreamConfig:
    key = f"streams.{name}"
    try:
        validate_name(name, "stream")
    except InvalidNameError as exc:
        raise ConfigError(f"{key}: {exc.detail}") from None
    raw = _mapping(value, key)
    _check_keys(raw, _STREAM_KEYS, f"{key}.")
    target = raw.get("target_table")
    table = name if target is None else str(target)
    try:
        validate_name(table, "table")
    except InvalidNameError as exc:
        raise ConfigError(f"{key}.target_table: {exc.detail}") from None
    backend = raw.get("storage_backend")
    delta_options = _delta_options(
        _mapping(raw.get("delta_options"), f"{key}.delta_options"), f"{key}.delta_options"
    )
    return StreamConfig(
        name=name,
        target_table=table,
        storage_backend=None
        if backend is None
        else _choice(backend, f"{key}.storage_backend", BACKENDS),
        chunk_size=_int(raw.get("chunk_size", 122_880), f"{key}.chunk_size", minimum=1),
        compression=(
            None
            if raw.get("compression") is None
            else _compression(raw["compression"], f"{key}.compression")
        ),
        commit=_choice(raw.get("commit", "request"), f"{key}.commit", COMMIT_MODES),
        delta_options=delta_options,
    )


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
    "http2",
    "auth",
    "tls",
    "idempotency",
    "metrics",
}
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
    values["http2"] = _http2(_mapping(raw.get("http2"), "http2"), "http2")
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
