"""The Relay UE's hop-by-hop legs without sockets (TS 24.538 6.2.2.1; SPEC D8, D13; RFC 7252 §4.2,
§4.5, §5.2.2, §5.7).

With the default ``reliability="hop"`` the relay ends a remote UE's CON exchange on PC5 (the
answer piggybacked when it is back within EMPTY_ACK_DELAY, 0.1 s; an empty ACK otherwise),
retransmits the request on Uu itself with RFC 7252's back-off, and sends the answer down
as a CON separate response that it retransmits until the UE acknowledges it. Expected bytes and
times are written from RFC 7252 (empty ACK = 0x60 0x00 + MID; first timeout in [2, 3] s, doubled,
four retransmissions; 5.04 after the last one), not computed by the code under test.
"""

from __future__ import annotations

import random

import cbor2
import pytest
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g.relay.core import Answer, Discard, RelayConfig, RelayCore, SendDownlink, SendUplink
from msgin5g.relay.hop import DELIVERY_BOUND

from .test_relay_core import SERVER, UE_A, coap, link, request

UU = 1  # the first link's upstream flow


def core(**kw) -> RelayCore:
    kw.setdefault("server_host", "127.0.0.1")
    return RelayCore(RelayConfig(**kw), rng=random.Random(7))


def downs(actions) -> list[bytes]:
    return [a.datagram for a in actions if isinstance(a, SendDownlink)]


def ups(actions) -> list[bytes]:
    return [a.datagram for a in actions if isinstance(a, SendUplink)]


def empty_ack(mid: int) -> bytes:
    return bytes([0x60, 0x00, mid >> 8, mid & 0xFF])


def rst(mid: int) -> bytes:
    return bytes([0x70, 0x00, mid >> 8, mid & 0xFF])


def run(c: RelayCore, start: float, end: float, step: float = 0.05):
    """Tick from ``start`` to ``end``; every action with the time it came."""
    out = []
    t = start
    while t <= end:
        out += [(round(t, 2), a) for a in c.on_tick(t)]
        t += step
    return out


def linked(**kw) -> RelayCore:
    c = core(**kw)
    link(c)
    return c


def test_default_is_hop_by_hop_and_is_shown():
    c = core()
    assert c.config.reliability == "hop"
    assert c.snapshot()["reliability"] == "hop"
    with pytest.raises(ValueError):
        RelayConfig(server_host="127.0.0.1", reliability="sometimes")


def test_con_request_goes_up_at_once_and_is_acknowledged_when_no_answer_came_in_0_1_s():
    c = linked()
    acts = c.on_pc5(UE_A, request(mid=0x1234, token=b"t1"), 0.0)
    assert downs(acts) == []
    assert c.next_deadline() == pytest.approx(0.1)
    assert c.on_tick(0.09) == [] and downs(c.on_tick(0.1)) == [empty_ack(0x1234)]
    [up] = ups(acts)
    sent = Message.decode(up)
    assert (sent.mtype, sent.mid, sent.token) == (Type.CON, 0x1234, b"t1")  # the UE's MID and token
    assert sent.opt.proxy_uri is None and sent.opt.uri_path == (
        "su-uc",
        "v1",
        "val-services",
        "msgin5g",
        "ue-configurations",
    )
    # the UE's retransmission: the empty ACK again, nothing more upstream (RFC 7252 §4.5)
    again = c.on_pc5(UE_A, request(mid=0x1234, token=b"t1"), 1.0)
    assert downs(again) == [empty_ack(0x1234)] and ups(again) == []
    assert c.counters.duplicates_absorbed == 1 and c.counters.acked_on_pc5 == 2
    assert c.counters.relayed_up == 1


def test_a_retransmission_before_the_ack_is_due_gets_the_ack_at_once():
    c = linked()
    c.on_pc5(UE_A, request(mid=77, token=b"t7"), 0.0)
    assert downs(c.on_pc5(UE_A, request(mid=77, token=b"t7"), 0.05)) == [empty_ack(77)]
    assert downs(c.on_tick(0.2)) == []  # sent already


