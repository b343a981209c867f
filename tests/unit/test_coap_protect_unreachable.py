"""The message layer's protection seam (OSCORE, RFC 8613 §8.1/§8.4), ICMP port unreachable
(RFC 1122 §4.1.3.3) and a Q-Block2 request sent as NON (RFC 9177 §4.4), without sockets.

The protection is a stand-in written here: it "protects" a request by moving its options and
payload into the payload behind a marker and a request counter (the binding), and "verifies" a
response by checking that marker with the binding — enough to see that the layer protects every
request it sends and verifies every response, block by block, before block-wise handling.
"""

from __future__ import annotations

import random

import pytest

from msgin5g.coap import wire
from msgin5g.coap.actions import UNREACHABLE, NotProtected, Protection, ProtectionFailed
from msgin5g.coap.msglayer import Deliver, Fail, MessageLayer, Params, Send
from msgin5g.coap.qblock import BlockOpt, QBlockParams
from msgin5g.coap.qblock_client import QBlockOffer, QBlockState, ask_options
from msgin5g.coap.wire import ACK, CON, NON, OPT_ETAG, OPT_Q_BLOCK2, OPT_SIZE2, CoapMessage

PEER = ("127.0.0.1", 5683)
PATH = [(11, b"c")]
FLAG_ONLY = ((11, b"c"), (15, b"bulk-conf-flag=f"))
BODY = bytes(i % 251 for i in range(1024 * 3 + 10))  # 4 blocks
FAST = QBlockParams(non_receive_timeout=1.0)
OSCORE_OPT = 9
POST = 0x02


class Sealed(Protection):
    """Outer message: POST with an OSCORE option whose value is the request counter; the plain
    request's options and payload are inside, as ``repr``. A response verifies when its OSCORE
    option names the request it answers (the binding)."""

    def __init__(self):
        self.protected: list[CoapMessage] = []
        self.n = 0

    def protect(self, plain):
        self.n += 1
        self.protected.append(plain)
        inner = repr((plain.code, sorted(plain.options), plain.payload)).encode()
        return CoapMessage(CON, POST, 0, b"", [(OSCORE_OPT, bytes([self.n]))], inner), self.n

    def verify(self, outer, binding):
        tag = outer.first(OSCORE_OPT)
        if tag is None:
            raise NotProtected
        if tag != bytes([binding]):
            raise ProtectionFailed("wrong request")
        code, options, payload = eval(outer.payload.decode())  # the stand-in's own format
        return CoapMessage(outer.mtype, code, outer.mid, outer.token, list(options), payload)


def sealed_response(req: CoapMessage, binding: int, code=0x45, options=(), payload=b"", mtype=ACK, mid=None):
    inner = repr((code, sorted(options), payload)).encode()
    mid = req.mid if mid is None else mid
    return CoapMessage(mtype, 0x44, mid, req.token, [(OSCORE_OPT, bytes([binding]))], inner)


def sent(actions) -> list[CoapMessage]:
    return [wire.decode(a.data) for a in actions if isinstance(a, Send)]


def q2(msg: CoapMessage) -> list[tuple[int, bool, int]]:
    return [wire.parse_block(v) for v in msg.values(OPT_Q_BLOCK2)]


def block_options(num: int, body=BODY) -> list:
    more = (num + 1) * 1024 < len(body)
    return [
        (OPT_ETAG, b"E"),
        (OPT_Q_BLOCK2, wire.block_option(num, more, 6)),
        (OPT_SIZE2, wire.uint_bytes(len(body))),
    ]


# -- protection ------------------------------------------------------------------------------------


