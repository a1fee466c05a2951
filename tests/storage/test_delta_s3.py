"""The Delta writer on an S3-compatible store (moto on 127.0.0.1): no server, real objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from s3_support import MotoS3

from arrowport.config import DeltaOptions
from arrowport.storage import DeltaStore, SchemaMismatchError, StorageError
from arrowport.storage import delta_maintenance as dtm
from arrowport.storage import delta_tables as dtb


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def store(s3: MotoS3) -> DeltaStore:
    s = DeltaStore(s3.root(), storage_options=s3.storage_options)
    s.open()
    return s


def _batches(n: int, rows: int = 10, start: int = 0) -> list[pa.RecordBatch]:
    return [
        pa.record_batch(
            {
                "a": pa.array(range(start + i * rows, start + (i + 1) * rows), pa.int64()),
                "b": pa.array([f"r{i}"] * rows),
            }
        )
        for i in range(n)
    ]


def _write(store: DeltaStore, table: str, batches: list[pa.RecordBatch], **kw: object) -> object:
    w = store.open_write(table, batches[0].schema, **kw)  # type: ignore[arg-type]
    for batch in batches:
        w.insert([batch])
    return w.finish()


def _table(store: DeltaStore, table: str, version: int | None = None) -> DeltaTable:
    return DeltaTable(
        f"{store.uri}/{table}", version=version, storage_options=store.storage_options
    )


def _parquet(s3: MotoS3, store: DeltaStore, table: str) -> list[str]:
    return [k for k in s3.keys(f"{store.uri}/{table}/") if k.endswith(".parquet")]


def _log(s3: MotoS3, store: DeltaStore, table: str) -> list[str]:
    return [k.rsplit("/", 1)[1] for k in s3.keys(f"{store.uri}/{table}/_delta_log/")]


def test_a_request_is_one_version_with_exactly_its_rows(s3: MotoS3, store: DeltaStore) -> None:
    """Each request lands as one commit on S3, with exactly its rows and its files."""
    first = _write(store, "events", _batches(3))
    second = _write(store, "events", _batches(2, start=100))
    assert (first.version, second.version) == (0, 1)  # type: ignore[attr-defined]
    assert _log(s3, store, "events") == [f"{v:020d}.json" for v in (0, 1)]
    got = _table(store, "events").to_pyarrow_table().sort_by("a")
    assert got.column("a").to_pylist() == [*range(30), *range(100, 120)]
    files = _table(store, "events").file_uris()
    assert sorted(u.rsplit("/", 1)[1] for u in files) == sorted(
        k.rsplit("/", 1)[1] for k in _parquet(s3, store, "events")
    )


def test_rollback_leaves_no_data_files_in_the_bucket(s3: MotoS3, store: DeltaStore) -> None:
    """Files a rolled-back request uploaded are deleted; the log does not move."""
    _write(store, "rb", _batches(1))
    before = _parquet(s3, store, "rb")
    options = DeltaOptions(target_file_size=1)  # a file per batch: several uploads
    w = store.open_write("rb", _batches(1)[0].schema, options=options)
    for batch in _batches(4, start=1000):
        w.insert([batch])
    assert len(_parquet(s3, store, "rb")) > len(before)  # the uploads happened
    w.rollback()
    assert _parquet(s3, store, "rb") == before
    assert _table(store, "rb").version() == 0
    assert store.statistics()["rollbacks"] == 1


def test_an_idempotency_key_replay_writes_nothing(s3: MotoS3, store: DeltaStore) -> None:
    """A request repeated with its key answers the original result and uploads nothing."""
    first = _write(store, "keyed", _batches(2), idempotency_key="k-1")
    files, log = _parquet(s3, store, "keyed"), _log(s3, store, "keyed")
    again = _write(store, "keyed", _batches(2), idempotency_key="k-1")
    assert again.replayed and again.version == first.version == 0  # type: ignore[attr-defined]
    assert again.rows == 20  # type: ignore[attr-defined]
    assert _parquet(s3, store, "keyed") == files
    assert _log(s3, store, "keyed") == log
    assert _table(store, "keyed").to_pyarrow_table().num_rows == 20


def test_a_schema_mismatch_is_refused_before_any_upload(s3: MotoS3, store: DeltaStore) -> None:
    """A stream whose column types differ from the table's is refused, nothing written."""
    _write(store, "typed", _batches(1))
    files = _parquet(s3, store, "typed")
    wrong = pa.schema([("a", pa.string()), ("b", pa.string())])
    with pytest.raises(SchemaMismatchError, match="a"):
        store.open_write("typed", wrong)
    assert _parquet(s3, store, "typed") == files
    assert _table(store, "typed").version() == 0


def test_time_travel_and_history_read_the_s3_log(store: DeltaStore) -> None:
    """Version 0 still reads as it was; history and describe come from the S3 log."""
    _write(store, "tt", _batches(1))
    _write(store, "tt", _batches(1, start=50))
    old = dtb.scan(store, "tt", version=0).read_all()
    assert sorted(old.column("a").to_pylist()) == list(range(10))
    assert dtb.scan(store, "TT").read_all().num_rows == 20  # names ignore case
    history = dtb.history(store, "tt")
    assert [h["version"] for h in history] == [1, 0]
    assert history[0]["metadata"]["arrowport.rows"] == 10
    info = dtb.describe(store, "tt")
    assert (info["path"], info["version"], info["rows"]) == (f"{store.uri}/tt", 1, 20)
    assert [t.name for t in store.list_tables()] == ["tt"]
    assert dtm.checkpoint(store, "tt") == 1


def test_s3_errors_name_their_cause(s3: MotoS3) -> None:
    """A missing bucket and an unreachable endpoint are StorageErrors saying so."""
    schema = _batches(1)[0].schema
    missing = DeltaStore("s3://no-such-bucket/x", storage_options=s3.storage_options)
    with pytest.raises(StorageError, match="bucket does not exist"):
        missing.open_write("t", schema)
    options = {**s3.storage_options, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    unreachable = DeltaStore("s3://arrowport-test/x", storage_options=options)
    with pytest.raises(StorageError, match="cannot be reached"):
        unreachable.open_write("t", schema)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("AWS_S3_LOCKING_PROVIDER", "dynamodb", "AWS_S3_LOCKING_PROVIDER"),
        ("conditional_put", "disabled", "conditional_put: disabled"),
    ],
)
def test_options_that_cannot_commit_safely_are_refused(
    s3: MotoS3, option: str, value: str, message: str
) -> None:
    """Options that would give up conditional-put commits are refused at open, by name."""
    store = DeltaStore(s3.root(), storage_options={**s3.storage_options, option: value})
    with pytest.raises(StorageError, match=message):
        store.open()
    with pytest.raises(StorageError, match=message):
        store.open_write("t", _batches(1)[0].schema)


def test_the_local_root_is_unchanged(tmp_path: Path) -> None:
    """A plain directory still resolves to a local path and writes there."""
    store = DeltaStore(tmp_path / "lake")
    store.open()
    assert store.root == (tmp_path / "lake").resolve() and store.storage_options is None
    _write(store, "t", _batches(1))
    assert (tmp_path / "lake" / "t" / "_delta_log" / f"{0:020d}.json").exists()
