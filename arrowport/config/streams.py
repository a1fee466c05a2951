"""Configuration of streams: ``streams.<name>``, ``compression``, and routes."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..names import InvalidNameError, validate_name
from .backends import DeltaOptions, _delta_options
from .values import ConfigError, _check_keys, _choice, _int, _mapping

BACKENDS = ("duckdb", "ducklake", "delta")
COMMIT_MODES = ("request", "batch")
COMPRESSIONS = ("zstd", "lz4", "none")


@dataclass(frozen=True, slots=True)
class Compression:
    algorithm: str = "zstd"
    level: int | None = 3


@dataclass(frozen=True, slots=True)
class StreamConfig:
    name: str
    target_table: str
    storage_backend: str | None = None
    chunk_size: int = 122_880
    compression: Compression | None = None
    commit: str = "request"
    delta_options: DeltaOptions = field(default_factory=DeltaOptions)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one stream's data goes."""

    stream: str
    table: str
    backend: str
    commit: str
    configured: bool
    delta: DeltaOptions = field(default_factory=DeltaOptions)


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


_STREAM_KEYS = {
    "target_table",
    "storage_backend",
    "chunk_size",
    "compression",
    "commit",
    "delta_options",
}


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
