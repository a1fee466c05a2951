"""An S3-compatible store for tests: moto's server on 127.0.0.1, in a subprocess.

``MotoS3().start()`` runs ``python tests/s3_support.py`` (moto's WSGI app under
werkzeug, threaded, on a free port), creates a bucket, and gives the
``storage_options`` delta-rs and Arrowport take; ``stop()`` ends it. Nothing
here talks to real AWS: every client is pointed at the local endpoint and the
EC2 metadata lookup is disabled.

``outage()`` makes the store fail every request (or those of some methods)
with an S3 error until it ends, keeping the objects: moto keeps them only in
the server's memory, so stopping and restarting it would lose them.

moto checks ``If-None-Match: *`` on PutObject, but the check and the write are
two steps; real S3 makes them one. The server therefore runs conditional PUTs
one at a time, so the store is as atomic as S3 is (``honour_conditional_put=False``
drops the header instead: a store that ignores it, for showing what is lost).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NO_AWS_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")  # never ask EC2 for credentials
OUTAGE_PATH = "/__arrowport_outage__"  # the test's switch, answered before moto sees it
OUTAGE_ERRORS = {503: "ServiceUnavailable", 403: "AccessDenied"}


class MotoS3:
    """moto's S3 on 127.0.0.1 with one bucket."""

    def __init__(self, bucket: str = "arrowport-test", *, honour_conditional_put: bool = True):
        self.bucket = bucket
        self.honour = honour_conditional_put
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 30.0) -> MotoS3:
        mode = "honour" if self.honour else "ignore"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **NO_AWS_ENV},
        )
        assert self.proc.stdout is not None
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not ready or not ready[0].strip().isdigit():
            self.stop()
            raise RuntimeError("moto server did not start")
        self.endpoint = f"http://127.0.0.1:{int(ready[0])}"
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @contextmanager
    def outage(self, methods: str = "*", status: int = 503) -> Iterator[None]:
        """Answer every request (``methods``: only these, e.g. ``"PUT,DELETE"``) with
        an S3 error (503 ServiceUnavailable, or 403 AccessDenied) until the block ends."""
        self._switch(methods, status)
        try:
            yield
        finally:
            self._switch("", status)

    def _switch(self, methods: str, status: int) -> None:
        query = urllib.parse.urlencode({"methods": methods, "status": status})
        with urllib.request.urlopen(f"{self.endpoint}{OUTAGE_PATH}?{query}", timeout=10):
            pass

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def storage_options(self) -> dict[str, str]:
        """delta-rs / Arrowport ``storage_options`` for this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

    def root(self, name: str | None = None) -> str:
        """A fresh ``s3://bucket/prefix`` (each test its own prefix)."""
        return f"s3://{self.bucket}/{name or uuid.uuid4().hex[:12]}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (``s3://bucket/...`` or a bare key prefix)."""
        if prefix.startswith("s3://"):
            prefix = prefix.split("/", 3)[3] if prefix.count("/") >= 3 else ""
        client, keys, token = self.client(), [], None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **extra)
            keys += [item["Key"] for item in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return sorted(keys)


def _serve(mode: str) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    conditional = threading.Lock()
    outage: dict[str, Any] = {"methods": set(), "status": 503}

    def serialized(environ: dict[str, Any], start_response: Any) -> Any:
        if environ["PATH_INFO"] == OUTAGE_PATH:
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            outage["methods"] = set(query.get("methods", [""])[0].split(",")) - {""}
            outage["status"] = int(query.get("status", ["503"])[0])
            start_response("204 No Content", [])
            return [b""]
        methods = outage["methods"]
        if "*" in methods or environ["REQUEST_METHOD"] in methods:
            code = OUTAGE_ERRORS[outage["status"]]
            body = f"<Error><Code>{code}</Code><Message>outage (test)</Message></Error>".encode()
            reason = "Service Unavailable" if outage["status"] == 503 else "Forbidden"
            headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
            start_response(f"{outage['status']} {reason}", headers)
            return [body]
        if environ["REQUEST_METHOD"] == "PUT" and environ.get("HTTP_IF_NONE_MATCH"):
            if mode == "ignore":
                del environ["HTTP_IF_NONE_MATCH"]
            else:
                with conditional:  # check and write as one step, as S3 does
                    return list(app(environ, start_response))
        return app(environ, start_response)

    server = make_server(
        "127.0.0.1", 0, serialized, threaded=True, request_handler=MotoRequestHandler
    )
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _serve(sys.argv[1] if len(sys.argv) > 1 else "honour")
