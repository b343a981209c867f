"""``msgin5g server --workers N --http HOST:PORT``: one operations side for N processes (SPEC D14, D15).

Metrics: prometheus_client's multiprocess mode. The command creates a directory for the run and
sets ``PROMETHEUS_MULTIPROC_DIR`` (:func:`prepare_multiprocess_dir`) *before* prometheus_client is
first imported — the library picks its value class at import time — and removes it at exit. Every
worker (forked from the supervisor) writes its series to its own files there; the supervisor's
``/metrics`` merges them (``MultiProcessCollector``: counters and histograms summed over live and
dead workers, so a restart loses nothing) and calls ``mark_process_dead`` for every worker that
exits. What a worker only keeps in memory (the service's event counts, its OSCORE counts, its
observations) is copied into multiprocess series every :data:`MIRROR_INTERVAL` seconds and at stop
(:class:`WorkerMirror`; the observers gauge is ``livesum``: the sum over the live workers).
``msgin5g_server_worker_requests_total{worker}`` shows how the kernel spread the load.

The web console is served by the supervisor itself, from the store: everything it shows or changes
is in the store, which every worker shares (SPEC D14); a change made there reaches the workers'
observers through the store's change feed, as a change made by another worker does. So the console
stays up while a worker restarts, and its live counters are those of all workers.

The health decisions are pure (:func:`health`, :func:`readiness`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger("msgin5g.ops.workers")

ENV = "PROMETHEUS_MULTIPROC_DIR"
#: seconds between two copies of a worker's in-memory counts into its multiprocess files
MIRROR_INTERVAL = 1.0


# -- pure decisions ------------------------------------------------------------------------------
def health(alive: int, expected: int) -> tuple[int, dict]:
    """``/healthz`` of the supervisor (liveness): 200 while at least one worker serves ("degraded"
    while others restart — the supervisor handles that, nobody should restart the whole server for
    it); 503 when none does."""
    body = {"status": "ok", "actor": "scm-s", "workers": {"alive": alive, "expected": expected}}
    if alive == 0:
        return 503, {**body, "status": "down"}
    if alive < expected:
        return 200, {**body, "status": "degraded"}
    return 200, body


def readiness(alive: int, expected: int, store_problem: str | None, stopping: bool = False) -> str | None:
    """``/readyz``: None when the server can take requests, else why not (one line)."""
    if stopping:
        return "stopping"
    if alive == 0:
        return f"no worker is running (0 of {expected}); they are being restarted"
    if store_problem:
        return store_problem
    return None


def deltas(previous: Mapping[str, int], current: Mapping[str, int]) -> dict[str, int]:
    """What to add to a monotonic counter per key to go from ``previous`` to ``current`` (a key
    that went down — it cannot — adds nothing)."""
    return {k: v - previous.get(k, 0) for k, v in current.items() if v > previous.get(k, 0)}


# -- the metrics directory -----------------------------------------------------------------------
def prepare_multiprocess_dir() -> str:
    """A fresh directory for this run's metrics, named in ``PROMETHEUS_MULTIPROC_DIR``."""
    if "prometheus_client" in sys.modules:  # its value class is already chosen: the sums would be wrong
        raise RuntimeError("prepare_multiprocess_dir() must run before prometheus_client is imported")
    path = tempfile.mkdtemp(prefix="msgin5g-metrics-")
    os.environ[ENV] = path
    return path


def remove_multiprocess_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(ENV) == path:
        del os.environ[ENV]


