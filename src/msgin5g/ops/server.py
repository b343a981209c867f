"""The SCM-S's operations side (SPEC D15): metrics, health checks, logs and the web console.

:class:`ServerOps` is what ``msgin5g server`` (and the demo) hand to the server: ``wrap_site``
goes into :class:`~msgin5g.server.app.ServerConfig` (access and refusal logs always, metrics with
``--http``); ``start`` serves ``/metrics``, ``/healthz``, ``/readyz`` and ``/console/`` from the
server's own event loop once the CoAP side listens.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from prometheus_client import CollectorRegistry

from .http import OpsHttp, banner_lines, serve_ops
from .metrics import (
    EventCounters,
    GaugeCallbacks,
    InstrumentedSite,
    ServerMetrics,
    cached,
    register_callback,
)

#: the stored-documents gauge is a COUNT over the store: at most every this many seconds
STORED_DOCS_TTL = 10.0


def load_or_create_token(path: str) -> str:
    """The console token kept in ``path`` (created with 32 random bytes, mode 0600, when missing)."""
    p = Path(path)
    if p.exists():
        token = p.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ValueError(f"{path}: a console token has at least 16 characters")
        return token
    token = secrets.token_urlsafe(32)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token


class ServerOps:
    def __init__(
        self,
        *,
        http: tuple[str, int] | None,
        metrics: bool | None = None,
        console: bool = True,
        token_file: str | None = None,
        insecure: bool = False,
        api_prefix: tuple[str, ...] = (),
    ):
        self.http_address = http
        self.console = console
        self.token_file = token_file
        self.insecure = insecure
        self.api_prefix = api_prefix
        self.registry = CollectorRegistry()
        # a worker of --workers N counts without serving HTTP (its supervisor does: ops.workers)
        counting = http is not None if metrics is None else metrics
        self.metrics = ServerMetrics(self.registry) if counting else None
        self.http: OpsHttp | None = None
        self.token: str | None = None
        self.console_app = None
        self.console_url: str | None = None

    def wrap_site(self, site, outer: bool = False):
        return InstrumentedSite(site, self.metrics, outer=outer, prefix=self.api_prefix)

    def _register(self, running) -> None:
        register_callback(
            self.registry,
            EventCounters(
                "server_service_events_total",
                "What the SCM-S's service did (created, replaced, deleted, scoped-ok, bulk-ok, ...).",
                lambda: running.service.counters,
            ),
        )
        if running.keyring is not None:
            register_callback(
                self.registry,
                EventCounters(
                    "server_oscore_events_total",
                    "OSCORE key registry and context events of the SCM-S (SPEC D12).",
                    lambda: {**running.keyring.counters, **getattr(running.root, "counters", {})},
                ),
            )
        sids = tuple(running.config.service_ids)
        register_callback(
            self.registry,
            GaugeCallbacks(
                "server",
                {
                    "stored_documents": (
                        "UE configuration documents in the store (all served valServiceIds; "
                        f"counted at most every {STORED_DOCS_TTL:g} s).",
                        cached(lambda: sum(running.store.count(s) for s in sids), STORED_DOCS_TTL),
                    ),
                    "observers": (
                        "Active observations of individual documents (RFC 7641).",
                        lambda: running.site.observers.total(),
                    ),
                },
            ),
        )

    async def start(self, running) -> list[str]:
        """Serve HTTP; the lines to print (URLs)."""
        if self.http_address is None:
            return []
        self._register(running)

        def ready() -> str | None:
            try:
                for sid in running.config.service_ids:
                    running.store.count(sid)
            except Exception as e:
                return f"the store does not answer: {type(e).__name__}: {e}"
            return None

        extend = None
        if self.console and self.http_address is not None:
            from .console import Console

            if not self.insecure:
                self.token = (
                    load_or_create_token(self.token_file) if self.token_file else secrets.token_urlsafe(24)
                )
            self.console_app = Console(running, token=self.token, registry=self.registry)
            extend = self.console_app.install
        self.http = await serve_ops(
            self.http_address, self.registry, ready=ready, actor="scm-s", extend=extend
        )
        console = self.console_app is not None
        self.console_url, lines = banner_lines(self.http.url, console, self.token, self.token_file)
        return lines

    async def close(self) -> None:
        if self.console_app is not None:
            await self.console_app.close()
        if self.http is not None:
            await self.http.close()
            self.http = None