def test_an_answer_within_the_ack_delay_is_piggybacked_and_replayed_for_a_retransmission():
    c = linked()
    c.on_pc5(UE_A, request(mid=9, token=b"t9"), 0.0)
    answer = coap(Type.ACK, Code.CONTENT, 9, b"t9", b"doc", content_format=60)
    [down] = downs(c.on_uu(UU, answer, 0.03))
    m = Message.decode(down)
    assert (m.mtype, m.mid, m.token, m.code, m.payload) == (Type.ACK, 9, b"t9", Code.CONTENT, b"doc")
    assert c.open_exchanges() == 0 and c.next_deadline() is None and run(c, 0.03, 60.0) == []
    # the UE's retransmission (its ACK got lost) gets the same piggybacked answer (RFC 7252 §4.5)
    assert downs(c.on_pc5(UE_A, request(mid=9, token=b"t9"), 3.0)) == [down]
    assert ups(c.on_pc5(UE_A, request(mid=9, token=b"t9"), 3.0)) == []


def test_the_relay_retransmits_on_uu_with_rfc7252_backoff_then_answers_5_04():
    c = linked()
    [up] = ups(c.on_pc5(UE_A, request(mid=7, token=b"tk"), 0.0))
    timeline = run(c, 0.0, 60.0, step=0.01)
    copies = [t for t, a in timeline if isinstance(a, SendUplink)]
    assert [a.datagram for _, a in timeline if isinstance(a, SendUplink)] == [up] * 4  # same message
    # first timeout in [2, 3] s, doubled each time (RFC 7252 §4.2): 2t, 6t, 14t, 30t with t in [1, 1.5]
    assert 2.0 <= copies[0] <= 3.01
    for k, t in enumerate(copies):
        ratio = t / copies[0]
        assert ratio == pytest.approx((2 ** (k + 1) - 1), abs=0.1)
    assert [a.datagram for t, a in timeline if t <= 0.11] == [empty_ack(7)]  # the UE's ACK at 0.1 s
    gave_up = [(t, a) for t, a in timeline if isinstance(a, SendDownlink) and t > 0.11]
    t_504, action = gave_up[0]
    assert {a.datagram for _, a in gave_up} == {action.datagram}  # the 5.04's own CON retransmissions
    assert copies[-1] + 3.0 <= t_504 + 0.01 <= copies[-1] + 3.03  # one longest first timeout after the last
    answer = Message.decode(action.datagram)
    assert answer.mtype == Type.CON and answer.code == Code.GATEWAY_TIMEOUT and answer.token == b"tk"
    assert cbor2.loads(answer.payload)["cause"] == "NO_ANSWER_FROM_SERVER"
    assert c.open_exchanges() == 0 and c.counters.gave_up["uu"] == 1
    assert c.counters.exchanges_ended["gave-up"] == 1


def test_piggybacked_answer_goes_down_as_con_and_is_retransmitted_until_acknowledged():
    c = linked()
    c.on_pc5(UE_A, request(mid=9, token=b"t9"), 0.0)
    answer = coap(Type.ACK, Code.CONTENT, 9, b"t9", b"\xa1\x61x\x01", content_format=60)
    assert downs(c.on_tick(0.1)) == [empty_ack(9)]  # nothing back within 0.1 s
    acts = c.on_uu(UU, answer, 0.2)
    [down] = downs(acts)
    m = Message.decode(down)
    assert m.mtype == Type.CON and m.code == Code.CONTENT and m.token == b"t9"
    assert m.payload == b"\xa1\x61x\x01" and m.opt.content_format == 60
    assert c.open_exchanges() == 0 and c.counters.exchanges_ended["answered"] == 1
    # nothing more goes up: the answer stopped the Uu retransmissions
    assert ups(a for _, a in run(c, 0.2, 1.9)) == []
    # not acknowledged: the same CON again after [2, 3] s
    repeat = [(t, a) for t, a in run(c, 2.0, 3.2) if isinstance(a, SendDownlink)]
    assert len(repeat) == 1 and repeat[0][1].datagram == down
    # the UE's empty ACK ends it: no more copies, no more deadlines
    assert c.on_pc5(UE_A, empty_ack(m.mid), 3.3) == []
    assert [a for _, a in run(c, 3.3, 60.0) if isinstance(a, SendDownlink)] == []
    assert c.next_deadline() is None
    assert c.counters.acks_from_ue == 1 and c.counters.retransmitted_down == 1


