"""A light CoAP-over-UDP load generator: many source endpoints, confirmable GETs, closed loop.

Raw sockets rather than aiocoap client contexts so that the generator is not the bottleneck and
so that it respects what an aiocoap server allows: each endpoint keeps its own message-ID
sequence and never sends more than 65,536 messages in a run (IDs cannot be reused towards one
peer within EXCHANGE_LIFETIME, 247 s — about 265 CON/s per endpoint pair over time), and each
endpoint has ``window`` requests outstanding (1 = NSTART).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiocoap import CON, Message
from aiocoap.numbers.codes import Code


@dataclass
class LoadResult:
    requests: int = 0
    answers: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.answers / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(p / 100 * len(s)))]


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, gen: LoadGenerator, index: int):
        self.gen, self.index = gen, index
        self.mid = random.randrange(0, 65536)
        self.sent = 0
        self.pending: dict[int, tuple[float, asyncio.Future]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            m = Message.decode(data)
        except Exception:
            return
        item = self.pending.pop(m.mid, None)
        if item is not None and not item[1].done():
            item[1].set_result(m)

    async def request(self, path: tuple[str, ...], query: tuple[str, ...], timeout: float) -> Message | None:
        if self.sent >= 65536:
            raise RuntimeError("message-ID space of this endpoint exhausted for this run")
        self.mid = (self.mid + 1) & 0xFFFF
        self.sent += 1
        m = Message(code=Code.GET, uri_path=path, uri_query=query)
        m.mtype, m.mid, m.token = CON, self.mid, os.urandom(4)
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.mid] = (time.perf_counter(), fut)
        assert self.transport is not None
        self.transport.sendto(m.encode())
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.pending.pop(self.mid, None)
            return None


class LoadGenerator:
    def __init__(self, host: str, port: int, endpoints: int = 32, window: int = 1):
        self.host, self.port, self.n, self.window = host, port, endpoints, window
        self.endpoints: list[_Endpoint] = []

    async def __aenter__(self) -> LoadGenerator:
        loop = asyncio.get_running_loop()
        for i in range(self.n):
            _, proto = await loop.create_datagram_endpoint(
                lambda i=i: _Endpoint(self, i), remote_addr=(self.host, self.port), family=socket.AF_INET
            )
            self.endpoints.append(proto)
        return self

    async def __aexit__(self, *exc) -> None:
        for ep in self.endpoints:
            if ep.transport:
                ep.transport.close()

    async def run(
        self,
        make_request: Callable[[int], tuple[tuple[str, ...], tuple[str, ...]]],
        seconds: float,
        timeout: float = 5.0,
        max_requests_per_endpoint: int = 60_000,
    ) -> LoadResult:
        """Closed loop for ``seconds``: each worker sends the next request when the last is answered."""
        res = LoadResult()
        stop_at = time.perf_counter() + seconds
        counter = iter(range(10**12))

        async def worker(ep: _Endpoint) -> None:
            while time.perf_counter() < stop_at and ep.sent < max_requests_per_endpoint:
                path, query = make_request(next(counter))
                t0 = time.perf_counter()
                res.requests += 1
                m = await ep.request(path, query, timeout)
                if m is None:
                    res.timeouts += 1
                    continue
                res.answers += 1
                res.latencies.append(time.perf_counter() - t0)
                code = str(m.code)
                res.codes[code] = res.codes.get(code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(ep) for ep in self.endpoints for _ in range(self.window)))
        res.seconds = time.perf_counter() - t0
        return res


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    cur = peak = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak
