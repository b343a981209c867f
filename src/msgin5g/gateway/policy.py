"""The Gateway UE's service policy for bulk configuration (TS 24.538 6.2.2.x; SPEC D9).

Pure state machine — no sockets, no clocks (every call takes ``now``), no storage:

- :meth:`BatchPolicy.on_request` takes one stored request of a constrained UE; requests asking
  for the same configuration (same *key*) are merged, so each UE travels upstream once however
  often it asks;
- :meth:`BatchPolicy.on_tick` is called when :meth:`BatchPolicy.next_deadline` has passed;
- both return decisions: :class:`Flush` (send these keys upstream now — in one bulk operation,
  or on their own without a bulk policy) and :class:`GiveUp` (answer these requests 5.04);
- the shell reports back with :meth:`BatchPolicy.complete` (an answer arrived: which requests
  get it) or :meth:`BatchPolicy.fail` (the SCM-S was unreachable or answered 5.xx: retry later
  with exponential back-off; a stored request is never dropped, only given up after
  ``give_up`` seconds).

Flush triggers (D9): the batch is full (``max_batch`` keys waiting), the oldest waiting request
has waited ``max_wait`` seconds, or a request marked urgent arrived.

:class:`ResponseCache` is the gateway's cache of individual answers (RFC 7252 §5.6): a repeat
request is answered from it while the answer's Max-Age lasts.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """The gateway's service policy (the ``gateway`` command's options)."""

    bulk: bool = True  # False: forward each request on its own (D9, last sentence)
    max_batch: int = 1000  # keys per bulk operation; a full batch is flushed at once
    max_wait: float = 0.5  # s the oldest waiting request may wait before a flush
    give_up: float = 300.0  # s after which an unanswered request gets 5.04
    retry_initial: float = 0.5  # s before the first retry of a failed upstream request
    retry_max: float = 30.0  # s, back-off ceiling

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if self.max_wait < 0 or self.give_up <= 0 or self.retry_initial <= 0:
            raise ValueError("max_wait must be >= 0, give_up and retry_initial > 0")

    def backoff(self, attempts: int) -> float:
        """Delay before retry number ``attempts`` (1, 2, ...): doubling up to ``retry_max``."""
        return min(self.retry_max, self.retry_initial * (2 ** max(0, attempts - 1)))


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """What the policy knows of one stored request of a constrained UE."""

    req_id: int
    key: Hashable  # the configuration asked for; equal keys are merged
    received: float  # on the policy's clock
    urgent: bool = False
    bulkable: bool = True  # False: this request can only be forwarded on its own


@dataclass(frozen=True, slots=True)
class Flush:
    """Send these keys upstream now: in one bulk operation (``bulk``) or as one single GET."""

    keys: tuple[Hashable, ...]
    bulk: bool
    reason: str  # "full" | "timer" | "urgent" | "retry" | "single"


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Answer these requests with 5.04: they waited longer than the policy's give-up time."""

    req_ids: tuple[int, ...]


Decision = Flush | GiveUp

WAITING, IN_FLIGHT, BACKOFF = "waiting", "in-flight", "backoff"


@dataclass(slots=True)
class _Entry:
    key: Hashable
    bulk: bool
    state: str = WAITING
    req_ids: list[int] = field(default_factory=list)
    urgent: bool = False
    eligible: float = 0.0  # waiting: when the timer trigger fires for it
    not_before: float = 0.0  # backoff: when it may be retried
    attempts: int = 0
    heap_seq: int = -1  # the back-off heap item that is current for this entry


