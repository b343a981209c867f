"""The message layer's client side of RFC 9177 Q-Block2, without sockets (coap.qblock_client).

The peer is played by hand: responses are built here from the RFC's words (Q-Block2 NUM/M/SZX,
ETag, Size2 on each block) and fed to the layer; what the layer sends is decoded and checked.
"""

from __future__ import annotations

import random

from msgin5g.coap import wire
from msgin5g.coap.msglayer import Deliver, Fail, MessageLayer, Send
from msgin5g.coap.qblock import QBlockParams
from msgin5g.coap.qblock_client import QBlockOffer
from msgin5g.coap.wire import ACK, CON, NON, OPT_BLOCK2, OPT_ETAG, OPT_Q_BLOCK2, OPT_SIZE2, CoapMessage

PEER = ("127.0.0.1", 5683)
PATH = [(11, b"c")]
BODY = bytes(i % 251 for i in range(1024 * 4 + 100))  # 5 blocks
FAST = QBlockParams(non_receive_timeout=1.0)


def sent(actions) -> list[CoapMessage]:
    return [wire.decode(a.data) for a in actions if isinstance(a, Send)]


def block(req: CoapMessage, num: int, mtype=NON, mid=1000, body=BODY, etag=b"E") -> CoapMessage:
    chunk = body[num * 1024 : (num + 1) * 1024]
    more = (num + 1) * 1024 < len(body)
    opts = [
        (OPT_ETAG, etag),
        (OPT_Q_BLOCK2, wire.block_option(num, more, 6)),
        (OPT_SIZE2, wire.uint_bytes(len(body))),
    ]
    return CoapMessage(mtype, 0x45, req.mid if mtype == ACK else mid + num, req.token, opts, chunk)


def q2(msg: CoapMessage) -> list[tuple[int, bool, int]]:
    return [wire.parse_block(v) for v in msg.values(OPT_Q_BLOCK2)]


def start(**kw):
    layer = MessageLayer(rng=random.Random(1))
    handle, actions = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), PEER, **kw)
    (first,) = sent(actions)
    return layer, handle, first


def test_first_request_offers_q_block2_whole_body():
    _, _, first = start(qblock=QBlockOffer())
    assert first.mtype == CON and q2(first) == [(0, True, 6)]


def test_burst_is_delivered_whole_once():
    layer, handle, first = start(qblock=QBlockOffer())
    out = layer.on_message(0.1, block(first, 0, mtype=ACK), PEER)
    for n in range(1, 5):
        out += layer.on_message(0.1, block(first, n, mid=500), PEER)
    delivered = [a for a in out if isinstance(a, Deliver)]
    assert len(delivered) == 1 and delivered[0].handle == handle
    whole = delivered[0].response
    assert whole.payload == BODY and whole.first(OPT_Q_BLOCK2) is None and whole.first(OPT_ETAG) == b"E"
    assert sent(out) == [] and layer.pending() == 0


def test_missing_blocks_asked_once_with_a_new_token_and_answered_there():
    layer, handle, first = start(qblock=QBlockOffer(params=FAST))
    out = layer.on_message(0.1, block(first, 0, mtype=ACK), PEER)
    for n in (1, 3):  # 2 and 4 lost
        out += layer.on_message(0.1, block(first, n, mid=600), PEER)
    assert sent(out) == []
    due = layer.next_deadline()
    assert due == 1.1  # NON_RECEIVE_TIMEOUT after the last block
    (ask,) = sent(layer.on_tick(due))
    assert ask.mtype == NON and ask.token != first.token and q2(ask) == [(2, False, 6), (4, False, 6)]
    assert ask.values(11) == [b"c"]  # the request's own options, without Block2/Q-Block2
    out = layer.on_message(1.2, block(ask, 2, mid=700), PEER) + layer.on_message(
        1.2, block(ask, 4, mid=700), PEER
    )
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.payload == BODY
    # a late duplicate on the extra token is a stray now
    late = layer.on_message(1.3, block(ask, 2, mid=900), PEER)
    assert not [a for a in late if isinstance(a, Deliver)]