def test_an_answer_never_acknowledged_is_given_up_after_four_retransmissions():
    c = linked()
    c.on_pc5(UE_A, request(mid=9, token=b"t9"), 0.0)
    c.on_tick(0.1)
    [down] = downs(c.on_uu(UU, coap(Type.ACK, Code.CONTENT, 9, b"t9", b"x"), 0.2))
    copies = [a for _, a in run(c, 0.2, 80.0) if isinstance(a, SendDownlink)]
    assert [a.datagram for a in copies] == [down] * 4
    assert c.counters.gave_up["pc5"] == 1 and c.next_deadline() is None


def test_one_answer_per_request_when_the_server_answers_a_relay_copy_again():
    c = linked()
    c.on_pc5(UE_A, request(mid=5, token=b"t5"), 0.0)
    run(c, 0.0, 3.1)  # one relay copy went up: the SCM-S answers both (its dedup replays, RFC 7252 §4.5)
    answer = coap(Type.ACK, Code.CONTENT, 5, b"t5", b"doc")
    assert len(downs(c.on_uu(UU, answer, 3.2))) == 1
    second = c.on_uu(UU, answer, 3.3)
    assert downs(second) == [] and any(isinstance(a, Discard) for a in second)
    assert c.counters.duplicates_from_server == 1


def test_empty_ack_then_separate_response_acknowledged_by_the_relay_once_relayed_once():
    c = linked()
    c.on_pc5(UE_A, request(mid=11, token=b"sp"), 0.0)
    assert c.on_uu(UU, empty_ack(11), 0.2) == []  # taken here: the UE already has the relay's ACK
    assert ups(a for _, a in run(c, 0.2, 40.0)) == []  # no more copies up once acknowledged
    sep = coap(Type.CON, Code.CONTENT, 0x4000, b"sp", b"doc")
    acts = c.on_uu(UU, sep, 41.0)
    assert ups(acts) == [empty_ack(0x4000)]
    [down] = downs(acts)
    m = Message.decode(down)
    assert (m.mtype, m.code, m.token, m.payload) == (Type.CON, Code.CONTENT, b"sp", b"doc")
    # the SCM-S retransmits (our ACK was lost): acknowledged again, not relayed again
    again = c.on_uu(UU, sep, 43.0)
    assert ups(again) == [empty_ack(0x4000)] and downs(again) == []
    assert c.counters.duplicates_from_server == 1 and c.counters.acked_on_uu == 2


def test_con_answer_for_nothing_open_is_rejected_with_rst():
    c = linked()
    acts = c.on_uu(UU, coap(Type.CON, Code.CONTENT, 0x5000, b"zz", b"late"), 1.0)
    assert ups(acts) == [rst(0x5000)] and downs(acts) == []
    assert c.counters.discarded["no-exchange"] == 1


def test_server_rst_becomes_5_02_for_the_ue():
    c = linked()
    c.on_pc5(UE_A, request(mid=12, token=b"rr"), 0.0)
    c.on_tick(0.1)
    [down] = downs(c.on_uu(UU, rst(12), 0.2))
    m = Message.decode(down)
    assert m.mtype == Type.CON and m.code == Code.BAD_GATEWAY and m.token == b"rr"
    assert cbor2.loads(m.payload)["cause"] == "RESET_BY_SERVER"
    assert c.open_exchanges() == 0


def test_non_request_crosses_end_to_end_and_its_non_answer_gets_a_relay_mid():
    c = linked()
    acts = c.on_pc5(UE_A, request(mid=20, token=b"nn", mtype=Type.NON), 0.0)
    assert downs(acts) == [] and len(ups(acts)) == 1
    assert run(c, 0.0, 10.0) == []  # no retransmission of a NON
    [down] = downs(c.on_uu(UU, coap(Type.NON, Code.CONTENT, 0x7777, b"nn", b"blk"), 0.2))
    m = Message.decode(down)
    assert m.mtype == Type.NON and m.token == b"nn" and m.payload == b"blk"
    # a later NON of a burst on the same token is relayed all the same (RFC 9177 §4.4)
    assert len(downs(c.on_uu(UU, coap(Type.NON, Code.CONTENT, 0x7778, b"nn", b"blk2"), 0.3))) == 1


