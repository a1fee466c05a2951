"""The Delta writer on an S3-compatible store (moto on 127.0.0.1): no server, real objects."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from s3_support import MotoS3

from arrowport.config import DeltaOptions
from arrowport.io.status import http_status
from arrowport.storage import DeltaStore, SchemaMismatchError, StorageError
from arrowport.storage import delta_maintenance as dtm
from arrowport.storage import delta_tables as dtb
from arrowport.storage.delta_location import describe_error


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


KEY_ID, SECRET = "canary-key-id", "canary-secret-value"  # moto takes any credentials


def _canary_store(s3: MotoS3) -> DeltaStore:
    options = {**s3.storage_options, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
    store = DeltaStore(s3.root(), storage_options=options)
    store.open()
    return store


def _start_write(s3: MotoS3, store: DeltaStore, table: str) -> tuple[object, list[str]]:
    """Version 0 with 10 rows, then a write whose 3 files are uploaded, not committed."""
    _write(store, table, _batches(1))
    options = DeltaOptions(target_file_size=1)  # each batch closes (uploads) its file
    w = store.open_write(table, _batches(1)[0].schema, options=options)
    before = set(_parquet(s3, store, table))
    for batch in _batches(3, start=1000):
        w.insert([batch])
    uploaded = sorted(set(_parquet(s3, store, table)) - before)
    assert len(uploaded) == 3
    return w, uploaded


def _assert_untouched(s3: MotoS3, store: DeltaStore, table: str, orphans: list[str]) -> None:
    """Version 0 and its rows only; ``orphans`` are in no version, and ``vacuum --full``
    (not the plain one) removes exactly them."""
    dt = _table(store, table)
    assert dt.version() == 0 and _log(s3, store, table) == [f"{0:020d}.json"]
    assert sorted(dt.to_pyarrow_table().column("a").to_pylist()) == list(range(10))
    names = {k.rsplit("/", 1)[1] for k in orphans}
    assert names.isdisjoint(u.rsplit("/", 1)[1] for u in dt.file_uris())
    assert set(orphans) <= set(_parquet(s3, store, table))
    assert dtm.vacuum(store, table, retention_hours=0, dry_run=True) == []  # plain: not these
    removed = dtm.vacuum(store, table, retention_hours=0, dry_run=False, full=True)
    assert {r.rsplit("/", 1)[-1] for r in removed} == names
    assert not set(orphans) & set(_parquet(s3, store, table))
    assert _table(store, table).to_pyarrow_table().num_rows == 10


@pytest.mark.parametrize(
    ("methods", "status", "error"),
    [
        ("*", 503, r"cannot look up table 'down'.*unavailable \(503\)"),  # the store is down
        ("PUT,DELETE", 403, r"Delta write failed.*\(403\).*_delta_log/0+1\.json"),  # writes
    ],
    ids=["store-down", "writes-refused"],
)
def test_a_rollback_in_an_outage_keeps_the_original_error(
    s3: MotoS3, caplog: pytest.LogCaptureFixture, methods: str, status: int, error: str
) -> None:
    """The commit fails, and so do the deletes of the rollback: the client gets the
    commit's StorageError (503), a warning names the orphans, and once the store is
    back the table is as before and ``vacuum --full`` removes them."""
    store = _canary_store(s3)
    w, uploaded = _start_write(s3, store, "down")
    with caplog.at_level(logging.WARNING, logger="arrowport.storage"):
        with s3.outage(methods, status), pytest.raises(StorageError, match=error) as raised:
            w.finish()  # type: ignore[attr-defined]
        w.rollback()  # type: ignore[attr-defined]  # as the server does afterwards: a no-op
    assert http_status(raised.value) == 503
    assert "delet" not in str(raised.value).lower()  # not the cleanup's error
    [warning] = [r for r in caplog.records if r.name == "arrowport.storage"]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert "could not delete 3 uncommitted data file(s)" in message
    assert uploaded[0].rsplit("/", 1)[1] in message  # names them
    assert "Cause: the object store" in message and "vacuum down --full" in message
    for text in (str(raised.value), caplog.text):
        assert SECRET not in text and KEY_ID not in text
    assert store.statistics()["rollbacks"] == 1
    _assert_untouched(s3, store, "down", uploaded)


def test_a_commit_whose_outcome_cannot_be_read_keeps_its_files(
    s3: MotoS3, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit fails and the log cannot be read back: it may have landed, so its
    files are kept (never deleted from under a commit) and the commit's error raised."""
    store = _canary_store(s3)
    w, uploaded = _start_write(s3, store, "unsure")

    def unreadable(*args: object) -> None:
        raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation")

    monkeypatch.setattr(store.location, "read_log", unreadable)
    with (
        caplog.at_level(logging.WARNING, logger="arrowport.storage"),
        s3.outage("PUT", 403),
        pytest.raises(StorageError, match="Delta write failed"),
    ):
        w.finish()  # type: ignore[attr-defined]
    monkeypatch.undo()
    [warning] = [r for r in caplog.records if r.name == "arrowport.storage"]
    message = warning.getMessage()
    assert "cannot be read to tell whether it landed" in message
    assert "3 data file(s)" in message and "NETWORK_CONNECTION" in message
    assert SECRET not in caplog.text and KEY_ID not in caplog.text
    assert set(uploaded) <= set(_parquet(s3, store, "unsure"))  # no delete was tried
    _assert_untouched(s3, store, "unsure", uploaded)


def test_errors_do_not_repeat_credentials() -> None:
    """What an S3 error body may echo of the request's credentials is masked, and a
    table_path holding credentials is refused without repeating it."""
    body = (
        "Client error with status 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code>"
        "<AWSAccessKeyId>AKIAIOSFODNN7EXAMPLE</AWSAccessKeyId><StringToSign>AWS4-HMAC-SHA256"
        "</StringToSign><SignatureProvided>abc123</SignatureProvided></Error> "
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=ASIAIOSFODNN7EXAMPLE%2F2026&x=1"
    )
    text = describe_error(OSError(body), "Delta write failed")
    assert text.startswith("Delta write failed: the object store refused the credentials")
    for secret in ("IOSFODNN7EXAMPLE", "abc123", "AWS4-HMAC"):
        assert secret not in text
    with pytest.raises(StorageError) as raised:
        DeltaStore("s3://AKIAKEY:hunter2@bucket/x")
    assert "hunter2" not in str(raised.value) and "AKIAKEY" not in str(raised.value)


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
