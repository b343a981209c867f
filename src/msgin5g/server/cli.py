"""``msgin5g server``: run the SCM-S (TS 24.546 Annex C.3; SPEC §2, D11)."""

from __future__ import annotations

import logging

import click

from ..clicommon import (
    EXIT_PRECONDITION,
    ActorOutput,
    db_option,
    http_option,
    log_options,
    output_options,
    run_until_signal,
    setup_logging,
)
from ..coap.qblock import QBlockParams
from .admission import AdmissionConfig
from .app import RunningServer, ServerConfig, ServerStartError, start_server
from .service import ServiceConfig
from .workers import run_supervised, worker_count

log = logging.getLogger("msgin5g.server")

#: Content-Formats the SCM-S already gives a meaning (link-format, JSON, CBOR, problem details)
TAKEN_CONTENT_FORMATS = (40, 50, 60, 257)


def _seal_cf(param, value):
    """The SEAL media types have no registered CoAP number (digest §2.5, §10.7): the operator names
    one, which must not be one the server already uses for something else."""
    if value in TAKEN_CONTENT_FORMATS:
        raise click.BadParameter(
            f"{value} is already a Content-Format of this server; pick an unused number "
            "(e.g. from the experimental range 65000-65535)",
            param=param,
        )
    return value


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=5683, show_default=True, type=int, help="UDP and TCP port; 0 picks a free one."
)
@db_option("sqlite:///path.db (default: a file under the user's data dir) or postgresql://HOST/DB.")
@click.option(
    "--service-id",
    "service_ids",
    multiple=True,
    default=("msgin5g",),
    show_default=True,
    help="valServiceId served (repeatable).",
)
@click.option(
    "--service-domain",
    default="msgin5g.example",
    show_default=True,
    help="valServiceDomain of bulk stub entries.",
)
@click.option("--api-prefix", default="", help="Optional path prefix of apiRoot, e.g. 'seal/cm'.")
@click.option("--ws-port", type=int, default=None, help="Also serve coap+ws on this port (> 3000).")
@click.option(
    "--tls-port",
    type=int,
    default=None,
    help="Also serve coaps+tcp with mutual TLS on this port (client certificates: msgin5g keys cert).",
)
@click.option(
    "--wss-port",
    type=int,
    default=None,
    help="Also serve coaps+ws with mutual TLS on this port (the same client certificates as --tls-port).",
)
@click.option(
    "--dtls-port",
    type=int,
    default=None,
    help="Also serve coaps (DTLS 1.2, PSK) on this port; PSK identity = identity (msgin5g keys add --psk).",
)
@click.option(
    "--dtls-max-sessions",
    default=10_000,
    show_default=True,
    help="DTLS sessions held at once (the least recently used is ended beyond).",
)
@click.option(
    "--dtls-idle-timeout",
    default=300.0,
    show_default=True,
    help="Seconds after which an idle DTLS session is ended (its client does a new handshake).",
)
@click.option("--no-tcp", is_flag=True, help="Do not serve CoAP over TCP.")
@click.option("--max-age", default=300, show_default=True, help="Max-Age (s) of configuration answers.")
@click.option(
    "--max-body", default=64 * 1024, show_default=True, help="Largest POST/PUT body in bytes (4.13 above)."
)
@click.option(
    "--bulk-max-ues", default=10_000, show_default=True, help="Most UEs in one bulk GET (policy maximum)."
)
@click.option(
    "--seal-content-format",
    "seal_cf",
    type=click.IntRange(0, 65535),
    callback=lambda ctx, p, v: _seal_cf(p, v),
    default=None,
    help="Content-Format number of application/vnd.3gpp.seal-ue-config-info+cbor (60 still accepted).",
)
@click.option(
    "--seal-profile-content-format",
    "seal_profile_cf",
    type=click.IntRange(0, 65535),
    callback=lambda ctx, p, v: _seal_cf(p, v),
    default=None,
    help="The same for application/vnd.3gpp.seal-user-profile-info+cbor (su-up).",
)
@click.option(
    "--max-open-contexts",
    default=65536,
    show_default=True,
    help="OSCORE contexts kept in memory at once (least recently used dropped first).",
)
@click.option(
    "--insecure", is_flag=True, help="Run without authenticated identities (labs only; loudly logged)."
)
@click.option("--insecure-anywhere", is_flag=True, help="Allow --insecure on a non-loopback address.")
@click.option(
    "--max-exchanges",
    default=100_000,
    show_default=True,
    help="UDP message IDs remembered for duplicate detection (RFC 7252 §4.5); the oldest are shed beyond.",
)
@click.option(
    "--client-rate",
    default=0.0,
    show_default=True,
    help="Requests per second one client endpoint may send (4.29 + Max-Age beyond); 0 = no limit.",
)
@click.option(
    "--client-burst", default=0, show_default=True, help="Burst of --client-rate (0: twice the rate)."
)
@click.option(
    "--overload-delay",
    default=2.0,
    show_default=True,
    help="Seconds a request may wait in the queue before it is shed with 5.03 + Max-Age; 0 = never.",
)
@click.option(
    "--qblock-max-payloads",
    type=click.IntRange(1, 1000),
    default=QBlockParams.max_payloads,
    show_default=True,
    help="RFC 9177 MAX_PAYLOADS: Q-Block2 blocks sent back to back.",
)
@click.option(
    "--qblock-non-timeout",
    type=click.FloatRange(0.01, 60.0),
    default=QBlockParams.non_timeout,
    show_default=True,
    help="RFC 9177 NON_TIMEOUT (s): pause between two Q-Block2 sets without a Continue.",
)
@click.option(
    "--workers",
    default="1",
    show_default=True,
    help="Server processes sharing the port (SO_REUSEPORT; UDP flows stay on one); 'auto': one per core.",
)
@http_option("/metrics, /healthz, /readyz and the web console (/console/)")
@click.option(
    "--console-token-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Secured mode: the console's administrator token (created, mode 0600, when missing); "
    "default: a fresh token printed with the console URL. See docs/operations.md.",
)
@click.option("--no-console", is_flag=True, help="Serve only /metrics and the health checks over --http.")
@log_options
@output_options
def server(
    host,
    port,
    db_url,
    service_ids,
    service_domain,
    api_prefix,
    ws_port,
    tls_port,
    wss_port,
    dtls_port,
    dtls_max_sessions,
    dtls_idle_timeout,
    no_tcp,
    max_age,
    max_body,
    bulk_max_ues,
    seal_cf,
    seal_profile_cf,
    max_open_contexts,
    insecure,
    insecure_anywhere,
    max_exchanges,
    client_rate,
    client_burst,
    overload_delay,
    qblock_max_payloads,
    qblock_non_timeout,
    workers,
    http,
    console_token_file,
    no_console,
    verbose,
    log_format,
    as_json,
    quiet,
) -> None:
    """Run the configuration management server (SCM-S) over UDP, TCP and optionally WebSockets.

    Secured by the OSCORE keys in the store (msgin5g keys; TS 24.546 6.2.1.2; SPEC D12), or
    --insecure for labs."""
    setup_logging(verbose, log_format)
    if insecure:
        click.secho(
            "WARNING: insecure mode — requests are not authenticated and every requester is trusted. "
            "For labs only.",
            fg="red",
            err=True,
        )
    out = ActorOutput("server", as_json, quiet)
    try:
        n_workers = worker_count(workers)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--workers") from None
    from ..ops.address import check_console_address

    try:
        check_console_address(http, console=not no_console, insecure=insecure)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    metrics_dir = None
    if n_workers > 1 and http is not None:
        from ..ops.workers import prepare_multiprocess_dir

        metrics_dir = prepare_multiprocess_dir()  # before prometheus_client is first imported
    from ..ops.server import ServerOps

    ops = ServerOps(
        http=None if metrics_dir else http,
        metrics=http is not None,
        console=not no_console,
        token_file=console_token_file,
        insecure=insecure,
        api_prefix=tuple(p for p in api_prefix.split("/") if p),
    )
    cfg = ServerConfig(
        host=host,
        port=port,
        db_url=db_url,
        service_ids=tuple(service_ids),
        api_prefix=tuple(p for p in api_prefix.split("/") if p),
        ws_port=ws_port,
        tls_port=tls_port,
        wss_port=wss_port,
        dtls_port=dtls_port,
        dtls_max_sessions=dtls_max_sessions,
        dtls_idle_timeout=dtls_idle_timeout,
        tcp=not no_tcp,
        insecure=insecure,
        insecure_anywhere=insecure_anywhere,
        max_open_contexts=max_open_contexts,
        max_exchanges=max_exchanges,
        admission=AdmissionConfig(
            client_rate=client_rate, client_burst=client_burst, overload_delay=overload_delay
        ),
        qblock=QBlockParams(max_payloads=qblock_max_payloads, non_timeout=qblock_non_timeout),
        service=ServiceConfig(
            max_age=max_age,
            max_body=max_body,
            bulk_max_ues=bulk_max_ues,
            seal_cf=seal_cf,
            seal_profile_cf=seal_profile_cf,
            service_domains={sid: service_domain for sid in service_ids},
        ),
        wrap_site=ops.wrap_site,
    )

    if n_workers > 1:
        try:
            _run_workers(cfg, n_workers, out, ops, http, metrics_dir, console_token_file, not no_console)
        except ServerStartError as e:
            err = click.ClickException(str(e))
            err.exit_code = EXIT_PRECONDITION
            raise err from None
        return

    async def start() -> RunningServer:
        running = await start_server(cfg)
        for uri in running.listeners:
            out.banner(f"listening {uri}")
        try:
            for line in await ops.start(running):
                out.banner(line)
        except OSError as e:
            await running.close()
            raise ServerStartError(f"cannot serve HTTP on {http[0]}:{http[1]}: {e}") from None
        ready = {"ready": "scm-s", "listen": {u.split("://")[0]: u for u in running.listeners}}
        if ops.http is not None:
            ready["http"] = ops.http.url
        if ops.console_url:
            ready["console"] = ops.console_url
        # one machine-readable line for supervisors (msgin5g demo): scheme → base URI
        out.ready(ready)
        return running

    async def stop(running: RunningServer) -> None:
        log.info("stopping")
        out.counters(dict(running.service.counters))
        await ops.close()
        await running.close()

    try:
        run_until_signal(start, stop)
    except ServerStartError as e:
        err = click.ClickException(str(e))
        err.exit_code = EXIT_PRECONDITION  # port taken, refused insecure address: fix and retry
        raise err from None


def _run_workers(cfg, n, out: ActorOutput, ops, http, metrics_dir, token_file, console) -> None:
    """``--workers N`` (SPEC D14), with ``--http`` served by the supervisor (:mod:`..ops.workers`)."""
    side = hook = None
    if metrics_dir is not None:
        from ..ops.workers import WorkersHttp, worker_hook

        side = WorkersHttp(cfg, http, console=console, token_file=token_file)
        hook = worker_hook(ops)
    ready: dict = {"ready": "scm-s", "listen": {}, "workers": n}

    def announce(line: str) -> None:
        out.banner(line)
        kind, _, value = line.partition(" ")
        if kind == "listening":
            ready["listen"][value.split("://")[0]] = value
        elif kind == "metrics":
            ready["http"] = value.split("/metrics")[0]
        elif kind == "console":
            ready["console"] = value

    try:
        run_supervised(cfg, n, announce, hook=hook, side=side, ready=lambda: out.ready(ready))
        if metrics_dir is not None:  # every worker wrote its counts back when it stopped
            from ..ops.workers import service_counters

            out.counters(service_counters())
    finally:
        if metrics_dir is not None:
            from ..ops.workers import remove_multiprocess_dir

            remove_multiprocess_dir(metrics_dir)
