"""Relay UE decision logic without sockets (TS 24.538 6.2.2.1; SPEC §3.2, D8, D13).

The core takes datagrams as bytes, exactly as the shell receives them, and returns actions. Every
expected value below is written from the spec (the seed's two rules, SPEC D8's flows and bounds,
RFC 7252's message layer), not computed by the code under test. They run the relay with
``reliability="end-to-end"``; what changes with the default hop-by-hop legs is in test_relay_hop.py.
"""

from __future__ import annotations

import json

import cbor2
import pytest
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g import pc5
from msgin5g.pc5 import Pc5Cause, Pc5Message, Pc5Type
from msgin5g.relay.core import (
    Answer,
    CloseUplink,
    Discard,
    OpenUplink,
    RelayConfig,
    RelayCore,
    SendDownlink,
    SendPc5,
    SendUplink,
)
from msgin5g.relay.links import Pc5LinkTable, layer2_address
from msgin5g.relay.routing import (
    CmServer,
    Forward,
    MalformedDatagram,
    parse_datagram,
    proxy_target,
    relay_downlink,
    relay_uplink,
)

SERVER = "coap://127.0.0.1:5683/su-uc/v1/val-services/msgin5g/ue-configurations?ue-uri=urn:x:1"
UE_A = ("127.0.0.1", 40001)
UE_B = ("127.0.0.1", 40002)
UE_C = ("127.0.0.1", 40003)
CM = CmServer.of("coap", "127.0.0.1", 5683)


def core(**kw) -> RelayCore:
    """A relay that relays the UE's own retransmissions (``--reliability end-to-end``): the rules
    here are those of relaying as such; the hop-by-hop legs are tests/unit/test_relay_hop.py's."""
    kw.setdefault("server_host", "127.0.0.1")
    kw.setdefault("reliability", "end-to-end")
    return RelayCore(RelayConfig(**kw))


def coap(mtype=Type.CON, code=Code.GET, mid=1, token=b"", payload=b"", proxy_uri=None, **opts) -> bytes:
    m = Message(code=code, payload=payload, **opts)
    m.mtype, m.mid, m.token = mtype, mid, token
    if proxy_uri is not None:
        m.opt.proxy_uri = proxy_uri
    return m.encode()


def request(mid=1, token=b"\x01\x02", mtype=Type.CON, code=Code.GET, proxy_uri=SERVER, **opts) -> bytes:
    return coap(mtype, code, mid, token, proxy_uri=proxy_uri, **opts)


def decoded(data: bytes) -> Message:
    return Message.decode(data)


def sig(t: Pc5Type, seq=1, **fields) -> bytes:
    return pc5.encode(Pc5Message(t, seq, **fields))


def link(c: RelayCore, ep=UE_A, l2id=0x000001, now=0.0) -> list:
    return c.on_pc5(ep, sig(Pc5Type.LINK_ESTABLISHMENT_REQUEST, l2id=l2id, user_info="ue"), now)


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def ups(actions) -> list[SendUplink]:
    return [a for a in actions if isinstance(a, SendUplink)]


def downs(actions) -> list[SendDownlink]:
    return [a for a in actions if isinstance(a, SendDownlink)]


# ---- PC5 link table (SPEC D8) --------------------------------------------------------------------


def test_link_establishment_accept_and_idempotent_retransmission():
    c = core()
    acts = link(c)
    acc = only(acts, SendPc5)
    assert acc.message.type == Pc5Type.LINK_ESTABLISHMENT_ACCEPT
    assert acc.message.keepalive == 20 and acc.message.l2id == 1
    assert only(acts, OpenUplink) == OpenUplink(1, None)  # layer 3: a port of its own, relay's address
    again = link(c)  # the accept was lost: the same request again
    assert only(again, SendPc5).message.type == Pc5Type.LINK_ESTABLISHMENT_ACCEPT
    assert not [a for a in again if isinstance(a, OpenUplink)]
    assert len(c.links) == 1 and c.counters.links_established == 1


