"""Many constrained UEs on a few UDP sockets: the load side of the gateway's tests and benchmarks.

Each simulated UE sends the §3.1 configuration GET (TS 24.538 6.2.2.2 → 6.2.1.2) to a Gateway UE
with its own token, as a real constrained UE would, and records every answer addressed to it:
piggybacked, or a separate response (acknowledged at once, RFC 7252 §5.2.2), reassembled over
Block2 when needed (RFC 7959). Several UEs share one socket — the gateway keys requests by
endpoint *and* token — so that thousands of UEs need only a handful of file descriptors.

A window bounds the requests sent but not yet acknowledged, so that a burst does not overflow
the gateway's socket buffer; unacknowledged CONs are retransmitted (ACK_TIMEOUT, doubling,
MAX_RETRANSMIT).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

from . import wire
from .shell import DatagramEndpoint
from .wire import ACK, CON, EMPTY, NON, RST, URGENT_OPTION, CoapMessage


@dataclass(frozen=True)
class SwarmRequest:
    """One constrained UE's configuration request."""

    ue_uri: str
    ue_vendor: str | None = None
    ue_type: str | None = None
    ue_snr: str | None = None
    urgent: bool = False


@dataclass
class Answer:
    code: int
    content_format: int | None
    payload: bytes
    seq: int  # arrival order over the whole swarm
    max_age: int | None = None


@dataclass
class SwarmResult:
    request: SwarmRequest
    token: bytes = b""
    acked: bool = False  # an empty ACK (or a piggybacked answer) came
    rejected: bool = False  # RST
    gave_up: bool = False  # retransmissions exhausted without an ACK
    answers: list[Answer] = field(default_factory=list)
    sent_at: float = 0.0
    answered_at: float = 0.0


@dataclass
class _Pending:
    index: int
    sock: int
    mid: int
    data: bytes
    tries: int = 0
    next_at: float = 0.0
    timeout: float = 2.0
    acked: bool = False
    body: bytearray = field(default_factory=bytearray)  # Block2 reassembly


