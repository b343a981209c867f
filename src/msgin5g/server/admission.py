"""Admission control of the SCM-S: shed load with 5.03 + Max-Age, and answer 4.29 + Max-Age to a
client that exceeds its rate (TS 24.546 C.1.3 error table; RFC 7252 §5.9.3.4; RFC 8516; SPEC §2).

Pure: :meth:`Admission.admit` takes the client's key, the current time and how long the request
waited since it arrived, and returns None (serve it) or the Problem to answer with.

- **Overload (5.03).** A request that has already waited ``overload_delay`` seconds in the server's
  queue (default 2 s, RFC 7252's ACK_TIMEOUT: the client is retransmitting by then) is not worth
  serving late: it gets 5.03 Service Unavailable with Max-Age ``retry_after`` (RFC 7252 §5.9.3.4:
  Max-Age says when to retry), so a flood is shed at the cost of a few bytes instead of timing
  everybody out.
- **Client rate (4.29, RFC 8516).** With ``client_rate`` > 0, each client (its transport endpoint:
  address and port, so that UEs behind one layer-3 relay, each on its own port, are separate) has a
  token bucket of ``client_burst`` requests refilled at ``client_rate`` per second; a request finding
  it empty gets 4.29 Too Many Requests with Max-Age = the whole seconds until a token is back. The
  table of buckets is bounded (``max_clients``, least recently seen forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from ..problem import Problem

TOO_MANY_REQUESTS, SERVICE_UNAVAILABLE = 0x9D, 0xA3


@dataclass
class AdmissionConfig:
    client_rate: float = 0.0  # requests per second per client; 0 = no per-client limit
    client_burst: int = 0  # bucket size; 0 = max(1, 2 × client_rate)
    overload_delay: float = 2.0  # s a request may wait before it is shed with 5.03; 0 = never
    retry_after: int = 2  # Max-Age (s) of a 5.03
    max_clients: int = 65_536  # buckets kept


@dataclass
class Admission:
    config: AdmissionConfig = field(default_factory=AdmissionConfig)
    counters: dict[str, int] = field(default_factory=dict)
    _buckets: OrderedDict = field(default_factory=OrderedDict)  # client → [tokens, last time]

    @property
    def burst(self) -> float:
        c = self.config
        return float(c.client_burst or max(1, math.ceil(2 * c.client_rate)))

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def admit(self, client, now: float, waited: float | None = None) -> tuple[Problem, int] | None:
        """None to serve the request, or (problem, Max-Age) to answer it with."""
        c = self.config
        if c.overload_delay > 0 and waited is not None and waited >= c.overload_delay:
            self._count("overload-shed")
            return (
                Problem(
                    SERVICE_UNAVAILABLE,
                    f"the server is overloaded (the request waited {waited:.1f} s); retry after "
                    f"{c.retry_after} s",
                    "OVERLOADED",
                ),
                c.retry_after,
            )
        if c.client_rate <= 0:
            return None
        burst = self.burst
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = [burst, now]
            self._buckets[client] = bucket
            while len(self._buckets) > c.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * c.client_rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return None
        self._count("rate-limited")
        wait = max(1, math.ceil((1.0 - bucket[0]) / c.client_rate))
        return (
            Problem(
                TOO_MANY_REQUESTS,
                f"more than {c.client_rate:g} requests per second from this client; retry after {wait} s",
                "TOO_MANY_REQUESTS",
            ),
            wait,
        )
