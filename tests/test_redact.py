"""Credentials never reach logs, answers or ``arrowport config``."""

from __future__ import annotations

import pytest

from arrowport.redact import REDACTED, conninfo_secrets, public_detail, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'at "dbname=lake host=db password=s3cret-pw": refused',
            f'at "dbname=lake host=db password={REDACTED} refused',  # to the whitespace
        ),
        ("password = 's3cret pw' host=db", f"password = {REDACTED} host=db"),
        (r"password='it\'s s3cret' host=db", f"password={REDACTED} host=db"),
        ("PASSWORD=s3cret-pw", f"PASSWORD={REDACTED}"),
        (
            "postgresql://lake:s3cret-pw@db:5432/lake?sslmode=require",
            f"postgresql://lake:{REDACTED}@db:5432/lake?sslmode=require",
        ),
        (
            # the value runs to the next whitespace: the parameters after it go too
            "postgresql://db/lake?password=s3cret-pw&x=1 refused",
            f"postgresql://db/lake?password={REDACTED} refused",
        ),
        # libpq ends an unquoted value only at whitespace
        ("password=s3cret,pw;x) host=db", f"password={REDACTED} host=db"),
        ('password="s3cret pw" host=db', f"password={REDACTED} host=db"),
        ('{"password": "s3cret pw", "user": "u"}', f'{{"password": {REDACTED}, "user": "u"}}'),
        ("PGPASSWORD=s3cret-pw psql", f"PGPASSWORD={REDACTED} psql"),
        ("Password: s3cret-pw", f"Password: {REDACTED}"),
        ("AWS_SECRET_ACCESS_KEY=s3cret/key+x", f"AWS_SECRET_ACCESS_KEY={REDACTED}"),
        ("postgresql://u:s3cret%40pw@db/lake", f"postgresql://u:{REDACTED}@db/lake"),
    ],
)
def test_redact_hides_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "s3cret" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "dbname=lake host=db",
        "s3://bucket/prefix",
        "the secret = value of life",  # prose: no credential key
        "passwords are hidden; set a password in ~/.pgpass",
        "cannot attach DuckLake catalog 'postgres:dbname=lake host=db'",
    ],
)
def test_redact_leaves_other_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_hides_literal_secrets_in_any_form() -> None:
    secret = "AKIA/very+secret=="
    text = f"refused: SECRET value {secret} was wrong ({secret!r})"
    assert secret not in redact(text, [secret])
    assert redact("short ab", ["ab"]) == "short ab"  # too short to hide safely
    # whole tokens only: a password "lake" does not eat "ducklake"
    assert redact("ducklake:postgres password lake", ["lake"]) == (
        f"ducklake:postgres password {REDACTED}"
    )


@pytest.mark.parametrize(
    ("conninfo", "secrets"),
    [
        ("dbname=lake password=s3cret", ["s3cret"]),
        (r"dbname=lake password='a b\'c'", ["a b'c"]),
        ("postgresql://u:s3cret@db/lake", ["s3cret"]),
        ("postgresql://u:s3%40cret@db/lake", ["s3%40cret", "s3@cret"]),
        ("postgresql://db/lake?sslmode=require&password=s3cret", ["s3cret"]),
        ("dbname=lake host=db", []),
    ],
)
def test_conninfo_secrets(conninfo: str, secrets: list[str]) -> None:
    assert conninfo_secrets(conninfo) == secrets


def test_remembered_secrets_are_hidden_in_log_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """The server remembers its config's credentials; every log line is redacted."""
    import logging

    from arrowport import logs
    from arrowport import redact as redact_module

    redact_module.remember(["remembered-s3cret"])
    for fmt in logs.FORMATS:
        logs.configure("info", fmt)
        try:
            raise OSError('at "host=db password=other-s3cret": remembered-s3cret refused')
        except OSError:
            logging.getLogger("arrowport.test").exception("failed: remembered-s3cret")
        err = capfd.readouterr().err
        assert "failed" in err and "refused" in err
        assert "s3cret" not in err, err
    logging.getLogger().handlers.clear()


def _internal_error_text() -> str:
    """A real DuckDB INTERNAL error: several lines, a C++ stack trace with install paths."""
    import duckdb
    import pyarrow as pa

    inner = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), pa.array(["a", "b"]))
    column = pa.StructArray.from_arrays([inner], ["s"])
    outer = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), column)
    with duckdb.connect() as con:  # in memory: invalidating it harms nothing
        con.register("bad", pa.table({"c": outer}))
        try:
            con.execute("SELECT * FROM bad").fetchall()
        except duckdb.Error as exc:
            return str(exc)
    raise AssertionError("DuckDB accepted the nested dictionary: find another INTERNAL error")


def test_public_detail_is_one_line_without_stack_trace_or_paths() -> None:
    """An engine's multi-line message with a stack trace and paths becomes its first line, bare."""
    text = "DuckDB error: " + _internal_error_text()
    assert "Stack Trace" in text and "site-packages" in text and "\n" in text
    shown = public_detail(text)
    assert shown.startswith("DuckDB error: INTERNAL Error:")
    assert "\n" not in shown and "Stack" not in shown and "site-packages" not in shown
    io = 'IO Error: Cannot write to "/srv/lake/main/t" - it exists; see /opt/x/lib.so and s3://b/k'
    assert (
        public_detail(io) == 'IO Error: Cannot write to "<path>" - it exists; see <path> and <path>'
    )
    kept = (
        "10 rows/s and/or N/A: send application/vnd.apache.arrow.stream, see https://duckdb.org/x"
    )
    assert public_detail(kept) == kept
    assert public_detail("POST /ingest/{stream}\nmore", paths=False) == "POST /ingest/{stream}"
    assert public_detail("password=hunter22 at /etc/x") == "password=<redacted> at <path>"
