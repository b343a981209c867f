"""Small helpers shared by the actors' command-line shells."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import click


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("coap").setLevel(logging.ERROR)
        logging.getLogger("coap-server").setLevel(logging.ERROR)


def parse_hostport(value: str, default_port: int) -> tuple[str, int]:
    """'HOST:PORT', 'HOST', '[v6]:PORT' → (host, port)."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    try:
        return host or "127.0.0.1", int(port) if port else default_port
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HOST:PORT") from None


def split_server_uri(uri: str) -> tuple[str, str, int]:
    """'coap://HOST:PORT' → (scheme, host, port) for coap / coap+tcp / coap+ws."""
    parts = urlsplit(uri)
    if parts.scheme not in ("coap", "coap+tcp", "coap+ws") or not parts.hostname:
        raise click.BadParameter(f"{uri!r} is not coap://HOST:PORT (or coap+tcp://, coap+ws://)")
    return parts.scheme, parts.hostname, parts.port or (80 if parts.scheme == "coap+ws" else 5683)


def credentials_option(help_text: str = "OSCORE credentials file (msgin5g keys add --out FILE)."):
    """``--credentials FILE`` for every command that talks to an SCM-S (SPEC D12)."""
    return click.option(
        "--credentials",
        "credentials",
        default=None,
        type=click.Path(dir_okay=False),
        callback=_load_credentials,
        help=help_text,
    )


def _load_credentials(ctx, param, value):
    if value is None:
        return None
    from .security.registry import CredentialsError, load_credentials

    try:
        return load_credentials(value)
    except CredentialsError as e:
        raise click.BadParameter(str(e), param_hint="--credentials") from None


def run_until_signal(start: Callable[[], Awaitable], stop: Callable[[object], Awaitable]) -> None:
    """Run ``start()`` then wait for SIGINT/SIGTERM, then ``stop(started)``."""

    async def main() -> None:
        started = await start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        try:
            await done.wait()
        finally:
            await stop(started)

    asyncio.run(main())
