"""Configuration sections for the storage backends: ``duckdb``, ``delta_config``,
``ducklake``, and a stream's ``delta_options``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .values import (
    ConfigError,
    _bool,
    _check_keys,
    _choice,
    _float,
    _int,
    _mapping,
    _names,
    _str,
    _str_map,
    parse_size,
)

PARQUET_COMPRESSIONS = ("snappy", "zstd", "lz4", "gzip", "none")
PARQUET_LEVELS = {"zstd": (1, 22), "gzip": (1, 9)}  # codecs that take a level
SCHEMA_MODES = ("merge", "strict")
DEFAULT_DELTA_PATH = "arrowport_delta"
DEFAULT_DUCKLAKE_CATALOG = "arrowport.ducklake"
DEFAULT_DUCKLAKE_DATA = "arrowport_lake"
DEFAULT_DUCKDB_MEMORY_LIMIT = "512MB"  # see docs/performance.md, "Memory of one large upload"


@dataclass(frozen=True, slots=True)
class DuckDBSettings:
    memory_limit: str | None = DEFAULT_DUCKDB_MEMORY_LIMIT  # None: DuckDB's (80% of RAM)
    threads: int | None = None
    temp_directory: str | None = None  # None: next to the database file, <db_path>.tmp
    checkpoint_threshold: str = "16MB"
    checkpoint_interval: float = 0.0
    checkpoint_on_shutdown: bool = True


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
    temp = raw.get("temp_directory", base.temp_directory)
    return DuckDBSettings(
        memory_limit=None if memory is None else _duckdb_size(memory, f"{key}.memory_limit"),
        threads=None if threads is None else _int(threads, f"{key}.threads", minimum=1),
        temp_directory=None if temp is None else _str(temp, f"{key}.temp_directory"),
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


_DELTA_OPTION_KEYS = {
    "partition_by",
    "z_order_by",
    "target_file_size",
    "compression",
    "schema_mode",
}


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
