"""Hop-by-hop reliability: the Relay UE as an RFC 7252 §5.7 forward-proxy endpoint, pure
(TS 24.538 6.2.2.1; SPEC D8, D13; RFC 7252 §4.2, §4.5, §5.2.2, §5.7).

With ``RelayConfig.reliability == HOP`` (the default) the relay ends each remote UE's
**confirmable** exchange on the leg it arrived on, instead of relaying the UE's own retransmissions
across both legs:

* **PC5, up.** A CON request is acknowledged at once with an empty ACK (§5.2.2): the UE stops
  retransmitting on PC5 and waits for a separate response. A retransmission of it (same message
  ID) gets the empty ACK again and goes no further (§4.5).
* **Uu, up.** The relay sends the request on the UE's own upstream flow — unchanged but for the
  proxy options, the UE's token and message ID, as before — and **retransmits it itself** with
  RFC 7252's back-off (:class:`~msgin5g.coap.actions.Retransmission`, the project's one schedule)
  until the SCM-S answers or acknowledges it. The SCM-S sees one endpoint per UE (D8), so its
  duplicate detection covers the relay's copies exactly as it covered the UE's. When MAX_RETRANSMIT
  copies go unanswered the relay answers the UE **5.04 Gateway Timeout** (§5.7.1), which a UE that
  asks again treats as a lost exchange (:func:`msgin5g.ue.reask.proxy_timed_out`).
* **Uu, down.** The answer — piggybacked on the SCM-S's ACK, or a separate CON response (which the
  relay acknowledges at once, and whose retransmissions it acknowledges again without relaying them)
  — goes down as a **CON separate response** with a message ID of the relay's, retransmitted on PC5
  until the UE acknowledges it (:class:`Delivery`). NON responses (a Q-Block2 burst, NON
  notifications) go down as NON with the relay's message ID. An RST from the SCM-S becomes 5.02 Bad
  Gateway (the UE's CON was already acknowledged, so an RST with its ID would contradict the ACK).
* **Only one answer per request reaches the UE**: a piggybacked answer repeated by the SCM-S (to a
  relay copy that crossed the first answer) finds no open exchange and is dropped, counted; the
  SCM-S's retransmitted separate response is acknowledged and dropped, counted.

Why the relay retransmits rather than relaying the UE's retransmissions (issue: "choose and say
why"): on a lossy sidelink and a lossy Uu an end-to-end exchange needs all four hops (PC5 up, Uu
up, Uu down, PC5 down) to succeed in one transmission — 0.8⁴ = 0.41 at 20 % loss per hop, 0.7⁴ =
0.24 at 30 % — and every failure doubles the UE's timeout. Split at the relay each loop needs two
hops (0.64, 0.49), the UE's back-off restarts per leg, and the slowest of 200 UEs is ≈ 51 s at 20 %
and ≈ 83 s at 30 % instead of ≈ 85 s and ≈ 165 s (independent-loss model, docs/relay.md). The cost:
two more PC5 datagrams per exchange (empty ACK, and the UE's ACK of the answer) and a
retransmission state per open exchange — bounded like the exchanges themselves (``max_exchanges``
per link, :attr:`DELIVERY_BOUND` answers in flight per link). NON requests (no retransmission,
no ACK) still cross the relay end to end; ``--reliability end-to-end`` keeps the former transparent
behaviour for every request.

The functions here act on a link and an exchange the core hands over; they return the core's
actions and count into the core's counters. Nothing here owns a socket or reads a clock.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import api
from ..coap import wire
from ..coap.actions import Params, Retransmission
from ..coap.rto import RtoEstimator
from ..coap.wire import ACK, CON, NON, RST, CoapMessage
from ..problem import CF_PROBLEM, Problem, code_text
from .actions import Action, Discard, SendDownlink, SendUplink
from .links import Exchange, Pc5Link

if TYPE_CHECKING:  # pragma: no cover
    from .core import RelayCounters

HOP = "hop"
END_TO_END = "end-to-end"
RELIABILITY = (HOP, END_TO_END)

#: answers in flight to one UE (CON separate responses not yet acknowledged); beyond, the oldest is dropped
DELIVERY_BOUND = 16
#: message IDs remembered per link for duplicate detection (UE requests answered, SCM-S CONs acknowledged)
SEEN_BOUND = 64

#: s the relay waits for the SCM-S's answer before it acknowledges a UE's CON with an empty ACK: an
#: answer by then is piggybacked (RFC 7252 §5.2.1, §5.2.2: a server "MAY" wait; aiocoap waits 0.1 s).
#: On a working Uu the answer is back in milliseconds, so most exchanges cost two PC5 datagrams.
EMPTY_ACK_DELAY = 0.1

_SCM_S = "scm-s"  # the Uu leg's one peer (every flow goes to the SCM-S)
_ACK, _UP = -1, -2  # timer kinds of an exchange (a delivery's timer carries its MID, >= 0)

GATEWAY_TIMEOUT = 0xA4  # 5.04
BAD_GATEWAY = 0xA2  # 5.02


@dataclass(slots=True, eq=False)
class Delivery:
    """One answer the relay sends down as a CON and retransmits until the UE acknowledges it."""

    token: bytes
    tx: Retransmission


def relay_params(ack_timeout: float = 2.0, adaptive_rto: bool = True) -> Params:
    """The relay's RFC 7252 transmission parameters on either leg (§4.8; ACK_TIMEOUT configurable,
    §4.8.1). After the last copy it waits one longest first timeout, not 16 x, before it gives up
    (§4.2 allows giving up early; SPEC D13, as the UE does). With ``adaptive_rto`` a CON's first
    timeout is the leg's RFC 6298 RTO once the relay has measured it (:mod:`msgin5g.coap.rto`)."""
    return Params(ack_timeout=ack_timeout, give_up_wait=ack_timeout * 1.5, adaptive_rto=adaptive_rto)


