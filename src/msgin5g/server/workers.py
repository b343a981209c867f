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
its error), and on SIGTERM or SIGINT stops them all and waits for them. It runs an event loop, from
which ``--http`` is served (SPEC D15: :mod:`msgin5g.ops.workers` — metrics of every worker in
prometheus_client's multiprocess mode, health checks, the web console).

The decisions are pure (:func:`restart_decision`); :class:`Supervisor` performs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Protocol

from .app import RunningServer, ServerConfig, ServerStartError, check_port, pick_port, start_server

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


#: run inside a worker once it listens: ``await hook(running, index)`` → an async closer or None
WorkerHook = Callable[[RunningServer, int], Awaitable[Callable[[], Awaitable[None]] | None]]


def _run_worker(
    config: ServerConfig, ready: Connection, index: int = 0, hook: WorkerHook | None = None
) -> None:
    """Body of one worker process: serve until SIGTERM/SIGINT."""
    # forked from the supervisor's running event loop: its signal wake-up pipe is the parent's
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)

    async def main() -> None:
        try:
            running = await start_server(config)
        except ServerStartError as e:
            ready.send(("error", str(e)))
            return
        closer = await hook(running, index) if hook is not None else None
        ready.send(("ready", running.listeners))
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        try:
            await done.wait()
        finally:
            if closer is not None:
                await closer()
            await running.close()

    asyncio.run(main())


@dataclass
class _Worker:
    index: int
    process: multiprocessing.Process
    started: float
    quick_restarts: int = 0


class Supervisor:
    """Starts, restarts and stops the worker processes of one SCM-S, from an event loop (which
    may also serve the operations HTTP side: :mod:`msgin5g.ops.workers`)."""

    def __init__(self, config: ServerConfig, workers: int, *, hook: WorkerHook | None = None):
        self.config = config
        self.n = workers
        self.port = config.port or pick_port(config.host, config.tcp)
        if config.port:
            check_port(config.host, self.port, config.tcp)
        self._ctx = multiprocessing.get_context("fork")
        self.workers: dict[int, _Worker] = {}
        self.listeners: list[str] = []
        self.stopping = False
        self.hook = hook
        self.restarts = 0
        #: called with the pid of every worker that exited (prometheus_client's mark_process_dead)
        self.on_exit: Callable[[int], None] | None = None

    def alive(self) -> int:
        return sum(1 for w in self.workers.values() if w.process.is_alive())

    def _spawn(self, index: int) -> tuple[multiprocessing.Process, Connection]:
        parent, child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_run_worker,
            args=(worker_config(self.config, index, self.port), child, index, self.hook),
            name=f"msgin5g-scm-s-{index}",
            daemon=False,
        )
        proc.start()
        child.close()
        return proc, parent

    async def _await_ready(
        self, proc: multiprocessing.Process, conn: Connection, timeout: float = 60.0
    ) -> list[str]:
        deadline = time.monotonic() + timeout
        while not conn.poll():  # also true at end of file (the worker died)
            if time.monotonic() > deadline:
                proc.kill()
                conn.close()
                raise ServerStartError(f"a worker did not become ready within {timeout:.0f} s")
            await asyncio.sleep(0.02)
        try:
            kind, value = conn.recv()
        except EOFError:
            proc.join(1.0)
            raise ServerStartError(f"a worker exited while starting (exit code {proc.exitcode})") from None
        finally:
            conn.close()
        if kind == "error":
            raise ServerStartError(value)
        return value

    async def start(self) -> list[str]:
        """Start every worker; returns the listener URIs once all are ready."""
        try:
            for i in range(self.n):
                proc, conn = self._spawn(i)
                self.workers[i] = _Worker(i, proc, time.monotonic())
                listeners = await self._await_ready(proc, conn)
                if i == 0:
                    self.listeners = listeners
        except BaseException:
            self.stop()
            raise
        return self.listeners

    def _exited(self, pid: int | None) -> None:
        if pid is not None and self.on_exit is not None:
            try:
                self.on_exit(pid)
            except Exception:  # bookkeeping of a dead worker must not stop the supervisor
                log.exception("cleaning up after worker pid %s", pid)

    async def supervise(self, stop: asyncio.Event) -> str | None:
        """Watch the workers until ``stop`` is set; restart the dead. Returns an error if it gave up."""
        while not stop.is_set():
            sentinels = {w.process.sentinel: w for w in self.workers.values()}
            for s in wait(list(sentinels), timeout=0):
                w = sentinels[s]
                if stop.is_set():
                    break
                uptime = time.monotonic() - w.started
                log.warning("worker %d exited (code %s) after %.1f s", w.index, w.process.exitcode, uptime)
                w.process.join(0)
                self._exited(w.process.pid)
                decision = restart_decision(uptime, w.quick_restarts)
                if isinstance(decision, GiveUp):
                    return decision.reason
                await asyncio.sleep(decision.delay)
                proc, conn = self._spawn(w.index)
                quick = 0 if uptime >= MIN_UPTIME else w.quick_restarts + 1
                self.workers[w.index] = _Worker(w.index, proc, time.monotonic(), quick)
                try:
                    await self._await_ready(proc, conn)
                except ServerStartError as e:
                    return f"worker {w.index} cannot restart: {e}"
                self.restarts += 1
                log.warning("worker %d restarted (pid %d)", w.index, proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
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
            self._exited(w.process.pid)


class SupervisorSide(Protocol):
    """What the supervisor's event loop also serves (``--http``: :mod:`msgin5g.ops.workers`)."""

    async def start(self, supervisor: Supervisor) -> list[str]: ...

    async def close(self) -> None: ...


def run_supervised(
    config: ServerConfig,
    workers: int,
    announce: Callable[[str], None],
    *,
    hook: WorkerHook | None = None,
    side: SupervisorSide | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Run ``workers`` processes until SIGTERM/SIGINT; ``announce(line)`` once per listener when all
    are ready (then once per line ``side.start`` returns), then ``ready()``. Raises
    :class:`ServerStartError` when the server cannot start or keep running."""

    async def main() -> str | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        sup = Supervisor(config, workers, hook=hook)
        try:
            for uri in await sup.start():
                announce(f"listening {uri}")
            if side is not None:
                for line in await side.start(sup):
                    announce(line)
            if ready is not None:
                ready()
            log.info("%d workers serving on port %d", workers, sup.port)
            return await sup.supervise(stop)
        finally:
            if side is not None:
                await side.close()
            sup.stop()

    reason = asyncio.run(main())
    if reason is not None:
        raise ServerStartError(reason)
