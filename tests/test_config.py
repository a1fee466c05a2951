"""Configuration parsing, validation and precedence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from arrowport.config import ConfigError, load_config, parse_config, parse_size
from arrowport.names import InvalidNameError


def test_defaults_bind_loopback_8888_and_local_file() -> None:
    """With no file and no env, the server binds 127.0.0.1:8888 and writes ./arrowport.duckdb."""
    config = load_config(None, env={})
    assert (config.host, config.port, config.db_path) == ("127.0.0.1", 8888, "arrowport.duckdb")
    assert config.storage_backend == "duckdb"


def test_seed_yaml_shape_is_accepted(tmp_path: Path) -> None:
    """The seed design's YAML (streams with target_table, chunk_size, compression) parses."""
    path = tmp_path / "streams.yaml"
    path.write_text(
        "db_path: data.duckdb\nstorage_backend: duckdb\n"
        "compression: {algorithm: zstd, level: 3}\n"
        "duckdb_extensions: []\n"
        "delta_config: {table_path: ./delta, version_retention_hours: 168}\n"
        "streams:\n"
        "  sensor_readings:\n    target_table: sensor_data\n    chunk_size: 122880\n"
        "    compression: {algorithm: lz4, level: 6}\n"
        "  events:\n    target_table: events\n    storage_backend: delta\n"
        "    delta_options: {partition_by: [event_date], schema_mode: merge}\n"
    )
    config = load_config(path, env={})
    assert config.db_path == "data.duckdb"
    assert config.streams["sensor_readings"].compression is not None
    assert config.route("sensor_readings").table == "sensor_data"
    assert config.route("events").backend == "delta"
    assert config.route("unknown_stream").table == "unknown_stream"


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags beat environment variables, which beat the file."""
    path = tmp_path / "c.yaml"
    path.write_text("port: 1000\nhost: 10.0.0.1\ndb_path: file.duckdb\n")
    env = {
        "ARROWPORT_PORT": "2000",
        "ARROWPORT_DB": "env.duckdb",
        "ARROWPORT_COMPRESSION": "lz4",
        "ARROWPORT_STORAGE_BACKEND": "delta",
    }
    config = load_config(path, env=env, overrides={"port": 3000})
    assert config.port == 3000 and config.db_path == "env.duckdb" and config.host == "10.0.0.1"
    assert config.compression.algorithm == "lz4" and config.storage_backend == "delta"
    env_path = {"ARROWPORT_STREAMS_PATH": str(path)}
    assert load_config(None, env=env_path).port == 1000


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"port": "eighty"}, "port"),
        ({"port": 70000}, "port"),
        ({"storage_backend": "sqlite"}, "storage_backend"),
        ({"streams": {"s": {"commit": "often"}}}, "streams.s.commit"),
        ({"streams": {"s": {"target_table": "bad-name"}}}, "streams.s.target_table"),
        ({"streams": {"bad name": {}}}, "streams.bad name"),
        ({"streams": {"s": {"chunk_size": 0}}}, "streams.s.chunk_size"),
        ({"compression": {"algorithm": "brotli"}}, "compression.algorithm"),
        ({"limits": {"max_body_size": "lots"}}, "limits.max_body_size"),
        ({"limtis": {}}, "limtis"),
        ({"delta_config": {"table_pth": "x"}}, "delta_config.table_pth"),
        ({"delta_config": {"checkpoint_interval": 0}}, "delta_config.checkpoint_interval"),
        ({"delta_config": {"compact_every": -1}}, "delta_config.compact_every"),
        (
            {"delta_config": {"version_retention_hours": 0.5}},
            "delta_config.version_retention_hours",
        ),
        ({"delta_config": {"enable_cdc": "maybe"}}, "delta_config.enable_cdc"),
        (
            {"streams": {"s": {"delta_options": {"schema_mode": "loose"}}}},
            "streams.s.delta_options.schema_mode",
        ),
        (
            {"streams": {"s": {"delta_options": {"compression": "brotli"}}}},
            "streams.s.delta_options.compression.algorithm",
        ),
        (
            {"streams": {"s": {"delta_options": {"compression": "snappy:3"}}}},
            "streams.s.delta_options.compression.level",
        ),
        (
            {"streams": {"s": {"delta_options": {"compression": "zstd:40"}}}},
            "streams.s.delta_options.compression.level",
        ),
        (
            {"streams": {"s": {"delta_options": {"target_file_size": "10KB"}}}},
            "streams.s.delta_options.target_file_size",
        ),
        (
            {"streams": {"s": {"delta_options": {"partition_by": ["a-b"]}}}},
            "streams.s.delta_options.partition_by",
        ),
        (
            {"streams": {"s": {"delta_options": {"partition_by": ["a", "A"]}}}},
            "streams.s.delta_options.partition_by",
        ),
        (
            {"streams": {"s": {"delta_options": {"partition_by": "d", "z_order_by": "d"}}}},
            "streams.s.delta_options.z_order_by",
        ),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    """Every validation error starts with the dotted key it concerns."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_unknown_key_suggests_the_close_match() -> None:
    """A misspelt key gets a did-you-mean hint."""
    with pytest.raises(ConfigError, match="did you mean 'target_table'"):
        parse_config({"streams": {"s": {"target_tabel": "x"}}})