def test_every_link_gets_its_own_flow_in_both_modes():
    """SPEC D8: layer 3 is a NAT (one upstream port per remote UE), layer 2 gives each remote UE an
    address of its own (on loopback 127.0.<n>.<m>)."""
    l3, l2 = core(mode="l3"), core(mode="l2")
    opened3 = [only(link(l3, ep, i + 1), OpenUplink) for i, ep in enumerate((UE_A, UE_B, UE_C))]
    opened2 = [only(link(l2, ep, i + 1), OpenUplink) for i, ep in enumerate((UE_A, UE_B, UE_C))]
    assert opened3 == [OpenUplink(1, None), OpenUplink(2, None), OpenUplink(3, None)]
    assert opened2 == [OpenUplink(1, "127.0.1.1"), OpenUplink(2, "127.0.1.2"), OpenUplink(3, "127.0.1.3")]


def test_layer2_addresses_cover_127_0_1_1_to_127_0_255_254():
    assert layer2_address(1) == "127.0.1.1"
    assert layer2_address(254) == "127.0.1.254"
    assert layer2_address(255) == "127.0.2.1"
    assert layer2_address(254 * 255) == "127.0.255.254"
    assert layer2_address(254 * 255 + 1) == "127.0.1.1"  # wraps after 64,770 links


def test_layer2_without_loopback_addresses_falls_back_to_a_port_per_ue():
    c = core(mode="l2", l2_loopback=False)
    assert only(link(c), OpenUplink) == OpenUplink(1, None)


def test_link_table_full_rejects():
    c = core(max_links=2)
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    rej = only(link(c, UE_C, 3), SendPc5).message
    assert rej.type == Pc5Type.LINK_ESTABLISHMENT_REJECT and rej.cause == Pc5Cause.LACK_OF_RESOURCES
    assert c.counters.links_rejected == 1 and len(c.links) == 2


def test_keepalive_and_release():
    c = core()
    link(c)
    ka = c.on_pc5(UE_A, sig(Pc5Type.LINK_KEEPALIVE_REQUEST, 2, l2id=1, counter=9), 5.0)
    assert only(ka, SendPc5).message == Pc5Message(Pc5Type.LINK_KEEPALIVE_RESPONSE, 2, l2id=1, counter=9)
    rel = c.on_pc5(UE_A, sig(Pc5Type.LINK_RELEASE_REQUEST, 3, l2id=1, cause=2), 6.0)
    assert only(rel, SendPc5).message.type == Pc5Type.LINK_RELEASE_ACCEPT
    assert len(c.links) == 0 and c.counters.links_released["requested"] == 1
    # a repeated release (accept lost) is accepted again; a keep-alive without link is dropped
    assert only(c.on_pc5(UE_A, sig(Pc5Type.LINK_RELEASE_REQUEST, 3, l2id=1, cause=2), 7.0), SendPc5)
    c.on_pc5(UE_A, sig(Pc5Type.LINK_KEEPALIVE_REQUEST, 4, l2id=1, counter=1), 8.0)
    assert c.counters.dropped_no_link == 1


def test_layer2_id_moving_to_a_new_endpoint_replaces_the_old_link():
    c = core()
    link(c, UE_A, 7)
    link(c, UE_B, 7)
    assert c.links.by_l2id(7).endpoint == UE_B and c.links.by_endpoint(UE_A) is None
    assert c.counters.links_released["replaced"] == 1


def test_link_table_object():
    t = Pc5LinkTable(1)
    a = t.add(UE_A, 1, "a", 0.0)
    assert t.by_endpoint(UE_A) is a and t.by_l2id(1) is a and t.full and t.is_established(a)
    with pytest.raises(ValueError):
        t.add(UE_A, 2, "b", 0.0)
    t.remove(a, 5.0)
    assert a.released and a.released_at == 5.0 and len(t) == 0 and not t.is_established(a)
    b = t.add(UE_B, 1, "b", 10.0)
    assert t.expired(100.0, 60.0) == [b] and t.expired(20.0, 60.0) == []


def test_link_timeout_on_tick_notifies_the_ue():
    c = core(link_timeout=30.0)
    link(c, now=0.0)
    assert c.on_tick(10.0) == []
    acts = c.on_tick(31.0)
    msg = only(acts, SendPc5).message
    assert msg.type == Pc5Type.LINK_RELEASE_REQUEST and msg.cause == Pc5Cause.LINK_TIMEOUT
    assert c.counters.links_released["timeout"] == 1


