"""Many constrained UEs on a few UDP sockets: the load side of the gateway's tests and benchmarks.

Each simulated UE sends the §3.1 configuration GET (TS 24.538 6.2.2.2 → 6.2.1.2) to a Gateway UE
with its own token, as a real constrained UE would, and records every answer addressed to it:
piggybacked, or a separate response (acknowledged, RFC 7252 §5.2.2), reassembled over Block2
when needed (RFC 7959). Several UEs share one socket — the gateway keys requests by endpoint
*and* token — so that thousands of UEs need only a handful of file descriptors.

Each socket is a :class:`~msgin5g.coap.udp.CoapEndpoint` on the project's message layer: CON
retransmission (ACK_TIMEOUT, doubling, MAX_RETRANSMIT), duplicate detection and Block2 are the
layer's. ``window`` bounds the requests sent but not yet acknowledged — NSTART per socket
(RFC 7252 §4.7) is ``window / sockets`` — so that a burst does not overflow the gateway's socket
buffer. An answer that comes after the first for the same request (which a correct gateway never
sends) is acknowledged and recorded, for the tests to see.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field

from .. import api
from ..coap.msglayer import GAVE_UP, RESET, MessageLayer, Params
from ..coap.udp import CoapEndpoint, CoapError
from ..coap.wire import CON, GET, OPT_CONTENT_FORMAT, OPT_MAX_AGE, OPT_URI_PATH, OPT_URI_QUERY, CoapMessage


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
    acked: bool = False  # an empty ACK (or the answer) came
    rejected: bool = False  # RST
    gave_up: bool = False  # retransmissions exhausted without an ACK
    answers: list[Answer] = field(default_factory=list)
    sent_at: float = 0.0
    answered_at: float = 0.0


class UeSwarm:
    """Constrained UEs sending configuration requests to one gateway (SPEC §3.3, D9)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        sockets: int = 16,
        window: int = 256,
        service_id: str = api.DEFAULT_SERVICE_ID,
        ack_timeout: float = 2.0,
        max_retransmit: int = 4,
        seed: int | None = None,
    ):
        self.peer = (host, port)
        self.n_sockets = max(1, sockets)
        self.window = max(1, window)
        self.service_id = service_id
        self.params = Params(
            ack_timeout=ack_timeout,
            max_retransmit=max_retransmit,
            nstart=max(1, -(-self.window // self.n_sockets)),
        )
        self.rng = random.Random(seed)
        self._endpoints: list[CoapEndpoint] = []
        self._by_handle: list[dict[int, int]] = []  # per socket: layer handle → request index
        self._by_token: dict[tuple[int, bytes], int] = {}  # (socket, token) → request index
        self._seq = itertools.count()
        self._results: list[SwarmResult] = []

    @property
    def datagrams_in(self) -> int:
        return sum(e.datagrams_in for e in self._endpoints)

    @property
    def datagrams_out(self) -> int:
        return sum(e.datagrams_out for e in self._endpoints)

    async def open(self) -> UeSwarm:
        for i in range(self.n_sockets):
            layer = MessageLayer(self.params, random.Random(self.rng.getrandbits(64)), ack_unmatched=True)
            handles: dict[int, int] = {}
            self._by_handle.append(handles)
            self._endpoints.append(
                CoapEndpoint.connect(
                    *self.peer,
                    layer,
                    on_acked=lambda h, handles=handles: self._acked(handles.get(h)),
                    on_unmatched=lambda msg, addr, i=i: self._late(i, msg),
                )
            )
        return self

    async def close(self) -> None:
        for e in self._endpoints:
            e.close()
        self._endpoints = []

    async def __aenter__(self) -> UeSwarm:
        return await self.open()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _message(self, req: SwarmRequest) -> CoapMessage:
        path = api.collection_path(self.service_id)
        opts = [(OPT_URI_PATH, p.encode()) for p in path]
        query = api.ue_query(req.ue_uri, req.ue_type, req.ue_snr, req.ue_vendor)
        opts += [(OPT_URI_QUERY, q.encode()) for q in query]
        if req.urgent:
            opts.append((api.OPT_URGENT, b""))
        return CoapMessage(CON, GET, 0, b"", opts)

    async def run(self, requests: list[SwarmRequest], timeout: float = 60.0) -> list[SwarmResult]:
        """Send every request (at most ``window`` unacknowledged at a time) and wait until each has
        an answer or has failed, or ``timeout`` passes. The results keep the order of ``requests``."""
        self._results = [SwarmResult(r) for r in requests]
        futures = []
        for i, result in enumerate(self._results):
            sock = i % self.n_sockets
            token = self.rng.getrandbits(64).to_bytes(8, "big")
            result.token = token
            result.sent_at = time.monotonic()
            self._by_token[(sock, token)] = i
            fut = self._endpoints[sock].request(
                self._message(result.request), timeout=timeout, token=token, blockwise=True
            )
            self._by_handle[sock][fut.handle] = i
            fut.add_done_callback(lambda f, i=i, sock=sock: self._done(i, sock, f))
            futures.append(fut)
        if futures:
            await asyncio.wait(futures, timeout=timeout)
        return self._results

    async def settle(self, seconds: float) -> None:
        """Keep receiving (and acknowledging) for a while: extra answers would show up here."""
        await asyncio.sleep(seconds)

    def _acked(self, index: int | None) -> None:
        if index is not None:
            self._results[index].acked = True

    def _done(self, index: int, sock: int, fut: asyncio.Future) -> None:
        result = self._results[index]
        if fut.cancelled():
            return
        e = fut.exception()
        if e is not None:
            cause = e.cause if isinstance(e, CoapError) else ""
            result.rejected = cause == RESET
            result.gave_up = cause == GAVE_UP
            return
        msg = fut.result()
        result.acked = True
        self._by_token[(sock, msg.token)] = index
        self._record(index, msg)

    def _late(self, sock: int, msg: CoapMessage) -> None:
        """A response for a request already answered (or given up): recorded, to be seen."""
        index = self._by_token.get((sock, msg.token))
        if index is not None and msg.is_response:
            self._record(index, msg)

    def _record(self, index: int, msg: CoapMessage) -> None:
        result = self._results[index]
        if not result.answers:
            result.answered_at = time.monotonic()
        result.answers.append(
            Answer(
                msg.code,
                msg.uint(OPT_CONTENT_FORMAT),
                bytes(msg.payload),
                next(self._seq),
                msg.uint(OPT_MAX_AGE),
            )
        )
