"""``msgin5g relay``: run a Relay UE (TS 24.538 6.2.2.1; SPEC §3.2, D8, D11)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from ..clicommon import ActorOutput, http_option, log_options, output_options, setup_logging
from .shell import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_PC5_PORT,
    RelaySettings,
    parse_hostport,
    parse_server_uri,
    start_relay,
)


def _hostport(default_port: int):
    def convert(ctx, param, value):
        if value is None or value.lower() == "none":
            return None
        try:
            return parse_hostport(value, default_port)
        except ValueError:
            raise click.BadParameter(f"expected HOST:PORT, got {value!r}") from None

    return convert


def _server_uri(ctx, param, value: str) -> str:
    """``--server``: checked before anything starts (a usage error, exit status 2)."""
    try:
        parse_server_uri(value)
    except ValueError:
        raise click.BadParameter(
            f"give coap://HOST[:PORT] (the relay's Uu side is UDP), not {value!r}"
        ) from None
    return value


async def _run(settings: RelaySettings, http=None, out: ActorOutput | None = None) -> dict:
    from ..ops.address import serve_actor_ops

    try:
        relay = await start_relay(settings)
        ops = await serve_actor_ops(http, "relay_registry", relay, actor="relay")
    except (OSError, ValueError) as e:
        raise click.ClickException(f"cannot start the relay: {e}") from e
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    out = out or ActorOutput("relay")
    host, port = relay.pc5_address
    out.banner(
        f"relay ({settings.mode}, {settings.reliability}) listening on {host}:{port} (PC5), "
        f"relaying to {settings.server_uri}; "
        f"max {settings.max_links} links{', auto-link' if settings.auto_link else ''}"
    )
    if relay.admin_uri:
        out.banner(f"counters: {relay.admin_uri}")
    ready = {"ready": "relay", "listen": {"pc5": [host, port], "admin": relay.admin_uri}}
    if ops is not None:
        out.banner(f"metrics {ops.url}/metrics (health {ops.url}/healthz)")
        ready["http"] = ops.url
    out.ready(ready)
    try:
        await stop.wait()
    finally:
        snapshot = relay.core.snapshot()
        if ops is not None:
            await ops.close()
        await relay.close()
    return snapshot


@click.command("relay")
@click.option(
    "--listen",
    default=f"127.0.0.1:{DEFAULT_PC5_PORT}",
    show_default=True,
    callback=_hostport(DEFAULT_PC5_PORT),
    help="PC5 side: where constrained UEs reach the relay (UDP).",
)
@click.option(
    "--server",
    "server_uri",
    default="coap://127.0.0.1:5683",
    show_default=True,
    envvar="MSGIN5G_SERVER",
    callback=_server_uri,
    help="The configuration management server functionality (SCM-S) the relay forwards to. "
    "[env: MSGIN5G_SERVER]",
)
@click.option(
    "--mode",
    type=click.Choice(["l3", "l2"]),
    default="l3",
    show_default=True,
    help="l3: a NAT, one upstream port per remote UE; l2: one upstream address per remote UE "
    "(127.0.0.0/8 on loopback).",
)
@click.option(
    "--max-links",
    type=click.IntRange(1, 65535),
    default=8,
    show_default=True,
    help="Size of the PC5 link table (TS 23.304 recommends 8).",
)
@click.option(
    "--auto-link",
    is_flag=True,
    help="Lab aid: the first datagram from a new endpoint establishes its PC5 link.",
)
@click.option(
    "--admin",
    default=f"127.0.0.1:{DEFAULT_ADMIN_PORT}",
    show_default=True,
    callback=_hostport(DEFAULT_ADMIN_PORT),
    help="Loopback admin side serving /relay/counters and /relay/links; 'none' disables it.",
)
@click.option(
    "--link-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds without a datagram after which a PC5 link is released.",
)
@click.option(
    "--max-exchanges",
    type=click.IntRange(1, 65535),
    default=8,
    show_default=True,
    help="Requests one remote UE may have open through the relay; beyond that it gets 5.03 + Max-Age.",
)
@click.option(
    "--reliability",
    type=click.Choice(["hop", "end-to-end"]),
    default="hop",
    show_default=True,
    help="hop: the relay acknowledges a UE's CON request at once, retransmits it to the SCM-S itself "
    "and sends the answer down as a CON (RFC 7252 5.7 proxy); end-to-end: the UE's own "
    "retransmissions are relayed and the relay keeps no timers.",
)
@click.option(
    "--ack-timeout",
    type=click.FloatRange(0.01, 60),
    default=2.0,
    show_default=True,
    help="RFC 7252 ACK_TIMEOUT of the relay's own retransmissions (hop), seconds.",
)
@click.option(
    "--adaptive-rto/--fixed-rto",
    default=True,
    show_default=True,
    help="adaptive: once a leg's round trip is measured, a CON's first timeout is its RFC 6298 RTO "
    "(at least 1 s) instead of ACK_TIMEOUT (RFC 7252 4.8); fixed: ACK_TIMEOUT always.",
)
@http_option()
@log_options
@output_options
def relay(
    listen,
    server_uri,
    mode,
    max_links,
    auto_link,
    admin,
    link_timeout,
    max_exchanges,
    reliability,
    ack_timeout,
    adaptive_rto,
    http,
    verbose,
    log_format,
    as_json,
    quiet,
) -> None:
    """MSGin5G Relay UE: relay constrained UEs' configuration GETs to the SCM-S (TS 24.538 6.2.2.1)."""
    setup_logging(verbose, log_format)
    settings = RelaySettings(
        server_uri=server_uri,
        listen_host=listen[0],
        listen_port=listen[1],
        mode=mode,
        max_links=max_links,
        auto_link=auto_link,
        admin_host=admin[0] if admin else None,
        admin_port=admin[1] if admin else 0,
        link_timeout=link_timeout,
        max_exchanges=max_exchanges,
        reliability=reliability,
        ack_timeout=ack_timeout,
        adaptive_rto=adaptive_rto,
    )
    out = ActorOutput("relay", as_json, quiet)
    snapshot = asyncio.run(_run(settings, http, out))
    out.counters(snapshot["counters"])
