"""The operations HTTP side of a long-running actor (SPEC D15): ``--http HOST:PORT``.

Served by aiohttp from the actor's own event loop: ``/metrics`` (Prometheus text format),
``/healthz`` (the process answers and its loop runs), ``/readyz`` (it can do its work: the SCM-S's
store answers, the gateway's CM client is set up). The SCM-S adds its web console to the same app.
Loopback by default; ``parse_http_address`` refuses nothing else, the caller decides (the console
refuses a non-loopback address in insecure mode).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from .. import api
from .address import DEFAULT_HTTP_HOST, is_loopback, parse_http_address  # noqa: F401 (re-exported)
from .metrics import scrape

log = logging.getLogger("msgin5g.ops")

#: a readiness probe returns None when ready, else what is wrong (one line)
Probe = Callable[[], "str | None"]


@dataclass
class OpsHttp:
    """A running operations HTTP server."""

    runner: web.AppRunner
    host: str
    port: int
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{api.uri_host(self.host)}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


def make_app(
    registry: CollectorRegistry,
    *,
    ready: Probe | None = None,
    actor: str = "msgin5g",
    health: Callable[[], tuple[int, dict]] | None = None,
) -> web.Application:
    """The aiohttp application with /metrics, /healthz and /readyz; ``health`` → (status, body)
    replaces the plain "the loop runs" answer of /healthz (the worker supervisor's)."""
    app = web.Application()

    async def metrics(_request: web.Request) -> web.Response:
        body, content_type = scrape(registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def healthz(_request: web.Request) -> web.Response:
        if health is not None:
            status, body = health()
            return web.json_response(body, status=status)
        return web.json_response({"status": "ok", "actor": actor})

    async def readyz(_request: web.Request) -> web.Response:
        problem = None
        if ready is not None:
            try:
                problem = await asyncio.get_running_loop().run_in_executor(None, ready)
            except Exception as e:  # a probe that fails says why
                problem = f"{type(e).__name__}: {e}"
        if problem:
            return web.json_response({"status": "not ready", "actor": actor, "reason": problem}, status=503)
        return web.json_response({"status": "ready", "actor": actor})

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_http(app: web.Application, host: str, port: int) -> OpsHttp:
    """Serve ``app`` on host:port (0 = a free port) in the running loop; OSError if it cannot bind."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=False)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    server = getattr(site, "_server", None)
    bound = port
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    paths = sorted({r.resource.canonical for r in app.router.routes() if r.resource is not None})
    return OpsHttp(runner, host, bound, paths)


async def serve_ops(
    address: tuple[str, int] | None,
    registry: CollectorRegistry,
    *,
    ready: Probe | None = None,
    actor: str,
    extend: Callable[[web.Application], None] | None = None,
) -> OpsHttp | None:
    """Start the operations side when ``--http`` was given; ``extend`` adds routes (the console)."""
    if address is None:
        return None
    app = make_app(registry, ready=ready, actor=actor)
    if extend is not None:
        extend(app)
    host, port = address
    ops = await start_http(app, host, port)
    log.info("operations HTTP on %s", ops.url)
    return ops


def banner_lines(url: str, console: bool, token: str | None, token_file) -> tuple[str | None, list[str]]:
    """(the console's URL or None, the lines an actor prints about its HTTP side, SPEC D15): the
    metrics and health URLs, and the console's — with its token in the fragment when the token is
    not kept in a file for the operator to read."""
    lines = [f"metrics {url}/metrics (health {url}/healthz)"]
    if not console:
        return None, lines
    console_url = f"{url}/console/"
    if token and not token_file:
        console_url += f"#token={token}"
    return console_url, [*lines, f"console {console_url}"]
