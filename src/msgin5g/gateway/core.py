"""The Gateway Client's decisions, pure (TS 24.538 6.2.2.x, 6.2.2.2; SPEC D9, D12, D13).

No asyncio, sockets, SQLite or aiocoap: the shell feeds events and performs the actions returned.

Events (each takes ``now``, the shell's monotonic clock):

- :meth:`GatewayCore.on_datagrams` — datagrams from constrained UEs (requests, ACKs, RSTs);
- :meth:`GatewayCore.on_stored` / :meth:`GatewayCore.on_store_failed` — a :class:`Store` was done;
- :meth:`GatewayCore.on_outcome` / :meth:`GatewayCore.on_fetch_done` — a :class:`Fetch` reported
  one upstream GET's outcome / finished;
- :meth:`GatewayCore.on_tick` — :meth:`GatewayCore.next_deadline` has passed (batching timer,
  back-off, give-up, CON retransmission);
- :meth:`GatewayCore.restore` — requests stored before a restart.

Actions: :class:`Ack` and :class:`Reply` (datagrams to a UE), :class:`Store` (requests to store
durably *before* they are acknowledged), :class:`Fetch` (keys to ask the SCM-S for), :class:`Remove`
(delivered, given up or superseded requests), :class:`MarkAnswered`. Answers beyond a burst per
event wait until the shell asks for them (:meth:`GatewayCore.send_answers`).

Each request keeps its *key* (the configuration it asks for, computed once from its query) from
arrival to answer: a :class:`Fetch` names the keys, outcomes are matched against the keys of that
fetch, and the answer of a key goes to the requests the policy holds for it.

SPEC D13: a repeat from the same UE — its own retry with a new message ID or token, possibly from
a new port — *supersedes* its stored request (same requester, same query): the new exchange takes
the old one's place, the old one is removed from the store, and the answer goes to the latest
exchange only.

The MSGin5G-6 side's message layer is the project's one (:class:`~msgin5g.coap.msglayer.MessageLayer`,
owned by the core): duplicates for EXCHANGE_LIFETIME, message IDs, the empty ACK once a request is
stored, piggybacked answers and Block2 (``respond``), CON separate responses with RFC 7252's
back-off from the UE's RFC 6298 RTO (``respond_to``, also after a restart; :mod:`msgin5g.coap.rto`).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .. import authz
from ..bulk import BulkItem, IndividualResponse, answer_responses
from ..coap.msglayer import Confirmed, Fail, Incoming, MessageLayer, Params, Send, Serve
from ..coap.wire import block_size
from ..model import ModelError, UeIdentity
from ..problem import Problem
from . import wire
from .policy import BatchPolicy, Flush, GatewayRequest, GiveUp, ResponseCache, ServicePolicy
from .queue import NewRequest, StoredRequest
from .upstream_rules import UpstreamOutcome
from .wire import CON, ConfigRequest

log = logging.getLogger("msgin5g.gateway")

EXCHANGE_LIFETIME = 247.0  # s, RFC 7252 §4.8.2: how long message IDs are remembered
DEFAULT_MAX_AGE = 60  # s, RFC 7252 §5.10.5

Addr = tuple[str, int]

#: What a secured MSGin5G-6 side answers to anything it cannot verify (as the SCM-S does)
UNAUTHENTICATED_ANSWER = IndividualResponse.from_problem(authz.UNAUTHENTICATED, max_age=0)
STORE_UNAVAILABLE = IndividualResponse.from_problem(
    Problem(0xA3, "the gateway cannot store requests right now", "STORE_UNAVAILABLE"), max_age=5
)
BAD_BLOCK2 = IndividualResponse.from_problem(Problem(0x80, "Block2 beyond the end", "BAD_BLOCK2"))


# -- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Ack:
    """An empty ACK or RST (or a repeated one) to a UE endpoint."""

    addr: Addr
    data: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """A response datagram to a UE endpoint: piggybacked, NON, or a CON separate response of
    request ``req_id`` (its retransmissions are Replies too)."""

    addr: Addr
    data: bytes
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Store:
    """Store these requests in one transaction, then call :meth:`GatewayCore.on_stored`."""

    batch: int
    requests: tuple[NewRequest, ...]


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask the SCM-S for ``keys``: bulk GETs (``bulk``), or one single GET for ``query``."""

    op: int
    bulk: bool
    keys: tuple[Hashable, ...]
    query: wire.UeQuery | None = None