def test_coap_without_link_is_dropped_and_counted():
    c = core()
    acts = c.on_pc5(UE_A, request(), 0.0)
    assert not ups(acts) and not downs(acts)
    assert isinstance(acts[0], Discard) and c.counters.dropped_no_link == 1


def test_auto_link_establishes_on_first_datagram():
    c = core(auto_link=True, max_links=1)
    acts = c.on_pc5(UE_A, request(), 0.0)
    assert len(ups(acts)) == 1 and len(c.links) == 1 and only(acts, OpenUplink).uplink == 1
    assert c.links.by_endpoint(UE_A).auto
    acts = c.on_pc5(UE_B, request(), 0.0)  # table full
    assert not ups(acts) and c.counters.dropped_no_link == 1 and c.counters.links_rejected == 1


# ---- the uplink forwarding decision (seed 6.2.2.1 first paragraph; SPEC D8) -----------------------


def test_recipient_is_the_cm_server_forwards_with_only_the_proxy_options_rewritten():
    extra = OpaqueOption(OptionNumber(65000), b"who")
    req = Message(code=Code.GET, accept=60, observe=0)
    req.opt.add_option(extra)
    req.mtype, req.mid, req.token = Type.CON, 77, b"tok"
    req.opt.proxy_uri = (
        "coap://127.0.0.1:5683/su-uc/v1/val-services/msgin5g/ue-configurations?ue-uri=a%26b&x=1"
    )
    decision = relay_uplink(parse_datagram(req.encode()), CM)
    assert isinstance(decision, Forward)
    up = decoded(decision.datagram)
    assert (up.mtype, up.mid, up.token, up.code) == (Type.CON, 77, b"tok", Code.GET)  # the UE's own
    assert up.opt.proxy_uri is None and up.opt.proxy_scheme is None and up.opt.uri_host is None
    assert up.opt.uri_path == ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    assert up.opt.uri_query == ("ue-uri=a&b", "x=1")
    assert up.opt.accept == 60 and up.opt.observe == 0
    assert up.opt.get_option(OptionNumber(65000))[0].value == b"who"


def test_proxy_uri_with_host_name_adds_uri_host():
    server = CmServer.of("coap", "scm.example", 5683, ("127.0.0.1",))
    m = parse_datagram(request(proxy_uri="coap://SCM.example/su-uc/v1"))
    up = decoded(relay_uplink(m, server).datagram)
    assert up.opt.uri_host == "scm.example" and up.opt.uri_path == ("su-uc", "v1")


def test_proxy_scheme_form_keeps_uri_options_and_payload_untouched():
    m = Message(code=Code.FETCH, payload=b"\x01\x02\x03")
    m.mtype, m.mid, m.token = Type.CON, 5, b"o"
    m.opt.proxy_scheme = "coap"
    m.opt.uri_host = "127.0.0.1"
    m.opt.uri_port = 5683
    m.opt.add_option(OptionNumber.OSCORE.create_option(value=b"\x09\x00"))
    up = decoded(relay_uplink(parse_datagram(m.encode()), CM).datagram)
    assert up.opt.proxy_scheme is None and up.opt.uri_host == "127.0.0.1" and up.opt.uri_port == 5683
    assert up.payload == b"\x01\x02\x03" and up.code == Code.FETCH
    assert up.opt.get_option(OptionNumber.OSCORE)[0].value == b"\x09\x00"


@pytest.mark.parametrize(
    "uri",
    [
        "coap://10.0.0.9:5683/su-uc/v1",  # another host
        "coap://127.0.0.1:5684/su-uc/v1",  # another port
        "coaps://127.0.0.1:5683/su-uc/v1",  # another scheme
        "http://127.0.0.1:5683/su-uc/v1",
    ],
)
def test_other_recipient_gets_5_05(uri):
    problem = relay_uplink(parse_datagram(request(proxy_uri=uri)), CM)
    assert (problem.code, problem.cause) == (0xA5, "RECIPIENT_NOT_CM_SERVER")


