"""Where a ``DeltaStore``'s tables live: a local directory or ``s3://bucket/prefix``.

Invariants:

* One abstraction for both: ``fs`` is a ``pyarrow.fs`` filesystem (local, or
  S3 built from the same ``storage_options`` delta-rs gets), and every path
  handed to it is an ``fs`` path (absolute local path, or ``bucket/key``).
  delta-rs gets ``uri(...)`` and ``storage_options`` (None when local).
* A local root behaves exactly as before: ``Path.resolve`` and the store's
  symlink checks; nothing here talks to the network for it.
* Commit safety on S3 (delta-rs 1.6.6): a version is committed by a
  ``PUT _delta_log/<v>.json`` with ``If-None-Match: *``; a writer that loses
  the race gets 412 and retries at the next version. That is safe only if the
  store honours the header (AWS S3 does, since 2024). ``check_options``
  refuses options that do not give that: the DynamoDB locking provider (which
  delta-rs 1.6.6 ignores, so writers relying on it would not be excluded) and
  ``conditional_put: disabled``. (``DeltaWrite`` also checks that its commit
  is in the log afterwards, which catches some overwrites by a store that
  ignores the header; it is a safety net, not a guarantee.)
* Object-store failures become ``StorageError`` naming the cause (store
  unreachable, bucket missing, credentials refused), never a Rust backtrace.
  No credential reaches an error or a log line: ``describe_error`` masks
  access key ids and the signature details some S3 error bodies echo, and a
  ``table_path`` with credentials in it is refused without being repeated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from ..redact import redact
from .errors import StorageError

log = logging.getLogger("arrowport.storage")

UNSAFE_OPTION = "AWS_S3_ALLOW_UNSAFE_RENAME"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRUE = {"1", "true", "yes", "on"}


def _key(name: str) -> str:
    """An object_store option name normalised: lower case, without ``aws_``."""
    key = name.lower()
    return key[4:] if key.startswith("aws_") else key


def describe_error(exc: BaseException, where: str = "") -> str:
    """One line saying what went wrong talking to the object store.

    delta-rs nests causes over several ANSI-coloured lines; they are joined,
    and common causes named first.
    """
    text = redact(
        " ".join(
            part.strip(" ↳") for part in _ANSI.sub("", str(exc)).splitlines() if part.strip(" ↳")
        )
    )
    lower = text.lower()
    cause = ""
    missing = ("nosuchbucket", "no_such_bucket", "bucket does not exist")
    if any(s in lower for s in missing) or (
        "404 not found" in lower and ("list" in lower or "multipart" in lower)
    ):
        cause = "the bucket does not exist"
    elif re.search(r"\b403\b", lower) or any(  # \b: not the digits of a file's uuid
        s in lower
        for s in (
            "accessdenied",
            "access denied",
            "access_denied",
            "invalidaccesskeyid",
            "signature",
        )
    ):
        cause = "the object store refused the credentials (403)"
    elif re.search(r"\b503\b", lower) or any(
        s in lower
        for s in ("serviceunavailable", "service unavailable", "service_unavailable", "slowdown")
    ):
        cause = "the object store is unavailable (503)"
    elif any(
        s in lower
        for s in ("error sending request", "connect", "network_connection", "dns", "timed out")
    ):
        cause = "the object store cannot be reached"
    text = text if len(text) <= 400 else text[:397] + "..."
    prefix = f"{where}: " if where else ""
    return f"{prefix}{cause}: {text}" if cause else f"{prefix}{text}"


class DeltaLocation:
    """The root of the Delta tables and the filesystem that holds it."""

    def __init__(self, root: str | os.PathLike[str], storage_options: Any = None) -> None:
        text = os.fspath(root)
        parsed = urlparse(text) if isinstance(text, str) else None
        self.options: dict[str, str] = {str(k): str(v) for k, v in (storage_options or {}).items()}
        if parsed is not None and parsed.scheme == "s3":
            if "@" in parsed.netloc:  # not repeated: it would show the credentials
                raise StorageError(
                    "Delta table_path: an s3:// URI cannot hold credentials; give them in "
                    "delta_config.storage_options or the AWS_* environment"
                )
            if not parsed.netloc:
                raise StorageError(f"Delta table_path {text!r} names no bucket")
            self.local: Path | None = None
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
            self.base = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
            self._fs: pafs.FileSystem | None = None
        elif parsed is not None and len(parsed.scheme) > 1 and parsed.scheme != "file":
            raise StorageError(
                f"Delta table_path {text!r}: only local directories and s3://bucket/prefix "
                "are supported"
            )
        else:
            if parsed is not None and parsed.scheme == "file":
                text = parsed.path
            self.local = Path(text).resolve()
            self.bucket = self.prefix = ""
            self.uri = self.base = str(self.local)
            self._fs = pafs.LocalFileSystem()
        self.checked = self.local is not None  # S3: the concurrency check passed

    # -- names and paths ---------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.local is not None

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What delta-rs is given (None for a local root: its defaults)."""
        return None if self.local is not None else dict(self.options)

    def option(self, name: str) -> str | None:
        """A storage option by any spelling (``AWS_REGION``, ``aws_region``, ``region``)."""
        want = _key(name)
        for key, value in self.options.items():
            if _key(key) == want:
                return value
        return None

    def table_uri(self, table: str) -> str:
        """What delta-rs opens for ``table`` (a directory name under the root)."""
        return f"{self.uri}/{table}"

    def fs_path(self, uri: str, *parts: str) -> str:
        """The ``fs`` path of ``uri`` (a table URI from ``table_uri``) joined with ``parts``."""
        base = uri[len("s3://") :] if uri.startswith("s3://") else uri
        return "/".join([base.rstrip("/"), *parts])

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs = self._s3()
        return self._fs

    def _s3(self) -> pafs.FileSystem:
        """An ``S3FileSystem`` from the delta-rs options (else the ``AWS_*`` environment)."""
        endpoint = self.option("endpoint_url") or self.option("endpoint")
        endpoint = (
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        kwargs: dict[str, Any] = {"connect_timeout": 10, "request_timeout": 60}
        if endpoint:
            url = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = url.netloc + url.path.rstrip("/")
            kwargs["scheme"] = url.scheme or "https"
        region = self.option("region") or self.option("default_region")
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        elif endpoint:
            kwargs["region"] = "us-east-1"  # S3-compatible stores: as object_store defaults
        key, secret = self.option("access_key_id"), self.option("secret_access_key")
        if key and secret:
            kwargs.update(access_key=key, secret_key=secret)
            token = self.option("session_token") or self.option("token")
            if token:
                kwargs["session_token"] = token
        if (self.option("virtual_hosted_style_request") or "").lower() in _TRUE:
            kwargs["force_virtual_addressing"] = True
        try:
            return pafs.S3FileSystem(**kwargs)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StorageError(f"cannot set up S3 access for {self.uri}: {exc}") from None

    # -- listing and reading ---------------------------------------------------

    def list_dirs(self) -> list[str]:
        """Names of the directories (S3: common prefixes) directly under the root."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except (OSError, pa.ArrowException) as exc:
            where = f"cannot list the Delta root {self.uri!r}"
            raise StorageError(describe_error(exc, where)) from None
        return [i.base_name for i in infos if i.type == pafs.FileType.Directory]

    def exists(self, path: str) -> bool:
        return bool(self.fs.get_file_info(path).type != pafs.FileType.NotFound)

    def read_log(self, uri: str, version: int) -> tuple[str, int] | None:
        """(text, modification time in ms) of commit ``version`` of the table at ``uri``,
        or None if that log file does not exist (log cleanup, or not yet written)."""
        path = self.fs_path(uri, "_delta_log", f"{version:020d}.json")
        if self.local is not None:
            try:
                with open(path, encoding="utf-8") as log_file:
                    return log_file.read(), int(os.fstat(log_file.fileno()).st_mtime * 1000)
            except FileNotFoundError:
                return None
        try:
            with self.fs.open_input_file(path) as f:
                data = f.read()
            info = self.fs.get_file_info(path)
        except FileNotFoundError:
            return None
        mtime = info.mtime.timestamp() if info.mtime is not None else 0
        return data.decode("utf-8"), int(mtime * 1000)

    def log_stamp(self, uri: str) -> int | None:
        """A stamp that changes when the table's log does (local: the directory's
        mtime); None where there is none to read cheaply (S3)."""
        if self.local is None:
            return None
        try:
            return os.stat(self.fs_path(uri, "_delta_log")).st_mtime_ns
        except OSError:
            return 0

    def delete(self, path: str) -> None:
        """Delete a file; a missing one is no error."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    # -- S3 commit safety ------------------------------------------------------

    def check_options(self) -> None:
        """Refuse option sets that cannot commit safely (``StorageError``)."""
        if self.local is not None:
            return
        if self.option("s3_locking_provider") is not None:
            raise StorageError(
                "delta_config.storage_options sets AWS_S3_LOCKING_PROVIDER, but delta-rs "
                "1.6.6 no longer has the DynamoDB locking provider and would ignore it "
                "(so writers using DynamoDB locking, e.g. Spark's S3DynamoDBLogStore, would "
                "not be excluded). Remove it: commits use S3 conditional put "
                "(If-None-Match), which Arrowport checks the store honours"
            )
        if (self.option("conditional_put") or "").lower() == "disabled":
            raise StorageError(
                "delta_config.storage_options sets conditional_put: disabled; delta-rs "
                "commits to S3 with a conditional put (If-None-Match) and cannot commit "
                "without it. Remove the option"
            )

    def check_concurrency(self) -> None:
        """Check once that the options commit safely; warn about the unsafe opt-out."""
        if self.checked:
            return
        self.check_options()
        if (self.option(UNSAFE_OPTION) or "").lower() in _TRUE:
            log.warning(
                "%s=true is set for %s: it is unsafe with concurrent writers in "
                "general (delta-rs 1.6.6 still commits with If-None-Match, but Arrowport "
                "does not rely on the option)",
                UNSAFE_OPTION,
                self.uri,
            )
        self.checked = True