@dataclass(frozen=True, slots=True)
class Remove:
    """These requests are finished (delivered, rejected, given up, superseded): forget them."""

    req_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MarkAnswered:
    req_ids: tuple[int, ...]


Action = Ack | Reply | Store | Fetch | Remove | MarkAnswered


# -- OSCORE on MSGin5G-6, provided by the shell (SPEC D12) ----------------------------------------
@dataclass(frozen=True, slots=True)
class Verified:
    msg: wire.CoapMessage  # the plain request (outer type, MID and token)
    binding: bytes  # what its answers are protected for
    identity: authz.Identity | None


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    challenge: wire.CoapMessage | None = None  # an Echo challenge to send instead of the 4.01


class Security(Protocol):
    def verify(self, data: bytes, msg: wire.CoapMessage) -> Verified | Refusal: ...

    def protect(self, msg: wire.CoapMessage, binding: bytes) -> wire.CoapMessage | None:
        """The protected message, or None when the request's key was revoked since."""


@dataclass(frozen=True)
class CoreConfig:
    service_id: str = "msgin5g"
    policy: ServicePolicy = field(default_factory=ServicePolicy)
    cache: bool = True
    ack_timeout: float = 2.0  # RFC 7252 ACK_TIMEOUT of the CON separate responses
    max_retransmit: int = 4
    record_answers: bool = False
    #: answers sent per event; the rest wait for :meth:`GatewayCore.send_answers`
    send_burst: int = 128
    adaptive_rto: bool = True  # separate responses start from the UE's RFC 6298 RTO (coap.rto)


@dataclass(slots=True)
class _Live:
    stored: StoredRequest
    key: Hashable
    requester: tuple | None  # D13 supersede key: (identity, query)
    answer: IndividualResponse | None = None
    out: tuple[int, Addr, int] | None = None  # the CON separate response in flight: handle, addr, MID
    waiting: bool = False  # its answer waits in the core's outbox, not sent yet


@dataclass(slots=True)
class _Staged:
    incoming: Incoming
    addr: Addr
    msg: wire.CoapMessage
    request: ConfigRequest
    key: Hashable
    binding: bytes | None
    requester: tuple | None


#: The counters of :attr:`GatewayCore.stats`
STAT_NAMES = (
    "datagrams-in", "garbage", "requests", "duplicates", "rejected", "cache-hits", "stored", "restored",
    "merged", "superseded", "flush-full", "flush-timer", "flush-urgent", "flush-retry", "flush-single",
    "bulk-operations", "single-forwards", "upstream-failures", "answers", "retransmissions",
    "delivered", "undelivered", "given-up", "unauthenticated", "forbidden", "internal-errors"
)  # fmt: skip


def requester_key(identity: authz.Identity | None, query: wire.UeQuery) -> tuple:
    """Which stored request a repeat supersedes (SPEC D13): the same authenticated requester (or,
    unsecured, the same claimed UE) asking the same query."""
    return (str(identity) if identity is not None else None, query)