def _req_with(*options, proxy_uri=None, code=Code.GET) -> bytes:
    m = Message(code=code)
    m.mtype, m.mid, m.token = Type.CON, 3, b"x"
    if proxy_uri is not None:
        m.opt.proxy_uri = proxy_uri
    for o in options:
        m.opt.add_option(o)
    return m.encode()


@pytest.mark.parametrize(
    ("data", "code", "cause"),
    [
        (
            _req_with(OptionNumber.URI_PATH.create_option(value="a"), proxy_uri=SERVER),
            0x82,
            "CONFLICTING_PROXY_OPTIONS",
        ),
        (
            _req_with(OptionNumber.PROXY_SCHEME.create_option(value="coap"), proxy_uri=SERVER),
            0x82,
            "CONFLICTING_PROXY_OPTIONS",
        ),
        (
            _req_with(OptionNumber.PROXY_URI.create_option(value=SERVER), proxy_uri=SERVER),
            0x82,
            "REPEATED_OPTION",
        ),
        (_req_with(proxy_uri="coap://127.0.0.1:99999/x"), 0x80, "INVALID_PROXY_URI"),
        (_req_with(proxy_uri="/relative/path"), 0x80, "INVALID_PROXY_URI"),
        (_req_with(proxy_uri="coap://127.0.0.1/x#frag"), 0x80, "INVALID_PROXY_URI"),
        (_req_with(proxy_uri="coap://user@127.0.0.1/x"), 0x80, "INVALID_PROXY_URI"),
        (_req_with(proxy_uri="coap://127.0.0.1/a b"), 0x80, "INVALID_PROXY_URI"),
        (_req_with(proxy_uri="coap://127.0.0.1/%ff"), 0x80, "INVALID_PROXY_URI"),
        (_req_with(OptionNumber.PROXY_SCHEME.create_option(value="coap")), 0x80, "MISSING_URI_HOST"),
        (_req_with(OpaqueOption(OptionNumber.PROXY_URI, b"coap://\xff\xfe/x")), 0x80, "INVALID_PROXY_URI"),
        (_req_with(), 0x84, "NOT_A_PROXY_REQUEST"),
        (_req_with(proxy_uri=SERVER, code=Code.PUT), 0x85, "METHOD_NOT_RELAYED"),
        (_req_with(proxy_uri=SERVER, code=Code.POST), 0x85, "METHOD_NOT_RELAYED"),  # POST without OSCORE
    ],
)
def test_malformed_proxy_options_get_problem_details(data, code, cause):
    c = core()
    link(c)
    ans = only(c.on_pc5(UE_A, data, 0.0), Answer)
    assert (ans.problem.code, ans.problem.cause) == (code, cause)
    m = decoded(ans.datagram)
    assert (m.code, m.mtype, m.mid, m.token) == (code, Type.ACK, 3, b"x")  # piggybacked on the CON's ACK
    assert m.opt.content_format == 257 and cbor2.loads(m.payload)["cause"] == cause
    assert c.counters.relayed_up == 0 and not ups(c.on_tick(1.0))


def test_proxy_target_none_without_proxy_options():
    assert proxy_target(parse_datagram(_req_with())) is None


def test_non_request_gets_non_answer():
    c = core()
    link(c)
    ans = only(c.on_pc5(UE_A, request(mtype=Type.NON, proxy_uri="coap://10.1.1.1/x"), 0.0), Answer)
    assert (
        decoded(ans.datagram).mtype == Type.NON and decoded(ans.datagram).code == Code.PROXYING_NOT_SUPPORTED
    )
    assert decoded(ans.datagram).token == b"\x01\x02"


# ---- the downlink discard rule (seed 6.2.2.1 second paragraph; SPEC D8) ----------------------------


def test_discard_rule_as_a_function():
    t = Pc5LinkTable(4)
    a = t.add(UE_A, 1, "a", 0.0)
    assert relay_downlink(a, t) is True
    assert relay_downlink(None, t) is False
    t.remove(a, 1.0)
    assert relay_downlink(a, t) is False
    a2 = t.add(UE_A, 1, "a", 2.0)  # the same UE links again: a new link
    assert relay_downlink(a, t) is False and relay_downlink(a2, t) is True


