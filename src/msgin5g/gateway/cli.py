"""``msgin5g gateway`` and ``msgin5g cm-client`` (TS 24.538 6.2.2.x; SPEC D9, D10, D11)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import click

from .. import api
from ..authz import Role
from ..clicommon import (
    ActorOutput,
    credentials_option,
    http_option,
    log_options,
    output_options,
    parse_hostport,
    setup_logging,
)
from ..coap import aiocoap_tweaks
from ..security.credentials import CredentialsError
from ..security.credentials import KeyCredentials as ClientCredentials
from ..security.keys import RegistryError
from .policy import ServicePolicy
from .sealc import SealCClient, SealCServer
from .shell import GatewayConfig, GatewayUe
from .upstream import DEFAULT_NSTART, CmClient, UpstreamScmc

DEFAULT_GATEWAY_PORT = api.GATEWAY_PORT  # SPEC D11
DEFAULT_SEAL_C_PORT = api.SEAL_C_PORT


def default_state_path() -> str:
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "msgin5g"
    return str(base / "gateway-state.db")


def _server_option(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        api.parse_api_root(value)
    except api.ApiUriError as e:
        raise click.BadParameter(str(e)) from None
    return value


def build_cm_client(
    cm_client: str,
    server: str | None,
    gateway_id: str | None,
    nstart: int,
    max_ues: int | None,
    credentials: ClientCredentials | None = None,
) -> CmClient:
    """``collocated`` → the SCM-C in-process; ``coap[+tcp]://HOST:PORT`` → SEAL-C (SPEC D10)."""
    if cm_client == "collocated":
        if not server:
            raise click.UsageError("--server is needed with a collocated CM client")
        return UpstreamScmc(
            server,
            gateway_id=gateway_id,
            nstart=nstart,
            max_ues=max_ues,
            credentials=credentials,
        )
    if credentials is not None:
        raise click.UsageError("--credentials belongs to the separate cm-client, which talks to the SCM-S")
    try:
        api.parse_api_root(cm_client)
    except api.ApiUriError as e:
        raise click.BadParameter(f"--cm-client: {e}") from None
    return SealCClient(cm_client)


def _gateway_credentials(credentials: ClientCredentials | None) -> ClientCredentials | None:
    """The Uu credentials must be a gateway's: it authenticates to the SCM-S as itself (TS 33.501
    Annex Y), and the SCM-S authorizes it per UE through its registry entry (SPEC D12)."""
    if credentials is not None and credentials.identity.role is not Role.GATEWAY:
        raise click.BadParameter(
            f"{credentials.path} holds the key of {credentials.identity}, not of a gateway",
            param_hint="--credentials",
        )
    return credentials


