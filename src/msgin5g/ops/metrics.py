"""Prometheus metrics of the long-running actors (SPEC D15).

Every name starts with ``msgin5g_``; counters end in ``_total``; no label carries a UE identity (a
path is reported as its template, a code as ``"2.05"``). Each actor gets its own
:class:`prometheus_client.CollectorRegistry`, so that several actors can share one process (the
demo, the tests) without their series mixing.

The relay and the gateway already count what they do (``RelayCounters``, the gateway's ``stats``):
:class:`SnapshotCollector` reads those at scrape time instead of counting twice. The SCM-S is
measured by :class:`InstrumentedSite`, a thin wrapper around its aiocoap resource that also writes
the access log (``-v``) and the refused-request log (4.01/4.03, always).

Multi-process (``--workers``): when ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus_client keeps
each worker's values in files there and :func:`scrape` aggregates them (prometheus_client's
multiprocess mode); callback gauges are then those of the process that serves HTTP. How
``msgin5g server --workers N --http`` sets this up, and mirrors what workers keep in memory:
:mod:`.workers`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import api

disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them

PREFIX = "msgin5g"
access_log = logging.getLogger("msgin5g.access")
refusal_log = logging.getLogger("msgin5g.refused")

#: request latency buckets (s): a cached GET is ~0.2 ms, a large bulk GET tens of ms
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: UEs per bulk GET (SPEC D6, D7)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000)


def code_text(code: int) -> str:
    """0x45 → "2.05" (RFC 7252 §12.1 notation)."""
    return f"{code >> 5}.{code & 31:02d}"


def outcome_of(code: int) -> str:
    """A small fixed set of outcomes for dashboards: ok / unauthenticated / forbidden / not_found /
    client_error / server_error (TS 24.538 6.2.1.2 outcomes as the SCM-S answers them)."""
    if code < 0x60:
        return "ok"
    return {0x81: "unauthenticated", 0x83: "forbidden", 0x84: "not_found"}.get(
        code, "client_error" if code < 0xA0 else "server_error"
    )


def path_template(segments: Iterable[str], prefix: tuple[str, ...] = ()) -> str:
    """The route a Uri-Path names, with identifiers replaced: never a UE or document identifier
    in a label (SPEC D15). TS 24.546 C.1.1 / C.2.1.1 / C.3.1.1 URI structure."""
    segs = tuple(segments)
    if segs == (".well-known", "core"):
        return "/.well-known/core"
    if prefix and segs[: len(prefix)] == prefix:
        segs = segs[len(prefix) :]
    routes = ((api.SU_UC, api.UE_CONFIGURATIONS), (api.SU_UP, api.USER_PROFILES))
    if (
        len(segs) in (5, 6)
        and segs[1] == api.API_VERSION
        and segs[2] == api.VAL_SERVICES
        and (segs[0], segs[4]) in routes
    ):
        base = f"/{segs[0]}/v1/val-services/{{valServiceId}}/{segs[4]}"
        return base if len(segs) == 5 else base + "/{docId}"
    return "other"


def is_bulk(query: Iterable[str]) -> tuple[bool, int]:
    """(is this a bulk GET, how many UEs it names) — SPEC D6 query structure."""
    flag = False
    n = 0
    for q in query:
        if q.startswith((api.Q_BULK_FLAG + "=", api.Q_BULK_FLAG_SEED + "=")):
            flag = True
        elif q.startswith(api.Q_UE_URI + "="):
            n += 1
    return flag, n


class ServerMetrics:
    """The SCM-S's series (TS 24.546 C.3 resources)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        p = f"{PREFIX}_server"
        self.requests = Counter(
            f"{p}_requests",
            "CoAP requests answered by the SCM-S, by method, route template, response code and outcome.",
            ("method", "path", "code", "outcome"),
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{p}_request_duration_seconds",
            "Time from request to (first) response inside the SCM-S, by route template.",
            ("path",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch = Histogram(
            f"{p}_bulk_batch_ues",
            "UEs named in one bulk GET (SPEC D6).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.unauthenticated = Counter(
            f"{p}_unauthenticated_requests",
            "Requests refused before they reached the resources (4.01: no or unknown OSCORE key).",
            registry=self.registry,
        )
        self._label_cache: dict[tuple, Any] = {}
        self._worker = None

    def set_worker(self, index: str) -> None:
        """In worker ``index`` of ``--workers N`` (SPEC D14): also count its requests apart."""
        self._worker = Counter(
            f"{PREFIX}_server_worker_requests",
            "CoAP requests answered, by worker process (--workers): how the kernel spread the load.",
            ("worker",),
            registry=None,
        ).labels(index)

    def observe(self, method: str, path: str, code: int, seconds: float, batch: int | None) -> None:
        key = (method, path, code)
        child = self._label_cache.get(key)
        if child is None:
            child = self._label_cache[key] = (
                self.requests.labels(method, path, code_text(code), outcome_of(code)),
                self.latency.labels(path),
            )
        child[0].inc()
        child[1].observe(seconds)
        if self._worker is not None:
            self._worker.inc()
        if batch is not None:
            self.batch.observe(batch)


class _MeteredPipe:
    """The request's pipe; the first response added is noted (``site._note``) *before* it is sent —
    so a client that has its answer also finds it counted (with ``--workers`` the scrape is
    answered by another process, which would otherwise see the count a moment late)."""

    __slots__ = ("_pipe", "_site", "_t0", "code", "request")

    def __init__(self, pipe, site: InstrumentedSite, t0: float):
        self._pipe = pipe
        self._site = site
        self._t0 = t0
        self.request = pipe.request
        self.code: int | None = None

    def add_response(self, response, is_last: bool = False) -> None:
        if self.code is None:
            self.code = int(response.code)
            try:
                self._site._note(self.request, self.code, self._t0)
            except Exception:  # counting must never keep an answer from going out
                logging.getLogger("msgin5g.ops").exception("metrics")
        self._pipe.add_response(response, is_last=is_last)

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def _remote(request) -> str:
    try:
        return request.remote.hostinfo
    except Exception:  # a remote without host information (e.g. inside an OSCORE wrapper)
        return "?"


class InstrumentedSite:
    """Wraps the SCM-S resource tree: metrics (when ``metrics`` is given), an access line per
    request at INFO (``-v``) and a WARNING line per refused request (4.01/4.03) — SPEC D15.

    ``outer=True`` wraps the OSCORE layer of a secured server: it sees only the plain 4.01
    answers to requests that did not authenticate; the inner wrapper sees everything else.
    Every other attribute is the wrapped site's."""

    def __init__(self, site, metrics: ServerMetrics | None = None, *, outer: bool = False, prefix=()):
        self._site = site
        self._metrics = metrics
        self._outer = outer
        self._prefix = tuple(prefix)

    def __getattr__(self, name):
        return getattr(self._site, name)

    async def render_to_pipe(self, pipe) -> None:
        await self._site.render_to_pipe(_MeteredPipe(pipe, self, time.perf_counter()))

    def _note(self, request, code: int, t0: float) -> None:
        """Count and log one answered request. Per request on the server's hot path: nothing is
        derived (route, bulk size) unless a metric or a log line is going to use it."""
        if self._outer:
            if code == 0x81:  # a protected answer travels as 2.04/2.05: this one is plain
                if self._metrics is not None:
                    self._metrics.unauthenticated.inc()
                refusal_log.warning("refused 4.01 from %s: not authenticated (OSCORE)", _remote(request))
            return
        refused = code in (0x81, 0x83)
        logged = access_log.isEnabledFor(logging.INFO)
        if self._metrics is None and not refused and not logged:
            return
        seconds = time.perf_counter() - t0
        method = str(request.code).split(" ")[0] if request.code else "?"
        path = path_template(request.opt.uri_path, self._prefix)
        if self._metrics is not None:
            bulk, n = is_bulk(request.opt.uri_query) if method == "GET" else (False, 0)
            self._metrics.observe(method, path, code, seconds, n if bulk else None)
        if refused:
            refusal_log.warning("refused %s %s %s from %s", code_text(code), method, path, _remote(request))
        if logged:
            access_log.info(
                "%s %s %s %s %.1f ms", _remote(request), method, path, code_text(code), seconds * 1000
            )


class SnapshotCollector:
    """Reads an actor's own counters at scrape time (no second set of counters).

    ``snapshot()`` returns a flat mapping; an ``int`` becomes ``{prefix}_{name}_total``; a mapping
    of ints becomes ``{prefix}_{name}_total{label=key}`` (``labels`` names the label per entry,
    default ``kind``). ``gauges()`` returns ``{name: (help, value)}`` for instantaneous values."""

    def __init__(
        self,
        prefix: str,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        labels: Mapping[str, str] | None = None,
        gauges: Callable[[], Mapping[str, tuple[str, float]]] | None = None,
        what: str = "",
    ):
        self.prefix = f"{PREFIX}_{prefix}"
        self.snapshot = snapshot
        self.labels = dict(labels or {})
        self.gauges = gauges
        self.what = what or prefix

    @staticmethod
    def metric_name(name: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")

    def collect(self):
        for name, value in sorted(self.snapshot().items()):
            metric = f"{self.prefix}_{self.metric_name(name)}"
            doc = f"{self.what}: {name}"
            if isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                fam = CounterMetricFamily(metric, doc)
                fam.add_metric([], value)
                yield fam
            elif isinstance(value, Mapping):
                label = self.labels.get(name, "kind")
                fam = CounterMetricFamily(metric, doc, labels=[label])
                for key, n in sorted(value.items()):
                    if isinstance(n, int | float):
                        fam.add_metric([str(key)], n)
                yield fam
        if self.gauges is not None:
            for name, (doc, value) in sorted(self.gauges().items()):
                fam = GaugeMetricFamily(f"{self.prefix}_{self.metric_name(name)}", doc)
                fam.add_metric([], value)
                yield fam


class EventCounters:
    """A ``{event: count}`` dict (the gateway's ``stats``, the SCM-S service's ``counters``) as
    one counter family with an ``event`` label."""

    def __init__(self, name: str, doc: str, counts: Callable[[], Mapping[str, int]]):
        self.name = f"{PREFIX}_{name}"
        self.doc = doc
        self.counts = counts

    def collect(self):
        fam = CounterMetricFamily(self.name, self.doc, labels=["event"])
        for key, n in sorted(self.counts().items()):
            fam.add_metric([key], n)
        yield fam


class GaugeCallbacks:
    """Instantaneous values read at scrape time: ``{name: (help, callable)}``."""

    def __init__(self, prefix: str, gauges: Mapping[str, tuple[str, Callable[[], float]]]):
        self.prefix = f"{PREFIX}_{prefix}"
        self.gauges = dict(gauges)

    def collect(self):
        for name, (doc, fn) in sorted(self.gauges.items()):
            try:
                value = float(fn())
            except Exception:  # a gauge that cannot be read now (store down) is left out
                logging.getLogger("msgin5g.ops").debug("gauge %s unavailable", name, exc_info=True)
                continue
            fam = GaugeMetricFamily(f"{self.prefix}_{name}", doc)
            fam.add_metric([], value)
            yield fam


def cached(fn: Callable[[], float], ttl: float, clock=time.monotonic) -> Callable[[], float]:
    """``fn`` re-evaluated at most every ``ttl`` seconds: a gauge that costs a store query (counting
    a million documents) must not block the event loop at every scrape."""
    state: dict[str, float] = {}

    def get() -> float:
        now = clock()
        if "at" not in state or now - state["at"] >= ttl:
            state["value"], state["at"] = fn(), now
        return state["value"]

    return get


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The exposition text of ``registry`` (and of every worker in multi-process mode)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        body = generate_latest(merged)
        # callback collectors (gauges, snapshot adapters) are not written to the shared files
        own = CollectorRegistry()
        for collector in getattr(registry, "_ops_callbacks", ()):
            own.register(collector)
        return body + generate_latest(own), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST


def register_callback(registry: CollectorRegistry, collector) -> None:
    """Register a collector read at scrape time (kept apart for multi-process scrapes)."""
    registry.register(collector)
    if not hasattr(registry, "_ops_callbacks"):
        registry._ops_callbacks = []  # type: ignore[attr-defined]
    registry._ops_callbacks.append(collector)  # type: ignore[attr-defined]