class GatewayCore:
    """The MSGin5G Gateway Client's state machine (SPEC D9, D13)."""

    def __init__(
        self, config: CoreConfig, security: Security | None = None, rng: random.Random | None = None
    ):
        self.config = config
        self.security = security
        self.rng = rng or random.Random()
        self.policy = BatchPolicy(config.policy)
        self.cache: ResponseCache[Hashable, IndividualResponse] = ResponseCache()
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self.answer_log: list[int] = []
        self._requests: dict[int, _Live] = {}
        self._by_requester: dict[tuple, int] = {}
        params = Params(  # the MSGin5G-6 side's message layer
            ack_timeout=config.ack_timeout,
            max_retransmit=config.max_retransmit,
            dedup_capacity=1 << 18,
            adaptive_rto=config.adaptive_rto,
        )
        self.ml = MessageLayer(params, self.rng, server=True)
        self._handles: dict[int, int] = {}  # CON separate response → its request
        self._outbox: deque[int] = deque()  # requests whose answer is decided and not yet sent
        self._batches: dict[int, list[_Staged]] = {}
        self._ops: dict[int, set[Hashable]] = {}
        self._next_batch = 0
        self._next_op = 0

    # -- queries -----------------------------------------------------------------------------------
    @property
    def unanswered(self) -> int:
        """Requests stored and not yet delivered."""
        return len(self._requests)

    @property
    def busy(self) -> bool:
        return bool(self._requests or self._batches)

    @property
    def answers_waiting(self) -> int:
        """Answers decided and not yet sent: the shell asks for them with :meth:`send_answers`."""
        return len(self._outbox)

    def next_deadline(self) -> float | None:
        a, b = self.policy.next_deadline(), self.ml.next_deadline()
        return a if b is None else b if a is None else min(a, b)

    # -- restart -------------------------------------------------------------------------------------
    def restore(self, now: float, wall: float, pending: Sequence[StoredRequest]) -> list[Action]:
        """Requests stored before a crash or stop: answer each of them (SPEC D9, "nothing lost").
        Of two stored for one requester and query (a crash between storing a repeat and removing
        what it superseded), the later one stays."""
        out: list[Action] = []
        greqs = []
        for st in pending:
            try:
                req = ConfigRequest.of(st.query, st.urgent, st.block_num, st.block_szx)
                key = req.key(self.config.policy.bulk)
            except ModelError as e:
                self._requests[st.req_id] = _Live(st, st.query, None)
                out += self._answer(
                    now, st.req_id, IndividualResponse.from_problem(Problem(0x80, str(e), e.cause))
                )
                continue
            rk = (st.requester, st.query)
            old = self._by_requester.get(rk)
            if old is not None:
                self.stats["superseded"] += 1
                self._requests.pop(old, None)
                greqs = [g for g in greqs if g.req_id != old]
                out.append(Remove((old,)))
            self._by_requester[rk] = st.req_id
            self._requests[st.req_id] = _Live(st, key, rk)
            received = now - max(0.0, wall - st.received)
            greqs.append(GatewayRequest(st.req_id, key, received, st.urgent, isinstance(key, BulkItem)))
        self.stats["restored"] += len(pending)
        out += self._run(now, self.policy.on_requests(now, greqs))
        return out + self.send_answers(now, self.config.send_burst)

    # -- MSGin5G-6 side: receiving -------------------------------------------------------------------
    def on_datagrams(self, now: float, wall: float, datagrams: Sequence[tuple[bytes, Addr]]) -> list[Action]:
        """A receive burst. Valid new requests are collected into one :class:`Store`."""
        out: list[Action] = []
        staged: list[_Staged] = []
        for data, addr in datagrams:
            self.stats["datagrams-in"] += 1
            try:
                for a in self.ml.on_datagram(now, data, addr):
                    if isinstance(a, Serve):
                        self._request(now, a.request, data, out, staged)
                    else:
                        self._perform_ml(a, out)
            except Exception:  # never let one datagram stop the others
                log.exception("datagram from %s not handled", addr)
                self.stats["internal-errors"] += 1
        c = self.ml.counters
        self.stats["duplicates"] = c.duplicates
        self.stats["garbage"] = c.malformed + c.unmatched + c.rejected
        if staged:
            batch = self._next_batch = self._next_batch + 1
            self._batches[batch] = staged
            out.append(Store(batch, tuple(self._new_request(s, wall) for s in staged)))
        return out

    def _perform_ml(self, a, out: list[Action]) -> None:
        """What the message layer says: datagrams out, answers delivered or undeliverable."""
        kind = type(a)
        if kind is Send:
            out.append(Ack(a.addr, a.data) if len(a.data) == 4 else Reply(a.addr, a.data))
        elif kind is Confirmed or kind is Fail:  # an RST (Fail) rejects an answer the UE did receive
            req_id = self._handles.pop(a.handle, None)
            if req_id is not None:
                ok = kind is Confirmed or "RST" in a.reason
                self.stats["delivered" if ok else "undelivered"] += 1
                out += self._done(req_id)
        # Unmatched: counted by the layer (garbage)

    def _request(
        self, now: float, incoming: Incoming, data: bytes, out: list[Action], staged: list[_Staged]
    ) -> None:
        """A new request (the message layer has taken care of duplicates)."""
        msg, addr = incoming.message, incoming.addr
        self.stats["requests"] += 1
        binding = identity = None
        if self.security is not None:
            verified = self.security.verify(data, msg)
            if isinstance(verified, Refusal):
                self.stats["unauthenticated"] += 1
                if verified.challenge is None:
                    self._reply_now(now, incoming, UNAUTHENTICATED_ANSWER, out)
                else:
                    self._send_now(now, incoming, verified.challenge, out)
                return
            msg, binding, identity = verified.msg, verified.binding, verified.identity
        parsed = wire.parse_config_request(msg, self.config.service_id)
        if isinstance(parsed, IndividualResponse):
            self.stats["rejected"] += 1
            self._reply_now(now, incoming, parsed, out, binding=binding)
            return
        if self.security is not None:
            # a UE asks only for its own configuration (TS 24.546 6.2.1.2; SPEC D12)
            ue = UeIdentity(uri=parsed.query.ue_uri)
            problem = authz.authorize(identity or authz.ANONYMOUS, authz.Op.QUERY_SCOPED, ue=ue)
            if problem is not None:
                self.stats["forbidden"] += 1
                self._reply_now(now, incoming, IndividualResponse.from_problem(problem), out, binding=binding)
                return
        key = parsed.key(self.config.policy.bulk)
        if self.config.cache:
            hit = self.cache.get(now, key)
            if hit is not None:
                resp, remaining = hit
                self.stats["cache-hits"] += 1
                self._reply_now(
                    now, incoming, resp, out, parsed.block_num, parsed.block_szx, int(remaining), binding
                )
                return
        staged.append(
            _Staged(incoming, addr, msg, parsed, key, binding, requester_key(identity, parsed.query))
        )

    @staticmethod
    def _new_request(s: _Staged, wall: float) -> NewRequest:
        p = s.request
        return NewRequest(
            s.addr[0], s.addr[1], s.msg.mid, s.msg.token, s.msg.mtype == CON, p.query, p.urgent,
            p.block_num, p.block_szx, wall, s.binding, s.requester[0] if s.requester else None,
        )  # fmt: skip

    def on_store_failed(self, now: float, batch: int) -> list[Action]:
        """The store refused the batch: we cannot promise anything we cannot store — say so at once."""
        out: list[Action] = []
        for s in self._batches.pop(batch, []):
            self._reply_now(now, s.incoming, STORE_UNAVAILABLE, out, binding=s.binding)
        return out

    def on_stored(self, now: float, batch: int, stored: Sequence[StoredRequest | None]) -> list[Action]:
        """The batch is stored: acknowledge it (SPEC D9), supersede repeats (D13), hand the rest to
        the policy."""
        out: list[Action] = []
        greqs: list[GatewayRequest] = []
        keys_seen: set[Hashable] = set()
        for s, st in zip(self._batches.pop(batch, []), stored, strict=True):
            for a in self.ml.accept(now, s.incoming):  # the empty ACK, now that it is stored
                self._perform_ml(a, out)
            if st is None:  # stored before (retransmission across a restart)
                continue
            self.stats["stored"] += 1
            log.debug("stored request %d (%s) from %s", st.req_id, st.query.ue_uri, s.addr)
            live = _Live(st, s.key, s.requester)
            old_id = self._by_requester.get(s.requester)
            self._by_requester[s.requester] = st.req_id
            self._requests[st.req_id] = live
            if old_id is not None and old_id in self._requests:
                out += self._supersede(now, old_id, live)
                continue
            if s.key in keys_seen or self.policy.state_of(s.key) is not None:
                self.stats["merged"] += 1
            keys_seen.add(s.key)
            greqs.append(GatewayRequest(st.req_id, s.key, now, s.request.urgent, isinstance(s.key, BulkItem)))
        out += self._run(now, self.policy.on_requests(now, greqs))
        return out + self.send_answers(now, self.config.send_burst)

    def _supersede(self, now: float, old_id: int, new: _Live) -> list[Action]:
        """SPEC D13: ``new`` takes the place of the same UE's earlier request ``old_id``."""
        self.stats["superseded"] += 1
        old = self._requests.pop(old_id)
        out: list[Action] = [Remove((old_id,))]
        if old.out is not None:  # its answer is in flight to an exchange the UE has left: end it
            handle, addr, mid = old.out
            self._handles.pop(handle, None)
            self.ml.on_message(now, wire.CoapMessage(wire.RST, wire.EMPTY, mid), addr)
        if self.policy.supersede(old_id, new.stored.req_id, now):
            return out
        if old.answer is not None:  # answered already: the latest exchange gets that answer
            return out + self._answer(now, new.stored.req_id, old.answer)
        greq = GatewayRequest(
            new.stored.req_id, new.key, now, new.stored.urgent, isinstance(new.key, BulkItem)
        )
        return out + self._run(now, self.policy.on_requests(now, [greq]))

    def _reply_now(
        self, now, incoming: Incoming, resp, out, block_num=0, block_szx=6, max_age=None, binding=None
    ) -> None:
        """A piggybacked answer (CON request) or an immediate NON answer (NON request). Unsecured,
        the message layer cuts the Block2 block the request asks for (RFC 7959 §2.3); secured, the
        block is cut from the plain answer and protected (RFC 8613 §4.1.3.4: Block2 is inner)."""
        if binding is None or self.security is None:
            for a in self.ml.respond(now, incoming, wire.full_response(resp, max_age))[1]:
                self._perform_ml(a, out)
            return
        reply = wire.response_message(0, 0, b"", resp, block_num, block_szx, max_age)
        if reply is None:
            reply = wire.response_message(0, 0, b"", BAD_BLOCK2)
        self._send_now(now, incoming, self._protected(reply, binding), out)

    def _send_now(
        self, now: float, incoming: Incoming, response: wire.CoapMessage, out: list[Action]
    ) -> None:
        """An already protected (and, if need be, already cut) answer to ``incoming``, now."""
        if len(response.payload) > block_size(6) and incoming.message.first(wire.OPT_BLOCK2) is None:
            # a protected answer above one block: not to be cut again — a separate response
            acts = (
                self.ml.accept(now, incoming)
                + self.ml.respond_to(now, incoming.addr, incoming.message.token, response)[1]
            )
        else:
            acts = self.ml.respond(now, incoming, response)[1]
        for a in acts:
            self._perform_ml(a, out)

    def _protected(self, msg: wire.CoapMessage, binding: bytes | None) -> wire.CoapMessage:
        """As it goes out: protected for the request ``binding`` names (a fresh nonce every time,
        so answering again after a restart is safe), or the uniform 4.01 when its key was revoked."""
        if binding is None or self.security is None:
            return msg
        sealed = self.security.protect(msg, binding)
        if sealed is None:
            refused = wire.response_message(msg.mtype, msg.mid, msg.token, UNAUTHENTICATED_ANSWER)
            assert refused is not None
            return refused
        return sealed

    # -- decisions and upstream ----------------------------------------------------------------------
    def _run(self, now: float, decisions) -> list[Action]:
        out: list[Action] = []
        for d in decisions:
            if isinstance(d, Flush):
                self.stats[f"flush-{d.reason}"] = self.stats.get(f"flush-{d.reason}", 0) + 1
                self._next_op += 1
                self._ops[self._next_op] = set(d.keys)
                if d.bulk:
                    self.stats["bulk-operations"] += 1
                    out.append(Fetch(self._next_op, True, tuple(d.keys)))
                else:
                    self.stats["single-forwards"] += 1
                    key = d.keys[0]
                    query = (
                        key
                        if isinstance(key, wire.UeQuery)
                        else wire.UeQuery(key.ue_uri, key.ue_vendor, key.ue_type)
                    )
                    out.append(Fetch(self._next_op, False, (key,), query))
            elif isinstance(d, GiveUp):
                problem = Problem(
                    0xA4,
                    f"no configuration could be obtained within {self.config.policy.give_up:g} s",
                    "GAVE_UP",
                )
                resp = IndividualResponse.from_problem(problem)
                for rid in d.req_ids:
                    self.stats["given-up"] += 1
                    out += self._answer(now, rid, resp)
        return out

    def on_outcome(self, now: float, op: int, outcome: UpstreamOutcome) -> list[Action]:
        """One upstream GET of fetch ``op`` is complete: answer its keys, or back off and retry."""
        keys = self._ops.get(op)
        if keys is None:
            return []
        if not outcome.bulk:
            mine = list(keys)
            responses = [
                IndividualResponse(outcome.code, outcome.payload, outcome.content_format, outcome.max_age)
            ]
        else:
            mine = [k for k in outcome.items() if k in keys]  # only what this fetch asked for
            responses = []
            if not outcome.retryable:
                responses = answer_responses(
                    outcome.ue_uris, outcome.code, outcome.payload, outcome.content_format, outcome.max_age
                )
                by_item = dict(zip(outcome.items(), responses, strict=True))
                responses = [by_item[k] for k in mine]
        keys.difference_update(mine)
        if outcome.retryable:
            self.stats["upstream-failures"] += 1
            self.policy.fail(now, mine, outcome.retry_after)
            return []
        out: list[Action] = []
        for key, resp in zip(mine, responses, strict=True):
            out += self._complete(now, key, resp)
        return out + self.send_answers(now, self.config.send_burst)

    def on_fetch_done(self, now: float, op: int) -> list[Action]:
        """Fetch ``op`` has ended: what no outcome covered is retried later."""
        keys = self._ops.pop(op, None)
        if keys:
            self.policy.fail(now, list(keys))
        return []

    def _complete(self, now: float, key: Hashable, resp: IndividualResponse) -> list[Action]:
        if self.config.cache and resp.cacheable:
            age = DEFAULT_MAX_AGE if resp.max_age is None else resp.max_age
            self.cache.put(now, key, resp, age)
        out: list[Action] = []
        for rid in self.policy.complete(key):
            out += self._answer(now, rid, resp)
        return out

    # -- MSGin5G-6 side: answering -----------------------------------------------------------------
    def _answer(self, now: float, req_id: int, resp: IndividualResponse) -> list[Action]:
        """A request's answer is decided; :meth:`send_answers` sends it (RFC 7252 §5.2.2)."""
        live = self._requests.get(req_id)
        if live is None:
            return []
        live.answer = resp
        self.stats["answers"] += 1
        log.debug("answer to request %d (%s) at %s", req_id, live.stored.query.ue_uri, live.stored.endpoint)
        if self.config.record_answers:
            self.answer_log.append(req_id)
        if not live.waiting:
            live.waiting = True
            self._outbox.append(req_id)
        return [MarkAnswered((req_id,))]

    def send_answers(self, now: float, limit: int) -> list[Action]:
        """Up to ``limit`` of the answers decided and not yet sent, as CON separate responses
        (RFC 7252 §5.2.2). Each event sends :attr:`CoreConfig.send_burst` of them and the shell asks
        for the rest a burst per event-loop turn, so that a CON's retransmission timer starts when
        it is sent (RFC 7252 §4.2), not while the thousands of answers of one bulk GET queue up."""
        out: list[Action] = []
        outbox, requests = self._outbox, self._requests
        while outbox and limit > 0:
            req_id = outbox.popleft()
            live = requests.get(req_id)
            if live is None or not live.waiting:  # superseded or given up meanwhile
                continue
            live.waiting = False
            limit -= 1
            st = live.stored
            msg = wire.response_message(CON, 0, st.token, live.answer, st.block_num, st.block_szx)
            if msg is None:
                msg = wire.response_message(CON, 0, st.token, BAD_BLOCK2)
            msg = self._protected(msg, st.oscore)
            if live.out is not None:  # answered before (a give-up racing an answer): end that one
                self._handles.pop(live.out[0], None)
            handle, acts = self.ml.respond_to(now, st.endpoint, st.token, msg)
            for a in acts:
                if type(a) is Send:
                    out.append(Reply(a.addr, a.data, req_id))
                    if handle is not None:
                        live.out = (handle, a.addr, int.from_bytes(a.data[2:4], "big"))
                        self._handles[handle] = req_id
                else:
                    self._perform_ml(a, out)
        return out

    def _done(self, req_id: int) -> list[Action]:
        live = self._requests.pop(req_id, None)
        if live is None:
            return []
        if self._by_requester.get(live.requester) == req_id:
            del self._by_requester[live.requester]
        return [Remove((req_id,))]

    def on_tick(self, now: float) -> list[Action]:
        """Retransmit due CONs (RFC 7252 §4.2), then the policy's timers (flush, retry, give up)."""
        out: list[Action] = []
        for a in self.ml.on_tick(now):
            if isinstance(a, Send):
                self.stats["retransmissions"] += 1
                out.append(Reply(a.addr, a.data))
            else:
                self._perform_ml(a, out)
        out += self._run(now, self.policy.on_tick(now))
        return out + self.send_answers(now, self.config.send_burst)