def _stop_on_signal() -> asyncio.Event:
    """Set on SIGINT/SIGTERM — caught from now on, before the ready line goes out (a supervisor may
    stop the process as soon as it reads it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def _run_gateway(
    config: GatewayConfig, cm: CmClient, describe: str, http=None, out: ActorOutput | None = None
) -> dict:
    from ..ops.address import serve_actor_ops

    gw = GatewayUe(config, cm)
    try:
        await gw.start()
        ops = await serve_actor_ops(http, "gateway_registry", gw, cm, actor="gateway")
    except (OSError, RegistryError, CredentialsError) as e:
        await cm.close()
        raise click.ClickException(f"cannot start the gateway: {e}") from e
    out = out or ActorOutput("gateway")
    stop = _stop_on_signal()
    out.banner(
        f"gateway listening on {config.host}:{gw.port} (MSGin5G-6); {describe}; "
        f"{gw.stats['restored']} stored requests restored"
    )
    ready = {"ready": "gateway", "listen": {"msgin5g-6": [config.host, gw.port]}}
    if ops is not None:
        out.banner(f"metrics {ops.url}/metrics (health {ops.url}/healthz)")
        ready["http"] = ops.url
    out.ready(ready)
    try:
        await stop.wait()
    finally:
        if ops is not None:
            await ops.close()
        stats = dict(gw.stats)
        stats.update({f"cm-{k}": v for k, v in getattr(cm, "stats", {}).items()})
        stats["unanswered"] = gw.unanswered
        await gw.close()
    return stats


async def _serve_cm_ops(http, scm, out: ActorOutput):
    from ..ops.address import serve_actor_ops

    try:
        ops = await serve_actor_ops(http, "cmclient_registry", scm, actor="cm-client")
    except OSError as e:
        raise click.ClickException(f"cannot serve HTTP: {e}") from e
    if ops is not None:
        out.banner(f"metrics {ops.url}/metrics (health {ops.url}/healthz)")
    return ops


def scm_c_options(credentials_help: str):
    """The options of the configuration management client functionality, shared by the gateway
    (collocated CM client) and ``msgin5g cm-client`` (SPEC D10)."""

    def apply(f):
        for option in reversed(
            (
                click.option(
                    "--gateway-id",
                    default="gw1",
                    show_default=True,
                    help="Identity claimed to an insecure SCM-S in lab mode (option 65000, gateway:<id>).",
                ),
                click.option(
                    "--nstart",
                    "--uu-endpoints",
                    "nstart",
                    type=click.IntRange(1, 256),
                    default=DEFAULT_NSTART,
                    show_default=True,
                    help="Exchanges outstanding towards the SCM-S at once over UDP (RFC 7252 4.7 NSTART; "
                    "a lost datagram holds up only its own exchange; RFC 9177 requests for missing "
                    "blocks are paced outside it).",
                ),
                click.option(
                    "--max-ues-per-get",
                    type=click.IntRange(1, None),
                    default=None,
                    help="UEs per bulk GET. [default: 2000 over TCP, as many as fit over UDP]",
                ),
                credentials_option(credentials_help),
            )
        ):
            f = option(f)
        return f

    return apply


@click.command("gateway")
@click.option(
    "--listen",
    default=f"127.0.0.1:{DEFAULT_GATEWAY_PORT}",
    show_default=True,
    help="MSGin5G-6 side: where constrained UEs reach the gateway (UDP).",
)
@click.option(
    "--server",
    "server",
    default=None,
    envvar="MSGIN5G_SERVER",
    callback=lambda c, p, v: _server_option(v),
    help="SCM-S apiRoot, coap://HOST:PORT or coap+tcp://HOST:PORT (collocated CM client). "
    "[env: MSGIN5G_SERVER]",
)
@click.option(
    "--service-id", default="msgin5g", show_default=True, help="valServiceId of the MSGin5G service."
)
@click.option(
    "--bulk/--no-bulk",
    default=True,
    show_default=True,
    help="Service policy: bulk configuration, or forward each request on its own.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 1_000_000),
    default=1000,
    show_default=True,
    help="UEs per bulk operation; a full batch is flushed at once.",
)
@click.option(
    "--max-wait-ms",
    type=click.IntRange(0, 3_600_000),
    default=500,
    show_default=True,
    help="Longest wait of the oldest request before a flush.",
)
@click.option(
    "--give-up-s",
    type=click.FloatRange(0.1, None),
    default=300.0,
    show_default=True,
    help="A request unanswered this long gets 5.04 Gateway Timeout.",
)
@click.option(
    "--state", "state", default=None, help="SQLite file of stored requests. [default: under XDG_DATA_HOME]"
)
@click.option(
    "--cm-client",
    "cm_client",
    default="collocated",
    show_default=True,
    help="'collocated', or coap[+tcp]://HOST:PORT of a separate 'msgin5g cm-client' (SEAL-C).",
)
@scm_c_options("The gateway's OSCORE credentials with the SCM-S (collocated CM client).")
@click.option(
    "--oscore",
    is_flag=True,
    help="MSGin5G-6 requests must be OSCORE-protected with the constrained UEs' keys kept in the "
    "state database (msgin5g keys import IDS.csv --db STATE --out BUNDLE).",
)
@click.option(
    "--max-open-contexts",
    type=click.IntRange(1, None),
    default=65536,
    show_default=True,
    help="Constrained UEs' OSCORE contexts kept in memory at once (the rest are read from the state "
    "database when asked for).",
)
@click.option("--no-cache", is_flag=True, help="Do not answer repeat requests from the cache.")
@http_option()
@log_options
@output_options
def gateway(
    listen,
    server,
    service_id,
    bulk,
    max_batch,
    max_wait_ms,
    give_up_s,
    state,
    cm_client,
    gateway_id,
    nstart,
    credentials,
    oscore,
    max_open_contexts,
    max_ues_per_get,
    no_cache,
    http,
    verbose,
    log_format,
    as_json,
    quiet,
) -> None:
    """MSGin5G Gateway UE: bulk configuration of constrained UEs (TS 24.538 6.2.2.x)."""
    setup_logging(verbose, log_format)
    aiocoap_tweaks.install_process_tweaks()
    host, port = parse_hostport(listen, DEFAULT_GATEWAY_PORT)
    credentials = _gateway_credentials(credentials)
    cm = build_cm_client(cm_client, server, gateway_id, nstart, max_ues_per_get, credentials)
    policy = ServicePolicy(bulk=bulk, max_batch=max_batch, max_wait=max_wait_ms / 1000.0, give_up=give_up_s)
    config = GatewayConfig(
        host=host,
        port=port,
        service_id=service_id,
        policy=policy,
        state_path=state or default_state_path(),
        cache=not no_cache,
        oscore=oscore,
        max_open_contexts=max_open_contexts,
    )
    where = f"SCM-S {server}" if cm_client == "collocated" else f"CM client {cm_client} (SEAL-C)"
    mode = f"bulk ≤{max_batch} UEs / {max_wait_ms} ms" if bulk else "no bulk"
    out = ActorOutput("gateway", as_json, quiet)
    stats = asyncio.run(_run_gateway(config, cm, f"{where}; {mode}", http, out))
    out.counters(stats)


@click.command("cm-client")
@click.option(
    "--listen",
    default=f"127.0.0.1:{DEFAULT_SEAL_C_PORT}",
    show_default=True,
    help="SEAL-C side (loopback CoAP, UDP and TCP on the same port).",
)
@click.option(
    "--server",
    "server",
    required=True,
    envvar="MSGIN5G_SERVER",
    callback=lambda c, p, v: _server_option(v),
    help="SCM-S apiRoot, coap://HOST:PORT or coap+tcp://HOST:PORT. [env: MSGIN5G_SERVER]",
)
@scm_c_options("The gateway's OSCORE credentials with the SCM-S.")
@http_option()
@log_options
@output_options
def cm_client(
    listen,
    server,
    gateway_id,
    nstart,
    max_ues_per_get,
    credentials,
    http,
    verbose,
    log_format,
    as_json,
    quiet,
) -> None:
    """Configuration management client functionality of a Gateway UE, as its own process (SPEC D10)."""
    setup_logging(verbose, log_format)
    aiocoap_tweaks.install_process_tweaks()
    host, port = parse_hostport(listen, DEFAULT_SEAL_C_PORT)
    credentials = _gateway_credentials(credentials)
    out = ActorOutput("cm-client", as_json, quiet)

    async def run() -> dict:
        scm = UpstreamScmc(
            server,
            gateway_id=gateway_id,
            nstart=nstart,
            max_ues=max_ues_per_get,
            credentials=credentials,
        )
        seal_c = SealCServer(scm, host, port)
        try:
            await seal_c.start()
        except OSError as e:
            await scm.close()
            raise click.ClickException(f"cannot start the CM client: {e}") from e
        stop = _stop_on_signal()
        out.banner(f"cm-client listening on {host}:{seal_c.port} (SEAL-C, UDP+TCP); SCM-S {server}")
        ops = await _serve_cm_ops(http, scm, out)
        ready = {"ready": "cm-client", "listen": {"seal-c": [host, seal_c.port]}}
        if ops is not None:
            ready["http"] = ops.url
        out.ready(ready)
        try:
            await stop.wait()
        finally:
            stats = dict(scm.stats)
            if ops is not None:
                await ops.close()
            await seal_c.close()
        return stats

    stats = asyncio.run(run())
    out.counters(stats)
    logging.shutdown()