def _remember(seen: OrderedDict, mid: int, until: float, reply: bytes = b"") -> None:
    seen.pop(mid, None)
    seen[mid] = (until, reply)
    while len(seen) > SEEN_BOUND:
        seen.popitem(last=False)


def _seen(seen: OrderedDict, mid: int, now: float) -> bytes | None:
    """The reply remembered for a message ID seen before (b"" when there is none), or None."""
    entry = seen.get(mid)
    return entry[1] if entry is not None and entry[0] > now else None


def _retry_key(msg: CoapMessage) -> tuple:
    protected = msg.first(api.OPT_OSCORE) is not None
    options = tuple((n, b"" if n == api.OPT_OSCORE else v) for n, v in msg.options)
    return (msg.code, options, b"" if protected else msg.payload)


class HopLegs:
    """The relay's two CoAP legs when it ends the UE's CON exchanges (see the module docstring)."""

    def __init__(self, counters: RelayCounters, params: Params, rng: random.Random, lifetime: float):
        self.counters = counters
        self.params = params
        self.rng = rng
        self.lifetime = lifetime  # EXCHANGE_LIFETIME: how long message IDs are remembered
        #: (at, seq, link, exchange or delivery, what): the UE's ACK due, a Uu copy due, an answer's
        #: PC5 copy due (``what`` its MID); stale entries are skipped when they come up
        self._timers: list = []
        self._seq = itertools.count()
        #: RFC 6298 RTOs of the two legs (None: ACK_TIMEOUT always): the Uu one is the SCM-S's,
        #: the PC5 one per remote UE, a new UE starting from the PC5 leg's estimate
        self.rto_uu, self.rto_pc5 = RtoEstimator.of(params), RtoEstimator.of(params)

    def _con(self, rto: RtoEstimator | None, peer, data: bytes, now: float) -> Retransmission:
        base = rto.rto(peer, now) if rto is not None else None
        return Retransmission.start(data, now, self.params, self.rng, base)

    def _sample(self, rto: RtoEstimator | None, peer, tx: Retransmission | None, now: float) -> None:
        """An acknowledged CON sent once (Karn's rule, RFC 6298 §3) is a sample; the leg's first
        re-times that leg's CONs in flight (a fleet's first requests all went before it)."""
        rtt = tx.rtt(now) if rto is not None and tx is not None else None
        if rtt is None or not rto.sample(peer, rtt, now):
            return
        uu = rto is self.rto_uu
        for _, _, link, owner, what in list(self._timers):
            if uu:  # the relay's requests on Uu
                if isinstance(owner, Delivery) or what != _UP or link.exchanges.get(owner.token) is not owner:
                    continue
                peer = _SCM_S
            else:  # its answers on PC5
                if not isinstance(owner, Delivery) or link.deliveries.get(what) is not owner:
                    continue
                peer = link.endpoint
            t = owner.tx
            if t is not None and t.rebase(rto.rto(peer, now), self.params):
                self._at(t.next_at, link, owner, what)

    # ---- PC5 → Uu ---------------------------------------------------------------------------

    def duplicate(self, link: Pc5Link, msg: CoapMessage, now: float) -> list[Action] | None:
        """A CON request seen before (RFC 7252 §4.5): its empty ACK again, nothing upstream; None
        when the message ID is new."""
        ex = link.exchanges.get(msg.token)
        if ex is not None and ex.mid == msg.mid and ex.con:  # open: the UE waits, so ACK it now
            self.counters.duplicates_absorbed += 1
            return self._ack_now(link, ex)
        reply = _seen(link.answered_mids, msg.mid, now)
        if reply is not None:  # answered already: the same reply again (§4.5)
            self.counters.duplicates_absorbed += 1
            if reply[:1] == b"\x60":  # an empty ACK (the answer went as a CON separate response)
                self.counters.acked_on_pc5 += 1
            return [SendDownlink(link.endpoint, reply)]
        return None

    @staticmethod
    def retried(link: Pc5Link, msg: CoapMessage) -> list[Exchange]:
        """The open CON exchanges a new CON request of the same UE asks again (SPEC D13, as at the
        Gateway UE): same code, same options but the OSCORE option's value, same payload unless
        protected. A UE asks again only after it gave up the old exchange (:mod:`msgin5g.ue.reask`),
        so the old one ends: its late answer is dropped, not sent to a UE that no longer waits."""
        if not link.exchanges:
            return []
        key = _retry_key(msg)
        return [
            ex
            for ex in link.exchanges.values()
            if ex.con and not ex.observing and ex.token != msg.token and ex.retry_key == key
        ]

    def start(self, link: Pc5Link, ex: Exchange, msg: CoapMessage, now: float) -> list[Action]:
        """A new CON exchange (``msg`` as the UE sent it): the request up with the relay's back-off;
        the UE's ACK is due in :data:`EMPTY_ACK_DELAY` — an answer before then is piggybacked on it
        (§5.2.1)."""
        ex.retry_key = _retry_key(msg)
        ex.tx = self._con(self.rto_uu, _SCM_S, ex.datagram, now)
        ex.ack_due = now + EMPTY_ACK_DELAY
        self._at(ex.ack_due, link, ex, _ACK)
        self._at(ex.tx.next_at, link, ex, _UP)
        _remember(link.answered_mids, ex.mid, now + self.lifetime, wire.empty_ack(ex.mid))
        return [SendUplink(link.link_id, ex.datagram)]

    def _ack_now(self, link: Pc5Link, ex: Exchange) -> list[Action]:
        ex.ack_due = None
        self.counters.acked_on_pc5 += 1
        return [SendDownlink(link.endpoint, wire.empty_ack(ex.mid))]

    # ---- Uu → PC5 ---------------------------------------------------------------------------

    def on_uu(self, link: Pc5Link, msg: CoapMessage, now: float, end) -> list[Action]:
        """A datagram from the SCM-S on the link's flow, after the discard rule let it through.
        ``end(link, ex, reason)`` ends an exchange in the core."""
        if msg.is_empty:
            ex = link.exchange_by_mid(msg.mid)
            if ex is None:
                self.counters.discarded["unmatched-ack"] += 1
                return [Discard("unmatched-ack", f"MID {msg.mid}")]
            if msg.mtype == RST:
                end(link, ex, "reset-by-server")
                if not ex.con:  # the UE's NON crossed end to end: its RST goes down as it is
                    self.counters.acks_down += 1
                    return [self._down(link, wire.reset(msg.mid))]
                problem = Problem(BAD_GATEWAY, "the SCM-S rejected the request (RST)", "RESET_BY_SERVER")
                return self._deliver_problem(link, ex, problem, now)
            ex.acked = True  # a separate response follows (§5.2.2): stop retransmitting
            self._sample(self.rto_uu, _SCM_S, ex.tx, now)
            ex.tx = None
            self.counters.acks_down += 1
            return []
        out: list[Action] = []
        ex = link.exchanges.get(msg.token)
        if msg.mtype == CON:  # a separate response or notification: acknowledged here, at once
            if _seen(link.server_mids, msg.mid, now) is not None:  # its retransmission: our ACK was lost
                self.counters.acked_on_uu += 1
                self.counters.duplicates_from_server += 1
                return [
                    SendUplink(link.link_id, wire.empty_ack(msg.mid)),
                    Discard("duplicate-from-server", f"MID {msg.mid}"),
                ]
            if ex is None:
                # a CON answer for nothing open (its exchange gave up, expired or was reset):
                # rejected on the UE's behalf so that the SCM-S ends it (RFC 7252 §5.3.2, RFC 7641 §3.6)
                self.counters.discarded["no-exchange"] += 1
                return [
                    SendUplink(link.link_id, wire.reset(msg.mid)),
                    Discard("no-exchange", f"{code_text(msg.code)} token {msg.token.hex()}"),
                ]
            _remember(link.server_mids, msg.mid, now + self.lifetime)
            self.counters.acked_on_uu += 1
            out.append(SendUplink(link.link_id, wire.empty_ack(msg.mid)))
        elif msg.mtype == ACK:
            if ex is None or ex.mid != msg.mid:
                # the SCM-S answering a relay copy after its first answer: one answer per request
                self.counters.duplicates_from_server += 1
                return [Discard("duplicate-from-server", f"MID {msg.mid}")]
            self._sample(self.rto_uu, _SCM_S, ex.tx, now)
            ex.tx = None
        if ex is not None and ex.ack_due is not None and msg.mtype != NON:
            self._book(link, ex, msg, end)
            self.counters.relayed_down += 1
            return [*out, self._piggyback(link, ex, msg, now)]
        confirmable = msg.mtype != NON
        if ex is not None:
            self._book(link, ex, msg, end)
        self.counters.relayed_down += 1
        return out + self._send_answer(link, msg, confirmable, now)

    @staticmethod
    def _book(link: Pc5Link, ex: Exchange, msg: CoapMessage, end) -> None:
        """An answer ends its exchange unless it starts an observation (RFC 7641 §3.2)."""
        if msg.first(api.OPT_OBSERVE) is not None and msg.code >> 5 == 2:
            ex.observing = True
            ex.tx = None
        else:
            end(link, ex, "answered")

    def _send_answer(self, link: Pc5Link, msg: CoapMessage, confirmable: bool, now: float) -> list[Action]:
        mid = link.next_mid()
        data = wire.encode(
            CoapMessage(CON if confirmable else NON, msg.code, mid, msg.token, msg.options, msg.payload)
        )
        if confirmable:
            deliveries = link.deliveries
            d = deliveries[mid] = Delivery(msg.token, self._con(self.rto_pc5, link.endpoint, data, now))
            self._at(d.tx.next_at, link, d, mid)
            while len(deliveries) > DELIVERY_BOUND:  # bounded: the oldest answer in flight goes
                deliveries.pop(next(iter(deliveries)))
                self.counters.gave_up["pc5-bound"] += 1
        return [self._down(link, data)]

    def _piggyback(self, link: Pc5Link, ex: Exchange, msg: CoapMessage, now: float) -> SendDownlink:
        """Answered before the UE's ACK was due: the answer rides on it (RFC 7252 §5.2.1)."""
        data = wire.encode(CoapMessage(ACK, msg.code, ex.mid, ex.token, msg.options, msg.payload))
        ex.ack_due = None
        _remember(link.answered_mids, ex.mid, now + self.lifetime, data)
        return self._down(link, data)

    def _deliver_problem(self, link: Pc5Link, ex: Exchange, problem: Problem, now: float) -> list[Action]:
        """The relay's own answer to the UE (5.02, 5.04), with concise problem details."""
        self.counters.answered[code_text(problem.code)] += 1
        opts = [(api.OPT_CONTENT_FORMAT, wire.uint_bytes(CF_PROBLEM))]
        msg = CoapMessage(CON, problem.code, 0, ex.token, opts, problem.encode())
        if ex.ack_due is not None:
            return [self._piggyback(link, ex, msg, now)]
        return self._send_answer(link, msg, True, now)

    @staticmethod
    def _down(link: Pc5Link, data: bytes) -> SendDownlink:
        return SendDownlink(link.endpoint, data)

    # ---- the UE's ACK/RST of an answer ------------------------------------------------------

    def on_pc5_empty(self, link: Pc5Link, msg: CoapMessage, end, now: float) -> list[Action]:
        """The UE acknowledges (or rejects) an answer the relay sent as a CON."""
        d = link.deliveries.pop(msg.mid, None)
        if d is None:
            self.counters.discarded["unmatched-ack"] += 1
            return [Discard("unmatched-ack", f"MID {msg.mid} from the UE")]
        self.counters.acks_from_ue += 1
        if msg.mtype == ACK:
            self._sample(self.rto_pc5, link.endpoint, d.tx, now)
        if msg.mtype == RST:  # the UE wants no more of it: an observation ends (RFC 7641 §3.6)
            ex = link.exchanges.get(d.token)
            if ex is not None:
                end(link, ex, "reset-by-ue")
        return []

    # ---- time -------------------------------------------------------------------------------

    def _at(self, at: float, link: Pc5Link, owner: object, what: int) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), link, owner, what))

    @staticmethod
    def _live(at: float, link: Pc5Link, owner, what: int) -> bool:
        """A timer is stale once what it was set for has moved on (answered, ended, released)."""
        if isinstance(owner, Delivery):
            return link.deliveries.get(what) is owner and owner.tx.next_at == at
        if link.exchanges.get(owner.token) is not owner:
            return False
        if what == _ACK:
            return owner.ack_due == at
        return owner.tx is not None and owner.tx.next_at == at

    def on_tick(self, now: float, end) -> list[Action]:
        """Retransmit what is due on either leg; give up after MAX_RETRANSMIT (5.04 to the UE).
        Only what is due is looked at (a heap of deadlines, stale ones skipped)."""
        out: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, link, owner, what = heapq.heappop(timers)
            if not self._live(at, link, owner, what):
                continue
            if isinstance(owner, Delivery):
                if owner.tx.due(now, self.params):
                    if self.rto_pc5 is not None:
                        self.rto_pc5.expired(link.endpoint)
                    self.counters.retransmitted_down += 1
                    out.append(self._down(link, owner.tx.data))
                    self._at(owner.tx.next_at, link, owner, what)
                else:
                    del link.deliveries[what]
                    self.counters.gave_up["pc5"] += 1
            elif what == _ACK:
                out += self._ack_now(link, owner)
            else:
                out += self._uu_due(link, owner, now, end)
        return out

    def _uu_due(self, link: Pc5Link, ex: Exchange, now: float, end) -> list[Action]:
        tx = ex.tx
        if tx.due(now, self.params):
            if self.rto_uu is not None:
                self.rto_uu.expired(_SCM_S)
            self.counters.retransmitted_up += 1
            self._at(tx.next_at, link, ex, _UP)
            return [SendUplink(link.link_id, tx.data)]
        ex.tx = None
        end(link, ex, "gave-up")
        self.counters.gave_up["uu"] += 1
        problem = Problem(
            GATEWAY_TIMEOUT,
            f"no answer from the SCM-S after {tx.tries + 1} transmissions; ask again",
            "NO_ANSWER_FROM_SERVER",
        )
        return self._deliver_problem(link, ex, problem, now)

    def next_deadline(self) -> float | None:
        """When :meth:`on_tick` has something to do next (None: nothing)."""
        timers = self._timers
        while timers and not self._live(timers[0][0], *timers[0][2:]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None
