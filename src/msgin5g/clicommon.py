"""Small helpers shared by the actors' command-line shells."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import click

from . import api


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("coap").setLevel(logging.ERROR)
        logging.getLogger("coap-server").setLevel(logging.ERROR)


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
