"""Configuration sections for the transports: ``limits``, ``flight``, ``flight_sql``, ``http2``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .values import ConfigError, _bool, _check_keys, _float, _int, parse_size


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
class FlightSettings:
    allow_table_drop: bool = False
    # largest gRPC message Arrowport sends (DoGet slices batches to fit); 4 MiB is the
    # receive limit of grpc-go, grpc-java, grpcio and tonic clients by default
    max_message_size: int = 4 * 1024**2


@dataclass(frozen=True, slots=True)
class FlightSqlSettings:
    """``flight_sql``: read-only SQL queries over Flight SQL; docs/configuration.md says why each.

    Each query runs in a DuckDB instance of its own, in memory, that can reach no file:
    these bound what one query may cost, and ``max_concurrent_queries`` how many run.
    """

    queries: bool = True  # serve queries at all (off: UNIMPLEMENTED, naming this key)
    query_timeout: float = 30.0  # seconds, from the call's start to its last row sent
    query_memory_limit: int = 256 * 1024**2  # each query's DuckDB memory_limit; no spilling
    query_threads: int = 1  # each query's DuckDB threads
    max_concurrent_queries: int = 4  # more wait for a slot, within their timeout
    prepared_statement_ttl: float = 3600.0  # seconds a prepared statement handle stays valid


_FLIGHT_SQL_KEYS = set(FlightSqlSettings.__dataclass_fields__)
MIN_QUERY_MEMORY = 16 * 1024**2


def _flight_sql(raw: Mapping[str, Any], key: str) -> FlightSqlSettings:
    _check_keys(raw, _FLIGHT_SQL_KEYS, f"{key}.")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{key}.{name}"
        if name == "queries":
            values[name] = _bool(value, where)
        elif name in ("query_timeout", "prepared_statement_ttl"):
            values[name] = _float(value, where)
            if values[name] <= 0:
                raise ConfigError(f"{where}: must be positive, got {values[name]:g}")
        elif name == "query_memory_limit":
            values[name] = parse_size(value, where)
            if values[name] < MIN_QUERY_MEMORY:
                raise ConfigError(f"{where}: must be at least 16MiB, got {value!r}")
        elif name == "query_threads":
            values[name] = _int(value, where, minimum=1, maximum=64)
        else:
            values[name] = _int(value, where, minimum=1, maximum=1024)
    return FlightSqlSettings(**values)


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


@dataclass(frozen=True, slots=True)
class GroupCommitSettings:
    """``group_commit``: small concurrent requests to one table share one commit."""

    enabled: bool = True
    # a request-mode upload whose decoded batches total at most this is held in memory
    # until its stream ends and committed with the others waiting for its table; a
    # larger one streams into a transaction of its own, as before
    max_request_bytes: int = 1024**2
    # how long a group waits for more requests once its table is free; 0: requests
    # that arrive while a commit runs form the next group (a lone producer never waits)
    max_wait: float = 0.0
    max_group_rows: int = 1_000_000  # a group is closed at any of these three bounds
    max_group_bytes: int = 64 * 1024**2
    max_group_requests: int = 1024


_GROUP_SIZES = {"max_request_bytes", "max_group_bytes"}


def _group_commit(raw: Mapping[str, Any], key: str) -> GroupCommitSettings:
    _check_keys(raw, set(GroupCommitSettings.__dataclass_fields__), f"{key}.")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        where = f"{key}.{name}"
        if name == "enabled":
            values[name] = _bool(value, where)
        elif name == "max_wait":
            values[name] = _float(value, where)
            if values[name] > 1.0:
                raise ConfigError(f"{where}: at most 1 second, got {values[name]:g}")
        elif name in _GROUP_SIZES:
            values[name] = parse_size(value, where)
            if values[name] <= 0:
                raise ConfigError(f"{where}: must be positive")
        else:
            values[name] = _int(value, where, minimum=1)
    return GroupCommitSettings(**values)
