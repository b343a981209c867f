"""The message layer's vocabulary: transmission parameters, actions, message IDs (RFC 7252 §4).

Pure values shared by :mod:`msgin5g.coap.msglayer` (which returns the actions) and the shells that
perform them (:mod:`msgin5g.coap.udp`).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from .blockwise import MAX_BODY
from .wire import CoapMessage

Addr = Hashable

# RFC 7252 §4.8 transmission parameters and §4.8.2 derived times (defaults)
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
NSTART = 1
MAX_LATENCY = 100.0
MAX_TRANSMIT_SPAN = ACK_TIMEOUT * (2**MAX_RETRANSMIT - 1) * ACK_RANDOM_FACTOR  # 45 s
MAX_TRANSMIT_WAIT = ACK_TIMEOUT * (2 ** (MAX_RETRANSMIT + 1) - 1) * ACK_RANDOM_FACTOR  # 93 s
EXCHANGE_LIFETIME = MAX_TRANSMIT_SPAN + 2 * MAX_LATENCY + ACK_TIMEOUT  # 247 s
NON_LIFETIME = MAX_TRANSMIT_SPAN + MAX_LATENCY  # 145 s
MID_SPACE = 0x10000
BAD_OPTION = 0x82  # 4.02


@dataclass(frozen=True, slots=True)
class Params:
    """Transmission parameters (RFC 7252 §4.8) and the layer's own bounds."""

    ack_timeout: float = ACK_TIMEOUT
    ack_random_factor: float = ACK_RANDOM_FACTOR
    max_retransmit: int = MAX_RETRANSMIT
    nstart: int = NSTART
    exchange_lifetime: float = EXCHANGE_LIFETIME
    non_lifetime: float = NON_LIFETIME
    dedup_capacity: int = 16384  # remembered incoming message IDs (oldest evicted, counted)
    max_body: int = MAX_BODY  # largest Block2 body reassembled
    block_szx: int = 6  # largest block a server sends (2**(szx+4) bytes, RFC 7959 §2.2)
    #: s to wait for an ACK after the last retransmission before giving up; None: the doubled
    #: timeout (RFC 7252 §4.2). A sender "MAY give up ... even before" (§4.2): on a link whose
    #: round trip is far below ACK_TIMEOUT an answer to the last copy is as quick as to the first,
    #: so a client that will ask again anyway need not wait the last 16-32 x ACK_TIMEOUT (SPEC D13)
    give_up_wait: float | None = None
    #: s to wait for the separate response once a CON request was acknowledged with an empty ACK,
    #: counted from that ACK (RFC 7252 §5.2.2); None: until the request's own deadline. A client that
    #: asks again when an exchange is lost (SPEC D13) sets it, so that the wait starts when the
    #: server — or a proxy ending the exchange on its leg, RFC 7252 §5.7 — took the request
    separate_wait: float | None = None
    #: estimate each peer's round trip and start a CON's back-off from its RFC 6298 RTO instead of
    #: ACK_TIMEOUT once a sample exists (RFC 7252 §4.8 "dynamically adjusted values";
    #: :mod:`msgin5g.coap.rto`); False: ACK_TIMEOUT always
    adaptive_rto: bool = False
    min_rto: float = 1.0  # RFC 6298 §2.4: the adaptive RTO never goes below this


@dataclass(slots=True, eq=False)
class Retransmission:
    """One CON in flight and its RFC 7252 §4.2 back-off: the first timeout uniformly random in
    [base, base x ACK_RANDOM_FACTOR] — base ACK_TIMEOUT, or the peer's RTO once measured
    (:mod:`.rto`) — doubled at each retransmission, given up after
    MAX_RETRANSMIT (or :attr:`Params.give_up_wait` after the last copy). The one schedule of the
    project: the message layer's requests and separate responses, and the Relay UE's own CONs on
    either leg (SPEC D8, D13), run on it."""

    data: bytes
    timeout: float
    next_at: float
    tries: int = 0
    sent_at: float = 0.0  # the first transmission (a round-trip sample when acknowledged, tries 0)
    scale: float = 1.0  # the first timeout's base ÷ ACK_TIMEOUT (an adaptive RTO, coap.rto)

    @classmethod
    def start(
        cls, data: bytes, now: float, params: Params, rng: random.Random, base: float | None = None
    ) -> Retransmission:
        """The first transmission of ``data`` goes out at ``now``; its first timeout is ``base``
        (the peer's RTO, :mod:`.rto`) or ACK_TIMEOUT, x [1, ACK_RANDOM_FACTOR]."""
        base = params.ack_timeout if base is None else base
        timeout = base * rng.uniform(1.0, params.ack_random_factor)
        return cls(data, timeout, now + timeout, 0, now, base / params.ack_timeout)

    def rebase(self, base: float, params: Params) -> bool:
        """Re-time a CON not yet retransmitted whose first timeout came from ACK_TIMEOUT, now that
        the path's RTO ``base`` is known (:mod:`.rto`): same random factor, counted from its first
        transmission. True when :attr:`next_at` moved (the caller re-arms its timer)."""
        if self.tries or self.scale != 1.0 or base >= params.ack_timeout:
            return False
        self.timeout *= base / params.ack_timeout
        self.scale = base / params.ack_timeout
        self.next_at = self.sent_at + self.timeout
        return True

    def rtt(self, now: float) -> float | None:
        """The round trip measured by an acknowledgement at ``now`` — None after a retransmission
        (Karn's rule, RFC 6298 §3: which copy it answers is unknown)."""
        return now - self.sent_at if self.tries == 0 else None

    def due(self, now: float, params: Params) -> bool:
        """At :attr:`next_at`: True — send :attr:`data` again now (same message ID) and wait for
        the new :attr:`next_at`; False — MAX_RETRANSMIT copies went unacknowledged: give up."""
        if self.tries >= params.max_retransmit:
            return False
        self.tries += 1
        self.timeout *= 2
        wait = self.timeout
        if self.tries >= params.max_retransmit and params.give_up_wait is not None:
            wait = min(wait, params.give_up_wait * self.scale)  # the last copy (RFC 7252 §4.2)
        self.next_at = now + wait
        return True


