"""``arrowport streams`` and ``arrowport config check``: what a server and a config say.

Invariants:

* ``streams`` asks a running server (``GET /streams``) and falls back to the
  config alone only when nothing answers at the URL; the output always says
  which. A server that answers with an error (a 401, say) is an error, never a
  silent fallback.
* Tokens, passwords and storage secrets are never printed: ``config check``
  shows ``<redacted>`` instead.
* Exit codes: 0 done; 1 the server answered with an error, or not as an
  Arrowport server; 2 bad usage or config. Errors are one line on stderr.
* HTTP is the standard library's (urllib) with proxies ignored: the server is
  usually on this machine, and ``$http_proxy`` must not reroute 127.0.0.1.
* This module never imports ``cli``; the server modules are imported only on
  the paths that need them, so ``arrowport --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_delta import ConfigOption, JsonOption, _fail, _print, _print_json, _rich_table
from .config import ENV_CONFIG_PATH, ENV_OVERRIDES, ENV_TOKEN, Config, ConfigError, load_config
from .redact import REDACTED, SECRET_WORDS, conninfo_secrets, redact

COUNTERS = ("rows", "batches", "bytes", "decoded_bytes", "requests", "failed_requests")


class NoAnswer(Exception):
    """Nothing answered at the URL (refused, unreachable, timed out): use the config."""


class BadAnswer(Exception):
    """Something answered, but with an error or not as an Arrowport server: exit 1."""


# -- arrowport streams -------------------------------------------------------------


def streams_command(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Server to ask, http(s)://HOST:PORT (default: the config's host and port, "
            "i.e. http://127.0.0.1:8888 unless the config or ARROWPORT_HOST/ARROWPORT_PORT "
            "say otherwise; https when the config sets tls).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=ENV_TOKEN,
            show_envvar=True,
            show_default=False,
            help="Bearer token, needed when the server has auth on.",
        ),
    ] = None,
    cafile: Annotated[
        Path | None,
        typer.Option(
            "--cafile",
            help="PEM certificates to trust for an https URL (default: the system's, plus "
            "the config's tls.certfile, so a self-signed server certificate works).",
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for the server to answer.")
    ] = 5.0,
    as_json: JsonOption = False,
) -> None:
    """List the streams: route, backend, commit mode, compression and counters.

    Live from a running server (GET /streams: configured streams, and other
    names it has received); when no server answers at the URL, from the config
    alone, without counters. The first line says which.

    Exit codes: 0 listed (live, or from the config when no server answered);
    1 the server answered with an error (e.g. 401 without a valid token) or is
    not an Arrowport server; 2 bad --url, --cafile or config.
    """
    loaded: Config | None = None
    if url is None or config is not None:
        loaded = _load_or_exit(config)
    base = _check_url(url if url is not None else default_url(_need(loaded)))
    context = _tls_context(cafile, loaded) if base.startswith("https:") else None
    try:
        report = fetch_report(base, token=token, context=context, timeout=timeout)
    except BadAnswer as exc:
        _fail(str(exc), 1)
    except NoAnswer as exc:
        loaded = loaded or _load_or_exit(None)
        report = config_report(loaded, base, str(exc))
    if as_json:
        _print_json(report)
    else:
        _print_report(report)


def default_url(config: Config) -> str:
    """Where a server started with ``config`` listens, as seen from this machine."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if config.tls.enabled else 'http'}://{host}:{config.port}"


def fetch_report(
    base: str, *, token: str | None, context: ssl.SSLContext | None, timeout: float
) -> dict[str, Any]:
    """``GET {base}/streams``, with ``source: live`` and ``url`` added."""
    import http.client

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(f"{base}/streams", headers=headers)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise BadAnswer(_http_error(base, exc, token)) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            hint = ""
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                hint = "; pass --cafile with the server's certificate"
            elif "WRONG_VERSION_NUMBER" in str(exc.reason).upper():
                hint = "; is it serving plain http?"
            raise BadAnswer(f"TLS with {base} failed: {_reason(exc.reason)}{hint}") from None
        raise NoAnswer(_reason(exc.reason)) from None
    except TimeoutError:
        raise NoAnswer("timed out") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        hint = "; is it serving https?" if base.startswith("http:") else ""
        raise BadAnswer(f"{base} did not answer HTTP ({_reason(exc)}){hint}") from None
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    if not isinstance(report, dict) or not isinstance(report.get("streams"), list):
        raise BadAnswer(f"{base}/streams did not answer an Arrowport streams report")
    return {"source": "live", "url": base, **report}