def test_broken_yaml_is_a_config_error(tmp_path: Path) -> None:
    """Invalid YAML is reported as a ConfigError naming the file."""
    path = tmp_path / "broken.yaml"
    path.write_text("streams: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 * 1024**2),
        ("16MB", 16_000_000),
        (1024, 1024),
        ("1.5GiB", 1536 * 1024**2),
        ("512", 512),
        ("2KiB", 2048),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    """Sizes accept bytes and SI or binary suffixes."""
    assert parse_size(text, "k") == expected


def test_route_validates_stream_names() -> None:
    """Routing refuses names that are not identifiers."""
    with pytest.raises(InvalidNameError):
        parse_config({}).route('x"; DROP TABLE t; --')


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"reload_interval": "nan"}, "reload_interval"),
        ({"reload_interval": "inf"}, "reload_interval"),
        ({"duckdb": {"checkpoint_interval": "nan"}}, "duckdb.checkpoint_interval"),
        ({"duckdb": {"memory_limit": "lots"}}, "duckdb.memory_limit"),
        ({"duckdb": {"checkpoint_threshold": "banana"}}, "duckdb.checkpoint_threshold"),
        ({"limits": {"body_idle_timeout": -1}}, "limits.body_idle_timeout"),
        ({"streams": {"Events": {}, "events": {}}}, "streams.events"),
    ],
)
def test_more_errors_name_the_key(raw: dict[str, object], key: str) -> None:
    """Non-finite numbers, bad sizes and case-duplicate streams are refused by key."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert str(info.value).startswith(f"{key}:"), str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError, not a crash."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"streams:\n  s:\n    target_table: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})


def test_duckdb_sizes_are_normalised() -> None:
    """DuckDB sizes are validated and passed on in bytes."""
    config = parse_config({"duckdb": {"memory_limit": "1GiB", "checkpoint_threshold": "16MB"}})
    assert config.duckdb.memory_limit == f"{1024**3}B"
    assert config.duckdb.checkpoint_threshold == "16000000B"


def test_duckdb_memory_defaults() -> None:
    """DuckDB's buffer pool is bounded by default; null gives DuckDB's own default; the
    spill directory sits next to the database file unless set."""
    from arrowport.storage import DuckDBStore

    config = parse_config({})
    assert parse_size(config.duckdb.memory_limit, "m") == 512 * 10**6
    assert config.duckdb.temp_directory is None
    store = DuckDBStore.from_config(config)
    assert store._settings["temp_directory"] == f"{config.db_path}.tmp"
    assert store._settings["memory_limit"] == config.duckdb.memory_limit
    assert parse_config({"duckdb": {"memory_limit": None}}).duckdb.memory_limit is None
    spill = parse_config({"duckdb": {"temp_directory": "/var/tmp/spill"}})
    assert DuckDBStore.from_config(spill)._settings["temp_directory"] == "/var/tmp/spill"
    with pytest.raises(ConfigError, match=r"duckdb\.temp_directory"):
        parse_config({"duckdb": {"temp_directory": ""}})


def test_null_target_table_defaults_to_stream_name() -> None:
    """An empty target_table means the stream's own name, never a table called 'None'."""
    assert parse_config({"streams": {"s": {"target_table": None}}}).route("s").table == "s"