@pytest.mark.parametrize("code", [Code.CONTENT, Code.FORBIDDEN, Code.NOT_FOUND, Code.INTERNAL_SERVER_ERROR])
def test_response_relayed_downlink_byte_for_byte(code):
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(mid=9, token=b"t9"), 0.0), SendUplink)
    assert up.uplink == 1
    answer = coap(Type.ACK, code, 9, b"t9", b"\xa1\x61x\x01", content_format=60)
    acts = c.on_uu(1, answer, 0.1)
    assert only(acts, SendDownlink) == SendDownlink(UE_A, answer)
    assert c.counters.relayed_down == 1 and c.open_exchanges() == 0
    assert c.counters.exchanges_ended["answered"] == 1


def test_response_after_link_release_is_discarded_and_counted():
    """The seed: a response whose recipient has no established PC5 link is discarded."""
    c = core()
    link(c)
    c.on_pc5(UE_A, request(mid=4, token=b"t"), 0.0)
    c.on_pc5(UE_A, sig(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 0.5)
    acts = c.on_uu(1, coap(Type.ACK, Code.CONTENT, 4, b"t", b"\x80"), 1.0)
    assert downs(acts) == [] and ups(acts) == []
    assert c.counters.discarded["link-released"] == 1 and c.counters.relayed_down == 0
    # a separate (CON) response for it is discarded too and rejected, so the SCM-S stops retransmitting
    acts = c.on_uu(1, coap(Type.CON, Code.CONTENT, 700, b"t", b"\x80"), 1.5)
    assert downs(acts) == [] and [decoded(a.datagram).mtype for a in ups(acts)] == [Type.RST]
    assert c.counters.discarded["link-released"] == 2


def test_response_for_a_re_established_link_is_still_discarded():
    c = core(mode="l2")
    link(c, UE_A, 1)
    c.on_pc5(UE_A, request(mid=4, token=b"t"), 0.0)
    c.on_pc5(UE_A, sig(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 0.5)
    assert only(link(c, UE_A, 1, now=0.6), OpenUplink) == OpenUplink(2, "127.0.1.2")  # a new flow
    acts = c.on_uu(1, coap(Type.ACK, Code.CONTENT, 4, b"t", b"\x80"), 1.0)  # on the old flow
    assert downs(acts) == [] and c.counters.discarded["link-released"] == 1


def test_two_ues_with_equal_tokens_get_their_own_answers():
    c = core()
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    a = only(c.on_pc5(UE_A, request(mid=1, token=b"same"), 0.0), SendUplink)
    b = only(c.on_pc5(UE_B, request(mid=1, token=b"same"), 0.0), SendUplink)
    assert (a.uplink, b.uplink) == (1, 2)  # separate flows: equal tokens and MIDs never meet
    to_b = only(c.on_uu(2, coap(Type.ACK, Code.CONTENT, 1, b"same", b"B"), 0.1), SendDownlink)
    to_a = only(c.on_uu(1, coap(Type.ACK, Code.CONTENT, 1, b"same", b"A"), 0.1), SendDownlink)
    assert (to_a.endpoint, decoded(to_a.datagram).payload) == (UE_A, b"A")
    assert (to_b.endpoint, decoded(to_b.datagram).payload) == (UE_B, b"B")


# ---- one UE's loss never holds up another (SPEC D8, issue: lossy links) ----------------------------


@pytest.mark.parametrize("mode", ["l3", "l2"])
def test_one_ues_unanswered_request_does_not_hold_up_another(mode):
    c = core(mode=mode)
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    c.on_pc5(UE_A, request(mid=1, token=b"a"), 0.0)  # its answer is lost: A retransmits
    for t in (2.0, 6.0):
        assert only(c.on_pc5(UE_A, request(mid=1, token=b"a"), t), SendUplink).uplink == 1
    # B's request goes up at once, on B's own flow, with nothing queued behind A
    assert only(c.on_pc5(UE_B, request(mid=1, token=b"b"), 6.5), SendUplink).uplink == 2
    assert c.counters.relayed_up == 2 and c.counters.retransmitted_up == 2


def test_ue_retransmission_is_relayed_as_the_same_datagram():
    """RFC 7252 §4.5: the SCM-S sees the same MID on the UE's flow and deduplicates."""
    c = core()
    link(c)
    first = only(c.on_pc5(UE_A, request(mid=42, token=b"tk"), 0.0), SendUplink)
    again = only(c.on_pc5(UE_A, request(mid=42, token=b"tk"), 2.5), SendUplink)
    assert again == first and decoded(again.datagram).mid == 42
    assert c.counters.relayed_up == 1 and c.counters.retransmitted_up == 1


def test_non_requests_reusing_a_token_supersede_each_other():
    c = core()
    link(c)
    for i in range(10):
        assert ups(c.on_pc5(UE_A, request(mid=100 + i, token=b"nt", mtype=Type.NON), i * 0.1))
    assert c.open_exchanges() == 1 and c.counters.exchanges_ended["superseded"] == 9
    assert c.counters.relayed_up == 10
    # ... and another UE is not affected at all
    link(c, UE_B, 2)
    assert only(c.on_pc5(UE_B, request(mid=1, token=b"b"), 1.0), SendUplink).uplink == 2


def test_open_exchanges_are_bounded_with_5_03_and_max_age():
    c = core(max_exchanges=2)
    link(c)
    c.on_pc5(UE_A, request(mid=1, token=b"1"), 0.0)
    c.on_pc5(UE_A, request(mid=2, token=b"2"), 1.0)
    ans = only(c.on_pc5(UE_A, request(mid=3, token=b"3"), 10.0), Answer)
    m = decoded(ans.datagram)
    assert (m.code, m.mtype, m.mid, m.token) == (Code.SERVICE_UNAVAILABLE, Type.ACK, 3, b"3")
    assert m.opt.max_age == 83  # the oldest open exchange (t = 0) expires at 93 s: 83 s from now
    assert m.opt.content_format == 257 and cbor2.loads(m.payload)["cause"] == "TOO_MANY_OPEN_REQUESTS"
    assert c.counters.answered["5.03"] == 1 and c.counters.relayed_up == 2
    # an answer frees a place
    c.on_uu(1, coap(Type.ACK, Code.CONTENT, 1, b"1", b"\x80"), 11.0)
    assert only(c.on_pc5(UE_A, request(mid=4, token=b"4"), 12.0), SendUplink)


def test_the_oldest_non_exchange_yields_its_place_when_all_are_taken():
    """NON requests without an answer (e.g. Q-Block2 requests for missing blocks whose answer was
    lost) do not lock a UE out: the oldest yields its place; CON exchanges keep theirs."""
    c = core(max_exchanges=3)
    link(c)
    c.on_pc5(UE_A, request(mid=1, token=b"c1"), 0.0)  # CON
    c.on_pc5(UE_A, request(mid=2, token=b"n1", mtype=Type.NON), 1.0)
    c.on_pc5(UE_A, request(mid=3, token=b"n2", mtype=Type.NON), 2.0)
    # full: the new request goes up, n1 (the oldest NON) has yielded
    assert only(c.on_pc5(UE_A, request(mid=4, token=b"n3", mtype=Type.NON), 3.0), SendUplink)
    assert c.open_exchanges() == 3 and c.counters.exchanges_ended["yielded"] == 1
    assert c.counters.relayed_up == 4 and c.counters.answered["5.03"] == 0
    # a late answer to n1 still goes down the UE's own flow (its client may use it), and opens nothing
    assert len(downs(c.on_uu(1, coap(Type.NON, Code.CONTENT, 9, b"n1", b"\x80"), 4.0))) == 1
    assert c.open_exchanges() == 3
    # n2 answered: its place is free; then n3 yields to the next, and CON c1 is never evicted
    c.on_uu(1, coap(Type.NON, Code.CONTENT, 10, b"n2", b"\x80"), 5.0)
    c.on_pc5(UE_A, request(mid=5, token=b"c2"), 6.0)
    assert only(c.on_pc5(UE_A, request(mid=6, token=b"c3"), 7.0), SendUplink)
    assert c.counters.exchanges_ended["yielded"] == 2
    # three CON exchanges open: the fourth request gets 5.03 + Max-Age
    ans = only(c.on_pc5(UE_A, request(mid=7, token=b"c4"), 8.0), Answer)
    assert decoded(ans.datagram).code == Code.SERVICE_UNAVAILABLE


def test_ended_exchanges_leave_no_trace():
    c = core(link_timeout=1e9)
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    c.on_pc5(UE_A, request(mid=1, token=b"lost"), 0.0)  # never answered
    c.on_pc5(UE_B, request(mid=1, token=b"rst"), 0.0)
    c.on_uu(2, coap(Type.RST, Code.EMPTY, 1), 0.2)  # the SCM-S rejects it
    assert c.open_exchanges() == 1 and c.counters.exchanges_ended["reset-by-server"] == 1
    c.on_tick(92.0)
    assert c.open_exchanges() == 1
    c.on_tick(93.0)  # MAX_TRANSMIT_WAIT after the first transmission: the UE has given up
    assert c.open_exchanges() == 0 and c.counters.exchanges_ended["expired"] == 1


def test_released_links_flows_linger_then_close_and_are_bounded():
    c = core(max_links=2, link_timeout=1e9)
    closed = []

    def step(acts):
        closed.extend(a.uplink for a in acts if isinstance(a, CloseUplink))

    link(c, UE_A, 1, now=0.0)
    link(c, UE_B, 2, now=0.0)
    c.on_pc5(UE_A, request(mid=1, token=b"x"), 0.0)
    step(c.on_pc5(UE_A, sig(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 10.0))
    step(link(c, UE_C, 3, now=10.5))
    step(c.on_pc5(UE_B, sig(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=2, cause=2), 11.0))
    assert closed == [] and c.flow_count == 3  # two lingering, one open
    step(c.on_pc5(UE_C, sig(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=3, cause=2), 12.0))
    assert closed == [1]  # at most max_links (2) lingering flows: the oldest is closed at once
    assert c.open_exchanges() == 0 and c.counters.exchanges_ended["link-released"] == 1
    assert [a.uplink for a in c.on_tick(11.0 + 93.0) if isinstance(a, CloseUplink)] == [2]
    assert [a.uplink for a in c.on_tick(12.0 + 93.0) if isinstance(a, CloseUplink)] == [3]
    assert c.flow_count == 0


# ---- the rest of the message layer, end to end -----------------------------------------------------


def test_separate_response_path():
    c = core()
    link(c)
    c.on_pc5(UE_A, request(mid=5, token=b"s"), 0.0)
    empty_ack = coap(Type.ACK, Code.EMPTY, 5)
    assert only(c.on_uu(1, empty_ack, 0.1), SendDownlink) == SendDownlink(UE_A, empty_ack)
    separate = coap(Type.CON, Code.CONTENT, 900, b"s", b"\x80")
    assert only(c.on_uu(1, separate, 1.0), SendDownlink) == SendDownlink(UE_A, separate)
    assert c.open_exchanges() == 0
    ue_ack = coap(Type.ACK, Code.EMPTY, 900)
    assert only(c.on_pc5(UE_A, ue_ack, 1.1), SendUplink) == SendUplink(1, ue_ack)
    # the SCM-S retransmits its CON (the UE's ACK was lost): relayed again, same MID
    assert only(c.on_uu(1, separate, 3.0), SendDownlink) == SendDownlink(UE_A, separate)


def test_acked_exchange_waits_exchange_lifetime_for_its_separate_response():
    c = core(link_timeout=1e9)
    link(c)
    c.on_pc5(UE_A, request(mid=5, token=b"s"), 0.0)
    c.on_uu(1, coap(Type.ACK, Code.EMPTY, 5), 0.1)
    c.on_tick(200.0)
    assert c.open_exchanges() == 1
    c.on_tick(247.0)
    assert c.open_exchanges() == 0


def test_ping_from_ue_gets_rst_and_refreshes_link():
    c = core(link_timeout=30.0)
    link(c, now=0.0)
    rst = decoded(only(c.on_pc5(UE_A, coap(Type.CON, Code.EMPTY, 77), 20.0), SendDownlink).datagram)
    assert (rst.mtype, rst.mid) == (Type.RST, 77)
    assert not [a for a in c.on_tick(40.0) if isinstance(a, SendPc5)]  # refreshed at 20 s


def test_requests_and_pings_from_the_server_are_rejected():
    c = core()
    link(c)
    for data in (coap(Type.CON, Code.GET, 31, b"q"), coap(Type.CON, Code.EMPTY, 32)):
        acts = c.on_uu(1, data, 0.0)
        assert downs(acts) == [] and [
            (decoded(a.datagram).mtype, decoded(a.datagram).mid) for a in ups(acts)
        ] in (
            [(Type.RST, 31)],
            [(Type.RST, 32)],
        )


def test_observe_notifications_follow_the_link_and_a_ue_rst_ends_the_observation():
    c = core(link_timeout=1e9)
    link(c)
    c.on_pc5(UE_A, request(mid=1, token=b"ob", observe=0), 0.0)
    first = coap(Type.ACK, Code.CONTENT, 1, b"ob", b"\x80", observe=1)
    assert only(c.on_uu(1, first, 0.1), SendDownlink).datagram == first
    assert c.open_exchanges() == 1  # observing
    note = coap(Type.NON, Code.CONTENT, 501, b"ob", b"\x81", observe=2)
    assert only(c.on_uu(1, note, 5.0), SendDownlink).datagram == note
    c.on_tick(500.0)
    assert c.open_exchanges() == 1  # an observation does not expire while the link lives
    ue_rst = coap(Type.RST, Code.EMPTY, 501)
    assert only(c.on_pc5(UE_A, ue_rst, 501.0), SendUplink) == SendUplink(1, ue_rst)
    assert c.open_exchanges() == 0 and c.counters.exchanges_ended["reset-by-ue"] == 1


def test_deregistration_with_the_same_token_supersedes_the_observation():
    c = core()
    link(c)
    c.on_pc5(UE_A, request(mid=1, token=b"ob", observe=0), 0.0)
    c.on_uu(1, coap(Type.ACK, Code.CONTENT, 1, b"ob", b"\x80", observe=1), 0.1)
    dereg = decoded(only(c.on_pc5(UE_A, request(mid=2, token=b"ob", observe=1), 3.0), SendUplink).datagram)
    assert dereg.token == b"ob" and dereg.opt.observe == 1
    c.on_uu(1, coap(Type.ACK, Code.CONTENT, 2, b"ob", b"\x80"), 3.1)
    assert c.open_exchanges() == 0


# ---- robustness ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40",
        b"\x00\x01\x02\x03",
        b"\x4f\x01\x00\x01abc",
        b"\x05\x01",
        b"\x44\x01\x00\x01\x01\x02\x03\x04\xd3\xff\xff",
    ],
)
def test_garbage_datagrams_are_malformed(data):
    with pytest.raises(MalformedDatagram):
        parse_datagram(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=12), st.booleans())