def config_report(config: Config, base: str, reason: str) -> dict[str, Any]:
    """The configured streams without counters, in the shape of ``fetch_report``'s."""
    from .io.state import describe_stream

    empty: dict[str, Any] = dict.fromkeys((*COUNTERS, "last_ingest"))
    return {
        "source": "config",
        "url": base,
        "unreachable": reason,
        "streams": [{**describe_stream(config, name), **empty} for name in sorted(config.streams)],
        "refusals": None,
        "in_flight": None,
        "config_source": config.source,
    }


def _print_report(report: Mapping[str, Any]) -> None:
    live = report["source"] == "live"
    where = report["config_source"] or "built-in defaults"
    if live:
        typer.echo(f"live from {report['url']} (server config: {where})")
    else:
        typer.echo(
            f"from config {where}; no server answered at {report['url']}: "
            f"counters unavailable ({report['unreachable']})"
        )
    entries = report["streams"]
    if not entries:
        typer.echo("no streams yet: none configured" + (" and none received" if live else ""))
        return
    columns = ["stream", "table", "backend", "commit", "compression"]
    if live:
        columns += ["rows", "bytes", "requests ok", "failed", "last ingest (UTC)"]
    table = _rich_table("", *columns)
    for column in table.columns[5:]:
        column.no_wrap = True
        column.justify = "left" if column.header == columns[-1] else "right"
    for e in entries:
        row = [
            e["name"] + ("" if e.get("configured", True) else " *"),
            str(e["table"]),
            str(e["backend"]),
            str(e["commit"]),
            _compression(e["compression"]),
        ]
        if live:
            requests, failed = int(e["requests"]), int(e["failed_requests"])
            last = e.get("last_ingest")
            row += [
                f"{int(e['rows']):,}",
                f"{int(e['bytes']):,}",
                f"{requests - failed:,}",
                f"{failed:,}",
                str(last)[:19].replace("T", " ") if last else "-",
            ]
        table.add_row(*row)
    if any(not e.get("configured", True) for e in entries):
        table.caption = "* not in the config: routed to a table of its own name"
        table.caption_justify = "left"
    _print(table)
    if live:
        refusals = report.get("refusals") or {}
        refused = ", ".join(f"{k} {v:,}" for k, v in sorted(refusals.items())) or "none"
        typer.echo(f"in flight: {report.get('in_flight', 0)}; refused requests: {refused}")


def _compression(value: object) -> str:
    if not isinstance(value, Mapping):
        return str(value)
    algorithm, level = value.get("algorithm"), value.get("level")
    return f"{algorithm}" if level is None or algorithm == "none" else f"{algorithm}:{level}"


def _http_error(base: str, exc: urllib.error.HTTPError, token: str | None) -> str:
    error, detail = "", str(exc.reason)
    try:
        payload = json.loads(exc.read())
        error, detail = str(payload.get("error", "")), str(payload.get("detail", detail))
    except Exception:  # not our JSON: keep the status line
        pass
    message = f"{base} answered {exc.code}{f' {error}' if error else ''}: {detail}"
    if exc.code == 401:
        message += (
            "; the token given was not accepted" if token else f"; pass --token or set {ENV_TOKEN}"
        )
    return message


def _reason(reason: object) -> str:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return str(reason.verify_message or reason)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def _tls_context(cafile: Path | None, config: Config | None) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=None if cafile is None else str(cafile))
    except (OSError, ssl.SSLError) as exc:
        _fail(f"--cafile {cafile}: {_reason(exc)}", 2)
    # A self-signed server certificate, trusted directly, is a chain of one.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if cafile is None and config is not None and config.tls.certfile:
        # Not a certificate we can trust directly? The system's still apply.
        with contextlib.suppress(OSError, ssl.SSLError):
            context.load_verify_locations(config.tls.certfile)
    return context


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        _fail(f"--url: expected http://HOST:PORT or https://HOST:PORT, got {url!r}", 2)
    return url.strip().rstrip("/")


def _load_or_exit(path: Path | None) -> Config:
    try:
        return load_config(None if path is None else str(path))
    except ConfigError as exc:
        _fail(f"config error: {exc}", 2)


def _need(config: Config | None) -> Config:
    assert config is not None
    return config


# -- arrowport config check ---------------------------------------------------------

config_app = typer.Typer(
    help="Check a configuration and show the settings a server would use.",
    no_args_is_help=True,
)


