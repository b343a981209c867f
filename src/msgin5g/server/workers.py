"""``msgin5g server --workers N``: N SCM-S processes on one port, under one supervisor (SPEC D14).

Every worker binds the same UDP and TCP port with SO_REUSEPORT (aiocoap sets it on its server
sockets). The kernel spreads datagrams by their source and destination addresses and ports, so
every packet of one UDP flow reaches the same worker — which keeps a peer's message-ID
deduplication (RFC 7252 §4.5), its block-wise state and its observations in one process — and each
TCP connection lives in the worker that accepted it. Whatever one worker changes, all see: the
store is shared, Observe notifications cross processes through the change feed
(:mod:`.changefeed`) and kept bulk answers live in the store (:class:`.service.BulkAnswerCache`).
WebSockets (aiocoap binds them without SO_REUSEPORT) are served by worker 0 only.

The supervisor starts the workers, prints one ``listening`` line per listener once all of them are
ready, restarts a worker that dies (a worker that cannot even start stops the whole server with
its error), and on SIGTERM or SIGINT stops them all and waits for them.

The decisions are pure (:func:`restart_decision`); :class:`Supervisor` performs them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from .app import ServerConfig, ServerStartError, check_port, pick_port, start_server

log = logging.getLogger("msgin5g.server.workers")

#: A worker that dies sooner than this after starting counts as a crash loop.
MIN_UPTIME = 5.0
#: Crash-loop restarts allowed in a row before the supervisor gives up.
MAX_QUICK_RESTARTS = 5
STOP_TIMEOUT = 10.0


def worker_count(value: str) -> int:
    """``--workers``: a positive integer, or ``auto`` for one per core."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"--workers takes a number or 'auto', not {value!r}") from None
    if n < 1:
        raise ValueError("--workers must be at least 1")
    return n


@dataclass(frozen=True)
class Restart:
    delay: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


def restart_decision(uptime: float, quick_restarts: int) -> Restart | GiveUp:
    """What to do when a worker exits while the server is running: restart it at once after a good
    run, with a growing delay after quick deaths, and give up after a crash loop."""
    if uptime >= MIN_UPTIME:
        return Restart(0.0)
    if quick_restarts >= MAX_QUICK_RESTARTS:
        return GiveUp(
            f"a worker died {quick_restarts + 1} times in a row within {MIN_UPTIME:.0f} s of starting"
        )
    return Restart(min(0.25 * 2**quick_restarts, 4.0))


def worker_config(config: ServerConfig, index: int, port: int) -> ServerConfig:
    """Worker ``index``'s configuration: the shared port, WebSockets on worker 0 only."""
    return dataclasses.replace(
        config, port=port, shared_port=True, ws_port=config.ws_port if index == 0 else None
    )


def _run_worker(config: ServerConfig, ready: Connection) -> None:
    """Body of one worker process: serve until SIGTERM/SIGINT."""

    async def main() -> None:
        try:
            running = await start_server(config)
        except ServerStartError as e:
            ready.send(("error", str(e)))
            return
        ready.send(("ready", running.listeners))
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        try:
            await done.wait()
        finally:
            await running.close()

    asyncio.run(main())


@dataclass
class _Worker:
    index: int
    process: multiprocessing.Process
    started: float
    quick_restarts: int = 0


class Supervisor:
    """Starts, restarts and stops the worker processes of one SCM-S."""

    def __init__(self, config: ServerConfig, workers: int):
        self.config = config
        self.n = workers
        self.port = config.port or pick_port(config.host, config.tcp)
        if config.port:
            check_port(config.host, self.port, config.tcp)
        self._ctx = multiprocessing.get_context("fork")
        self.workers: dict[int, _Worker] = {}
        self.listeners: list[str] = []
        self.stopping = False

    def _spawn(self, index: int) -> tuple[multiprocessing.Process, Connection]:
        parent, child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_run_worker,
            args=(worker_config(self.config, index, self.port), child),
            name=f"msgin5g-scm-s-{index}",
            daemon=False,
        )
        proc.start()
        child.close()
        return proc, parent

    def _await_ready(
        self, proc: multiprocessing.Process, conn: Connection, timeout: float = 60.0
    ) -> list[str]:
        if not conn.poll(timeout):
            proc.kill()
            raise ServerStartError("a worker did not become ready within 60 s")
        try:
            kind, value = conn.recv()
        except EOFError:
            raise ServerStartError(f"a worker exited while starting (exit code {proc.exitcode})") from None
        finally:
            conn.close()
        if kind == "error":
            raise ServerStartError(value)
        return value

    def start(self) -> list[str]:
        """Start every worker; returns the listener URIs once all are ready."""
        try:
            for i in range(self.n):
                proc, conn = self._spawn(i)
                self.workers[i] = _Worker(i, proc, time.monotonic())
                listeners = self._await_ready(proc, conn)
                if i == 0:
                    self.listeners = listeners
        except BaseException:
            self.stop()
            raise
        return self.listeners

    def supervise(self, should_stop) -> str | None:
        """Watch the workers until ``should_stop()``; restart the dead. Returns an error if it gave up."""
        while not should_stop():
            sentinels = {w.process.sentinel: w for w in self.workers.values()}
            for s in wait(list(sentinels), timeout=0.2):
                w = sentinels[s]
                if should_stop():
                    break
                uptime = time.monotonic() - w.started
                log.warning("worker %d exited (code %s) after %.1f s", w.index, w.process.exitcode, uptime)
                decision = restart_decision(uptime, w.quick_restarts)
                if isinstance(decision, GiveUp):
                    return decision.reason
                time.sleep(decision.delay)
                proc, conn = self._spawn(w.index)
                try:
                    self._await_ready(proc, conn)
                except ServerStartError as e:
                    return f"worker {w.index} cannot restart: {e}"
                quick = 0 if uptime >= MIN_UPTIME else w.quick_restarts + 1
                self.workers[w.index] = _Worker(w.index, proc, time.monotonic(), quick)
                log.warning("worker %d restarted (pid %d)", w.index, proc.pid)
        return None

    def stop(self) -> None:
        """SIGTERM every worker, wait for them, kill those that do not stop."""
        self.stopping = True
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                log.warning("worker %d did not stop in %.0f s; killing it", w.index, STOP_TIMEOUT)
                w.process.kill()
                w.process.join()


def run_supervised(config: ServerConfig, workers: int, announce) -> None:
    """Run ``workers`` processes until SIGTERM/SIGINT; ``announce(uri)`` once per listener when all
    are ready. Raises :class:`ServerStartError` when the server cannot start or keep running."""
    stop = {"now": False}

    def on_signal(signum, frame) -> None:
        stop["now"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sup = Supervisor(config, workers)
    try:
        for uri in sup.start():
            announce(uri)
        log.info("%d workers serving on port %d", workers, sup.port)
        reason = sup.supervise(lambda: stop["now"])
    finally:
        sup.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if reason is not None:
        raise ServerStartError(reason)