def test_followups_name_only_the_given_options():
    flag = [(11, b"c"), (15, b"bulk-conf-flag=b7")]
    layer, _, first = start(qblock=QBlockOffer(params=FAST, followup_options=tuple(flag)))
    layer.on_message(0.1, block(first, 0, mtype=ACK), PEER)
    (ask,) = sent(layer.on_tick(layer.next_deadline()))
    assert ask.without(OPT_Q_BLOCK2) == flag and q2(ask) == [
        (1, False, 6),
        (2, False, 6),
        (3, False, 6),
        (4, False, 6),
    ]


def test_server_without_rfc9177_answering_402_gets_the_request_again_without_q_block2():
    layer, handle, first = start(qblock=QBlockOffer(), blockwise=True)
    refusal = CoapMessage(ACK, 0x82, first.mid, first.token, [], b"")
    (again,) = sent(layer.on_message(0.1, refusal, PEER))
    assert again.mtype == CON and again.first(OPT_Q_BLOCK2) is None and again.token != first.token
    out = layer.on_message(0.2, CoapMessage(ACK, 0x45, again.mid, again.token, [], b"small"), PEER)
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.payload == b"small"


def test_server_ignoring_q_block2_falls_back_to_rfc7959():
    layer, handle, first = start(qblock=QBlockOffer(), blockwise=True)
    got = b""
    req, num = first, 0
    while True:
        chunk = BODY[num * 1024 : (num + 1) * 1024]
        more = (num + 1) * 1024 < len(BODY)
        resp = CoapMessage(
            ACK, 0x45, req.mid, req.token, [(OPT_BLOCK2, wire.block_option(num, more, 6))], chunk
        )
        out = layer.on_message(0.1 + num, resp, PEER)
        got += chunk
        follow = sent(out)
        if not more:
            break
        (req,) = follow
        # RFC 7959 §2.4: the first request's options again (the ignored Q-Block2 too), Block2 new
        assert req.without(OPT_BLOCK2) == first.options
        assert wire.parse_block(req.first(OPT_BLOCK2)) == (num + 1, False, 6)
        num += 1
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.payload == BODY == got


def test_small_answer_without_block_option_is_the_answer():
    layer, handle, first = start(qblock=QBlockOffer())
    out = layer.on_message(0.1, CoapMessage(ACK, 0x45, first.mid, first.token, [], b"tiny"), PEER)
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.payload == b"tiny" and layer.pending() == 0


def test_etag_change_restarts_and_delivers_the_new_representation():
    new = bytes(reversed(BODY))
    layer, handle, first = start(qblock=QBlockOffer(params=FAST))
    layer.on_message(0.1, block(first, 0, mtype=ACK), PEER)
    layer.on_message(0.1, block(first, 1, mid=100), PEER)
    out = []
    for n in range(5):
        out += layer.on_message(0.2, block(first, n, mid=200, body=new, etag=b"F"), PEER)
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.payload == new and d.response.first(OPT_ETAG) == b"F"


def test_gives_up_after_non_max_retransmit_rounds():
    layer, handle, first = start(
        qblock=QBlockOffer(params=QBlockParams(non_receive_timeout=1.0, non_max_retransmit=2))
    )
    layer.on_message(0.1, block(first, 0, mtype=ACK), PEER)
    asks, fails = 0, []
    for _ in range(10):
        due = layer.next_deadline()
        if due is None:
            break
        out = layer.on_tick(due)
        asks += len(sent(out))
        fails += [a for a in out if isinstance(a, Fail)]
    assert asks == 2 and len(fails) == 1 and fails[0].handle == handle and layer.pending() == 0


def test_error_answer_to_the_first_request_is_delivered():
    layer, handle, first = start(qblock=QBlockOffer())
    out = layer.on_message(0.1, CoapMessage(ACK, 0x84, first.mid, first.token, [], b"nf"), PEER)
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.code == 0x84
