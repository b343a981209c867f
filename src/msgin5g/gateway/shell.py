"""The Gateway UE's asyncio shell (TS 24.538 6.2.2.x; SPEC D9, D10).

It connects the pure parts — :mod:`.wire` (MSGin5G-6 messages), :mod:`.policy` (batching),
:mod:`msgin5g.bulk` (splitting) — to the world: a UDP endpoint towards the constrained UEs, the
durable :mod:`.queue`, and a :class:`~.cmclient.CmClient` towards the SCM-S. It decides nothing
itself.

Why a raw datagram endpoint rather than aiocoap's server ``Site`` on the MSGin5G-6 side: the
gateway must (1) acknowledge a request only *after* it is stored, (2) answer it minutes later
with a confirmable separate response (RFC 7252 §5.2.2), and (3) still answer it after a crash
and restart, from nothing but the token and endpoint in its store. aiocoap keeps that exchange
state in memory inside its message and token managers and cannot send a response for a request
it did not receive in this process; a separate response for a stored token is simply a CON
message we build and retransmit ourselves (ACK_TIMEOUT 2 s, MAX_RETRANSMIT 4, §4.8).

Life of a request:

1. datagram in → :func:`~.wire.parse_config_request`; an invalid one gets a piggybacked error;
   a repeat of a request answered within its Max-Age gets the cached answer piggybacked;
2. otherwise it is staged; each receive burst is stored in one SQLite transaction, *then* the
   empty ACKs go out and the burst is handed to the policy;
3. the policy's flushes run as bulk (or single) operations on the CM client; answers are split
   and sent as CON separate responses; failures go back to the policy (back-off, retry);
4. the request leaves the store when the UE acknowledges (or rejects) its response, or when its
   retransmissions are exhausted. After ``kill -9`` everything still in the store is restored,
   re-fetched and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from .. import authz
from ..bulk import BulkItem, IndividualResponse, answer_responses
from ..model import ModelError, UeIdentity
from ..problem import Problem
from ..security.endpoint import Refused, ServerProtection, raw_options
from ..security.registry import Registry
from ..security.server import ServerKeyring
from . import wire
from .cmclient import CmClient, UpstreamOutcome
from .policy import BatchPolicy, Flush, GatewayRequest, GiveUp, ResponseCache, ServicePolicy
from .queue import NewRequest, RequestQueue, StoredRequest
from .wire import ACK, CON, EMPTY, NON, RST, ConfigRequest, WireError

log = logging.getLogger("msgin5g.gateway")

#: What a secured MSGin5G-6 side answers to anything it cannot verify (as the SCM-S does)
UNAUTHENTICATED_ANSWER = IndividualResponse.from_problem(authz.UNAUTHENTICATED, max_age=0)

EXCHANGE_LIFETIME = 247.0  # s, RFC 7252 §4.8.2: how long message IDs are remembered
DEFAULT_MAX_AGE = 60  # s, RFC 7252 §5.10.5
#: Socket buffers of the MSGin5G-6 endpoint: thousands of UEs may send within milliseconds (the
#: kernel caps the value at net.core.rmem_max / wmem_max).
SOCKET_BUFFER = 4 * 1024 * 1024
#: Answers sent per event-loop turn, so that the UEs' ACKs are read in between (a whole split
#: bulk answer sent at once would fill the receive buffer with their ACKs).
SEND_BURST = 128
#: Datagrams read per readiness event of the MSGin5G-6 socket.
READ_BURST = 256


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
    bulk_concurrency: int = 4  # bulk operations in flight towards the CM client
    single_concurrency: int = 64  # single forwards in flight (no bulk policy)
    record_answers: bool = False  # keep the order in which requests were answered (tests)
    #: key registry of the constrained UEs (OSCORE on MSGin5G-6, standing in for PC5 unicast
    #: security, TS 33.503; SPEC D12); None: the MSGin5G-6 side is not secured
    security: str | None = None
    max_open_contexts: int = 1024


@dataclass(slots=True)
class _Live:
    stored: StoredRequest
    key: Hashable


@dataclass(slots=True)
class _Outgoing:
    req_id: int
    data: bytes
    tries: int
    timeout: float
    due: float = 0.0


class DatagramEndpoint:
    """A non-blocking UDP socket read in bursts (up to :data:`READ_BURST` datagrams per readiness
    event, handed over together).

    asyncio's datagram transport delivers one datagram per event-loop turn, so each datagram
    pays a full loop iteration and the gateway would store each request in a transaction of its
    own; reading a burst lets one SQLite transaction and one policy call cover it. Sends go out
    directly, queued only while the socket buffer is full.
    """

    def __init__(self, sock: socket.socket, on_burst):
        self.sock = sock
        self.on_burst = on_burst
        self.loop = asyncio.get_running_loop()
        self._backlog: deque[tuple[bytes, tuple | None]] = deque()
        self._closed = False
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        self.loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def bind(cls, host: str, port: int, on_burst) -> DatagramEndpoint:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, on_burst)

    @classmethod
    def connect(cls, host: str, port: int, on_burst) -> DatagramEndpoint:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.connect((host, port))
        return cls(sock, on_burst)

    @property
    def local_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def _readable(self) -> None:
        burst: list[tuple[bytes, tuple[str, int]]] = []
        for _ in range(READ_BURST):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error reported on the socket: nothing to read
                continue
            burst.append((data, (addr[0], addr[1])))
        if burst:
            try:
                self.on_burst(burst)
            except Exception:  # never let one burst stop the endpoint
                log.exception("datagrams not handled")

    def sendto(self, data: bytes, addr: tuple[str, int] | None = None) -> None:
        if self._closed:
            return
        if self._backlog:
            self._backlog.append((data, addr))
            return
        try:
            self.sock.sendto(data, addr) if addr is not None else self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self._backlog.append((data, addr))
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as e:  # e.g. ICMP port unreachable from an earlier datagram
            log.debug("send to %s failed: %s", addr, e)

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self.sock.sendto(data, addr) if addr is not None else self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("send to %s failed: %s", addr, e)
            self._backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self._backlog:
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()


class GatewayUe:
    """The MSGin5G Gateway Client with its MSGin5G-6 endpoint (SPEC D9)."""

    def __init__(self, config: GatewayConfig, cm: CmClient):
        self.config = config
        self.cm = cm
        self.policy = BatchPolicy(config.policy)
        self.cache: ResponseCache[Hashable, IndividualResponse] = ResponseCache()
        self.queue: RequestQueue | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "datagrams-in",
                "garbage",
                "requests",
                "duplicates",
                "rejected",
                "cache-hits",
                "stored",
                "restored",
                "merged",
                "flush-full",
                "flush-timer",
                "flush-urgent",
                "flush-retry",
                "flush-single",
                "bulk-operations",
                "single-forwards",
                "upstream-failures",
                "answers",
                "retransmissions",
                "delivered",
                "undelivered",
                "given-up",
                "internal-errors",
                "unauthenticated",
                "forbidden",
            ),
            0,
        )
        self.protection: ServerProtection | None = None
        self.answer_log: list[int] = []
        self._endpoint: DatagramEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._requests: dict[int, _Live] = {}
        self._staged: list[
            tuple[tuple[str, int], wire.CoapMessage, ConfigRequest, Hashable, bytes | None]
        ] = []
        self._recent: dict[tuple[tuple[str, int], int], bytes | None] = {}
        self._recent_order: deque[tuple[float, tuple[tuple[str, int], int]]] = deque()
        self._outgoing: dict[tuple[tuple[str, int], int], _Outgoing] = {}
        # retransmission deadlines of the CON responses: one heap and one timer for all of them
        self._retx_heap: list[tuple[float, int, tuple[tuple[str, int], int]]] = []
        self._retx_seq = 0
        self._retx_timer: asyncio.TimerHandle | None = None
        self._retx_at: float | None = None
        self._mids: dict[tuple[str, int], int] = {}
        self._outbox: deque[tuple[int, IndividualResponse]] = deque()
        self._outbox_scheduled = False
        self._to_remove: list[int] = []
        self._to_mark: list[int] = []
        self._flush_scheduled = False
        self._store_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self._bulk_sem = asyncio.Semaphore(config.bulk_concurrency)
        self._single_sem = asyncio.Semaphore(config.single_concurrency)
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> GatewayUe:
        self._loop = asyncio.get_running_loop()
        if self.config.security is not None:
            keyring = ServerKeyring(Registry(self.config.security), max_open=self.config.max_open_contexts)
            self.protection = ServerProtection(keyring.open())
        self.queue = RequestQueue(self.config.state_path)
        self._endpoint = DatagramEndpoint.bind(self.config.host, self.config.port, self._on_burst)
        self.config.port = self._endpoint.local_address[1]
        self._restore()
        return self

    @property
    def port(self) -> int:
        return self.config.port

    @property
    def unanswered(self) -> int:
        """Requests stored and not yet delivered."""
        return len(self._requests)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._retx_timer is not None:
            self._retx_timer.cancel()
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
        if self.protection is not None:
            self.protection.keyring.close()  # sequence numbers and replay windows written back
        await self.cm.close()

    def _restore(self) -> None:
        """Requests stored before a crash or stop: answer each of them (SPEC D9, "nothing lost")."""
        assert self.queue is not None and self._loop is not None
        pending = self.queue.pending()
        if not pending:
            return
        now, wall = self._loop.time(), time.time()
        greqs = []
        for st in pending:
            self._remember(st.endpoint, st.mid, wire.empty_ack(st.mid))
            try:
                req = ConfigRequest.of(st.query, st.urgent, st.block_num, st.block_szx)
                key = req.key(self.config.policy.bulk)
            except ModelError as e:
                self._requests[st.req_id] = _Live(st, st.query)
                self._answer(st.req_id, IndividualResponse.from_problem(Problem(0x80, str(e), e.cause)))
                continue
            self._requests[st.req_id] = _Live(st, key)
            received = now - max(0.0, wall - st.received)
            greqs.append(GatewayRequest(st.req_id, key, received, st.urgent, isinstance(key, BulkItem)))
        self.stats["restored"] += len(pending)
        log.info("restored %d stored requests", len(pending))
        self._run(self.policy.on_requests(now, greqs))

    # -- MSGin5G-6 side: receiving -------------------------------------------------------------------
    def _on_burst(self, burst: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, addr in burst:
            try:
                self.on_datagram(data, addr)
            except Exception:  # never let one datagram stop the others
                log.exception("datagram from %s not handled", addr)
                self.stats["internal-errors"] += 1
        if self._staged:
            self._flush_staged()

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self.stats["datagrams-in"] += 1
        if self._closed:
            return
        if len(data) == 4 and data[1] == EMPTY and data[0] in (0x60, 0x70):  # empty ACK / RST: most
            self._on_ack(addr, (data[2] << 8) | data[3])  # of the traffic, no need for the codec
            return
        try:
            msg = wire.decode(data)
        except WireError:
            self.stats["garbage"] += 1
            # RFC 7252 §4.2: reject a CON whose format is broken (if its MID can be read)
            if len(data) >= 4 and data[0] >> 6 == 1 and (data[0] >> 4) & 3 == CON:
                self._send(wire.reset(int.from_bytes(data[2:4], "big")), addr)
            return
        if msg.code == EMPTY:
            if msg.mtype in (ACK, RST):
                self._on_ack(addr, msg.mid)
            elif msg.mtype == CON:  # CoAP ping
                self._send(wire.reset(msg.mid), addr)
            return
        if not msg.is_request:
            self.stats["garbage"] += 1
            if msg.mtype == CON:  # a response or reserved code we do not expect
                self._send(wire.reset(msg.mid), addr)
            return
        if msg.mtype not in (CON, NON):
            self.stats["garbage"] += 1
            return
        self.stats["requests"] += 1
        dedup = (addr, msg.mid)
        if dedup in self._recent:  # a retransmission (RFC 7252 §4.5)
            self.stats["duplicates"] += 1
            reply = self._recent[dedup]
            if reply is not None and msg.mtype == CON:
                self._send(reply, addr)
            return
        binding = identity = None
        if self.protection is not None:
            verified = self._verify(data, addr, msg)
            if verified is None:
                return
            msg, binding, identity = verified
        parsed = wire.parse_config_request(msg, self.config.service_id)
        if isinstance(parsed, IndividualResponse):
            self.stats["rejected"] += 1
            self._reply_now(addr, msg, parsed, 0, 6, binding=binding)
            return
        if self.protection is not None:
            # a UE asks only for its own configuration (TS 24.546 6.2.1.2; SPEC D12)
            ue = UeIdentity(uri=parsed.query.ue_uri)
            problem = authz.authorize(identity or authz.ANONYMOUS, authz.Op.QUERY_SCOPED, ue=ue)
            if problem is not None:
                self.stats["forbidden"] += 1
                self._reply_now(addr, msg, IndividualResponse.from_problem(problem), 0, 6, binding=binding)
                return
        key = parsed.key(self.config.policy.bulk)
        if self.config.cache:
            hit = self.cache.get(self._loop.time(), key)
            if hit is not None:
                resp, remaining = hit
                self.stats["cache-hits"] += 1
                self._reply_now(
                    addr, msg, resp, parsed.block_num, parsed.block_szx, int(remaining), binding=binding
                )
                return
        self._remember(addr, msg.mid, None)
        self._staged.append((addr, msg, parsed, key, binding))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_staged)

    def _verify(
        self, data: bytes, addr: tuple[str, int], msg: wire.CoapMessage
    ) -> tuple[wire.CoapMessage, bytes, authz.Identity | None] | None:
        """OSCORE on MSGin5G-6 (SPEC D12): the plain request, its binding and its identity — or
        None when it was refused (and answered: the uniform unprotected 4.01, or the protected
        Echo challenge of a gateway that lost its replay window)."""
        assert self.protection is not None
        result = self.protection.verify(data)
        if isinstance(result, Refused):
            self.stats["unauthenticated"] += 1
            log.info("refused a request from %s: %s", addr, result.reason)
            if result.response is None:
                self._reply_now(addr, msg, UNAUTHENTICATED_ANSWER, 0, 6)
            else:
                ch = result.response
                mtype, mid = (ACK, msg.mid) if msg.mtype == CON else (NON, self._next_mid(addr))
                out = wire.CoapMessage(mtype, int(ch.code), mid, msg.token, raw_options(ch), ch.payload)
                self._send(wire.encode(out), addr)
            return None
        p = result.plain
        inner = wire.CoapMessage(msg.mtype, int(p.code), msg.mid, msg.token, raw_options(p), p.payload)
        return inner, result.binding, result.identity

    def _protected(self, out: wire.CoapMessage, binding: bytes | None) -> wire.CoapMessage:
        """The answer as it goes out: protected for the request ``binding`` names (a fresh nonce
        every time, so answering again after a restart is safe), or the uniform 4.01 when that
        request's key has been revoked since."""
        if binding is None or self.protection is None:
            return out
        sealed = self.protection.protect(binding, out.code, out.options, out.payload)
        if sealed is None:
            refused = wire.response_message(out.mtype, out.mid, out.token, UNAUTHENTICATED_ANSWER)
            assert refused is not None
            return refused
        code, options, payload = sealed
        return wire.CoapMessage(out.mtype, code, out.mid, out.token, options, payload)

    def _reply_now(
        self,
        addr: tuple[str, int],
        msg: wire.CoapMessage,
        resp: IndividualResponse,
        block_num: int,
        block_szx: int,
        max_age: int | None = None,
        binding: bytes | None = None,
    ) -> None:
        """A piggybacked answer (CON request) or an immediate NON answer (NON request)."""
        mtype, mid = (ACK, msg.mid) if msg.mtype == CON else (NON, self._next_mid(addr))
        out = wire.response_message(mtype, mid, msg.token, resp, block_num, block_szx, max_age)
        if out is None:
            bad = IndividualResponse.from_problem(Problem(0x80, "Block2 beyond the end", "BAD_BLOCK2"))
            out = wire.response_message(mtype, mid, msg.token, bad)
        data = wire.encode(self._protected(out, binding))
        self._send(data, addr)
        if msg.mtype == CON:
            self._remember(addr, msg.mid, data)

    def _remember(self, addr: tuple[str, int], mid: int, reply: bytes | None) -> None:
        key = (addr, mid)
        now = time.monotonic()
        if key not in self._recent:
            self._recent_order.append((now, key))
        self._recent[key] = reply
        limit = now - EXCHANGE_LIFETIME
        while self._recent_order and self._recent_order[0][0] < limit:
            _, old = self._recent_order.popleft()
            self._recent.pop(old, None)

    def _flush_staged(self) -> None:
        """Store a receive burst in one transaction, then acknowledge it (SPEC D9)."""
        self._flush_scheduled = False
        batch, self._staged = self._staged, []
        if not batch or self._closed:
            return
        assert self.queue is not None and self._loop is not None
        wall = time.time()
        news = [
            NewRequest(
                addr[0],
                addr[1],
                msg.mid,
                msg.token,
                msg.mtype == CON,
                p.query,
                p.urgent,
                p.block_num,
                p.block_szx,
                wall,
                binding,
            )
            for addr, msg, p, _, binding in batch
        ]
        try:
            stored = self.queue.add_many(news)
        except sqlite3.Error as e:  # cannot promise anything we cannot store: say so at once
            log.error("request store failed: %s", e)
            problem = IndividualResponse.from_problem(
                Problem(0xA3, "the gateway cannot store requests right now", "STORE_UNAVAILABLE"), max_age=5
            )
            for addr, msg, _, _, binding in batch:
                self._recent.pop((addr, msg.mid), None)
                self._reply_now(addr, msg, problem, 0, 6, binding=binding)
            return
        now = self._loop.time()
        greqs = []
        keys_seen: set[Hashable] = set()
        for (addr, msg, p, key, _), st in zip(batch, stored, strict=True):
            if msg.mtype == CON:
                ack = wire.empty_ack(msg.mid)
                self._send(ack, addr)
                self._remember(addr, msg.mid, ack)
            if st is None:  # stored before (retransmission across a restart)
                continue
            self.stats["stored"] += 1
            if key in keys_seen or self.policy.state_of(key) is not None:
                self.stats["merged"] += 1
            keys_seen.add(key)
            self._requests[st.req_id] = _Live(st, key)
            greqs.append(GatewayRequest(st.req_id, key, now, p.urgent, isinstance(key, BulkItem)))
        self._run(self.policy.on_requests(now, greqs))

    # -- decisions ---------------------------------------------------------------------------------
    def _run(self, decisions) -> None:
        for d in decisions:
            if isinstance(d, Flush):
                self.stats[f"flush-{d.reason}"] = self.stats.get(f"flush-{d.reason}", 0) + 1
                if d.bulk:
                    self._spawn(self._bulk(d.keys))
                else:
                    self._spawn(self._single(d.keys[0]))
            elif isinstance(d, GiveUp):
                problem = Problem(
                    0xA4,
                    f"no configuration could be obtained within {self.config.policy.give_up:g} s",
                    "GAVE_UP",
                )
                resp = IndividualResponse.from_problem(problem)
                for rid in d.req_ids:
                    self.stats["given-up"] += 1
                    self._answer(rid, resp)
        self._arm()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _arm(self) -> None:
        if self._closed or self._loop is None:
            return
        deadline = self.policy.next_deadline()
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

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, None
        if self._closed:
            return
        self._run(self.policy.on_tick(self._loop.time()))

    async def _bulk(self, keys: tuple[Hashable, ...]) -> None:
        """One bulk operation: the CM client packs and fetches, we split (6.2.2.x, last para.)."""
        items = [k for k in keys if isinstance(k, BulkItem)]
        self.stats["bulk-operations"] += 1
        t0 = self._loop.time()
        try:
            async with self._bulk_sem:
                t1 = self._loop.time()
                outcomes = await self.cm.bulk_configure(self.config.service_id, items)
            log.debug(
                "bulk operation for %d UEs: %d bulk GETs, waited %.3f s, fetched in %.3f s",
                len(items), len(outcomes), t1 - t0, self._loop.time() - t1,
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("bulk operation failed")
            outcomes = []
        now = self._loop.time()
        covered: set[BulkItem] = set()
        for o in outcomes:
            o_items = o.items()
            covered.update(o_items)
            if o.retryable:
                self.stats["upstream-failures"] += 1
                log.info("bulk GET for %d UEs: %s — retrying later", len(o_items), o.detail or o.code)
                self.policy.fail(now, o_items, self._retry_after(o))
                continue
            responses = answer_responses(o.ue_uris, o.code, o.payload, o.content_format, o.max_age)
            for item, resp in zip(o_items, responses, strict=True):
                self._complete(item, resp)
        missing = [k for k in items if k not in covered]
        if missing:
            self.policy.fail(now, missing)
        self._arm()

    async def _single(self, key: Hashable) -> None:
        """Forward one request on its own (no bulk policy, or a request a bulk GET cannot carry)."""
        query = key if isinstance(key, wire.UeQuery) else wire.UeQuery(key.ue_uri, key.ue_vendor, key.ue_type)
        self.stats["single-forwards"] += 1
        try:
            async with self._single_sem:
                o = await self.cm.single_configure(self.config.service_id, query)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("single forward failed")
            o = UpstreamOutcome((query.ue_uri,), False, None, detail=str(e))
        if o.retryable:
            self.stats["upstream-failures"] += 1
            self.policy.fail(self._loop.time(), [key], self._retry_after(o))
        else:
            self._complete(key, IndividualResponse(o.code, o.payload, o.content_format, o.max_age))
        self._arm()

    @staticmethod
    def _retry_after(o: UpstreamOutcome) -> float | None:
        """A 5.03 / 4.29 Max-Age says when to come back (RFC 7252 §5.9.3.4, RFC 8516)."""
        return float(o.max_age) if o.code in (0xA3, 0x9D) and o.max_age else None

    def _complete(self, key: Hashable, resp: IndividualResponse) -> None:
        if self.config.cache and resp.cacheable:
            age = DEFAULT_MAX_AGE if resp.max_age is None else resp.max_age
            self.cache.put(self._loop.time(), key, resp, age)
        for rid in self.policy.complete(key):
            self._answer(rid, resp)

    # -- MSGin5G-6 side: answering -----------------------------------------------------------------
    def _next_mid(self, addr: tuple[str, int]) -> int:
        """Message IDs per UE endpoint (RFC 7252 §4.4), starting at a random value so that a
        restarted gateway does not repeat recent IDs."""
        mid = self._mids.get(addr)
        mid = random.randrange(0x10000) if mid is None else (mid + 1) & 0xFFFF
        self._mids[addr] = mid
        return mid

    def _answer(self, req_id: int, resp: IndividualResponse) -> None:
        """Queue a request's answer; :meth:`_drain` sends it (SEND_BURST per loop turn)."""
        self._outbox.append((req_id, resp))
        if not self._outbox_scheduled and self._loop is not None:
            self._outbox_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._outbox_scheduled = False
        if self._closed:
            return
        for _ in range(min(SEND_BURST, len(self._outbox))):
            self._send_answer(*self._outbox.popleft())
        if self._outbox:
            self._outbox_scheduled = True
            self._loop.call_soon(self._drain)

    def _send_answer(self, req_id: int, resp: IndividualResponse) -> None:
        """Send a request's answer as a confirmable separate response (RFC 7252 §5.2.2)."""
        live = self._requests.get(req_id)
        if live is None:
            return
        st = live.stored
        addr = st.endpoint
        mid = self._next_mid(addr)
        msg = wire.response_message(CON, mid, st.token, resp, st.block_num, st.block_szx)
        if msg is None:
            bad = IndividualResponse.from_problem(Problem(0x80, "Block2 beyond the end", "BAD_BLOCK2"))
            msg = wire.response_message(CON, mid, st.token, bad)
        data = wire.encode(self._protected(msg, st.oscore))
        self.stats["answers"] += 1
        if self.config.record_answers:
            self.answer_log.append(req_id)
        timeout = self.config.ack_timeout * random.uniform(1.0, 1.5)
        self._outgoing[(addr, mid)] = out = _Outgoing(req_id, data, 0, timeout)
        self._schedule_retransmission((addr, mid), out)
        self._send(data, addr)
        self._to_mark.append(req_id)
        self._schedule_store()

    def _schedule_retransmission(self, key: tuple[tuple[str, int], int], out: _Outgoing) -> None:
        out.due = self._loop.time() + out.timeout
        self._retx_seq += 1
        heapq.heappush(self._retx_heap, (out.due, self._retx_seq, key))
        if self._retx_at is None or out.due < self._retx_at:
            if self._retx_timer is not None:
                self._retx_timer.cancel()
            self._retx_at = out.due
            self._retx_timer = self._loop.call_at(out.due, self._retransmit_due)

    def _retransmit_due(self) -> None:
        """RFC 7252 §4.2: resend unacknowledged CONs with doubling timeouts, MAX_RETRANSMIT times."""
        self._retx_timer, self._retx_at = None, None
        if self._closed:
            return
        now = self._loop.time()
        heap = self._retx_heap
        while heap and heap[0][0] <= now:
            due, _, key = heapq.heappop(heap)
            out = self._outgoing.get(key)
            if out is None or out.due != due:  # acknowledged meanwhile, or rescheduled
                continue
            if out.tries >= self.config.max_retransmit:
                del self._outgoing[key]
                self.stats["undelivered"] += 1
                self._done(out.req_id)
                continue
            out.tries += 1
            out.timeout *= 2
            self.stats["retransmissions"] += 1
            self._send(out.data, key[0])
            self._schedule_retransmission(key, out)
        if heap and self._retx_timer is None:
            self._retx_at = heap[0][0]
            self._retx_timer = self._loop.call_at(self._retx_at, self._retransmit_due)

    def _on_ack(self, addr: tuple[str, int], mid: int) -> None:
        out = self._outgoing.pop((addr, mid), None)
        if out is None:
            return
        self.stats["delivered"] += 1
        self._done(out.req_id)

    def _done(self, req_id: int) -> None:
        if self._requests.pop(req_id, None) is not None:
            self._to_remove.append(req_id)
            self._schedule_store()

    def _schedule_store(self) -> None:
        if not self._store_scheduled and self._loop is not None:
            self._store_scheduled = True
            self._loop.call_later(0.02, self._write_store)

    def _write_store(self) -> None:
        """Batched state changes: answered, and delivered (removed)."""
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

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._endpoint is not None:
            self._endpoint.sendto(data, addr)

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Until no stored request is left unanswered and undelivered (tests, benchmarks)."""

        async def _wait() -> None:
            while self._requests or self._staged or self._outbox or self._store_scheduled:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(_wait(), timeout)
