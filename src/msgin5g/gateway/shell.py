"""The Gateway UE's asyncio shell (TS 24.538 6.2.2.x; SPEC D9, D10, D13).

It performs what :class:`~.core.GatewayCore` decides and decides nothing itself: a UDP endpoint
towards the constrained UEs (MSGin5G-6), the durable :mod:`.queue`, a :class:`~.upstream.CmClient`
towards the SCM-S (collocated :class:`~.upstream.UpstreamScmc` or SEAL-C), OSCORE on MSGin5G-6 and
one timer for the core's deadlines.

Why a raw datagram endpoint rather than aiocoap's server ``Site`` on the MSGin5G-6 side: the
gateway must (1) acknowledge a request only *after* it is stored, (2) answer it minutes later
with a confirmable separate response (RFC 7252 §5.2.2), and (3) still answer it after a crash
and restart, from nothing but the token and endpoint in its store. aiocoap keeps that exchange
state in memory inside its message and token managers and cannot send a response for a request
it did not receive in this process.

Life of a request: a receive burst goes to :meth:`~.core.GatewayCore.on_datagrams`; its
:class:`~.core.Store` is one SQLite transaction, *then* the core acknowledges (empty ACKs) and
hands the requests to its policy; each :class:`~.core.Fetch` runs on the CM client, whose
outcomes come back one bulk GET at a time; answers go out as CON separate responses
(:data:`SEND_BURST` per event-loop turn, so the UEs' ACKs are read in between; empty ACKs and RSTs
go out at once, never behind answers); a request leaves
the store when the UE acknowledges or rejects its answer, when its retransmissions are exhausted,
or when a repeat of the same UE supersedes it. After ``kill -9`` everything still in the store is
restored, re-fetched and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field

from ..coap.udp import DatagramSocket
from ..security.endpoint import Refused, ServerProtection, raw_options
from ..security.storekeys import StoreKeyring
from ..store.keysqlite import SqliteKeyStore
from . import wire
from .core import (
    Ack,
    Action,
    CoreConfig,
    Fetch,
    GatewayCore,
    MarkAnswered,
    Refusal,
    Remove,
    Reply,
    Store,
    Verified,
)
from .policy import ServicePolicy
from .queue import RequestQueue
from .upstream import CmClient
from .upstream_rules import UpstreamOutcome

log = logging.getLogger("msgin5g.gateway")

#: Datagrams sent per event-loop turn, so that the UEs' ACKs are read in between (a whole split
#: bulk answer sent at once would fill the receive buffer with their ACKs).
SEND_BURST = 128


@dataclass
class GatewayConfig:
    """Settings of one Gateway UE (the ``msgin5g gateway`` options)."""

    host: str = "127.0.0.1"
    port: int = 65402  # SPEC D11: MSGin5G-6 side
    service_id: str = "msgin5g"
    policy: ServicePolicy = field(default_factory=ServicePolicy)
    state_path: str = "gateway-state.db"
    cache: bool = True  # answer repeats from the cache while Max-Age lasts
    ack_timeout: float = 2.0  # RFC 7252 ACK_TIMEOUT for the CON separate responses
    max_retransmit: int = 4
    adaptive_rto: bool = True  # ... their first timeout the UE's RFC 6298 RTO once measured
    bulk_concurrency: int = 4  # bulk operations in flight towards the CM client
    single_concurrency: int = 64  # single forwards in flight (no bulk policy)
    record_answers: bool = False  # keep the order in which requests were answered (tests)
    #: OSCORE on MSGin5G-6 (standing in for PC5 unicast security, TS 33.503; SPEC D12), with the
    #: constrained UEs' keys in the state database (``msgin5g keys import --db STATE``); False: the
    #: MSGin5G-6 side is not secured
    oscore: bool = False
    max_open_contexts: int = 65536

    def core(self) -> CoreConfig:
        return CoreConfig(
            self.service_id,
            self.policy,
            self.cache,
            self.ack_timeout,
            self.max_retransmit,
            self.record_answers,
            SEND_BURST,
            self.adaptive_rto,
        )


class OscoreOnMsgin5g6:
    """The core's :class:`~.core.Security` with the keys of the state database (SPEC D12)."""

    def __init__(self, protection: ServerProtection):
        self.protection = protection

    def verify(self, data: bytes, msg: wire.CoapMessage) -> Verified | Refusal:
        result = self.protection.verify(data)
        if isinstance(result, Refused):
            log.info("refused a request: %s", result.reason)
            ch = result.response
            challenge = None
            if ch is not None:
                challenge = wire.CoapMessage(
                    msg.mtype, int(ch.code), msg.mid, msg.token, raw_options(ch), ch.payload
                )
            return Refusal(result.reason, challenge)
        p = result.plain
        inner = wire.CoapMessage(msg.mtype, int(p.code), msg.mid, msg.token, raw_options(p), p.payload)
        return Verified(inner, result.binding, result.identity)

    def protect(self, msg: wire.CoapMessage, binding: bytes) -> wire.CoapMessage | None:
        sealed = self.protection.protect(binding, msg.code, msg.options, msg.payload)
        if sealed is None:
            return None
        code, options, payload = sealed
        return wire.CoapMessage(msg.mtype, code, msg.mid, msg.token, options, payload)