class UeSwarm:
    """Constrained UEs sending configuration requests to one gateway (SPEC §3.3, D9)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sockets: int = 16,
        window: int = 256,
        service_id: str = "msgin5g",
        ack_timeout: float = 2.0,
        max_retransmit: int = 4,
        seed: int | None = None,
    ):
        self.peer = (host, port)
        self.n_sockets = max(1, sockets)
        self.window = max(1, window)
        self.service_id = service_id
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.rng = random.Random(seed)
        self._endpoints: list[DatagramEndpoint] = []
        self._mids: list[int] = []
        self._by_mid: dict[tuple[int, int], _Pending] = {}
        self._by_token: dict[bytes, tuple[int, _Pending | None]] = {}
        self._seen: set[tuple[int, int]] = set()
        self._token_index: dict[bytes, int] = {}  # tokens of answered requests
        self._seq = itertools.count()
        self._results: list[SwarmResult] = []
        self._unacked = 0
        self._open = 0  # requests without a complete answer
        self._window_free: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self.datagrams_in = 0
        self.datagrams_out = 0

    async def open(self) -> UeSwarm:
        for i in range(self.n_sockets):
            on_burst = lambda burst, i=i: [self._on_datagram(i, data) for data, _ in burst]  # noqa: E731
            self._endpoints.append(DatagramEndpoint.connect(*self.peer, on_burst))
            self._mids.append(self.rng.randrange(0x10000))
        return self

    async def close(self) -> None:
        for e in self._endpoints:
            e.close()
        self._endpoints = []

    async def __aenter__(self) -> UeSwarm:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # -- sending -----------------------------------------------------------------------------------
    def _send(self, sock: int, data: bytes) -> None:
        self.datagrams_out += 1
        self._endpoints[sock].sendto(data)

    def _next_mid(self, sock: int) -> int:
        self._mids[sock] = (self._mids[sock] + 1) & 0xFFFF
        return self._mids[sock]

    def _message(self, req: SwarmRequest, mid: int, token: bytes, block: int = 0) -> bytes:
        path = [*wire.API_PATH, self.service_id, wire.COLLECTION]
        opts = [(wire.OPT_URI_PATH, p.encode()) for p in path]
        query = wire.UeQuery(req.ue_uri, req.ue_vendor, req.ue_type, req.ue_snr).uri_query()
        opts += [(wire.OPT_URI_QUERY, q.encode()) for q in query]
        if req.urgent:
            opts.append((URGENT_OPTION, b""))
        if block:
            opts.append((wire.OPT_BLOCK2, wire.block_option(block, False, 6)))
        return wire.encode(CoapMessage(CON, wire.GET, mid, token, opts))

    def _issue(self, index: int, sock: int, block: int = 0, body: bytearray | None = None) -> None:
        result = self._results[index]
        mid = self._next_mid(sock)
        token = self.rng.getrandbits(64).to_bytes(8, "big")
        data = self._message(result.request, mid, token, block)
        p = _Pending(index, sock, mid, data, timeout=self.ack_timeout * self.rng.uniform(1.0, 1.5))
        p.next_at = time.monotonic() + p.timeout
        if body is not None:
            p.body = body
        if block == 0:
            result.token = token
        self._by_mid[(sock, mid)] = p
        self._by_token[token] = (sock, p)
        self._unacked += 1
        self._send(sock, data)

    async def run(self, requests: list[SwarmRequest], timeout: float = 60.0) -> list[SwarmResult]:
        """Send every request (at most ``window`` unacknowledged at a time) and wait until each has
        an answer or ``timeout`` passes. The results keep the order of ``requests``."""
        self._results = [SwarmResult(r) for r in requests]
        self._open = len(requests)
        self._window_free = asyncio.Event()
        self._done = asyncio.Event()
        if not requests:
            return self._results
        retx = asyncio.ensure_future(self._retransmit_loop())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for i in range(len(requests)):
                while self._unacked >= self.window:
                    self._window_free.clear()
                    await asyncio.wait_for(self._window_free.wait(), max(0.01, deadline - loop.time()))
                self._results[i].sent_at = time.monotonic()
                self._issue(i, i % self.n_sockets)
            await asyncio.wait_for(self._done.wait(), max(0.01, deadline - loop.time()))
        except TimeoutError:
            pass
        finally:
            retx.cancel()
        return self._results

    async def settle(self, seconds: float) -> None:
        """Keep receiving (and acknowledging) for a while: extra answers would show up here."""
        await asyncio.sleep(seconds)

    async def _retransmit_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for key, p in list(self._by_mid.items()):
                if p.acked or p.next_at > now:
                    continue
                if p.tries >= self.max_retransmit:
                    self._by_mid.pop(key, None)
                    self._results[p.index].gave_up = True
                    self._release()
                    continue
                p.tries += 1
                p.timeout *= 2
                p.next_at = now + p.timeout
                self._send(p.sock, p.data)

    def _release(self) -> None:
        self._unacked -= 1
        if self._window_free is not None:
            self._window_free.set()

    # -- receiving ---------------------------------------------------------------------------------
    def _on_datagram(self, sock: int, data: bytes) -> None:
        self.datagrams_in += 1
        try:
            msg = wire.decode(data)
        except wire.WireError:
            return
        if msg.code == EMPTY:
            p = self._by_mid.get((sock, msg.mid))
            if p is None:
                return
            if msg.mtype == ACK and not p.acked:
                p.acked = True
                self._results[p.index].acked = True
                self._release()
            elif msg.mtype == RST:
                self._by_mid.pop((sock, msg.mid), None)
                self._results[p.index].rejected = True
                if not p.acked:
                    self._release()
            return
        if not msg.is_response:
            if msg.mtype == CON:
                self._send(sock, wire.reset(msg.mid))
            return
        if msg.mtype == ACK:  # piggybacked
            p = self._by_mid.get((sock, msg.mid))
            if p is None or self._by_token.get(msg.token, (None, None))[1] is not p:
                return
            if not p.acked:
                p.acked = True
                self._results[p.index].acked = True
                self._release()
            self._response(sock, p, msg)
            return
        if msg.mtype == CON:
            self._send(sock, wire.encode(CoapMessage(ACK, EMPTY, msg.mid)))
            if (sock, msg.mid) in self._seen:
                return
            self._seen.add((sock, msg.mid))
        elif msg.mtype != NON:
            return
        entry = self._by_token.get(msg.token)
        if entry is None or entry[0] != sock:
            return  # not addressed to a UE of this socket (SPEC §3.3): ignored
        if entry[1] is None:  # another answer for an answered request: recorded, to be seen
            idx = self._token_index.get(msg.token)
            if idx is not None:
                self._record(idx, msg, bytes(msg.payload))
            return
        self._response(sock, entry[1], msg)

    def _response(self, sock: int, p: _Pending, msg: CoapMessage) -> None:
        block = msg.first(wire.OPT_BLOCK2)
        if block is not None:
            try:
                num, more, _ = wire.parse_block(block)
            except wire.WireError:
                more = False
            else:
                p.body += msg.payload
                if more:
                    self._by_mid.pop((p.sock, p.mid), None)
                    del self._by_token[msg.token]
                    self._issue(p.index, sock, num + 1, p.body)
                    return
                payload = bytes(p.body)
        else:
            payload = bytes(msg.payload)
        self._by_mid.pop((p.sock, p.mid), None)
        self._by_token[msg.token] = (sock, None)
        self._token_index[msg.token] = p.index
        self._record(p.index, msg, payload)

    def _record(self, index: int, msg: CoapMessage, payload: bytes) -> None:
        result = self._results[index]
        cf = msg.first(wire.OPT_CONTENT_FORMAT)
        age = msg.first(wire.OPT_MAX_AGE)
        first = not result.answers
        result.answers.append(
            Answer(
                msg.code,
                None if cf is None else int.from_bytes(cf, "big"),
                payload,
                next(self._seq),
                None if age is None else int.from_bytes(age, "big"),
            )
        )
        if first:
            result.answered_at = time.monotonic()
            self._open -= 1
            if self._open == 0 and self._done is not None:
                self._done.set()