@config_app.command("check")
def config_check(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="YAML config file (default: $ARROWPORT_STREAMS_PATH, else built-in defaults).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Validate a config and print the effective settings, environment overrides included.

    The YAML printed is a config file with every default filled in; values that
    ARROWPORT_* variables set are marked "# from VAR" (in JSON: listed under
    "from_env"), and tokens are printed as <redacted>.

    It also checks, without writing anything, what ``serve`` needs at start
    (``preflight``): DuckDB settings and extensions (tried in memory), TLS files,
    and the directories of the database, DuckLake and Delta root.

    Exit codes: 0 valid; 2 invalid (the message names the key) or unreadable; 1 valid
    but ``serve`` would fail to start (the same message as ``serve``'s).
    """
    env = os.environ
    given = str(path) if path is not None else env.get(ENV_CONFIG_PATH) or None
    origin = None if given is None else ("argument" if path is not None else ENV_CONFIG_PATH)
    try:
        config = load_config(given, env=env)
    except ConfigError as exc:
        if as_json:
            _print_json({"valid": False, "config_file": given, "error": str(exc)})
        _fail(f"config error: {exc}", 2)
    from .preflight import preflight
    from .storage import StorageError

    try:
        notes = preflight(config)  # what serve would fail on at start, without writing
    except (ConfigError, StorageError) as exc:
        detail = getattr(exc, "detail", None) or str(exc)
        if as_json:
            _print_json({"valid": False, "config_file": given, "error": detail})
        if isinstance(exc, ConfigError):
            _fail(f"config error: {exc}", 2)
        _fail(detail, 1)
    from_env = {key: var for var, key in ENV_OVERRIDES.items() if env.get(var)}
    if env.get(ENV_TOKEN):  # parse_config appends it after the file's tokens
        from_env[f"auth.tokens[{len(config.auth.tokens) - 1}]"] = ENV_TOKEN
    settings = effective_settings(config)
    if as_json:
        _print_json(
            {
                "valid": True,
                "config_file": given,
                "config_file_from": origin,
                "from_env": from_env,
                "notes": notes,
                "settings": settings,
            }
        )
        return
    if given is None:
        lines = ["# config file: none (built-in defaults)"]
    else:
        named = f" (named by {ENV_CONFIG_PATH})" if origin == ENV_CONFIG_PATH else ""
        lines = [f"# config file: {given}{named}"]
    lines.insert(0, "# arrowport config check: valid")
    lines += [f"# {note}" for note in notes]
    lines.append('# "# from VAR": set by that environment variable; tokens are redacted')
    typer.echo("\n".join([*lines, *_yaml_lines(settings, from_env)]))


def effective_settings(config: Config) -> dict[str, Any]:
    """``config`` as a config file's mapping (it parses back to ``config``), tokens redacted."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "source":
            continue
        if f.name == "streams":
            out[f.name] = {name: _stream_settings(s) for name, s in value.items()}
        else:
            out[f.name] = _plain(value)
    out["auth"]["tokens"] = [
        REDACTED if t.streams is None else {"token": REDACTED, "streams": list(t.streams)}
        for t in config.auth.tokens
    ]
    for section in (out["delta_config"], out["ducklake"]):  # credentials: secrets redacted
        options = section["storage_options"]
        for key in options:
            if SECRET_WORDS.search(key):
                options[key] = REDACTED
    catalog = out["ducklake"]["catalog"]
    out["ducklake"]["catalog"] = redact(catalog, conninfo_secrets(catalog))
    delta = out["delta_config"]
    hours = delta["version_retention_hours"]
    if float(hours).is_integer():  # the key takes whole hours
        delta["version_retention_hours"] = int(hours)
    return out


def _stream_settings(stream: Any) -> dict[str, Any]:
    raw = _plain(stream)
    del raw["name"]  # the mapping key
    options = raw["delta_options"]
    options["compression"] = {
        "algorithm": options["compression"],
        "level": options.pop("compression_level"),
    }
    return dict(raw)


def _plain(value: object) -> Any:
    """Dataclasses, mappings and tuples as dicts and lists (what YAML and JSON can hold)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _yaml_lines(settings: Mapping[str, Any], from_env: Mapping[str, str]) -> list[str]:
    """The settings as YAML, a ``# from VAR`` comment on each line an env var set."""
    import yaml

    out = []
    for key, value in settings.items():
        chunk = yaml.safe_dump(
            {key: value}, sort_keys=False, default_flow_style=False, width=2**31, allow_unicode=True
        ).splitlines()
        for dotted, var in from_env.items():
            head, _, rest = dotted.partition(".")
            if head == key:
                index, note = _line_of(chunk, rest)
                chunk[index] += f"  # {note}from {var}"
        out += chunk
    return out


def _line_of(chunk: list[str], rest: str) -> tuple[int, str]:
    """The line of ``rest`` (``""``, ``child`` or ``items[n]``) in a top-level key's YAML."""
    if not rest:
        return 0, ""
    name, _, index = rest.partition("[")
    if index:  # the n-th item of a list at indent 2, as safe_dump writes it
        items = [i for i, line in enumerate(chunk) if line.startswith("  - ")]
        n = int(index.rstrip("]"))
        if n < len(items):
            return items[n], ""
    else:
        for i, line in enumerate(chunk):
            if line.startswith(f"  {name}:"):
                return i, ""
    return 0, f"{rest} "