# -- actions ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` to ``addr``."""

    data: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class Deliver:
    """The response to the client request ``handle`` (its whole body when block-wise); ``final``
    is False for an observation, which stays open for notifications (RFC 7641)."""

    handle: int
    response: CoapMessage
    addr: Addr
    final: bool = True


#: why a request failed (:attr:`Fail.cause`)
RESET, GAVE_UP, DEADLINE, BLOCKWISE, NO_MID = "reset", "gave-up", "deadline", "blockwise", "no-mid"
#: the peer's host reported that nothing listens there (ICMP port unreachable, RFC 1122 §4.1.3.3)
UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class Fail:
    """Request (or CON separate response) ``handle`` ended without an answer: ``cause`` (one of
    RESET, GAVE_UP, DEADLINE, BLOCKWISE, NO_MID, UNREACHABLE) and a sentence saying why."""

    handle: int
    cause: str
    reason: str


@dataclass(frozen=True, slots=True)
class Acked:
    """The CON request ``handle`` was acknowledged with an empty ACK: its answer follows as a
    separate response (RFC 7252 §5.2.2)."""

    handle: int


@dataclass(frozen=True, slots=True)
class Serve:
    """A new request to answer (server side): :meth:`MessageLayer.respond` it, or
    :meth:`MessageLayer.accept` it first when the answer takes time."""

    request: Incoming


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The CON separate response ``handle`` was acknowledged (RFC 7252 §5.2.2)."""

    handle: int


@dataclass(frozen=True, slots=True)
class Unmatched:
    """A response that answers no request of this endpoint (RFC 7252 §5.3.2; rejected with RST when
    CON, unless the layer acknowledges strays)."""

    message: CoapMessage
    addr: Addr


Action = Send | Deliver | Fail | Acked | Serve | Confirmed | Unmatched


@dataclass(slots=True, eq=False)
class Incoming:
    """A request received (server side): what :meth:`MessageLayer.respond` answers."""

    message: CoapMessage
    addr: Addr
    acked: bool = False  # an empty ACK went out: the answer is a separate response
    answered: bool = False


@dataclass
class Counters:
    sent: int = 0
    retransmitted: int = 0
    duplicates: int = 0  # incoming CON/NON seen before (RFC 7252 §4.5)
    dedup_evicted: int = 0  # remembered message IDs dropped because the cache was full
    malformed: int = 0
    unmatched: int = 0  # responses, ACKs and RSTs that match nothing of ours
    gave_up: int = 0  # CONs never acknowledged after MAX_RETRANSMIT
    rejected: int = 0  # RSTs sent
    unverified: int = 0  # responses dropped because they failed OSCORE verification (RFC 8613 §8.4)


class NotProtected(Exception):
    """Raised by a :class:`Protection`'s ``verify``: the response carries no protection."""


class ProtectionFailed(Exception):
    """Raised by a :class:`Protection`'s ``verify``: the response does not verify."""


class Protection:
    """End-to-end protection of a client's requests (OSCORE, RFC 8613 §8.1, §8.4), as the message
    layer applies it: ``protect(plain) -> (outer, binding)`` before a request goes out (each
    transmission of a new token protected anew, a CON retransmission sending the same bytes), and
    ``verify(outer, binding) -> plain`` on every response to it (raising :class:`NotProtected` or
    :class:`ProtectionFailed`). Block-wise transfer (RFC 7959, RFC 9177) runs on the plain messages,
    above the protection (inner Block2/Q-Block2, RFC 8613 §4.1.3.4). The layer calls only these two
    methods; :class:`msgin5g.security.endpoint.LayerProtection` implements them with aiocoap's OSCORE."""

    def protect(self, plain: CoapMessage) -> tuple[CoapMessage, object]:  # pragma: no cover
        raise NotImplementedError

    def verify(self, outer: CoapMessage, binding: object) -> CoapMessage:  # pragma: no cover
        raise NotImplementedError


# -- message IDs ---------------------------------------------------------------------------------------


class MidAllocator:
    """Message IDs for one endpoint pair, never reused within EXCHANGE_LIFETIME (RFC 7252 §4.4, §4.8.2).

    IDs are handed out in sequence, so the ID to reuse next is always the oldest one: a deque of
    the times they were taken is the whole state. When all 65,536 were taken less than
    ``lifetime`` ago, :meth:`take` returns ``None`` and the caller waits — this is the ≈ 265 CON/s
    per endpoint pair budget.
    """

    __slots__ = ("_next", "_used", "lifetime")

    def __init__(self, lifetime: float = EXCHANGE_LIFETIME, start: int = 0):
        self.lifetime = lifetime
        self._next = start & 0xFFFF
        self._used: deque[float] = deque()

    def available(self, now: float) -> bool:
        return len(self._used) < MID_SPACE or self._used[0] + self.lifetime <= now

    def take(self, now: float) -> int | None:
        if len(self._used) >= MID_SPACE:
            if self._used[0] + self.lifetime > now:
                return None
            self._used.popleft()
        self._used.append(now)
        mid = self._next
        self._next = (mid + 1) & 0xFFFF
        return mid

    def next_free_at(self) -> float:
        return self._used[0] + self.lifetime if len(self._used) >= MID_SPACE else 0.0