class GatewayUe:
    """The MSGin5G Gateway Client with its MSGin5G-6 endpoint (SPEC D9): performs the core's actions."""

    def __init__(self, config: GatewayConfig, cm: CmClient):
        self.config = config
        self.cm = cm
        self.core = GatewayCore(config.core())
        self.queue: RequestQueue | None = None
        self.protection: ServerProtection | None = None
        self._endpoint: DatagramSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._outbox_scheduled = False
        self._to_remove: list[int] = []
        self._to_mark: list[int] = []
        self._store_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self._bulk_sem = asyncio.Semaphore(config.bulk_concurrency)
        self._single_sem = asyncio.Semaphore(config.single_concurrency)
        self._closed = False

    @property
    def stats(self) -> dict[str, int]:
        return self.core.stats

    @property
    def answer_log(self) -> list[int]:
        return self.core.answer_log

    @property
    def policy(self):
        return self.core.policy

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> GatewayUe:
        self._loop = asyncio.get_running_loop()
        if self.config.oscore:
            keys = SqliteKeyStore(self.config.state_path)
            if keys.count_keys() == 0:
                log.warning(
                    "no active OSCORE key in %s: every MSGin5G-6 request will be refused (4.01); "
                    "provision the UEs with 'msgin5g keys import UES.csv --gateway-state %s --out BUNDLE'",
                    self.config.state_path,
                    self.config.state_path,
                )
            self.protection = ServerProtection(StoreKeyring(keys, max_open=self.config.max_open_contexts))
            self.core.security = OscoreOnMsgin5g6(self.protection)
        self.queue = RequestQueue(self.config.state_path)
        self._endpoint = DatagramSocket.bind(self.config.host, self.config.port, self._on_burst)
        self.config.port = self._endpoint.local_address[1]
        pending = self.queue.pending()
        if pending:
            log.info("restored %d stored requests", len(pending))
            self._perform(self.core.restore(self._loop.time(), time.time(), pending))
        return self

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def unanswered(self) -> int:
        """Requests stored and not yet delivered."""
        return self.core.unanswered

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._write_store()
        if self._endpoint is not None:
            self._endpoint.close()
        if self.queue is not None:
            self.queue.close()
        if self.protection is not None:  # every key's state is in the store already
            self.protection.keyring.close()
            self.protection.keyring.store.close()
        await self.cm.close()

    # -- events into the core ----------------------------------------------------------------------
    def _on_burst(self, burst: list[tuple[bytes, tuple[str, int]]]) -> None:
        if self._closed:
            return
        self._perform(self.core.on_datagrams(self._loop.time(), time.time(), burst))

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self._on_burst([(data, addr)])

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        if not self._closed:
            self._perform(self.core.on_tick(self._loop.time()))

    # -- performing actions ------------------------------------------------------------------------
    def _perform(self, actions: list[Action]) -> None:
        for a in actions:
            kind = type(a)
            if kind is Ack:  # at once: a UE whose request waits unacknowledged sends no more
                if self._endpoint is not None and not self._closed:
                    self._endpoint.sendto(a.data, a.addr)
            elif kind is Reply:
                self._send(a.data, a.addr)
            elif kind is Remove:
                self._to_remove.extend(a.req_ids)
                self._schedule_store()
            elif kind is MarkAnswered:
                self._to_mark.extend(a.req_ids)
                self._schedule_store()
            elif kind is Store:
                self._store(a)
            elif kind is Fetch:
                self._spawn(self._fetch(a))
        if self.core.answers_waiting and not self._outbox_scheduled and self._loop is not None:
            self._outbox_scheduled = True
            self._loop.call_soon(self._drain)
        self._arm()

    def _store(self, a: Store) -> None:
        """A receive burst in one transaction; only then is it acknowledged (SPEC D9)."""
        assert self.queue is not None
        now = self._loop.time()
        try:
            stored = self.queue.add_many(a.requests)
        except sqlite3.Error as e:
            log.error("request store failed: %s", e)
            self._perform(self.core.on_store_failed(now, a.batch))
            return
        self._perform(self.core.on_stored(now, a.batch, stored))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm(self) -> None:
        if self._closed or self._loop is None:
            return
        deadline = self.core.next_deadline()
        if deadline is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    async def _fetch(self, f: Fetch) -> None:
        """One bulk operation (outcomes reported per bulk GET, as they complete) or single forward."""

        def report(o: UpstreamOutcome) -> None:
            if not self._closed:
                self._perform(self.core.on_outcome(self._loop.time(), f.op, o))

        try:
            if f.bulk:
                async with self._bulk_sem:
                    await self.cm.bulk_configure(self.config.service_id, f.keys, report)
            else:
                async with self._single_sem:
                    report(await self.cm.single_configure(self.config.service_id, f.query))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("upstream fetch failed")
        if not self._closed:
            self._perform(self.core.on_fetch_done(self._loop.time(), f.op))

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Queue a datagram; at most :data:`SEND_BURST` go out per event-loop turn."""
        self._outbox.append((data, addr))
        if not self._outbox_scheduled and self._loop is not None:
            self._outbox_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """One event-loop turn's datagrams: what is queued, then answers the core holds back
        (:meth:`~.core.GatewayCore.send_answers`: their retransmission timers start now)."""
        if self._closed or self._endpoint is None:
            self._outbox_scheduled = False
            return
        room = SEND_BURST - len(self._outbox)
        if room > 0 and self.core.answers_waiting:
            self._perform(self.core.send_answers(self._loop.time(), room))  # into the outbox
        for _ in range(min(SEND_BURST, len(self._outbox))):
            data, addr = self._outbox.popleft()
            self._endpoint.sendto(data, addr)
        if self._outbox or self.core.answers_waiting:
            self._loop.call_soon(self._drain)
        else:
            self._outbox_scheduled = False

    def _schedule_store(self) -> None:
        if not self._store_scheduled and self._loop is not None:
            self._store_scheduled = True
            self._loop.call_later(0.02, self._write_store)

    def _write_store(self) -> None:
        """Batched state changes: answered, and finished (removed)."""
        self._store_scheduled = False
        if self.queue is None:
            return
        mark, self._to_mark = self._to_mark, []
        remove, self._to_remove = self._to_remove, []
        try:
            if mark:
                self.queue.mark_answered(mark)
            if remove:
                self.queue.remove_many(remove)
        except sqlite3.Error as e:  # they will be answered again after a restart: harmless
            log.error("request store update failed: %s", e)

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until no stored request is left unanswered and undelivered (tests, benchmarks)."""

        async def _wait() -> None:
            while self.core.busy or self._outbox or self._store_scheduled:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(_wait(), timeout)
