"""Credentials never reach logs, answers or ``arrowport config``."""

from __future__ import annotations

import pytest

from arrowport.redact import REDACTED, conninfo_secrets, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'at "dbname=lake host=db password=s3cret-pw": refused',
            f'at "dbname=lake host=db password={REDACTED}": refused',
        ),
        ("password = 's3cret pw' host=db", f"password = {REDACTED} host=db"),
        (r"password='it\'s s3cret' host=db", f"password={REDACTED} host=db"),
        ("PASSWORD=s3cret-pw", f"PASSWORD={REDACTED}"),
        (
            "postgresql://lake:s3cret-pw@db:5432/lake?sslmode=require",
            f"postgresql://lake:{REDACTED}@db:5432/lake?sslmode=require",
        ),
        (
            "postgresql://db/lake?password=s3cret-pw&x=1",
            f"postgresql://db/lake?password={REDACTED}&x=1",
        ),
        ("dbname=lake host=db", "dbname=lake host=db"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
    ],
)
def test_redact_hides_passwords(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert "s3cret" not in redact(text)


def test_redact_hides_literal_secrets_in_any_form() -> None:
    secret = "AKIA/very+secret=="
    text = f"refused: SECRET value {secret} was wrong ({secret!r})"
    assert secret not in redact(text, [secret])
    assert redact("short ab", ["ab"]) == "short ab"  # too short to hide safely


@pytest.mark.parametrize(
    ("conninfo", "secrets"),
    [
        ("dbname=lake password=s3cret", ["s3cret"]),
        (r"dbname=lake password='a b\'c'", ["a b'c"]),
        ("postgresql://u:s3cret@db/lake", ["s3cret"]),
        ("dbname=lake host=db", []),
    ],
)
def test_conninfo_secrets(conninfo: str, secrets: list[str]) -> None:
    assert conninfo_secrets(conninfo) == secrets