def test_a_protected_request_goes_out_sealed_and_its_answer_is_delivered_plain():
    prot = Sealed()
    layer = MessageLayer(rng=random.Random(1))
    handle, out = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), PEER, protection=prot)
    (outer,) = sent(out)
    assert outer.code == POST and outer.values(11) == [] and outer.first(OSCORE_OPT) == b"\x01"
    assert prot.protected[0].values(11) == [b"c"]  # the plain request was what got protected
    out = layer.on_message(0.1, sealed_response(outer, 1, payload=b"hi", options=[(12, b"\x3c")]), PEER)
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.code == 0x45 and d.response.payload == b"hi"
    assert d.response.first(12) == b"\x3c" and d.response.first(OSCORE_OPT) is None


def test_a_response_that_fails_verification_is_dropped_and_the_con_retransmitted():
    prot = Sealed()
    layer = MessageLayer(rng=random.Random(1))
    _, out = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), PEER, protection=prot)
    (outer,) = sent(out)
    out = layer.on_message(0.1, sealed_response(outer, 7, payload=b"forged"), PEER)
    assert [a for a in out if isinstance(a, (Deliver, Fail))] == [] and layer.counters.unverified == 1
    (again,) = sent(layer.on_tick(layer.next_deadline()))
    assert again.mid == outer.mid and again.payload == outer.payload  # same bytes (RFC 7252 §4.2)
    out = layer.on_message(5.0, sealed_response(outer, 1, payload=b"real"), PEER)
    assert [a.response.payload for a in out if isinstance(a, Deliver)] == [b"real"]


def test_an_unprotected_error_is_the_answer_an_unprotected_success_is_not():
    layer = MessageLayer(rng=random.Random(1))
    _, out = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), PEER, protection=Sealed())
    (outer,) = sent(out)
    plain_ok = CoapMessage(ACK, 0x45, outer.mid, outer.token, [], b"not protected")
    assert [a for a in layer.on_message(0.1, plain_ok, PEER) if isinstance(a, Deliver)] == []
    refusal = CoapMessage(ACK, 0x81, outer.mid, outer.token, [], b"4.01")
    (d,) = [a for a in layer.on_message(0.2, refusal, PEER) if isinstance(a, Deliver)]
    assert d.response.code == 0x81  # the server's refusal (RFC 8613 §8.2): passed on as it is


