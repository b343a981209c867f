"""The CoAP message layer and request/response layer, pure (RFC 7252 §4, §5.2; RFC 7959; RFC 7641).

No sockets, no asyncio, no clock: every input carries ``now`` (seconds, any monotonic origin) and every
output is an action the shell performs (:mod:`msgin5g.coap.udp`), in the sans-IO manner of h11. One
:class:`MessageLayer` per UDP endpoint; peers are opaque hashable addresses.

What it does:

* **message IDs** towards each peer from a :class:`MidAllocator` that never reuses an ID within
  EXCHANGE_LIFETIME (RFC 7252 §4.4, §4.8.2);
* **duplicate detection** of incoming CON/NON for EXCHANGE_LIFETIME/NON_LIFETIME, replaying the reply given
  the first time (RFC 7252 §4.5); the cache is bounded, evictions are counted;
* **CON retransmission** with exponential back-off (initial timeout uniformly random in [ACK_TIMEOUT,
  ACK_TIMEOUT·ACK_RANDOM_FACTOR], doubled each time, give-up after MAX_RETRANSMIT; RFC 7252 §4.2, §4.8),
  randomness from an injected ``random.Random``;
* **client requests**: token matching, piggybacked and separate responses (RFC 7252 §5.2), NSTART
  outstanding interactions per peer with the rest queued (RFC 7252 §4.7), observations kept open for
  notifications (RFC 7641 §3), and — when asked — Block2 reassembly with follow-up requests (RFC 7959 §2.4,
  :mod:`.blockwise_client`) or Q-Block2 bursts (RFC 9177, :mod:`.qblock_client`); request bodies of several
  blocks with Q-Block1 or Block1 (RFC 9177 §4.3, RFC 7959 §2.5, :mod:`.qblock1_client`);
* **server side**: a request is handed up once (:class:`Serve`); the answer is piggybacked, or after
  :meth:`MessageLayer.accept` (empty ACK) sent as a separate response, CON and retransmitted until
  acknowledged (RFC 7252 §5.2.2); large bodies sliced into Block2 blocks (RFC 7959 §2.3).

Actions: :class:`Send`, :class:`Deliver`, :class:`Fail`, :class:`Acked`, :class:`Serve`, :class:`Confirmed`,
:class:`Unmatched`; timers through :meth:`MessageLayer.next_deadline` / :meth:`MessageLayer.on_tick`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict, deque
from dataclasses import dataclass

from . import blockwise_client, protect, qblock1_client, qblock_client, wire
from .actions import (  # noqa: F401 (the layer's vocabulary, importable from here)
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT,
    BAD_OPTION,
    BLOCKWISE,
    DEADLINE,
    EXCHANGE_LIFETIME,
    GAVE_UP,
    MAX_RETRANSMIT,
    MID_SPACE,
    NO_MID,
    NON_LIFETIME,
    NSTART,
    RESET,
    UNREACHABLE,
    Acked,
    Action,
    Addr,
    Confirmed,
    Counters,
    Deliver,
    Fail,
    Incoming,
    MidAllocator,
    Params,
    Protection,
    Retransmission,
    Send,
    Serve,
    Unmatched,
)
from .blockwise import BlockwiseTransfer, block2_of
from .rto import RtoEstimator
from .wire import ACK, CON, EMPTY, NON, OPT_OBSERVE, RST, CoapMessage

# -- state ---------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Exchange:
    """One client request, from queueing to its (last) response."""

    handle: int
    addr: Addr
    msg: CoapMessage
    con: bool
    blockwise: bool
    observe: bool
    deadline: float
    token: bytes = b""
    mid: int = -1
    tx: Retransmission | None = None
    outstanding: bool = False  # counts towards NSTART (RFC 7252 §4.7)
    answered: bool = False
    done: bool = False
    transfer: BlockwiseTransfer | None = None
    first: CoapMessage | None = None  # block 0 of a block-wise response (its options are kept)
    q: qblock_client.QBlockState | None = None  # RFC 9177 Q-Block2 offered (coap.qblock_client)
    q1: qblock1_client.Q1State | None = None  # a body of several blocks (coap.qblock1_client)
    prot: Protection | None = None  # OSCORE: ``msg`` is the plain request (RFC 8613 §8.1)
    bindings: dict[bytes, object] | None = None  # token → request binding of its responses


@dataclass(slots=True, eq=False)
class _Separate:
    """A CON separate response in flight (server side)."""

    handle: int
    addr: Addr
    mid: int
    tx: Retransmission
    done: bool = False


class MessageLayer:
    """The message layer of one CoAP-over-UDP endpoint (RFC 7252 §4–§5; RFC 7959; RFC 7641).

    ``server``: hand requests up (:class:`Serve`); otherwise a CON request is rejected with RST.
    ``ack_unmatched``: acknowledge a CON response that matches no request (a load generator that
    records late answers) instead of rejecting it with RST (RFC 7252 §5.3.2).
    """

    def __init__(
        self,
        params: Params | None = None,
        rng: random.Random | None = None,
        *,
        server: bool = False,
        ack_unmatched: bool = False,
    ):
        self.params = params or Params()
        self.rng = rng or random.Random()
        self.server = server
        self.ack_unmatched = ack_unmatched
        self.counters = Counters()
        self._handles = itertools.count(1)
        self._seq = itertools.count()
        self._mids: dict[Addr, MidAllocator] = {}
        self._by_mid: dict[tuple[Addr, int], _Exchange | _Separate] = {}
        self._by_token: dict[tuple[Addr, bytes], _Exchange] = {}
        self._exchanges: dict[int, _Exchange] = {}
        self._queues: dict[Addr, deque[_Exchange]] = {}
        self._outstanding: dict[Addr, int] = {}
        self._dedup: OrderedDict[tuple[Addr, int], list] = OrderedDict()  # → [expires, reply | None]
        self._timers: list[tuple[float, int, object, int]] = []  # (at, seq, owner, mid)
        self.rto = RtoEstimator.of(self.params)  # the peers' RTOs (RFC 7252 §4.8; :mod:`.rto`)

    # -- bookkeeping -----------------------------------------------------------------------------------
    def _mid(self, addr: Addr, now: float) -> int | None:
        alloc = self._mids.get(addr)
        if alloc is None:
            alloc = self._mids[addr] = MidAllocator(
                self.params.exchange_lifetime, self.rng.randrange(MID_SPACE)
            )
        return alloc.take(now)

    def _new_token(self, addr: Addr) -> bytes:
        while True:
            token = self.rng.getrandbits(64).to_bytes(8, "big")
            if (addr, token) not in self._by_token:
                return token

    def _con(self, data: bytes, now: float, addr: Addr) -> Retransmission:
        base = self.rto.rto(addr, now) if self.rto is not None else None
        return Retransmission.start(data, now, self.params, self.rng, base)

    def _sample(self, tx: Retransmission | None, addr: Addr, now: float) -> None:
        """An acknowledgement of a CON: a round-trip sample when it went once (:mod:`.rto`); the
        link's first re-times the CONs in flight (those of a burst sent before it)."""
        rtt = tx.rtt(now) if self.rto is not None and tx is not None else None
        if rtt is not None and self.rto.sample(addr, rtt, now):
            for owner in self._by_mid.values():
                if owner.tx is not None and owner.tx.rebase(self.rto.rto(owner.addr, now), self.params):
                    self._timer(owner.tx.next_at, owner, owner.mid)

    def _timer(self, at: float, owner: object, mid: int = -1) -> None:
        heapq.heappush(self._timers, (at, next(self._seq), owner, mid))

    def _send(self, out: list, data: bytes, addr: Addr) -> None:
        self.counters.sent += 1
        out.append(Send(data, addr))

    def _remember(self, key: tuple[Addr, int], now: float, lifetime: float, reply: bytes | None) -> None:
        """Note an incoming CON/NON's message ID with the reply to replay (RFC 7252 §4.5)."""
        d = self._dedup
        while d:
            first = next(iter(d.values()))
            if first[0] > now:
                break
            d.popitem(last=False)
        if len(d) >= self.params.dedup_capacity:
            d.popitem(last=False)
            self.counters.dedup_evicted += 1
        d.pop(key, None)  # an expired entry for the same ID: the new one goes to the end
        d[key] = [now + lifetime, reply]

    def _lifetime(self, mtype: int) -> float:
        return self.params.exchange_lifetime if mtype == CON else self.params.non_lifetime

    # -- client ------------------------------------------------------------------------------------------
    def request(
        self,
        now: float,
        msg: CoapMessage,
        addr: Addr,
        *,
        confirmable: bool = True,
        token: bytes | None = None,
        blockwise: bool = False,
        observe: bool = False,
        deadline: float | None = None,
        qblock: qblock_client.QBlockOffer | None = None,
        qblock1: qblock1_client.QBlock1Offer | None = None,
        protection: Protection | None = None,
    ) -> tuple[int, list[Action]]:
        """Send the request ``msg`` (its type, MID and token are the layer's) to ``addr``: (handle,
        actions). The handle's outcome comes as :class:`Deliver` or :class:`Fail`; ``deadline``
        (absolute; default EXCHANGE_LIFETIME or NON_LIFETIME from now) bounds the wait for the
        first response. With ``blockwise`` a Block2 response is completed by follow-up requests
        (RFC 7959 §2.4) and delivered whole; with ``observe`` the token stays live for
        notifications until :meth:`cancel` (RFC 7641 §3.2). ``qblock``: offer Q-Block2 (RFC 9177).
        A payload larger than one block goes with Q-Block1 when ``qblock1`` is given, else with
        Block1 when ``blockwise`` (RFC 9177 §4.3, RFC 7959 §2.5; :mod:`.qblock1_client`).
        ``protection``: ``msg`` is a plain request, protected end to end at each transmission of a
        new token, every response verified before anything else looks at it (OSCORE, RFC 8613
        §8.1, §8.4; a response that fails verification is dropped as if lost, an unprotected error
        response is the answer — the server's refusal)."""
        if token is not None and (addr, token) in self._by_token:
            raise ValueError(f"token {token.hex()} is in use towards {addr!r}")
        if deadline is None:
            deadline = now + self._lifetime(CON if confirmable else NON)
        ex = _Exchange(next(self._handles), addr, msg, confirmable, blockwise, observe, deadline)
        if qblock1_client.needed(msg, qblock1, blockwise):
            msg, ex.q1 = qblock1_client.start(self, msg, qblock1)
        ex.msg, ex.q = qblock_client.offer(msg, qblock, now) if qblock and not ex.q1 else (msg, None)
        ex.token = token if token is not None else self._new_token(addr)
        if protection is not None:
            ex.prot, ex.bindings = protection, {}
        self._exchanges[ex.handle] = ex
        self._by_token[(addr, ex.token)] = ex
        self._queues.setdefault(addr, deque()).append(ex)
        self._timer(deadline, ex)
        out: list[Action] = []
        self._pump(now, addr, out)
        return ex.handle, out

    def cancel(self, handle: int) -> None:
        """Forget a request or observation: its later answers are strays (RFC 7641 §3.6)."""
        ex = self._exchanges.get(handle)
        if ex is not None:
            self._finish(ex)

    def pending(self) -> int:
        """Client requests not finished."""
        return len(self._exchanges)

    def _pump(self, now: float, addr: Addr, out: list) -> None:
        """Send queued requests while fewer than NSTART are outstanding (RFC 7252 §4.7)."""
        queue = self._queues.get(addr)
        while queue and self._outstanding.get(addr, 0) < self.params.nstart:
            ex = queue[0]
            if ex.done:
                queue.popleft()
                continue
            mid = self._mid(addr, now)
            if mid is None:  # every message ID used within EXCHANGE_LIFETIME: wait for the oldest
                self._timer(self._mids[addr].next_free_at(), addr)
                return
            queue.popleft()
            self._transmit(now, ex, mid, out)
        if not queue:
            self._queues.pop(addr, None)

    def _transmit(self, now: float, ex: _Exchange, mid: int, out: list) -> None:
        msg = ex.msg
        msg.mtype, msg.mid, msg.token = (CON if ex.con else NON), mid, ex.token
        data = wire.encode(msg) if ex.prot is None else protect.outgoing(ex, msg)
        if ex.q is not None:
            qblock_client.on_sent(self, now, ex)
        ex.mid = mid
        self._by_mid[(ex.addr, mid)] = ex
        ex.outstanding = True
        self._outstanding[ex.addr] = self._outstanding.get(ex.addr, 0) + 1
        if ex.con:
            ex.tx = self._con(data, now, ex.addr)
            self._timer(ex.tx.next_at, ex, mid)
        self._send(out, data, ex.addr)

    def _release(self, ex: _Exchange) -> None:
        """The request is no longer outstanding (acknowledged or answered, RFC 7252 §4.7)."""
        ex.tx = None
        if ex.outstanding:
            ex.outstanding = False
            n = self._outstanding.get(ex.addr, 1) - 1
            if n:
                self._outstanding[ex.addr] = n
            else:
                self._outstanding.pop(ex.addr, None)

    def _finish(self, ex: _Exchange) -> None:
        ex.done = True
        if ex.q is not None:
            qblock_client.forget(self, ex)
        if ex.q1 is not None:
            qblock1_client.forget(self, ex)
        self._release(ex)
        self._exchanges.pop(ex.handle, None)
        self._by_mid.pop((ex.addr, ex.mid), None)
        if self._by_token.get((ex.addr, ex.token)) is ex:
            del self._by_token[(ex.addr, ex.token)]

    def _fail(self, ex: _Exchange, reason: str, out: list, cause: str = BLOCKWISE) -> None:
        """End ``ex`` with :class:`Fail`; the cause defaults to BLOCKWISE, what the block-transfer
        paths (RFC 7959 here, RFC 9177 in :mod:`.qblock_client`) report."""
        self._finish(ex)
        out.append(Fail(ex.handle, cause, reason))

    def _resend(self, now: float, ex: _Exchange, out: list, options=None) -> None:  # RFC 7959 §2.4, 9177 §4.1
        self._by_mid.pop((ex.addr, ex.mid), None)
        del self._by_token[(ex.addr, ex.token)]
        ex.token = self._new_token(ex.addr)
        self._by_token[(ex.addr, ex.token)] = ex
        ex.msg = CoapMessage(CON, ex.msg.code, 0, ex.token, options or ex.msg.options, ex.msg.payload)
        self._queues.setdefault(ex.addr, deque()).appendleft(ex)
        self._pump(now, ex.addr, out)

    def _on_response(self, now: float, ex: _Exchange, msg: CoapMessage, addr: Addr, out: list) -> None:
        if ex.prot is not None:
            msg = protect.verified(self.counters, ex, msg)
            if msg is None:  # as if lost: a CON request goes on being retransmitted
                return
        self._release(ex)
        if ex.q1 is not None and not ex.q1.done and qblock1_client.on_response(self, now, ex, msg, addr, out):
            return
        if ex.q is not None and qblock_client.on_response(self, now, ex, msg, addr, out):
            return
        if ex.answered:  # a notification of an observation (RFC 7641 §3.2)
            out.append(Deliver(ex.handle, msg, addr, final=False))
            return
        msg = blockwise_client.on_block2(self, now, ex, msg, out)
        if msg is None:
            return
        ex.answered = True
        if ex.observe and msg.first(OPT_OBSERVE) is not None:
            self._by_mid.pop((ex.addr, ex.mid), None)
            out.append(Deliver(ex.handle, msg, addr, final=False))
        else:
            self._finish(ex)
            out.append(Deliver(ex.handle, msg, addr))

    # -- server --------------------------------------------------------------------------------------
    def accept(self, now: float, incoming: Incoming) -> list[Action]:
        """Acknowledge a CON request now with an empty ACK; the answer follows as a separate
        response (RFC 7252 §5.2.2). Nothing for a NON request or one already acknowledged."""
        m = incoming.message
        if m.mtype != CON or incoming.acked or incoming.answered:
            return []
        incoming.acked = True
        ack = wire.empty_ack(m.mid)
        entry = self._dedup.get((incoming.addr, m.mid))
        if entry is not None:
            entry[1] = ack
        out: list[Action] = []
        self._send(out, ack, incoming.addr)
        return out

    def respond(
        self, now: float, incoming: Incoming, response: CoapMessage, *, confirmable: bool = True
    ) -> tuple[int | None, list[Action]]:
        """Answer ``incoming`` with ``response`` (code, options, payload; the layer sets type, MID
        and token): piggybacked on the ACK when the request is a CON not yet acknowledged, else a
        separate response — CON (handle returned; :class:`Confirmed` / :class:`Fail` follow) or
        NON. A body larger than one block (or a request with Block2) is answered with the block
        asked for (RFC 7959 §2.3); a block past the end gets 4.02."""
        m = incoming.message
        if incoming.answered:
            return None, []
        incoming.answered = True
        response = block2_of(m, response, self.params.block_szx)
        if m.mtype == CON and not incoming.acked:
            data = wire.encode(
                CoapMessage(ACK, response.code, m.mid, m.token, response.options, response.payload)
            )
            entry = self._dedup.get((incoming.addr, m.mid))
            if entry is not None:
                entry[1] = data
            out: list[Action] = []
            self._send(out, data, incoming.addr)
            return None, out
        return self.respond_to(
            now, incoming.addr, m.token, response, confirmable=confirmable and m.mtype == CON
        )

    def respond_to(
        self, now: float, addr: Addr, token: bytes, response: CoapMessage, *, confirmable: bool = True
    ) -> tuple[int | None, list[Action]]:
        """A separate response to the request ``token`` of ``addr`` (e.g. one known only from a store
        after a restart): CON retransmitted until acknowledged (handle returned), or NON."""
        out: list[Action] = []
        mid = self._mid(addr, now)
        if mid is None:
            return None, [Fail(0, NO_MID, "no message ID free towards the peer (RFC 7252 §4.4)")]
        msg = CoapMessage(
            CON if confirmable else NON, response.code, mid, token, response.options, response.payload
        )
        data = wire.encode(msg)
        handle = None
        if confirmable:
            handle = next(self._handles)
            sep = _Separate(handle, addr, mid, self._con(data, now, addr))
            self._by_mid[(addr, mid)] = sep
            self._timer(sep.tx.next_at, sep, mid)
        self._send(out, data, addr)
        return handle, out

    # -- input ---------------------------------------------------------------------------------------
    def on_datagram(self, now: float, data: bytes, addr: Addr) -> list[Action]:
        """One datagram from ``addr``. A malformed CON is rejected with RST (RFC 7252 §4.2)."""
        try:
            msg = wire.decode(data)
        except wire.WireError:
            self.counters.malformed += 1
            head = wire.peek_header(data)
            if head is not None and head[0] == CON:
                self.counters.rejected += 1
                return [Send(wire.reset(head[1]), addr)]
            return []
        return self.on_message(now, msg, addr)

    def on_message(self, now: float, msg: CoapMessage, addr: Addr) -> list[Action]:
        """One decoded message from ``addr``."""
        out: list[Action] = []
        mtype = msg.mtype
        if mtype in (ACK, RST):
            self._on_ack_or_reset(now, msg, addr, out)
            return out
        if msg.code == EMPTY:  # CoAP ping (RFC 7252 §4.3) or an empty NON: RST / ignored
            if mtype == CON:
                self.counters.rejected += 1
                out.append(Send(wire.reset(msg.mid), addr))
            return out
        key = (addr, msg.mid)
        entry = self._dedup.get(key)
        if entry is not None and entry[0] > now:  # a duplicate (RFC 7252 §4.5): replay, never redeliver
            self.counters.duplicates += 1
            if entry[1] is not None:
                out.append(Send(entry[1], addr))
            return out
        if msg.is_request:
            if not self.server:
                reply = None
                if mtype == CON:
                    self.counters.rejected += 1
                    reply = wire.reset(msg.mid)
                    out.append(Send(reply, addr))
                self._remember(key, now, self._lifetime(mtype), reply)
                return out
            self._remember(key, now, self._lifetime(mtype), None)
            out.append(Serve(Incoming(msg, addr)))
            return out
        if not msg.is_response:  # reserved code classes 1, 6, 7: reject (RFC 7252 §4.2)
            reply = wire.reset(msg.mid) if mtype == CON else None
            if reply is not None:
                self.counters.rejected += 1
                out.append(Send(reply, addr))
            self._remember(key, now, self._lifetime(mtype), reply)
            return out
        # a separate response or a notification (RFC 7252 §5.2.2; RFC 7641 §4.2)
        ex = self._by_token.get((addr, msg.token))
        reply = None
        if ex is None:
            self.counters.unmatched += 1
            if mtype == CON:
                if self.ack_unmatched:
                    reply = wire.empty_ack(msg.mid)
                else:
                    self.counters.rejected += 1
                    reply = wire.reset(msg.mid)
            out.append(Unmatched(msg, addr))
        elif mtype == CON:
            reply = wire.empty_ack(msg.mid)
        if reply is not None:
            self._send(out, reply, addr)
        self._remember(key, now, self._lifetime(mtype), reply)
        if ex is not None:
            self._on_response(now, ex, msg, addr, out)
            self._pump(now, addr, out)
        return out

    def _on_ack_or_reset(self, now: float, msg: CoapMessage, addr: Addr, out: list) -> None:
        owner = self._by_mid.get((addr, msg.mid))
        if owner is None:
            self.counters.unmatched += 1
            if msg.code != EMPTY:
                out.append(Unmatched(msg, addr))
            return
        if msg.mtype == ACK and (msg.code == EMPTY or getattr(owner, "token", None) == msg.token):
            self._sample(owner.tx, addr, now)  # acknowledged as sent (not another request's answer)
        if isinstance(owner, _Separate):
            if msg.code != EMPTY:  # a response on an ACK answers nothing here
                self.counters.unmatched += 1
                return
            owner.done = True
            del self._by_mid[(addr, msg.mid)]
            out.append(
                Confirmed(owner.handle)
                if msg.mtype == ACK
                else Fail(owner.handle, RESET, "rejected with RST")
            )
            return
        ex = owner
        if msg.mtype == RST:
            self._fail(ex, "rejected with RST", out, RESET)
        elif msg.code == EMPTY:  # the answer follows separately (RFC 7252 §5.2.2)
            if ex.tx is not None:
                out.append(Acked(ex.handle))
                wait = self.params.separate_wait
                if wait is not None and not ex.answered and now + wait < ex.deadline:
                    ex.deadline = now + wait  # counted from the empty ACK, not the first copy
                    self._timer(ex.deadline, ex)
            self._release(ex)
            if ex.q1 is not None:  # block 0 of a Q-Block1 body taken (RFC 9177 §4.3)
                qblock1_client.on_acked(self, now, ex, out)
        elif msg.token != ex.token or not msg.is_response:
            self.counters.unmatched += 1  # an ACK with another request's answer: not ours
            out.append(Unmatched(msg, addr))
            return
        else:
            self._on_response(now, ex, msg, addr, out)
        self._pump(now, addr, out)

    def on_unreachable(self, now: float, addr: Addr, reason: str = "port unreachable") -> list[Action]:
        """The network reported that nothing listens at ``addr`` (ICMP port unreachable, RFC 1122
        §4.1.3.3, surfaced by a connected socket): every request already sent there ends now with
        UNREACHABLE rather than being retransmitted until MAX_TRANSMIT_WAIT (RFC 7252 §4.2 allows
        giving up early). Queued requests go out next, and end the same way while the peer is down."""
        out: list[Action] = []
        for ex in [e for e in self._exchanges.values() if e.addr == addr and e.mid >= 0]:
            self._fail(ex, f"{addr!r} unreachable: {reason}", out, UNREACHABLE)
        self._pump(now, addr, out)
        return out

    # -- timers --------------------------------------------------------------------------------------
    def _live(self, owner: object, mid: int) -> bool:
        if isinstance(owner, _Exchange):
            if owner.done:
                return False
            if mid == qblock_client.QBLOCK_TIMER:
                return owner.q is not None
            if mid == qblock1_client.QBLOCK1_TIMER:
                return owner.q1 is not None and not owner.q1.done
            if mid < 0:  # the deadline for the first response
                return not owner.answered
            return owner.tx is not None and owner.mid == mid
        if isinstance(owner, _Separate):
            return not owner.done
        return (self._queues.get(owner) is not None) if owner is not None else False

    def next_deadline(self) -> float | None:
        """When :meth:`on_tick` has something to do next (None: nothing pending)."""
        timers = self._timers
        while timers and not self._live(timers[0][2], timers[0][3]):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def on_tick(self, now: float) -> list[Action]:
        """Retransmit, give up and time out what is due at ``now``."""
        out: list[Action] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, owner, mid = heapq.heappop(timers)
            if not self._live(owner, mid):
                continue
            if isinstance(owner, _Exchange) and mid == qblock_client.QBLOCK_TIMER:
                qblock_client.on_tick(self, now, owner, out)
            elif isinstance(owner, _Exchange) and mid == qblock1_client.QBLOCK1_TIMER:
                qblock1_client.on_tick(self, now, owner, out)
            elif isinstance(owner, _Exchange) and mid < 0:
                self._fail(owner, "no response before the deadline", out, DEADLINE)
                self._pump(now, owner.addr, out)
            elif isinstance(owner, (_Exchange, _Separate)):
                tx = owner.tx
                if at != tx.next_at:  # re-armed since (a retransmission, a rebase)
                    continue
                if not tx.due(now, self.params):
                    self.counters.gave_up += 1
                    reason = f"no acknowledgement after {tx.tries} retransmissions"
                    if isinstance(owner, _Exchange):
                        self._fail(owner, reason, out, GAVE_UP)
                        self._pump(now, owner.addr, out)
                    else:
                        owner.done = True
                        self._by_mid.pop((owner.addr, owner.mid), None)
                        out.append(Fail(owner.handle, GAVE_UP, reason))
                    continue
                self.counters.retransmitted += 1
                if self.rto is not None:
                    self.rto.expired(owner.addr)
                self._send(out, tx.data, owner.addr)  # same message ID (RFC 7252 §4.2)
                self._timer(tx.next_at, owner, mid)
            else:
                self._pump(now, owner, out)
        return out