def test_core_never_raises_and_stays_bounded_on_arbitrary_datagrams(datagrams, linked):
    c = core(auto_link=not linked, max_links=2, max_exchanges=3)
    if linked:
        link(c)
    for i, data in enumerate(datagrams):
        c.on_pc5(UE_A if i % 2 else UE_B, data, float(i))
        c.on_uu(1, data, float(i))
        c.on_tick(float(i))
        assert len(c.links) <= 2 and c.flow_count <= 4
        assert all(len(link.exchanges) <= 3 for link in c.links)


def test_response_from_ue_and_unexpected_signalling_are_dropped():
    c = core()
    link(c)
    c.on_pc5(UE_A, coap(Type.NON, Code.CONTENT, 3), 0.0)
    c.on_pc5(UE_A, sig(Pc5Type.LINK_ESTABLISHMENT_ACCEPT, l2id=1), 0.0)
    assert c.counters.dropped_malformed == 2


def test_datagram_on_an_unknown_flow_is_discarded():
    c = core()
    assert c.on_uu(5, coap(Type.ACK, Code.CONTENT, 1, b"x"), 0.0) == [Discard("unknown-flow")]
    assert c.counters.discarded["unknown-flow"] == 1


def test_counters_snapshot_is_plain_data():
    c = core()
    link(c)
    c.on_pc5(UE_A, request(proxy_uri="coap://10.0.0.1/x"), 0.0)
    snap = c.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["counters"]["answered"] == {"5.05": 1} and snap["links"][0]["l2id"] == "000001"
    assert snap["flows"] == {"open": 1, "lingering": 0}