def test_stream_routing_is_case_insensitive() -> None:
    """/ingest/EVENTS uses the events entry (and its canonical name)."""
    config = parse_config({"streams": {"events": {"target_table": "log", "commit": "batch"}}})
    route = config.route("EVENTS")
    assert (route.stream, route.table, route.commit, route.configured) == (
        "events",
        "log",
        "batch",
        True,
    )


def test_delta_settings_parse_into_typed_options() -> None:
    """delta_config and delta_options become typed settings; the defaults are documented ones."""
    config = parse_config(
        {
            "delta_config": {"table_path": "lake", "enable_cdc": "yes", "compact_every": 5},
            "streams": {
                "ev": {
                    "storage_backend": "delta",
                    "delta_options": {
                        "partition_by": "day, region",
                        "z_order_by": ["id"],
                        "target_file_size": "64MiB",
                        "compression": "zstd:9",
                        "schema_mode": "strict",
                    },
                }
            },
        }
    )
    delta = config.delta_config
    assert (delta.table_path, delta.enable_cdc, delta.compact_every) == ("lake", True, 5)
    assert (delta.version_retention_hours, delta.checkpoint_interval) == (168.0, 100)
    route = config.route("ev")
    assert route.backend == "delta"
    assert route.delta.partition_by == ("day", "region")
    assert route.delta.z_order_by == ("id",)
    assert route.delta.target_file_size == 64 * 1024**2
    assert (route.delta.compression, route.delta.compression_level) == ("zstd", 9)
    assert route.delta.schema_mode == "strict"
    plain = config.route("other").delta
    assert (plain.compression, plain.schema_mode, plain.partition_by) == ("snappy", "merge", ())


def test_table_route_takes_the_options_of_the_stream_writing_that_table() -> None:
    """POST /delta/{table} writes Delta with the options of the stream targeting the table;
    a table route of another backend names that backend, whatever the streams say."""
    config = parse_config(
        {"streams": {"ev": {"target_table": "Events", "delta_options": {"partition_by": ["d"]}}}}
    )
    route = config.table_route("events", "delta")
    assert (route.table, route.backend, route.commit) == ("events", "delta", "request")
    assert route.delta.partition_by == ("d",)
    assert config.table_route("other", "delta").delta.partition_by == ()
    ev = config.table_route("ev", "duckdb")  # the stream "ev" writes Events: not this route
    assert (ev.stream, ev.table, ev.backend, ev.configured) == ("ev", "ev", "duckdb", False)


def test_delta_path_from_the_environment_and_flags(tmp_path: Path) -> None:
    """ARROWPORT_DELTA_PATH overrides the file's table_path; a flag override wins over both."""
    path = tmp_path / "c.yaml"
    path.write_text("delta_config: {table_path: from_file, enable_cdc: true}\n")
    env = {"ARROWPORT_DELTA_PATH": "from_env"}
    config = load_config(path, env=env)
    assert config.delta_config.table_path == "from_env"
    assert config.delta_config.enable_cdc is True  # the rest of the file's section stays
    flagged = load_config(path, env=env, overrides={"delta_config.table_path": "from_flag"})
    assert flagged.delta_config.table_path == "from_flag"