# -- inside each worker --------------------------------------------------------------------------
class WorkerMirror:
    """Copies a worker's in-memory counts into multiprocess series."""

    def __init__(self, running):
        from prometheus_client import Counter, Gauge

        self.running = running
        self.events = Counter(
            "msgin5g_server_service_events",
            "What the SCM-S's service did (created, replaced, deleted, scoped-ok, bulk-ok, ...).",
            ("event",),
            registry=None,
        )
        self.oscore = Counter(
            "msgin5g_server_oscore_events",
            "OSCORE key registry and context events of the SCM-S (SPEC D12).",
            ("event",),
            registry=None,
        )
        self.observers = Gauge(
            "msgin5g_server_observers",
            "Active observations of individual documents (RFC 7641), all workers.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self._seen: dict[str, dict[str, int]] = {"events": {}, "oscore": {}}

    def _copy(self, name: str, counter, current: Mapping[str, int]) -> None:
        current = {k: int(v) for k, v in current.items()}
        for key, n in deltas(self._seen[name], current).items():
            counter.labels(key).inc(n)
        self._seen[name] = current

    def sync(self) -> None:
        r = self.running
        self._copy("events", self.events, r.service.counters)
        if r.keyring is not None:
            self._copy("oscore", self.oscore, {**r.keyring.counters, **getattr(r.root, "counters", {})})
        self.observers.set(r.site.observers.total())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(MIRROR_INTERVAL)
            try:
                self.sync()
            except Exception:  # the next round tries again
                log.debug("metrics mirror", exc_info=True)


def worker_hook(ops):
    """The hook :class:`~msgin5g.server.workers.Supervisor` runs in each worker once it listens."""

    async def hook(running, index: int):
        ops.metrics.set_worker(str(index))
        mirror = WorkerMirror(running)
        task = asyncio.ensure_future(mirror.run())

        async def close() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                mirror.sync()

        return close

    return hook


# -- the supervisor's HTTP side ------------------------------------------------------------------
class _NoSite:
    """The console's notifications go through the store's change feed to the workers' observers."""

    def notify(self, *args) -> None:
        pass


@dataclass
class StoreSide:
    """What the console needs of a running server, without CoAP: the store every worker shares."""

    config: object
    store: object
    service: object
    listeners: list[str]
    keyring: object | None
    site: _NoSite = field(default_factory=_NoSite)


class WorkersHttp:
    """``/metrics`` (all workers), ``/healthz``, ``/readyz`` and ``/console/``, served from the
    supervisor's event loop (:func:`msgin5g.server.workers.run_supervised`'s ``side``)."""

    def __init__(self, config, http: tuple[str, int], *, console: bool, token_file: str | None):
        self.config = config
        self.address = http
        self.console = console
        self.token_file = token_file
        self.http = None
        self.store = None
        self.console_app = None
        self.console_url: str | None = None
        self.sup = None

    def _registry(self):
        from prometheus_client import CollectorRegistry
        from prometheus_client.core import CounterMetricFamily

        from .metrics import GaugeCallbacks, cached, register_callback

        reg = CollectorRegistry()
        sup, store, sids = self.sup, self.store, tuple(self.config.service_ids)
        from .server import STORED_DOCS_TTL

        register_callback(
            reg,
            GaugeCallbacks(
                "server",
                {
                    "workers": ("Worker processes running (--workers).", lambda: sup.alive()),
                    "stored_documents": (
                        "UE configuration documents in the store (all served valServiceIds; "
                        f"counted at most every {STORED_DOCS_TTL:g} s).",
                        cached(lambda: sum(store.count(s) for s in sids), STORED_DOCS_TTL),
                    ),
                },
            ),
        )

        class Restarts:
            def collect(self):
                fam = CounterMetricFamily(
                    "msgin5g_server_worker_restarts", "Workers restarted by the supervisor after they died."
                )
                fam.add_metric([], sup.restarts)
                yield fam

        register_callback(reg, Restarts())
        return reg

    async def start(self, sup) -> list[str]:
        from prometheus_client import multiprocess

        from ..server.app import ServerStartError
        from ..server.service import ScmService
        from ..store import default_db_url, open_store
        from .console import Console
        from .http import banner_lines, make_app, start_http
        from .server import load_or_create_token

        self.sup = sup
        sup.on_exit = mark_dead
        cfg = self.config
        self.store = open_store(cfg.db_url or default_db_url())
        reg = self._registry()

        def ready() -> str | None:
            problem = None
            try:
                for sid in cfg.service_ids:
                    self.store.count(sid)
            except Exception as e:
                problem = f"the store does not answer: {type(e).__name__}: {e}"
            return readiness(sup.alive(), sup.n, problem, sup.stopping)

        app = make_app(reg, ready=ready, actor="scm-s", health=lambda: health(sup.alive(), sup.n))
        if self.console:
            token = None
            if not cfg.insecure and self.token_file:
                token = load_or_create_token(self.token_file)
            elif not cfg.insecure:
                token = secrets.token_urlsafe(24)
            svc_cfg = cfg.service
            svc_cfg.service_ids = tuple(cfg.service_ids)
            svc_cfg.api_prefix = tuple(cfg.api_prefix)
            service = ScmService(self.store, svc_cfg)
            side = StoreSide(cfg, self.store, service, sup.listeners, None if cfg.insecure else True)
            view = type(reg)()  # what the console's live counters read: every worker's series
            multiprocess.MultiProcessCollector(view)
            self.console_app = Console(side, token=token, registry=view)
            self.console_app.install(app)
        try:
            self.http = await start_http(app, *self.address)
        except OSError as e:
            raise ServerStartError(f"cannot serve HTTP on {self.address[0]}:{self.address[1]}: {e}") from None
        console = self.console_app is not None
        token = self.console_app.token if console else None
        self.console_url, lines = banner_lines(self.http.url, console, token, self.token_file)
        return lines

    async def close(self) -> None:
        if self.console_app is not None:
            await self.console_app.close()
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.store is not None:
            self.store.close()
            self.store = None


def service_counters() -> dict[str, int]:
    """The service's counters of every worker, from the multiprocess files (the shutdown summary)."""
    from prometheus_client import CollectorRegistry, multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg)
    out: dict[str, int] = {}
    for metric in reg.collect():
        if metric.name == "msgin5g_server_service_events":
            for s in metric.samples:
                if s.name.endswith("_total"):
                    out[s.labels["event"]] = int(s.value)
    return out


def mark_dead(pid: int) -> None:
    """prometheus_client: drop the live gauges of a worker that exited."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
