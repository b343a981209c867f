"""The message layer's request bodies of several blocks, without sockets (coap.qblock1_client).

The server is played by hand: its answers are written from RFC 9177 §4.3/§5 (an empty ACK for a
block inside a set, 2.31 Continue with Q-Block1, 4.08 with a CBOR Sequence of missing numbers)
and RFC 7959 §2.5 (2.31 with Block1); what the layer sends is decoded and checked.
"""

from __future__ import annotations

import random

from msgin5g.coap import wire
from msgin5g.coap.msglayer import Deliver, Fail, MessageLayer, Send
from msgin5g.coap.qblock import QBlockParams
from msgin5g.coap.qblock1_client import QBlock1Offer
from msgin5g.coap.wire import ACK, CON, NON, OPT_BLOCK1, OPT_Q_BLOCK1, OPT_REQUEST_TAG, OPT_SIZE1, CoapMessage

PEER = ("127.0.0.1", 5683)
PATH = [(11, b"c")]
BODY = bytes(i % 251 for i in range(1024 * 11 + 100))  # 12 blocks: two sets of MAX_PAYLOADS 10
P = QBlockParams()


def sent(actions) -> list[CoapMessage]:
    return [wire.decode(a.data) for a in actions if isinstance(a, Send)]


def opt(msg: CoapMessage, number: int) -> tuple[int, bool, int] | None:
    v = msg.first(number)
    return None if v is None else wire.parse_block(v)


def start(**kw):
    layer = MessageLayer(rng=random.Random(1))
    handle, actions = layer.request(0.0, CoapMessage(CON, 2, 0, b"", list(PATH), BODY), PEER, **kw)
    (first,) = sent(actions)
    return layer, handle, first


def answer(req: CoapMessage, code: int, opts=(), payload=b"", mid=900) -> CoapMessage:
    return CoapMessage(NON, code, mid, req.token, list(opts), payload)


def test_block_0_goes_alone_confirmable_with_request_tag_and_size1():
    _, _, first = start(qblock1=QBlock1Offer())
    assert first.mtype == CON and opt(first, OPT_Q_BLOCK1) == (0, True, 6)
    assert first.payload == BODY[:1024] and first.uint(OPT_SIZE1) == len(BODY)
    assert len(first.first(OPT_REQUEST_TAG)) == 4 and first.values(11) == [b"c"]


def test_ack_continue_and_the_final_answer():
    layer, handle, first = start(qblock1=QBlock1Offer())
    burst = sent(layer.on_message(0.1, CoapMessage(ACK, 0, first.mid, b""), PEER))
    assert [opt(m, OPT_Q_BLOCK1)[0] for m in burst] == list(range(1, 10))
    assert {m.mtype for m in burst} == {NON} and len({m.token for m in burst}) == 9
    assert {m.first(OPT_REQUEST_TAG) for m in burst} == {first.first(OPT_REQUEST_TAG)}
    cont = answer(burst[-1], 0x5F, [(OPT_Q_BLOCK1, wire.block_option(9, True, 6))])
    rest = sent(layer.on_message(0.2, cont, PEER))
    assert [opt(m, OPT_Q_BLOCK1) for m in rest] == [(10, True, 6), (11, False, 6)]
    assert rest[-1].payload == BODY[11 * 1024 :]
    out = layer.on_message(0.3, answer(rest[-1], 0x41, payload=b"ok", mid=901), PEER)
    (done,) = [a for a in out if isinstance(a, Deliver)]
    assert done.handle == handle and done.response.code == 0x41 and done.response.payload == b"ok"
    assert layer.pending() == 0


def test_a_408_sends_only_the_listed_blocks_and_silence_resends_the_last():
    layer, _, first = start(qblock1=QBlock1Offer())
    burst = sent(layer.on_message(0.1, CoapMessage(ACK, 0, first.mid, b""), PEER))
    rest = sent(layer.on_tick(0.1 + P.non_timeout))  # no Continue within NON_TIMEOUT: next set
    assert [opt(m, OPT_Q_BLOCK1)[0] for m in rest] == [10, 11]
    again = sent(layer.on_tick(0.1 + 3 * P.non_timeout))  # silence after the last set
    assert [opt(m, OPT_Q_BLOCK1)[0] for m in again] == [11]
    missing = answer(again[0], 0x88, [(12, wire.uint_bytes(272))], bytes([0x03, 0x07]))
    resent = sent(layer.on_message(7.0, missing, PEER))
    assert [opt(m, OPT_Q_BLOCK1)[0] for m in resent] == [3, 7]
    assert [m.payload for m in resent] == [BODY[3 * 1024 : 4 * 1024], BODY[7 * 1024 : 8 * 1024]]
    assert burst  # (the first set went)


def test_402_falls_back_to_rfc7959_block1():
    layer, handle, first = start(qblock1=QBlock1Offer())
    bad = CoapMessage(ACK, 0x82, first.mid, first.token)
    (b0,) = sent(layer.on_message(0.1, bad, PEER))
    assert b0.mtype == CON and opt(b0, OPT_BLOCK1) == (0, True, 6) and b0.first(OPT_Q_BLOCK1) is None
    assert b0.token != first.token and b0.payload == BODY[:1024]
    # the server prefers 512-byte blocks (RFC 7959 §2.3): the next block is NUM 2 of 512
    cont = CoapMessage(ACK, 0x5F, b0.mid, b0.token, [(OPT_BLOCK1, wire.block_option(0, True, 5))])
    (b1,) = sent(layer.on_message(0.2, cont, PEER))
    assert opt(b1, OPT_BLOCK1) == (2, True, 5) and b1.payload == BODY[1024:1536]
    final = CoapMessage(ACK, 0x44, b1.mid, b1.token)
    out = layer.on_message(0.3, final, PEER)
    assert [a.handle for a in out if isinstance(a, Deliver)] == [handle]


def test_a_success_before_the_last_block_went_is_a_failure():
    layer, handle, first = start(qblock1=QBlock1Offer())
    out = layer.on_message(0.1, CoapMessage(ACK, 0x44, first.mid, first.token), PEER)
    (fail,) = [a for a in out if isinstance(a, Fail)]
    assert fail.handle == handle and "ignored Q-Block1" in fail.reason


def test_a_small_body_goes_as_it_is():
    layer = MessageLayer(rng=random.Random(1))
    _, actions = layer.request(
        0.0, CoapMessage(CON, 2, 0, b"", list(PATH), b"x" * 1024), PEER, qblock1=QBlock1Offer()
    )
    (m,) = sent(actions)
    assert m.first(OPT_Q_BLOCK1) is None and m.first(OPT_BLOCK1) is None and m.payload == b"x" * 1024
