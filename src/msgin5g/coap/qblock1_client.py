"""Request bodies larger than one block, for the message layer's client requests, pure (RFC 9177
§4.3; RFC 7959 §2.5; TS 24.546 clause 5; SPEC D7 d).

A request made with ``MessageLayer.request(..., qblock1=QBlock1Offer())`` whose payload exceeds one
block sends it with **Q-Block1**; one made ``blockwise`` without the offer, or whose server turned
the offer down, with **RFC 7959 Block1**. This module is the part of the message layer that does
it; :class:`~msgin5g.coap.msglayer.MessageLayer` calls it at its seams (the request, an empty ACK,
a response, its timer, its end). The decisions are :class:`~msgin5g.coap.qblock1.QBlock1Sender`'s.

Q-Block1 (RFC 9177 §4.3): every block carries Q-Block1 (NUM, M, SZX), the body's Request-Tag
(RFC 9175 §3; one random tag per body) and Size1. Block 0 is the exchange's own confirmable
request (RFC 7252 retransmits it); the other blocks go as NON, each with a new token and message
ID, outside NSTART (RFC 9177 §7.2 paces them). 2.31 Continue and 4.08 (missing blocks, Content-
Format 272) steer the sender; any other response is the answer to the whole request. When that
answer comes as Q-Block2 blocks (a large representation of what was stored), the layer's Q-Block2
receiver (:mod:`.qblock_client`) takes it over; its requests for missing blocks repeat the body's
last block (same Request-Tag) with the Q-Block2 numbers, which the server answers from the answer
it kept for that body instead of processing the request again.

Fall-back (RFC 9177 §4.1): a 4.02 Bad Option to block 0 — a server without RFC 9177 — and the
body goes again with RFC 7959 Block1, one confirmable block at a time, each 2.31 Continue asking
for the next (a smaller block size in it is followed, RFC 7959 §2.3). A server that ignores the
critical option instead (aiocoap's resources do: they check no critical option) answers block 0 as
if it were the body: a success before the body's last block went is a failure here, never the
answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import protect, qblock_client, wire
from .qblock import QBlock2Receiver, QBlockFailed, QBlockParams
from .qblock1 import QBlock1Sender, missing_numbers
from .wire import CoapMessage

#: the timer of a Q-Block1 body in the message layer's heap (QBLOCK_TIMER is -2)
QBLOCK1_TIMER = -3
CONTINUE, INCOMPLETE, BAD_OPTION = 0x5F, 0x88, 0x82
_BLOCK_OPTS = (wire.OPT_Q_BLOCK1, wire.OPT_BLOCK1, wire.OPT_SIZE1, wire.OPT_REQUEST_TAG)


@dataclass(frozen=True)
class QBlock1Offer:
    """Send a large request body with Q-Block1: the RFC 9177 parameters and the block size."""

    params: QBlockParams = field(default_factory=QBlockParams)
    szx: int = 6


@dataclass(eq=False)
class Q1State:
    base: CoapMessage  # the whole request
    offer: QBlock1Offer | None  # None: RFC 7959 Block1 only
    tag: bytes
    tx: QBlock1Sender | None = None  # None: RFC 7959 Block1 (asked for, or fallen back to)
    tokens: list[bytes] = field(default_factory=list)  # tokens of the NON blocks
    armed: float | None = None
    done: bool = False  # the answer to the whole request has come
    b1_szx: int = 6  # RFC 7959: the block size in use
    b1_next: int = 0  # RFC 7959: the offset of the block after the one in flight
    fell_back: bool = False  # the server answered 4.02 to Q-Block1


def needed(msg: CoapMessage, offer: QBlock1Offer | None, blockwise: bool) -> bool:
    """Whether the request's body takes more than one block (and either way of sending it is on)."""
    szx = offer.szx if offer is not None else 6
    return (offer is not None or blockwise) and len(msg.payload) > wire.block_size(szx)


def start(layer, msg: CoapMessage, offer: QBlock1Offer | None) -> tuple[CoapMessage, Q1State]:
    """The first message of the body (block 0) and the exchange's state."""
    st = Q1State(msg, offer, layer.rng.getrandbits(32).to_bytes(4, "big"))
    if offer is not None:
        st.tx = QBlock1Sender(msg.payload, offer.szx, offer.params)
        st.tx.first(0.0)
        return q1_message(st, 0), st
    st.b1_szx = 6
    return _b1_message(st, 0), st


def q1_message(st: Q1State, num: int) -> CoapMessage:
    """Block ``num`` of the body as a Q-Block1 request (RFC 9177 §4.3)."""
    payload, more = st.tx.block(num)
    opts = [
        *st.base.without(*_BLOCK_OPTS),
        (wire.OPT_Q_BLOCK1, wire.block_option(num, more, st.tx.szx)),
        (wire.OPT_REQUEST_TAG, st.tag),
        (wire.OPT_SIZE1, wire.uint_bytes(len(st.base.payload))),
    ]
    return CoapMessage(st.base.mtype, st.base.code, 0, b"", opts, payload)


def _b1_message(st: Q1State, num: int) -> CoapMessage:
    """Block ``num`` as an RFC 7959 Block1 request (§2.5; Size1 in block 0, §4)."""
    size = wire.block_size(st.b1_szx)
    body = st.base.payload
    payload = body[num * size : (num + 1) * size]
    more = (num + 1) * size < len(body)
    st.b1_next = num * size + len(payload)
    opts = [*st.base.without(*_BLOCK_OPTS), (wire.OPT_BLOCK1, wire.block_option(num, more, st.b1_szx))]
    if num == 0:
        opts.append((wire.OPT_SIZE1, wire.uint_bytes(len(body))))
    return CoapMessage(st.base.mtype, st.base.code, 0, b"", opts, payload)


