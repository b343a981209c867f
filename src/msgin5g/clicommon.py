"""Small helpers shared by the actors' command-line shells."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import click

from . import api

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, msg (SPEC D15 ``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(verbose: int, log_format: str = "text") -> None:
    """Logs to stderr with timestamps and levels (SPEC D15): WARNING by default (refused requests,
    failures), INFO with -v (an access line per request), DEBUG with -vv (also aiocoap's)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if verbose < 2:
        logging.getLogger("coap").setLevel(logging.ERROR)
        logging.getLogger("coap-server").setLevel(logging.ERROR)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_options(f):
    """``-v`` (repeatable) and ``--log-format text|json`` for every long-running command."""
    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log lines on stderr as text or as one JSON object per line.",
    )(f)
    return click.option("-v", "--verbose", count=True, help="-v: access log; -vv: debug.")(f)


def output_options(f):
    """``--json`` and ``-q`` — on every command (SPEC D15)."""
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (on stderr).")(f)
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


class ActorOutput:
    """What a long-running actor prints on stdout (SPEC D15): banner lines for people, one JSON
    ``ready`` line once it serves (what supervisors such as ``msgin5g demo`` wait for), and one
    summary at shutdown. ``--json``: only the JSON lines (the summary as ``{"stopped": actor,
    "counters": {...}}``); ``-q``: nothing (errors and logs still go to stderr)."""

    def __init__(self, actor: str, as_json: bool = False, quiet: bool = False):
        self.actor = actor
        self.as_json = as_json
        self.quiet = quiet and not as_json

    def banner(self, text: str) -> None:
        if not (self.as_json or self.quiet):
            click.echo(text)

    def ready(self, value: dict) -> None:
        if not self.quiet:
            click.echo(json.dumps(value))
            sys.stdout.flush()

    def counters(self, counters: dict) -> None:
        """The one shutdown summary: the names the ``/metrics`` series carry; live values are on
        ``--http``."""
        if self.as_json:
            click.echo(json.dumps({"stopped": self.actor, "counters": counters}, sort_keys=True))
        elif not self.quiet:
            report_counters(self.actor, counters)


def report_counters(actor: str, counters: dict) -> None:
    """The one shutdown summary of every actor: one line of JSON on stdout, next to its start banner,
    with the names its ``/metrics`` series carry (SPEC D15); the live values are on ``--http``."""
    click.echo(f"{actor} counters at shutdown: {json.dumps(counters, sort_keys=True)}")


def http_option(what: str = "/metrics and /healthz"):
    """``--http HOST:PORT``: serve the operations side (SPEC D15) on loopback by default."""

    def convert(ctx, param, value):
        if value is None:
            return None
        from .ops.address import parse_http_address

        try:
            return parse_http_address(value)
        except api.ApiUriError as e:
            raise click.BadParameter(str(e)) from None

    return click.option(
        "--http",
        "http",
        default=None,
        metavar="HOST:PORT",
        callback=convert,
        help=f"Serve {what} over HTTP here (loopback unless a host is given; port 0 picks one).",
    )


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT', 'HOST', '[v6]:PORT' → (host, port), as a click parameter error when malformed."""
    try:
        return api.parse_hostport(value, default_port)
    except api.ApiUriError as e:
        raise click.BadParameter(str(e)) from None


def split_server_uri(uri: str) -> tuple[str, str, int]:
    """'coap://HOST:PORT' → (scheme, host, port) for coap / coap+tcp / coap+ws."""
    try:
        root = api.parse_api_root(uri)
    except api.ApiUriError as e:
        raise click.BadParameter(str(e)) from None
    return root.scheme, root.host, root.port


def credentials_option(help_text: str = "OSCORE credentials file (msgin5g keys add --out FILE)."):
    """``--credentials FILE`` for every command that talks to an SCM-S (SPEC D12)."""
    return click.option(
        "--credentials",
        "credentials",
        default=None,
        envvar="MSGIN5G_CREDENTIALS",
        type=click.Path(dir_okay=False),
        callback=_load_credentials,
        help=help_text + " [env: MSGIN5G_CREDENTIALS]",
    )


def _load_credentials(ctx, param, value):
    if value is None:
        return None
    from .security.credentials import CredentialsError, load_credentials

    try:
        return load_credentials(value)
    except CredentialsError as e:
        raise click.BadParameter(str(e), param_hint="--credentials") from None


