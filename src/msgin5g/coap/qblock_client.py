"""RFC 9177 Q-Block2 for the message layer's client requests, pure (TS 24.546 clause 5; SPEC D7 d).

A request made with ``MessageLayer.request(..., qblock=QBlockOffer())`` offers Q-Block2 in its
first transmission (NUM 0, M set). This module is the part of the message layer that handles its
answers; :class:`~msgin5g.coap.msglayer.MessageLayer` calls it at three seams (a response to such a
request, its timer, its end) and otherwise treats the exchange like any other. The decisions are
:class:`~msgin5g.coap.qblock.QBlock2Receiver`'s:

* every block is recorded wherever it comes from — the first request's token (bursts, and the sets
  after a Continue) or the token of a request for missing blocks; duplicates are ignored and an
  ETag change restarts the body;
* the requests it asks for (a Continue, missing blocks) go as NON with a new token and message ID
  each, outside NSTART (RFC 9177 §7.2 paces them), repeating the request's options without
  Block2/Q-Block2/Observe, or ``followup_options`` when given (a bulk GET's follow-ups name only
  ``bulk-conf-flag``, SPEC D7 b);
* the whole body is delivered once, with the first block's options (Q-Block2 and Size2 removed).

Fall-back (RFC 9177 §4.1): an answer without Q-Block2 ends the offer. 4.02 Bad Option (a server
without RFC 9177) — the request goes again without the option; an answer with Block2 (a server
that ignores the option, e.g. a bare aiocoap resource) — the exchange continues as RFC 7959
(follow-ups, when the request was made ``blockwise``, with the first request's options as RFC 7959
§2.4 wants: the server that ignored Q-Block2 once ignores it again); anything else is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import protect, wire
from .actions import Deliver
from .qblock import BlockOpt, QBlock2Receiver, QBlockFailed, QBlockParams
from .wire import CoapMessage

#: the timer of a Q-Block2 exchange in the message layer's heap (message IDs are >= 0, -1 is the
#: first-response deadline)
QBLOCK_TIMER = -2
BAD_OPTION = 0x82


@dataclass(frozen=True)
class QBlockOffer:
    """Offer Q-Block2 in a request: the RFC 9177 parameters, the block size asked for, and the
    options of follow-up requests (None: the request's own, without block options)."""

    params: QBlockParams = field(default_factory=QBlockParams)
    szx: int = 6
    followup_options: tuple[tuple[int, bytes], ...] | None = None


@dataclass(eq=False)
class QBlockState:
    offer: QBlockOffer
    rx: QBlock2Receiver
    first: CoapMessage | None = None  # the first block received (its options are delivered)
    tokens: list[bytes] = field(default_factory=list)  # tokens of the requests for more blocks
    armed: float | None = None
    requests: int = 0  # requests sent after the first (Continue, missing blocks)


def offer(msg: CoapMessage, q: QBlockOffer, now: float) -> tuple[CoapMessage, QBlockState]:
    """The first request with Q-Block2 (NUM 0, M set) and the exchange's Q-Block state."""
    opts = [o for o in msg.options if o[0] not in (wire.OPT_Q_BLOCK2, wire.OPT_BLOCK2)]
    opts.append((wire.OPT_Q_BLOCK2, wire.block_option(0, True, q.szx)))
    state = QBlockState(q, QBlock2Receiver(params=q.params))
    state.rx.start(now)
    return CoapMessage(msg.mtype, msg.code, msg.mid, msg.token, opts, msg.payload), state


def without_offer(msg: CoapMessage) -> CoapMessage:
    return CoapMessage(msg.mtype, msg.code, msg.mid, msg.token, msg.without(wire.OPT_Q_BLOCK2), msg.payload)


def on_sent(layer, now: float, ex) -> None:
    """The first request has just gone out (again): the receiver's clock starts now (RFC 9177 §7.2),
    not when the request was queued behind NSTART. A NON request (e.g. over OSCORE) is not
    retransmitted by RFC 7252: if nothing comes within NON_RECEIVE_TIMEOUT it goes again as CON."""
    st: QBlockState = ex.q
    st.rx.start(now)
    if not ex.con:
        st.armed = st.rx.deadline()
        layer._timer(st.armed, ex, QBLOCK_TIMER)


def ask_options(st: QBlockState, request: CoapMessage, blocks: list[BlockOpt]) -> list[tuple[int, bytes]]:
    """The options of a request for more blocks (RFC 9177 §4.4): ``followup_options`` (a bulk GET's
    name only ``bulk-conf-flag``, SPEC D7 b) or the request's own without Block2/Q-Block2/Observe —
    the request's own also when nothing has arrived at all (the first request may have been lost:
    the server may not know what a shortened request refers to) — then one Q-Block2 per block."""
    if st.offer.followup_options is not None and (st.rx.received or st.first is not None):
        base = list(st.offer.followup_options)
    else:
        base = request.without(wire.OPT_Q_BLOCK2, wire.OPT_BLOCK2, wire.OPT_OBSERVE)
    return base + [(wire.OPT_Q_BLOCK2, wire.block_option(b.num, b.more, b.szx)) for b in blocks]


def on_response(layer, now: float, ex, msg: CoapMessage, addr, out: list) -> bool:
    """A response to an exchange offering Q-Block2; True when handled here, False to let the
    message layer handle it as a plain (or RFC 7959) answer."""
    st: QBlockState = ex.q
    value = msg.first(wire.OPT_Q_BLOCK2) if 64 <= msg.code < 96 else None
    if value is None:
        if st.rx.received:
            if msg.token != ex.token and msg.code < 128:
                return True  # a stray answer to a request for blocks: the receiver asks again
            layer._fail(ex, f"Q-Block2 transfer ended by {wire.code_text(msg.code)}", out)
            return True
        # nothing received yet (to the first request or to asking for the whole body again): the
        # server does not do RFC 9177 or the answer is whole — fall back (RFC 9177 §4.1)
        forget(layer, ex)
        ex.q = None
        if msg.code == BAD_OPTION:
            ex.msg = without_offer(ex.msg)
            layer._resend(now, ex, out)
            return True
        # Block2 or a whole answer: RFC 7959 follow-ups keep the first request's options, the
        # ignored Q-Block2 included (a server matches follow-ups to it, e.g. aiocoap's Block2 cache)
        return False
    try:
        num, more, szx = wire.parse_block(value)
    except wire.WireError as e:
        layer._fail(ex, f"bad Q-Block2 option: {e}", out)
        return True
    etag, size2 = msg.first(wire.OPT_ETAG), msg.uint(wire.OPT_SIZE2)
    if st.rx.on_block(now, BlockOpt(num, more, szx), msg.payload, etag, size2) == "restarted" or not st.first:
        st.first = msg  # its options are the delivered answer's
    ex.answered = True  # the first-response deadline is met; the receiver's timers take over
    return _advance(layer, now, ex, addr, out)


def on_tick(layer, now: float, ex, out: list) -> None:
    """The exchange's Q-Block2 timer: ask for what is missing, or give up."""
    if ex.q is not None and not ex.done:
        _advance(layer, now, ex, ex.addr, out)


def forget(layer, ex) -> None:
    """The exchange ended: its extra tokens match nothing any more."""
    st = ex.q
    if st is None:
        return
    for token in st.tokens:
        if layer._by_token.get((ex.addr, token)) is ex:
            del layer._by_token[(ex.addr, token)]


def _advance(layer, now: float, ex, addr, out: list) -> bool:
    st: QBlockState = ex.q
    rx = st.rx
    if rx.complete:
        first = st.first
        body = rx.body()
        opts = first.without(wire.OPT_Q_BLOCK2, wire.OPT_SIZE2)
        whole = CoapMessage(first.mtype, first.code, first.mid, ex.token, opts, body)
        layer._finish(ex)
        out.append(Deliver(ex.handle, whole, addr))
        return True
    try:
        ask = rx.poll(now)
    except QBlockFailed as e:
        layer._fail(ex, f"Q-Block2 transfer failed: {e}", out)
        return True
    if ask is not None:
        if not ex.con and not rx.received and st.first is None:
            # nothing came back to a NON request: it goes again as CON, retransmitted on RFC 7252
            # timers — and a server that cannot verify it answers a CON (its refusal, RFC 8613
            # §8.2) where it ignores a NON
            ex.con = True
            layer._release(ex)
            layer._resend(now, ex, out)
            return True
        _ask(layer, now, ex, ask.options(), out)
    due = rx.deadline()
    if due is not None and due != st.armed:
        st.armed = due
        layer._timer(due, ex, QBLOCK_TIMER)
    return True


def _ask(layer, now: float, ex, blocks: list[BlockOpt], out: list) -> None:
    """A NON request for more blocks, with a new token and message ID (RFC 9177 §4.4)."""
    st: QBlockState = ex.q
    mid = layer._mid(ex.addr, now)
    if mid is None:  # every message ID is in use: the receiver asks again at its next deadline
        return
    token = layer._new_token(ex.addr)
    layer._by_token[(ex.addr, token)] = ex
    st.tokens.append(token)
    st.requests += 1
    msg = CoapMessage(wire.NON, ex.msg.code, mid, token, ask_options(st, ex.msg, blocks), ex.msg.payload)
    layer._send(out, wire.encode(msg) if ex.prot is None else protect.outgoing(ex, msg), ex.addr)