def test_ducklake_section_parses_with_its_retry_settings(tmp_path: Path) -> None:
    """The ducklake: section's catalog, maintenance and commit-retry settings are read."""
    config = parse_config(
        {
            "ducklake": {
                "catalog": "postgres:host=127.0.0.1 dbname=lake",
                "data_path": "s3://bucket/lake/",
                "merge_interval": 0,
                "max_retry_count": 20,
                "retry_wait_ms": 10,
                "retry_backoff": 2,
            }
        }
    )
    lake = config.ducklake
    assert lake.catalog == "postgres:host=127.0.0.1 dbname=lake"
    assert (lake.merge_interval, lake.cleanup_interval) == (0, 3600.0)
    assert (lake.max_retry_count, lake.retry_wait_ms, lake.retry_backoff) == (20, 10, 2.0)
    assert (parse_config({}).ducklake.retry_wait_ms, parse_config({}).ducklake.retry_backoff) == (
        100,
        1.5,
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"retry_wait_ms": -1}, "ducklake.retry_wait_ms"),
        ({"retry_wait_ms": "soon"}, "ducklake.retry_wait_ms"),
        ({"retry_backoff": 0.5}, "ducklake.retry_backoff: must be from 1"),
        (
            {"retry_backoff": 5},
            "ducklake.retry_backoff: must be from 1 (the same wait every retry) to 4",
        ),
        ({"retry_wait_ms": 60_001}, "ducklake.retry_wait_ms: must be at least 0 and 60000"),
        ({"max_retry_count": -2}, "ducklake.max_retry_count"),
        ({"catalog": ""}, "ducklake.catalog: expected a non-empty string"),
        ({"catalog": "ducklake:x.ducklake"}, "without the 'ducklake:' prefix"),
        ({"retry_wait": 5}, "ducklake.retry_wait: unknown key (did you mean 'retry_wait_ms'?)"),
    ],
)
def test_bad_ducklake_settings_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"ducklake": raw})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"streams": {"_arrowport_x": {}}}, "streams._arrowport_x: stream name '_arrowport_x' is"),
        (
            {"streams": {"s": {"target_table": "_ArrowPort_keys"}}},
            "streams.s.target_table: table name '_ArrowPort_keys' is reserved",
        ),
        (
            {"streams": {"s": {"storage_backend": "delta", "target_table": "_delta_log"}}},
            "streams.s.target_table: Delta table name '_delta_log' starts with '_'",
        ),
        (
            {"storage_backend": "delta", "streams": {"_s": {}}},
            "streams._s.target_table: Delta table name '_s' starts with '_'",
        ),
        (
            {"auth": {"tokens": [{"token": "t" * 32, "streams": ["ok", "_arrowport_keys"]}]}},
            "auth.tokens[0].streams: stream name '_arrowport_keys' is reserved",
        ),
    ],
)
def test_reserved_names_in_the_config_are_errors(raw: dict[str, object], message: str) -> None:
    """A stream or target_table named _arrowport* (any case), or a Delta table named _*,
    is a config error naming the key."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(raw)


def test_routes_refuse_reserved_and_delta_hidden_names() -> None:
    """route() and table_route() refuse _arrowport* for every backend and _* for Delta;
    a _ name is fine for DuckDB."""
    config = parse_config({"streams": {"d": {"storage_backend": "delta"}}})
    for call in (
        lambda: config.route("_ARROWPORT_ledger"),
        lambda: config.table_route("_arrowport_keys", "ducklake"),
        lambda: config.table_route("_delta_log", "delta"),
        lambda: parse_config({"storage_backend": "delta"}).route("_x"),
    ):
        with pytest.raises(InvalidNameError):
            call()
    assert config.route("_x").table == "_x"


def test_http2_section_is_parsed_and_bounded() -> None:
    """``http2`` keys parse (sizes, seconds, counts); out-of-range values name their key, and
    the largest stream count allowed still makes a valid HTTP/2 session."""
    from arrowport.protocol.h2session import H2Session

    conf = parse_config(
        {
            "http2": {
                "max_concurrent_streams": 256,
                "stream_idle_timeout": "5",
                "max_outbound_control_bytes": "1MiB",
            }
        }
    )
    assert conf.http2.max_concurrent_streams == 256
    assert conf.http2.stream_idle_timeout == 5.0
    assert conf.http2.max_outbound_control_bytes == 1024 * 1024
    assert H2Session(conf.http2).data_to_send()  # its SETTINGS and connection WINDOW_UPDATE
    for bad, key in (
        ({"max_concurrent_streams": 257}, "http2.max_concurrent_streams"),
        ({"max_concurrent_streams": 0}, "http2.max_concurrent_streams"),
        ({"flood_window": 0}, "http2.flood_window"),
        ({"nope": 1}, "http2.nope"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_config({"http2": bad})