def test_q_block2_over_protection_verifies_each_block_and_seals_each_request_for_missing_blocks():
    prot = Sealed()
    layer = MessageLayer(rng=random.Random(1))
    offer = QBlockOffer(params=FAST, followup_options=FLAG_ONLY)
    msg = CoapMessage(CON, 1, 0, b"", [*PATH, (15, b"bulk-conf-flag=f"), (15, b"ue-uri=u1")])
    handle, out = layer.request(0.0, msg, PEER, protection=prot, qblock=offer, confirmable=False)
    (outer,) = sent(out)
    assert outer.mtype == NON and q2(outer) == [] and q2(prot.protected[0]) == [(0, True, 6)]  # inner
    out = []
    for n in (0, 2):  # blocks 1 and 3 lost
        payload = BODY[n * 1024 : (n + 1) * 1024]
        out += layer.on_message(
            0.1,
            sealed_response(outer, 1, options=block_options(n), payload=payload, mtype=NON, mid=50 + n),
            PEER,
        )
    out += layer.on_message(
        0.1, sealed_response(outer, 9, options=block_options(1), payload=b"x" * 1024, mtype=NON, mid=60), PEER
    )
    assert sent(out) == [] and layer.counters.unverified == 1  # the forged block 1 was not taken
    assert sent(layer.on_tick(1.0)) == []  # the silence is counted from the last block (0.1 s)
    (ask,) = sent(layer.on_tick(1.1))
    assert ask.mtype == NON and ask.token != outer.token and ask.first(OSCORE_OPT) == b"\x02"
    inner = prot.protected[1]
    assert q2(inner) == [(1, False, 6), (3, False, 6)] and inner.values(15) == [b"bulk-conf-flag=f"]
    out = []
    for n in (1, 3):
        payload = BODY[n * 1024 : (n + 1) * 1024]
        out += layer.on_message(
            2.0,
            sealed_response(ask, 2, options=block_options(n), payload=payload, mtype=NON, mid=70 + n),
            PEER,
        )
    (d,) = [a for a in out if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.payload == BODY and layer.pending() == 0


# -- a Q-Block2 request sent as NON --------------------------------------------------------------


def test_a_non_q_block2_request_that_gets_nothing_goes_again_as_con_with_its_own_options():
    layer = MessageLayer(rng=random.Random(1))
    offer = QBlockOffer(params=FAST, followup_options=FLAG_ONLY)
    msg = CoapMessage(CON, 1, 0, b"", [*PATH, (15, b"ue-uri=u1")])
    handle, out = layer.request(0.0, msg, PEER, qblock=offer, confirmable=False)
    (first,) = sent(out)
    assert first.mtype == NON and layer.next_deadline() == 1.0  # NON_RECEIVE_TIMEOUT
    (again,) = sent(layer.on_tick(1.0))
    # the whole request again — not the flag-only follow-up: the server may never have seen it
    assert again.mtype == CON and again.token != first.token and again.values(15) == [b"ue-uri=u1"]
    assert q2(again) == [(0, True, 6)]
    refusal = CoapMessage(ACK, 0x81, again.mid, again.token, [], b"")
    (d,) = [a for a in layer.on_message(1.1, refusal, PEER) if isinstance(a, Deliver)]
    assert d.handle == handle and d.response.code == 0x81


def test_ask_options_name_only_the_flag_once_a_block_is_in_and_the_whole_request_before():
    request = CoapMessage(
        CON, 1, 0, b"", [*PATH, (15, b"ue-uri=u1"), (OPT_Q_BLOCK2, wire.block_option(0, True, 6))]
    )
    st = QBlockState(QBlockOffer(followup_options=FLAG_ONLY), None)  # type: ignore[arg-type]

    class Rx:
        received: set = set()

    st.rx = Rx()  # type: ignore[assignment]
    whole = ask_options(st, request, [BlockOpt(0, True, 6)])
    assert sorted(whole) == sorted([*PATH, (15, b"ue-uri=u1"), (OPT_Q_BLOCK2, wire.block_option(0, True, 6))])
    Rx.received = {0}
    some = ask_options(st, request, [BlockOpt(2, False, 6)])
    assert sorted(some) == sorted([*FLAG_ONLY, (OPT_Q_BLOCK2, wire.block_option(2, False, 6))])


# -- ICMP port unreachable -------------------------------------------------------------------------


def test_port_unreachable_ends_the_requests_sent_to_that_peer_at_once_and_lets_queued_ones_go():
    layer = MessageLayer(Params(nstart=1), rng=random.Random(1))
    h1, out1 = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), PEER)
    h2, out2 = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), PEER)
    other = ("127.0.0.2", 5683)
    h3, _ = layer.request(0.0, CoapMessage(CON, 1, 0, b"", list(PATH)), other)
    assert len(sent(out1)) == 1 and sent(out2) == []  # NSTART 1: the second waits
    out = layer.on_unreachable(0.01, PEER)
    fails = [a for a in out if isinstance(a, Fail)]
    assert [(f.handle, f.cause) for f in fails] == [(h1, UNREACHABLE)]
    assert len(sent(out)) == 1  # the queued request goes out now
    out = layer.on_unreachable(0.02, PEER)
    assert [(f.handle, f.cause) for f in out if isinstance(f, Fail)] == [(h2, UNREACHABLE)]
    assert layer.pending() == 1  # only the request to the other peer remains
    assert h3 in layer._exchanges


@pytest.mark.parametrize("confirmable", [True, False])
def test_port_unreachable_before_anything_was_sent_ends_nothing(confirmable):
    layer = MessageLayer(rng=random.Random(1))
    assert layer.on_unreachable(0.0, PEER) == []