def test_observation_notifications_and_the_ues_rst_ending_it():
    c = linked()
    c.on_pc5(UE_A, request(mid=30, token=b"ob", observe=0), 0.0)
    first = c.on_uu(UU, coap(Type.ACK, Code.CONTENT, 30, b"ob", b"v1", observe=1), 0.05)
    assert Message.decode(downs(first)[0]).mtype == Type.ACK and c.open_exchanges() == 1  # observing
    note = c.on_uu(UU, coap(Type.CON, Code.CONTENT, 0x6001, b"ob", b"v2", observe=2), 5.0)
    assert ups(note) == [empty_ack(0x6001)]
    relay_mid = Message.decode(downs(note)[0]).mid
    assert c.on_pc5(UE_A, rst(relay_mid), 5.1) == []  # the UE rejects it: the observation ends
    assert c.open_exchanges() == 0 and c.counters.exchanges_ended["reset-by-ue"] == 1
    after = c.on_uu(UU, coap(Type.CON, Code.CONTENT, 0x6002, b"ob", b"v3", observe=3), 9.0)
    assert ups(after) == [rst(0x6002)] and downs(after) == []  # and the SCM-S is told


def test_answers_in_flight_are_bounded_and_a_released_link_leaves_nothing():
    c = linked(max_exchanges=64)
    for i in range(DELIVERY_BOUND + 3):
        uri = SERVER.replace("urn:x:1", f"urn:x:{i}")  # different requests: none asks another again
        c.on_pc5(UE_A, request(mid=100 + i, token=bytes([i, 1]), proxy_uri=uri), 0.0)
    c.on_tick(0.1)
    for i in range(DELIVERY_BOUND + 3):
        c.on_uu(UU, coap(Type.ACK, Code.CONTENT, 100 + i, bytes([i, 1]), b"d"), 0.15)
    [lnk] = list(c.links)
    assert len(lnk.deliveries) == DELIVERY_BOUND and c.counters.gave_up["pc5-bound"] == 3
    c.on_pc5(UE_A, request(mid=200, token=b"open"), 0.2)
    assert c.next_deadline() is not None
    c.release_link(lnk, 0.3)
    assert lnk.deliveries == {} and lnk.exchanges == {} and c.next_deadline() is None
    assert run(c, 0.3, 60.0) == []


def test_unmatched_ack_from_the_ue_is_counted_not_relayed():
    c = linked()
    acts = c.on_pc5(UE_A, empty_ack(0x0BAD), 0.0)
    assert ups(acts) == [] and c.counters.discarded["unmatched-ack"] == 1


def test_end_to_end_keeps_relaying_the_ues_retransmissions():
    c = core(reliability="end-to-end")
    link(c)
    first = c.on_pc5(UE_A, request(mid=3, token=b"ee"), 0.0)
    assert downs(first) == [] and len(ups(first)) == 1
    assert len(ups(c.on_pc5(UE_A, request(mid=3, token=b"ee"), 2.5))) == 1
    assert c.next_deadline() is None


def test_relay_uplink_problem_answers_stay_piggybacked():
    c = linked()
    wrong = SERVER.replace("127.0.0.1:5683", "10.9.9.9:5683")
    [answer] = c.on_pc5(UE_A, request(mid=40, token=b"pp", proxy_uri=wrong), 0.0)
    m = Message.decode(answer.datagram)
    assert isinstance(answer, Answer) and c.open_exchanges() == 0
    assert m.mtype == Type.ACK and m.mid == 40 and m.code == Code.PROXYING_NOT_SUPPORTED