def run_until_signal(start: Callable[[], Awaitable], stop: Callable[[object], Awaitable]) -> None:
    """Run ``start()`` then wait for SIGINT/SIGTERM, then ``stop(started)``. The signals are caught
    from before ``start()``: a supervisor may stop the process as soon as its ready line is out."""

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        started = await start()
        try:
            await done.wait()
        finally:
            await stop(started)

    asyncio.run(main())


# -- options shared by the commands that talk to an SCM-S or open a store ------------------------
#: what the current command talks to, for the one-line failure messages below
TARGET: dict[str, str | None] = {"server": None, "db": None}

EXIT_FAILED = 1  # the operation failed (an error answer other than those below)
EXIT_PRECONDITION = 2  # usage error or precondition not met (server or store unreachable, port taken)
EXIT_FORBIDDEN = 3  # 4.01 / 4.03
EXIT_NOT_FOUND = 4  # 4.04
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def check_server_uri(value: str) -> str:
    """``--server``: an apiRoot with a scheme (TS 24.546 C.1.1 via :func:`api.parse_api_root`)."""
    if value.startswith(("coaps+tcp:", "coaps+ws:")):
        raise click.BadParameter(
            f"{value!r}: this client does not present TLS client certificates; use coaps:// with a PSK "
            "file (msgin5g keys add --psk) or OSCORE (--credentials) over coap://, coap+tcp:// or coap+ws://",
            param_hint="--server",
        )
    try:
        api.parse_api_root(value, (*api.PLAIN_SCHEMES, "coaps"))
    except api.ApiUriError as e:
        raise click.BadParameter(str(e), param_hint="--server") from None
    TARGET["server"] = value
    return value


def server_option(default: str = "coap://127.0.0.1:5683", help_text: str = "apiRoot of the SCM-S."):
    """``--server URI`` (or ``MSGIN5G_SERVER``), validated at once."""
    return click.option(
        "--server",
        default=default,
        show_default=True,
        envvar="MSGIN5G_SERVER",
        callback=lambda c, p, v: None if v is None else check_server_uri(v),
        help=help_text + " [env: MSGIN5G_SERVER]",
    )


def db_option(help_text: str = "Store URL: sqlite:///path.db or postgresql://HOST/DB."):
    """``--db URL`` (or ``MSGIN5G_DB``)."""

    def note(ctx, param, value):
        TARGET["db"] = value
        return value

    return click.option(
        "--db",
        "db_url",
        default=None,
        envvar="MSGIN5G_DB",
        callback=note,
        help=help_text + " [env: MSGIN5G_DB]",
    )


def explain(e: BaseException) -> tuple[str, int] | None:
    """One line saying what went wrong and what to do, and the exit status, for the failures an
    operator meets (server or store unreachable, store missing); None for anything else."""
    import sqlite3

    server = TARGET.get("server") or "the SCM-S"
    try:
        import aiocoap.error as coap_error
    except ImportError:  # pragma: no cover
        coap_error = None
    if coap_error is not None and isinstance(e, coap_error.NetworkError | coap_error.ResolutionError):
        detail = str(e.args[0]) if e.args else type(e).__name__
        return f"cannot reach {server} — is `msgin5g server` running there? ({detail})", EXIT_PRECONDITION
    if isinstance(e, TimeoutError | ConnectionError):
        return f"no answer from {server} — is `msgin5g server` running there? ({type(e).__name__})", (
            EXIT_PRECONDITION
        )
    try:
        import psycopg
    except ImportError:  # pragma: no cover
        psycopg = None
    if psycopg is not None and isinstance(e, psycopg.OperationalError):
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "does not exist" in text and "database" in text:
            name = text.split('database "', 1)[-1].split('"', 1)[0]
            return f"PostgreSQL: database {name!r} does not exist — create it with `createdb {name}`", (
                EXIT_PRECONDITION
            )
        return f"cannot reach PostgreSQL ({text.removeprefix('connection failed: ')}) — is it running?", (
            EXIT_PRECONDITION
        )
    if isinstance(e, sqlite3.OperationalError):
        db = TARGET.get("db") or "the SQLite database"
        hint = " — does its directory exist and is it writable?" if "unable to open" in str(e) else ""
        return f"cannot open {db}: {e}{hint}", EXIT_PRECONDITION
    if isinstance(e, ValueError) and "database URL" in str(e):
        return str(e), EXIT_PRECONDITION
    return None