def on_acked(layer, now: float, ex, out: list) -> None:
    """Block 0 was acknowledged without an answer: the server took it; the first set goes on."""
    st: Q1State = ex.q1
    if st.tx is not None and not st.done:
        _send(layer, now, ex, st.tx.on_accepted(now), out)


def on_response(layer, now: float, ex, msg: CoapMessage, addr, out: list) -> bool:
    """A response to a block of the body; True when handled here, False to let the message
    layer handle it as the answer to the whole request."""
    st: Q1State = ex.q1
    tx = st.tx
    if tx is None:
        return _on_block1_response(layer, now, ex, msg, out)
    if msg.code == BAD_OPTION and not tx.accepted:  # RFC 9177 §4.1: the server does not do it
        forget(layer, ex)
        st.tx, st.fell_back, st.b1_szx = None, True, tx.szx
        ex.msg = _b1_message(st, 0)
        layer._resend(now, ex, out)
        return True
    try:
        if msg.code == CONTINUE and msg.first(wire.OPT_Q_BLOCK1) is not None:
            num, _, _ = wire.parse_block(msg.first(wire.OPT_Q_BLOCK1))
            _send(layer, now, ex, tx.on_continue(now, num), out)
            return True
        if msg.code == INCOMPLETE and msg.uint(wire.OPT_CONTENT_FORMAT) == 272:
            _send(layer, now, ex, tx.on_missing(now, missing_numbers(msg.payload)), out)
            return True
    except (wire.WireError, ValueError, QBlockFailed) as e:
        layer._fail(ex, f"Q-Block1 transfer failed: {e}", out)
        return True
    if 64 <= msg.code < 128 and tx.next_new < tx.total:
        # success before the last block went: the server ignored the critical Q-Block1 option
        # (RFC 7252 §5.4.1 wants 4.02) and processed a part of the body — never a success here
        layer._fail(
            ex,
            f"the server ignored Q-Block1 and answered {wire.code_text(msg.code)} to a part of the body",
            out,
        )
        return True
    return _final(layer, now, ex, msg, addr, out)


def _on_block1_response(layer, now: float, ex, msg: CoapMessage, out: list) -> bool:
    st: Q1State = ex.q1
    value = msg.first(wire.OPT_BLOCK1)
    if msg.code != CONTINUE or value is None:  # the answer to the whole request
        st.done = True
        # its Block2 follow-ups carry neither Block1 nor a payload (RFC 7959 §3.3, Figure 13)
        ex.msg = CoapMessage(ex.msg.mtype, ex.msg.code, 0, ex.token, st.base.without(*_BLOCK_OPTS), b"")
        return False
    try:
        _, _, szx = wire.parse_block(value)
    except wire.WireError as e:
        layer._fail(ex, f"block-wise transfer failed: {e}", out)
        return True
    if st.b1_next >= len(st.base.payload):
        layer._fail(ex, "block-wise transfer failed: 2.31 Continue after the last block", out)
        return True
    st.b1_szx = min(szx, st.b1_szx)  # the server's preferred size from now on (RFC 7959 §2.3)
    ex.msg = _b1_message(st, st.b1_next // wire.block_size(st.b1_szx))
    layer._resend(now, ex, out)
    return True


def _final(layer, now: float, ex, msg: CoapMessage, addr, out: list) -> bool:
    """The answer to the whole request. As Q-Block2 blocks, the layer's Q-Block2 receiver takes
    it over, asking for missing blocks with the body's last block (RFC 9177 §4.4)."""
    st: Q1State = ex.q1
    st.done = True
    if msg.first(wire.OPT_Q_BLOCK2) is None or not 64 <= msg.code < 96:
        return False
    last = q1_message(st, st.tx.total - 1)
    ex.msg = CoapMessage(wire.NON, last.code, 0, ex.token, last.options, last.payload)
    params = st.offer.params
    ex.q = qblock_client.QBlockState(qblock_client.QBlockOffer(params=params), QBlock2Receiver(params=params))
    ex.q.rx.start(now)
    return qblock_client.on_response(layer, now, ex, msg, addr, out)


def on_tick(layer, now: float, ex, out: list) -> None:
    """The body's timer: the next set, the next lot of missing blocks, or the last block again."""
    st: Q1State = ex.q1
    if st is None or st.done or st.tx is None or ex.done:
        return
    try:
        blocks = st.tx.poll(now)
    except QBlockFailed as e:
        layer._fail(ex, f"Q-Block1 transfer failed: {e}", out)
        return
    _send(layer, now, ex, blocks, out)


def forget(layer, ex) -> None:
    """The body's NON blocks' tokens match nothing any more."""
    st: Q1State = ex.q1
    for token in st.tokens:
        if layer._by_token.get((ex.addr, token)) is ex:
            del layer._by_token[(ex.addr, token)]
    st.tokens.clear()


def _send(layer, now: float, ex, blocks: list[int], out: list) -> None:
    """Each block as a NON request with a new token and message ID (RFC 9177 §4.3), then the timer."""
    st: Q1State = ex.q1
    for num in blocks:
        mid = layer._mid(ex.addr, now)
        if mid is None:  # every message ID is in use: the timer sends the last block again later
            break
        token = layer._new_token(ex.addr)
        layer._by_token[(ex.addr, token)] = ex
        st.tokens.append(token)
        m = q1_message(st, num)
        m.mtype, m.mid, m.token = wire.NON, mid, token
        layer._send(out, wire.encode(m) if ex.prot is None else protect.outgoing(ex, m), ex.addr)
    due = st.tx.deadline()
    if due != st.armed:
        st.armed = due
        layer._timer(due, ex, QBLOCK1_TIMER)
