"""The MSGin5G Relay UE as a pure state machine (TS 24.538 6.2.2.1; SPEC §3.2, D8, D13).

No sockets, no asyncio, no clock: the shell hands over datagrams as they arrive (``on_pc5`` from
the PC5 side, ``on_uu`` from the upstream flow of a link), calls ``on_tick`` now and then, always
passing ``now``, and performs the :class:`Action` values it gets back. The rules live in
:mod:`.routing` (the uplink forwarding decision and the downlink discard rule) and :mod:`.links`
(the PC5 link table); this module is the machine that applies them.

**Relay flows as ProSe makes them** (SPEC D8). Every PC5 link gets an upstream flow of its own
(:class:`OpenUplink`): in layer-3 mode a source port of its own on the relay's address (a NAT), in
layer-2 mode an address of its own (on loopback one of 127.0.0.0/8). The SCM-S therefore sees
each remote UE as a separate CoAP endpoint, with its own NSTART and message-ID space, and one UE's
lost datagram never holds up another's. Because the flow is the UE's alone, the relay keeps the
UE's **message ID and token** upstream, and the SCM-S's message IDs and tokens downstream: it
rewrites only the forward-proxy options of a request, and relays responses, empty ACKs and RSTs
byte for byte.

**Reliability, hop by hop** (SPEC D8, D13; RFC 7252 §5.7). By default (``reliability="hop"``)
the relay ends a remote UE's CON exchange on each leg: the answer piggybacked when it is back within
0.1 s, an empty ACK otherwise; the relay retransmits the request on Uu itself with RFC 7252's
back-off and sends a later answer down as a CON it retransmits on PC5 — :mod:`.hop`, where the
reasons are given (two hops per loop instead of four). NON requests cross end to end. With
``reliability="end-to-end"`` the relay keeps no timers and no duplicate cache: a UE retransmission
(same MID) is relayed upstream again as the same datagram, the SCM-S — which sees the UE's MID on
the UE's flow — recognises it as a duplicate and answers it from its own exchange state, and that
answer goes down like any other; the SCM-S's separate responses and notifications are relayed copy
for copy, and the UE's ACK or RST goes back up.

**Bounded state** (SPEC D13). Links: at most ``max_links``. Per link, at most ``max_exchanges``
open exchanges (requests relayed and not yet answered); when they are all taken the oldest open
NON exchange yields its place (:func:`yielding_exchange`), and a request beyond that gets **5.03
Service Unavailable with Max-Age** (seconds until the oldest open exchange expires) and problem
details, cause ``TOO_MANY_OPEN_REQUESTS``. An exchange ends — and is removed, leaving nothing in
any table — when its final response is relayed, when the SCM-S or the UE resets it, when a request
reusing its token supersedes it (e.g. NON requests repeated with one token), when it yields its
place, after ``exchange_wait`` without an answer (MAX_TRANSMIT_WAIT, 93 s: the UE has stopped
retransmitting by then), or when its link is released. Flows of released links are kept for
``flow_linger`` so that late answers are discarded and counted instead of provoking ICMP errors,
at most ``max_links`` of them.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .. import api
from ..coap import wire
from ..coap.wire import ACK, CON, NON, RST, CoapMessage
from ..pc5 import Pc5Cause, Pc5Message, Pc5Type
from ..problem import CF_PROBLEM, Problem, code_text
from .actions import (
    Action,
    Answer,
    CloseUplink,
    Discard,
    OpenUplink,
    SendDownlink,
    SendPc5,
    SendUplink,
)
from .hop import HOP, RELIABILITY, HopLegs, relay_params
from .links import Endpoint, Exchange, Pc5Link, Pc5LinkTable, layer2_address
from .routing import (
    DEFAULT_PORT,
    CmServer,
    Forward,
    MalformedDatagram,
    parse_datagram,
    relay_downlink,
    relay_uplink,
)

MODE_L2 = "l2"
MODE_L3 = "l3"

# RFC 7252 §4.8 transmission parameters (defaults)
MAX_TRANSMIT_WAIT = 93.0
EXCHANGE_LIFETIME = 247.0


# --------------------------------------------------------------------------------------------
# Configuration and counters


@dataclass(frozen=True)
class RelayConfig:
    """What the relay is told (SPEC D8, D11, D13). ``server_host`` as written in URIs, without brackets."""

    server_host: str
    server_port: int = DEFAULT_PORT
    server_scheme: str = "coap"
    server_aliases: frozenset[str] = frozenset()  # other spellings of the same host (its address)
    mode: str = MODE_L3
    max_links: int = 8
    auto_link: bool = False
    user_info: str = "msgin5g-relay"
    keepalive: int = 20  # seconds, advertised in the link establishment accept
    link_timeout: float = 60.0  # a link without any datagram for this long is released
    max_exchanges: int = 8  # open exchanges per link; beyond: 5.03 + Max-Age
    exchange_wait: float = MAX_TRANSMIT_WAIT  # an unanswered exchange ends after this long
    flow_linger: float = MAX_TRANSMIT_WAIT  # a released link's flow stays open this long for late answers
    l2_loopback: bool = True  # layer 2: give each remote UE its own 127.0.0.0/8 address
    #: HOP: the relay ends the UE's CON exchanges on each leg and retransmits itself (:mod:`.hop`);
    #: END_TO_END: the UE's own retransmissions are relayed, the relay has no timers
    reliability: str = HOP
    ack_timeout: float = 2.0  # RFC 7252 ACK_TIMEOUT of the relay's own CONs (HOP)
    adaptive_rto: bool = True  # HOP: each leg's RFC 6298 RTO once measured (coap.rto)

    def __post_init__(self) -> None:
        if self.mode not in (MODE_L2, MODE_L3):
            raise ValueError(f"mode must be l2 or l3, got {self.mode!r}")
        if self.reliability not in RELIABILITY:
            raise ValueError(f"reliability must be one of {', '.join(RELIABILITY)}, got {self.reliability!r}")
        if self.ack_timeout <= 0:
            raise ValueError("ack_timeout must be positive")
        if self.max_links < 1 or self.max_exchanges < 1:
            raise ValueError("max_links and max_exchanges must be at least 1")

    def cm_server(self) -> CmServer:
        return CmServer.of(self.server_scheme, self.server_host, self.server_port, self.server_aliases)


@dataclass
class RelayCounters:
    """What the relay did (printed on shutdown, served on the admin side)."""

    relayed_up: int = 0  # requests relayed to the SCM-S (first transmissions)
    retransmitted_up: int = 0  # end to end: UE retransmissions relayed up; hop: the relay's own copies
    acks_up: int = 0  # end to end: the UEs' empty ACK/RST of the SCM-S's CON messages, relayed up
    relayed_down: int = 0  # responses and notifications relayed to remote UEs
    acks_down: int = 0  # the SCM-S's empty ACK/RST (end to end relayed down; hop: taken by the relay)
    # hop-by-hop (SPEC D8, relay/hop.py)
    acked_on_pc5: int = 0  # empty ACKs the relay sent for UEs' CON requests (replays included)
    duplicates_absorbed: int = 0  # UE retransmissions answered by the relay, not relayed
    acked_on_uu: int = 0  # empty ACKs the relay sent for the SCM-S's CON answers
    duplicates_from_server: int = 0  # repeated answers of the SCM-S not relayed (one answer per request)
    retransmitted_down: int = 0  # the relay's retransmissions of answers sent down as CON
    acks_from_ue: int = 0  # the UEs' ACK/RST of those answers
    gave_up: Counter = field(default_factory=Counter)  # by leg: uu (5.04 sent), pc5, pc5-bound
    answered: Counter = field(default_factory=Counter)  # relay's own answers by code ("5.05": n)
    discarded: Counter = field(default_factory=Counter)  # by reason
    exchanges_ended: Counter = field(default_factory=Counter)  # by reason
    dropped_no_link: int = 0  # datagrams from endpoints without a PC5 link
    dropped_malformed: int = 0  # undecodable datagrams and messages that make no sense here
    links_established: int = 0
    links_rejected: int = 0
    links_released: Counter = field(default_factory=Counter)  # by reason
    errors: Counter = field(default_factory=Counter)  # socket errors reported by the shell

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = dict(sorted(value.items())) if isinstance(value, Counter) else value
        return out


_rst = wire.reset


def _is_success(code: int) -> bool:
    return code >> 5 == 2


# --------------------------------------------------------------------------------------------
# The relay


def yielding_exchange(exchanges: Iterable[Exchange]) -> Exchange | None:
    """The open exchange that yields its place when a link's places are all taken: the oldest NON
    request not observing, or None (SPEC D13 bounded state; RFC 7252 §4.3, §5.2.3).

    A NON request carries no promise of an answer and is never retransmitted with its message ID:
    its requester asks again with a new one (a Q-Block2 client asking for missing blocks, RFC 9177
    §4.4, does so after NON_RECEIVE_TIMEOUT). Holding its place for MAX_TRANSMIT_WAIT would let a
    few lost NON answers lock the UE out with 5.03; a late answer to the yielded exchange still goes
    down the UE's own flow, like any answer on it. CON exchanges and observations keep their
    places."""
    candidates = [e for e in exchanges if not e.con and not e.observing]
    return min(candidates, key=lambda e: e.created) if candidates else None


class RelayCore:
    """Relay UE decision logic (TS 24.538 6.2.2.1; SPEC D8). See the module docstring."""

    def __init__(self, config: RelayConfig, rng: random.Random | None = None):
        self.config = config
        self.links = Pc5LinkTable(config.max_links)
        self.counters = RelayCounters()
        self.server = config.cm_server()
        self._flows: dict[int, Pc5Link] = {}  # upstream flows by link id (established and lingering)
        self._lingering: dict[int, float] = {}  # link id → released at, oldest first
        self._auto_l2 = 0
        self.hop = (
            HopLegs(
                self.counters,
                relay_params(config.ack_timeout, config.adaptive_rto),
                rng or random.Random(),
                EXCHANGE_LIFETIME,
            )
            if config.reliability == HOP
            else None
        )

    # ---- small helpers ----------------------------------------------------------------------

    def _discard(self, reason: str, detail: str = "") -> Discard:
        self.counters.discarded[reason] += 1
        return Discard(reason, detail)

    def _drop_malformed(self, detail: str) -> list[Action]:
        self.counters.dropped_malformed += 1
        return [Discard("malformed", detail)]

    def _end(self, link: Pc5Link, ex: Exchange, reason: str) -> None:
        if link.exchanges.get(ex.token) is ex:
            del link.exchanges[ex.token]
            self.counters.exchanges_ended[reason] += 1

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    def open_exchanges(self) -> int:
        return sum(len(link.exchanges) for link in self._flows.values())

    # ---- PC5 side -----------------------------------------------------------------------------

    def on_pc5(self, endpoint: Endpoint, datagram: bytes, now: float) -> list[Action]:
        """One datagram from a remote UE (TS 24.538 6.2.2.1; SPEC D8)."""
        try:
            msg = parse_datagram(datagram)
        except MalformedDatagram as e:
            return self._drop_malformed(str(e))
        if isinstance(msg, Pc5Message):
            return self._on_signalling(endpoint, msg, now)
        actions: list[Action] = []
        link = self.links.by_endpoint(endpoint)
        if link is None:
            if not self.config.auto_link:
                self.counters.dropped_no_link += 1
                return [Discard("no-link", f"{endpoint}")]
            link = self._auto_link(endpoint, now, actions)
            if link is None:
                self.counters.dropped_no_link += 1
                return [*actions, Discard("no-link", "link table full")]
        link.last_seen = now
        if msg.is_empty:
            actions += self._on_pc5_empty(link, msg, datagram, now)
        elif msg.is_request:
            actions += self._on_request(link, msg, now)
        elif msg.mtype == CON:  # a UE does not answer the relay: reject (RFC 7252 §4.2)
            self.counters.dropped_malformed += 1
            actions.append(SendDownlink(link.endpoint, _rst(msg.mid)))
        else:
            actions += self._drop_malformed("response from a remote UE")
        return actions

    def _on_signalling(self, endpoint: Endpoint, m: Pc5Message, now: float) -> list[Action]:
        """PC5 link establishment, keep-alive and release (SPEC D8, modelled on TS 24.554 7.2.2-7.2.4)."""
        link = self.links.by_endpoint(endpoint)
        if m.type == Pc5Type.LINK_ESTABLISHMENT_REQUEST:
            if link is not None and link.l2id == m.l2id:  # retransmitted request: same link
                link.last_seen = now
                return [SendPc5(endpoint, self._accept(m))]
            actions: list[Action] = []
            if link is not None:
                actions += self._release(link, now, "replaced")
            other = self.links.by_l2id(m.l2id)
            if other is not None:  # the Layer-2 ID moved to a new endpoint: the newest link wins
                actions += self._release(other, now, "replaced")
            if self.links.full:
                self.counters.links_rejected += 1
                reject = m.reply(Pc5Type.LINK_ESTABLISHMENT_REJECT, cause=Pc5Cause.LACK_OF_RESOURCES)
                return [*actions, SendPc5(endpoint, reject)]
            link = self.links.add(endpoint, m.l2id, m.user_info or "", now)
            actions += self._established(link, now)
            actions.append(SendPc5(endpoint, self._accept(m)))
            return actions
        if m.type == Pc5Type.LINK_KEEPALIVE_REQUEST:
            if link is None or link.l2id != m.l2id:
                self.counters.dropped_no_link += 1
                return [Discard("no-link", "keep-alive without a link")]
            link.last_seen = now
            return [SendPc5(endpoint, m.reply(Pc5Type.LINK_KEEPALIVE_RESPONSE, counter=m.counter))]
        if m.type == Pc5Type.LINK_RELEASE_REQUEST:
            actions = []
            if link is not None and link.l2id == m.l2id:
                actions += self._release(link, now, "requested")
            # a release for a link that no longer exists is accepted again (its accept was lost)
            actions.append(SendPc5(endpoint, m.reply(Pc5Type.LINK_RELEASE_ACCEPT)))
            return actions
        return self._drop_malformed(f"unexpected PC5 signalling {m.type.name}")

    def _accept(self, m: Pc5Message) -> Pc5Message:
        c = self.config
        return m.reply(Pc5Type.LINK_ESTABLISHMENT_ACCEPT, user_info=c.user_info, keepalive=c.keepalive)

    def _auto_link(self, endpoint: Endpoint, now: float, actions: list[Action]) -> Pc5Link | None:
        """``--auto-link``: the first datagram from a new endpoint establishes its link (lab aid)."""
        if self.links.full:
            self.counters.links_rejected += 1
            return None
        while True:
            self._auto_l2 = (self._auto_l2 + 1) & 0x7FFFFF
            l2id = 0x800000 | self._auto_l2  # synthetic Layer-2 IDs: top bit set
            if self.links.by_l2id(l2id) is None:
                break
        link = self.links.add(endpoint, l2id, f"auto:{endpoint[0]}:{endpoint[1]}", now, auto=True)
        actions += self._established(link, now)
        return link

    def _established(self, link: Pc5Link, now: float) -> list[Action]:
        """A new link gets its own upstream flow (SPEC D8): own port (l3) or own address (l2)."""
        self.counters.links_established += 1
        if self.config.mode == MODE_L2 and self.config.l2_loopback:
            link.source = layer2_address(link.link_id)
        self._flows[link.link_id] = link
        return [OpenUplink(link.link_id, link.source)]

    def release_link(self, link: Pc5Link, now: float, reason: str = "admin") -> list[Action]:
        return self._release(link, now, reason)

    def _release(self, link: Pc5Link, now: float, reason: str) -> list[Action]:
        """Release a link: its exchanges end; its flow lingers so late answers are discarded, counted."""
        self.links.remove(link, now)
        self.counters.links_released[reason] += 1
        for ex in list(link.exchanges.values()):
            self._end(link, ex, "link-released")
        link.deliveries.clear()
        self._lingering[link.link_id] = now
        actions: list[Action] = []
        while len(self._lingering) > self.config.max_links:  # bounded: the oldest goes first
            actions += self._close_flow(next(iter(self._lingering)))
        return actions

    def _close_flow(self, link_id: int) -> list[Action]:
        self._lingering.pop(link_id, None)
        if self._flows.pop(link_id, None) is None:
            return []
        return [CloseUplink(link_id)]

    def _on_pc5_empty(self, link: Pc5Link, msg: CoapMessage, datagram: bytes, now: float) -> list[Action]:
        """Empty messages from a remote UE: ping, or its ACK/RST of the SCM-S's CON message."""
        if msg.mtype == CON:  # CoAP ping (RFC 7252 §4.3): answered by the relay, refreshes the link
            return [SendDownlink(link.endpoint, _rst(msg.mid))]
        if msg.mtype in (ACK, RST) and self.hop is not None:  # of an answer the relay sent as CON
            return self.hop.on_pc5_empty(link, msg, self._end, now)
        if msg.mtype in (ACK, RST):
            if msg.mtype == RST:  # the UE rejects a notification: the observation ends (RFC 7641 §3.6)
                ex = link.exchange_by_server_mid(msg.mid)
                if ex is not None:
                    self._end(link, ex, "reset-by-ue")
            self.counters.acks_up += 1
            return [SendUplink(link.link_id, datagram)]
        return self._drop_malformed("empty NON")

    # ---- requests from remote UEs ---------------------------------------------------------------

    def _answer(
        self, link: Pc5Link, req: CoapMessage, problem: Problem, max_age: int | None = None
    ) -> Answer:
        """The relay's own error answer, with concise problem details (SPEC §2, D8)."""
        self.counters.answered[code_text(problem.code)] += 1
        options = [(api.OPT_CONTENT_FORMAT, wire.uint_bytes(CF_PROBLEM))]
        if max_age is not None:
            options.append((api.OPT_MAX_AGE, wire.uint_bytes(max_age)))
        if req.mtype == CON:  # piggybacked on the ACK
            resp = CoapMessage(ACK, problem.code, req.mid, req.token, options, problem.encode())
        else:
            resp = CoapMessage(NON, problem.code, link.next_mid(), req.token, options, problem.encode())
        return Answer(link.endpoint, wire.encode(resp), problem)

    def _on_request(self, link: Pc5Link, msg: CoapMessage, now: float) -> list[Action]:
        """A request from a linked remote UE: relay it uplink, or answer it (seed 6.2.2.1; SPEC D8)."""
        if msg.mtype not in (CON, NON):
            return self._drop_malformed("request in an ACK or RST")
        hop = self.hop if msg.mtype == CON else None
        if hop is not None:
            repeated = hop.duplicate(link, msg, now)
            if repeated is not None:
                return repeated
        ex = link.exchanges.get(msg.token)
        if ex is not None and ex.mid == msg.mid:
            # the UE's retransmission: relayed as the same datagram; the SCM-S deduplicates (RFC 7252 §4.5)
            ex.transmissions += 1
            self.counters.retransmitted_up += 1
            return [SendUplink(link.link_id, ex.datagram)]
        decision = relay_uplink(msg, self.server)
        if isinstance(decision, Problem):
            return [self._answer(link, msg, decision)]
        assert isinstance(decision, Forward)
        if ex is not None:
            # Same token, new message: a NON repeated with its token, an Observe re-registration or
            # deregistration (RFC 7641 §3.6), a block-wise follow-up. The old exchange is over.
            self._end(link, ex, "superseded")
        if hop is not None:  # the UE asked again (new MID and token): it gave up the old one (D13)
            for old in hop.retried(link, msg):
                self._end(link, old, "superseded")
        if len(link.exchanges) >= self.config.max_exchanges:
            stale = yielding_exchange(link.exchanges.values())
            if stale is not None:
                self._end(link, stale, "yielded")
        if len(link.exchanges) >= self.config.max_exchanges:
            oldest = min((e.created for e in link.exchanges.values() if not e.observing), default=now)
            wait = max(1, math.ceil(oldest + self.config.exchange_wait - now))
            problem = Problem(
                0xA3,
                f"this remote UE already has {len(link.exchanges)} requests open through the relay "
                f"(at most {self.config.max_exchanges}); retry after Max-Age",
                "TOO_MANY_OPEN_REQUESTS",
            )
            return [self._answer(link, msg, problem, max_age=wait)]
        ex = link.exchanges[msg.token] = Exchange(
            msg.token, msg.mid, msg.mtype == CON, now, decision.datagram
        )
        self.counters.relayed_up += 1
        if hop is not None:  # ended here on PC5, retransmitted by the relay on Uu (SPEC D8, relay/hop.py)
            return hop.start(link, ex, msg, now)
        return [SendUplink(link.link_id, decision.datagram)]

    # ---- Uu side --------------------------------------------------------------------------------

    def on_uu(self, uplink: int, datagram: bytes, now: float) -> list[Action]:
        """One datagram from the SCM-S on the upstream flow of link ``uplink`` (seed 6.2.2.1)."""
        link = self._flows.get(uplink)
        if link is None:
            return [self._discard("unknown-flow")]
        try:
            msg = parse_datagram(datagram)
        except MalformedDatagram as e:
            return self._drop_malformed(str(e))
        if isinstance(msg, Pc5Message):
            return self._drop_malformed("PC5 signalling on the Uu side")
        code = msg.code
        if msg.is_request or (msg.is_empty and msg.mtype == CON):
            # requests and pings from the SCM-S: nothing on the relay serves them (RFC 7252 §4.2)
            if msg.mtype == CON:
                return [SendUplink(uplink, _rst(msg.mid)), Discard("request-from-server")]
            return self._drop_malformed("request from the server")
        if msg.is_empty and msg.mtype == NON:
            return self._drop_malformed("empty NON")
        if not relay_downlink(link, self.links):
            # the discard rule: the recipient has no established PC5 link (any more)
            actions: list[Action] = [
                self._discard("link-released", f"{code_text(code)} for Layer-2 ID {link.l2id:06x}")
            ]
            if msg.is_response and msg.mtype in (CON, NON):
                actions.append(SendUplink(uplink, _rst(msg.mid)))  # stop retransmissions / observation
            return actions
        if self.hop is not None:
            return self.hop.on_uu(link, msg, now, self._end)
        if msg.is_empty:  # the SCM-S's ACK or RST of the UE's request
            ex = link.exchange_by_mid(msg.mid)
            if ex is not None:
                if msg.mtype == RST:
                    self._end(link, ex, "reset-by-server")
                else:
                    ex.acked = True
            self.counters.acks_down += 1
            return [SendDownlink(link.endpoint, datagram)]
        self._on_response(link, msg)
        self.counters.relayed_down += 1
        return [SendDownlink(link.endpoint, datagram)]

    def _on_response(self, link: Pc5Link, msg: CoapMessage) -> None:
        """Book-keeping for a response relayed down: its exchange ends unless it starts an observation."""
        ex = link.exchanges.get(msg.token)
        if ex is None or (msg.mtype == ACK and ex.mid != msg.mid):
            return  # a late or repeated answer: relayed all the same (the UE matches it, SPEC §3.3)
        if msg.mtype != ACK:
            ex.server_mid = msg.mid
        if msg.first(api.OPT_OBSERVE) is not None and _is_success(msg.code):
            ex.observing = True
        else:
            self._end(link, ex, "answered")

    # ---- time -------------------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Action]:
        """Expire links, end unanswered exchanges, close flows nothing can arrive on any more."""
        actions: list[Action] = []
        for link in self.links.expired(now, self.config.link_timeout):
            actions += self._release(link, now, "timeout")
            release = Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 0, l2id=link.l2id, cause=Pc5Cause.LINK_TIMEOUT)
            actions.append(SendPc5(link.endpoint, release))
        wait = self.config.exchange_wait
        actions += self.on_timer(now)
        for link in self.links:
            for ex in list(link.exchanges.values()):
                if not ex.observing and now - ex.created >= (EXCHANGE_LIFETIME if ex.acked else wait):
                    self._end(link, ex, "expired")
        for link_id, since in list(self._lingering.items()):
            if now - since >= self.config.flow_linger:
                actions += self._close_flow(link_id)
        return actions

    def on_timer(self, now: float) -> list[Action]:
        """Only what is due by ``now`` on the hop-by-hop legs (the shell's timer for
        :meth:`next_deadline`); :meth:`on_tick` does this and the periodic expiries."""
        return self.hop.on_tick(now, self._end) if self.hop is not None else []

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` has a retransmission or an ACK due next (None: nothing)."""
        return self.hop.next_deadline() if self.hop is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Counters, links and flows for the admin resource."""
        return {
            "mode": self.config.mode,
            "reliability": self.config.reliability,
            "server": self.server.describe(),
            "links": [link.describe() for link in self.links],
            "maxLinks": self.config.max_links,
            "maxExchangesPerLink": self.config.max_exchanges,
            "flows": {"open": len(self._flows), "lingering": len(self._lingering)},
            "counters": self.counters.to_map(),
        }