def test_a_ue_asking_again_supersedes_its_open_exchange_and_the_late_answer_is_dropped():
    # SPEC D13: a UE asks again (new MID, new token) only after it gave up the old exchange
    c = linked()
    c.on_pc5(UE_A, request(mid=50, token=b"o1"), 0.0)
    c.on_pc5(UE_A, request(mid=51, token=b"o2"), 30.0)
    assert [ex.token for ex in next(iter(c.links)).exchanges.values()] == [b"o2"]
    assert c.counters.exchanges_ended["superseded"] == 1
    late = c.on_uu(UU, coap(Type.ACK, Code.CONTENT, 50, b"o1", b"old"), 30.5)
    assert downs(late) == [] and c.counters.duplicates_from_server == 1
    fresh = c.on_uu(UU, coap(Type.ACK, Code.CONTENT, 51, b"o2", b"new"), 30.05)
    assert Message.decode(downs(fresh)[0]).payload == b"new"
    # another resource is another request: both stay open
    other = SERVER.replace("urn:x:1", "urn:x:2")
    c.on_pc5(UE_A, request(mid=60, token=b"p1"), 40.0)
    c.on_pc5(UE_A, request(mid=61, token=b"p2", proxy_uri=other), 40.0)
    assert c.open_exchanges() == 2


_EVENTS = st.one_of(
    st.tuples(st.just("req"), st.integers(0, 5), st.sampled_from([b"a", b"b", b"c"]), st.booleans()),
    st.tuples(st.just("ue-ack"), st.integers(0, 0xFFFF), st.just(b""), st.booleans()),
    st.tuples(st.just("answer"), st.integers(0, 5), st.sampled_from([b"a", b"b", b"c"]), st.booleans()),
    st.tuples(st.just("separate"), st.integers(0, 9), st.sampled_from([b"a", b"b", b"zz"]), st.booleans()),
    st.tuples(st.just("server-empty"), st.integers(0, 5), st.just(b""), st.booleans()),
    st.tuples(st.just("garbage"), st.integers(0, 255), st.binary(max_size=24), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_EVENTS, st.floats(0, 20)), max_size=30))
def test_hop_legs_never_raise_and_stay_bounded_on_any_sequence(events):
    """Any order of requests, retransmissions, answers, duplicates, ACKs, RSTs and garbage on both
    legs (SPEC D13): no exception, every datagram sent is CoAP, every table bounded, and after the
    longest wait (EXCHANGE_LIFETIME) nothing is left to retransmit."""
    from msgin5g.coap import wire

    c = linked(max_exchanges=3)
    now = 0.0
    sent = []
    for (kind, mid, token, flag), dt in events:
        now += dt
        if kind == "req":
            uri = SERVER.replace("urn:x:1", f"urn:x:{mid % 2}")
            sent += c.on_pc5(
                UE_A, request(mid=mid, token=token, mtype=Type.CON if flag else Type.NON, proxy_uri=uri), now
            )
        elif kind == "ue-ack":
            sent += c.on_pc5(UE_A, (empty_ack if flag else rst)(mid), now)
        elif kind == "answer":
            sent += c.on_uu(UU, coap(Type.ACK, Code.CONTENT, mid, token, b"doc"), now)
        elif kind == "separate":
            sent += c.on_uu(
                UU, coap(Type.CON if flag else Type.NON, Code.CONTENT, 0x100 + mid, token, b"d"), now
            )
        elif kind == "server-empty":
            sent += c.on_uu(UU, (empty_ack if flag else rst)(mid), now)
        else:
            sent += c.on_pc5(UE_A, token, now)
            sent += c.on_uu(UU, token, now)
        sent += c.on_tick(now)
        for lnk in c.links:
            assert len(lnk.exchanges) <= 3 and len(lnk.deliveries) <= DELIVERY_BOUND
            assert len(lnk.answered_mids) <= 64 and len(lnk.server_mids) <= 64
    for a in sent:
        if isinstance(a, (SendDownlink, SendUplink)):
            wire.decode(a.datagram)  # raises if not CoAP
    run(c, now, now + 300.0, step=1.0)
    assert c.next_deadline() is None
    assert all(lnk.deliveries == {} for lnk in c.links)
    assert all(ex.tx is None for lnk in c.links for ex in lnk.exchanges.values())