class BatchPolicy:
    """Batching, merging, retry and give-up decisions of the Gateway Client (SPEC D9)."""

    def __init__(self, policy: ServicePolicy | None = None):
        self.policy = policy or ServicePolicy()
        self._entries: dict[Hashable, _Entry] = {}
        self._waiting: OrderedDict[Hashable, None] = OrderedDict()  # arrival order
        self._urgent_waiting = 0
        self._backoff: list[tuple[float, int, Hashable]] = []  # heap (not_before, seq, key)
        self._seq = 0
        self._arrivals: deque[tuple[float, int]] = deque()  # (received, req_id), for give-up
        self._req_key: dict[int, Hashable] = {}  # unanswered request → its key

    # -- queries ---------------------------------------------------------------------------------
    @property
    def unanswered(self) -> int:
        return len(self._req_key)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def state_of(self, key: Hashable) -> str | None:
        e = self._entries.get(key)
        return e.state if e else None

    def next_deadline(self) -> float | None:
        """When :meth:`on_tick` next has something to decide (None: nothing pending)."""
        times: list[float] = []
        if self._waiting:
            times.append(self._entries[next(iter(self._waiting))].eligible)
        while self._backoff and self._stale(self._backoff[0]):
            heapq.heappop(self._backoff)
        if self._backoff:
            times.append(self._backoff[0][0])
        while self._arrivals and self._arrivals[0][1] not in self._req_key:
            self._arrivals.popleft()
        if self._arrivals:
            times.append(self._arrivals[0][0] + self.policy.give_up)
        return min(times) if times else None

    # -- inputs ----------------------------------------------------------------------------------
    def on_request(self, now: float, request: GatewayRequest) -> list[Decision]:
        """A stored request: merge it with a pending one for the same key, or start a new entry."""
        return self.on_requests(now, [request])

    def on_requests(self, now: float, requests: Iterable[GatewayRequest]) -> list[Decision]:
        """Several stored requests at once (one receive burst, or everything restored after a
        restart), decided together so that they share bulk operations."""
        decisions: list[Decision] = []
        for request in requests:
            decisions.extend(self._add(now, request))
        decisions = self._give_ups(now) + decisions
        decisions.extend(self._evaluate(now))
        return decisions

    def _add(self, now: float, request: GatewayRequest) -> list[Decision]:
        if request.req_id in self._req_key:
            return []
        self._req_key[request.req_id] = request.key
        self._arrivals.append((request.received, request.req_id))
        entry = self._entries.get(request.key)
        if entry is not None:
            entry.req_ids.append(request.req_id)
            if request.urgent and entry.state == BACKOFF:  # urgent: no more waiting for the retry
                entry.heap_seq = -1
                if not entry.bulk:
                    entry.state = IN_FLIGHT
                    return [Flush((request.key,), False, "urgent")]
                entry.state = WAITING
                entry.eligible = now
                self._waiting[request.key] = None
            if request.urgent and entry.state == WAITING and not entry.urgent:
                entry.urgent = True
                self._urgent_waiting += 1
            return []
        bulk = self.policy.bulk and request.bulkable
        entry = _Entry(request.key, bulk, req_ids=[request.req_id])
        self._entries[request.key] = entry
        if not bulk:
            entry.state = IN_FLIGHT
            return [Flush((request.key,), False, "single")]
        entry.eligible = min(now, request.received) + self.policy.max_wait
        entry.urgent = request.urgent
        self._urgent_waiting += request.urgent
        self._waiting[request.key] = None
        return []

    def on_tick(self, now: float) -> list[Decision]:
        """Timer: flush on max-wait, retry what is due, give up what waited too long."""
        decisions: list[Decision] = self._give_ups(now)
        due: list[_Entry] = []
        while self._backoff and self._backoff[0][0] <= now:
            item = heapq.heappop(self._backoff)
            if not self._stale(item):
                due.append(self._entries[item[2]])
        for e in due:
            e.state = IN_FLIGHT
        decisions.extend(self._flushes([e for e in due if e.bulk], "retry"))
        decisions.extend(Flush((e.key,), False, "retry") for e in due if not e.bulk)
        decisions.extend(self._evaluate(now))
        return decisions

    def supersede(self, old: int, new: int, now: float) -> bool:
        """SPEC D13: request ``new`` (a repeat of the same UE) takes the place of ``old`` — it gets
        the answer instead, and its give-up time counts from ``now``. False when ``old`` is not
        waiting for an answer here (answered already, given up, unknown)."""
        key = self._req_key.pop(old, None)
        if key is None:
            return False
        entry = self._entries[key]
        entry.req_ids[entry.req_ids.index(old)] = new
        self._req_key[new] = key
        self._arrivals.append((now, new))
        return True

    def complete(self, key: Hashable) -> list[int]:
        """An answer for ``key`` arrived: the requests that get it (every merged one)."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return []
        self._unwait(entry)
        for r in entry.req_ids:
            self._req_key.pop(r, None)
        return entry.req_ids

    def fail(self, now: float, keys: Iterable[Hashable], retry_after: float | None = None) -> None:
        """The upstream request for ``keys`` failed (5.xx, timeout, no connection): back off
        and retry; ``retry_after`` (e.g. a 5.03's Max-Age) overrides the back-off delay."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is None or entry.state != IN_FLIGHT:
                continue
            if not entry.req_ids:  # everything given up meanwhile
                del self._entries[key]
                continue
            entry.attempts += 1
            delay = self.policy.backoff(entry.attempts)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.policy.retry_max))
            entry.state = BACKOFF
            entry.not_before = now + delay
            self._seq += 1
            entry.heap_seq = self._seq
            heapq.heappush(self._backoff, (entry.not_before, self._seq, key))

    # -- internals -------------------------------------------------------------------------------
    def _stale(self, item: tuple[float, int, Hashable]) -> bool:
        e = self._entries.get(item[2])
        return e is None or e.state != BACKOFF or e.heap_seq != item[1]

    def _unwait(self, entry: _Entry) -> None:
        if entry.state == WAITING:
            self._waiting.pop(entry.key, None)
            if entry.urgent:
                self._urgent_waiting -= 1

    def _take_waiting(self, n: int | None = None) -> list[_Entry]:
        out: list[_Entry] = []
        while self._waiting and (n is None or len(out) < n):
            key, _ = self._waiting.popitem(last=False)
            e = self._entries[key]
            if e.urgent:
                self._urgent_waiting -= 1
            e.state = IN_FLIGHT
            out.append(e)
        return out

    def _flushes(self, entries: list[_Entry], reason: str) -> list[Decision]:
        size = self.policy.max_batch
        return [
            Flush(tuple(e.key for e in entries[i : i + size]), True, reason)
            for i in range(0, len(entries), size)
        ]

    def _evaluate(self, now: float) -> list[Decision]:
        if not self._waiting:
            return []
        if self._urgent_waiting:
            return self._flushes(self._take_waiting(), "urgent")
        out: list[Decision] = []
        while len(self._waiting) >= self.policy.max_batch:
            out.extend(self._flushes(self._take_waiting(self.policy.max_batch), "full"))
        if self._waiting and self._entries[next(iter(self._waiting))].eligible <= now:
            out.extend(self._flushes(self._take_waiting(), "timer"))
        return out

    def _give_ups(self, now: float) -> list[Decision]:
        gone: list[int] = []
        while self._arrivals and self._arrivals[0][0] + self.policy.give_up <= now:
            _, req_id = self._arrivals.popleft()
            key = self._req_key.pop(req_id, None)
            if key is None:
                continue
            gone.append(req_id)
            entry = self._entries[key]
            entry.req_ids.remove(req_id)
            if not entry.req_ids and entry.state != IN_FLIGHT:
                self._unwait(entry)
                del self._entries[key]
        return [GiveUp(tuple(gone))] if gone else []


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ResponseCache(Generic[K, V]):
    """Individual answers by key, each fresh for its Max-Age (RFC 7252 §5.6.1; SPEC D9).

    Bounded: the oldest entries go first when ``max_entries`` is exceeded.
    """

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, now: float, key: K, value: V, max_age: float) -> None:
        if max_age <= 0:
            self._items.pop(key, None)
            return
        self._items[key] = (now + max_age, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, now: float, key: K) -> tuple[V, float] | None:
        """The cached value and its remaining freshness in seconds, or None."""
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= now:
            del self._items[key]
            return None
        return value, expires - now
