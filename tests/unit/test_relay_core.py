"""Relay UE decision logic without sockets (TS 24.538 6.2.2.1; SPEC §3.2, D8).

Messages are encoded and decoded again before they reach the core, as the shell does, so the core
sees exactly what a socket would deliver.
"""

from __future__ import annotations

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
    MID_SPACE,
    SHARED_UPLINK,
    Answer,
    CloseUplink,
    Discard,
    MalformedDatagram,
    MidAllocator,
    OpenUplink,
    Pc5LinkTable,
    RelayConfig,
    RelayCore,
    SendDownlink,
    SendPc5,
    SendUplink,
    parse_datagram,
    proxy_target,
)

SERVER = "coap://127.0.0.1:5683/su-uc/v1/val-services/msgin5g/ue-configurations?ue-uri=urn:x:1"
UE_A = ("127.0.0.1", 40001)
UE_B = ("127.0.0.1", 40002)
UE_C = ("127.0.0.1", 40003)


def core(**kw) -> RelayCore:
    kw.setdefault("server_host", "127.0.0.1")
    return RelayCore(RelayConfig(**kw))


def wire(msg: Message) -> Message:
    """Through the wire and back: what the shell hands to the core."""
    return Message.decode(msg.encode())


def request(mid=1, token=b"\x01\x02", mtype=Type.CON, code=Code.GET, proxy_uri=SERVER, **opts) -> Message:
    m = Message(code=code, **opts)
    m.mtype, m.mid, m.token = mtype, mid, token
    if proxy_uri is not None:
        m.opt.proxy_uri = proxy_uri
    return wire(m)


def response(up: Message, code=Code.CONTENT, payload=b"\x80", mtype=Type.ACK, mid=None, **opts) -> Message:
    m = Message(code=code, payload=payload, **opts)
    m.mtype = mtype
    m.mid = up.mid if mid is None else mid
    m.token = up.token
    return wire(m)


def empty(mtype, mid) -> Message:
    m = Message(code=Code.EMPTY)
    m.mtype, m.mid = mtype, mid
    return wire(m)


def link(c: RelayCore, ep=UE_A, l2id=0x000001, now=0.0) -> list:
    return c.on_pc5(ep, Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 1, l2id=l2id, user_info="ue"), now)


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
    assert acc.message.keepalive == c.config.keepalive and acc.message.l2id == 1
    assert only(acts, OpenUplink).uplink == SHARED_UPLINK
    again = link(c)  # the accept was lost: the same request again
    assert only(again, SendPc5).message.type == Pc5Type.LINK_ESTABLISHMENT_ACCEPT
    assert len(c.links) == 1 and c.counters.links_established == 1


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
    ka = c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_KEEPALIVE_REQUEST, 2, l2id=1, counter=9), 5.0)
    assert only(ka, SendPc5).message == Pc5Message(Pc5Type.LINK_KEEPALIVE_RESPONSE, 2, l2id=1, counter=9)
    rel = c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 3, l2id=1, cause=2), 6.0)
    assert only(rel, SendPc5).message.type == Pc5Type.LINK_RELEASE_ACCEPT
    assert len(c.links) == 0 and c.counters.links_released["requested"] == 1
    # a repeated release (accept lost) is accepted again; a keep-alive without link is dropped
    assert only(c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 3, l2id=1, cause=2), 7.0), SendPc5)
    c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_KEEPALIVE_REQUEST, 4, l2id=1, counter=1), 8.0)
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
    assert t.by_endpoint(UE_A) is a and t.by_l2id(1) is a and t.full
    with pytest.raises(ValueError):
        t.add(UE_A, 2, "b", 0.0)
    t.remove(a)
    assert a.released and len(t) == 0
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


# ---- link-less traffic --------------------------------------------------------------------------


def test_coap_without_link_is_dropped_and_counted():
    c = core()
    acts = c.on_pc5(UE_A, request(), 0.0)
    assert not ups(acts) and not downs(acts)
    assert isinstance(acts[0], Discard) and c.counters.dropped_no_link == 1


def test_auto_link_establishes_on_first_datagram():
    c = core(auto_link=True, max_links=1)
    acts = c.on_pc5(UE_A, request(), 0.0)
    assert len(ups(acts)) == 1 and len(c.links) == 1
    assert c.links.by_endpoint(UE_A).auto
    acts = c.on_pc5(UE_B, request(), 0.0)  # table full
    assert not ups(acts) and c.counters.dropped_no_link == 1 and c.counters.links_rejected == 1


# ---- uplink: recipient in the proxy options ------------------------------------------------------


def test_proxy_uri_request_is_relayed_with_only_proxy_options_token_and_mid_rewritten():
    c = core()
    link(c)
    extra = OpaqueOption(OptionNumber(65000), b"who")
    req = Message(code=Code.GET, accept=60, observe=0)
    req.opt.add_option(extra)
    req.mtype, req.mid, req.token = Type.CON, 77, b"tok"
    req.opt.proxy_uri = (
        "coap://127.0.0.1:5683/su-uc/v1/val-services/msgin5g/ue-configurations?ue-uri=a%26b&x=1"
    )
    acts = c.on_pc5(UE_A, wire(req), 0.0)
    up = only(acts, SendUplink).message
    assert up.opt.proxy_uri is None and up.opt.proxy_scheme is None
    assert up.opt.uri_path == ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    assert up.opt.uri_query == ("ue-uri=a&b", "x=1")
    assert up.opt.uri_host is None  # IP literal (RFC 7252 §6.4)
    assert up.opt.accept == 60 and up.opt.observe == 0
    assert up.opt.get_option(OptionNumber(65000))[0].value == b"who"
    assert up.token != b"tok" and up.mtype == Type.CON
    assert c.counters.relayed_up == 1


def test_proxy_uri_with_host_name_adds_uri_host():
    c = core(server_host="scm.example", server_aliases=frozenset({"127.0.0.1"}))
    link(c)
    up = only(c.on_pc5(UE_A, request(proxy_uri="coap://SCM.example/a"), 0.0), SendUplink).message
    assert up.opt.uri_host == "scm.example" and up.opt.uri_path == ("a",)
    # the server's address is another name of the same recipient
    up = only(c.on_pc5(UE_A, request(mid=2, proxy_uri="coap://127.0.0.1/a"), 0.0), SendUplink)
    assert up


def test_proxy_scheme_form_keeps_uri_options_and_payload_untouched():
    """The OSCORE-compatible form: outer Proxy-Scheme + Uri-Host, code POST with an OSCORE option."""
    c = core()
    link(c)
    req = Message(code=Code.POST, payload=b"\x01ciphertext", uri_host="127.0.0.1", uri_port=5683)
    req.opt.proxy_scheme = "coap"
    req.opt.oscore = b"\x09\x00"
    req.mtype, req.mid, req.token = Type.CON, 5, b"t"
    up = only(c.on_pc5(UE_A, wire(req), 0.0), SendUplink).message
    assert up.opt.proxy_scheme is None
    assert up.opt.uri_host == "127.0.0.1" and up.opt.uri_port == 5683
    assert up.opt.oscore == b"\x09\x00" and up.payload == b"\x01ciphertext" and up.code == Code.POST


@pytest.mark.parametrize(
    "uri",
    [
        "coap://10.0.0.9:5683/x",
        "coap://127.0.0.1:5684/x",
        "coap://other.example/x",
        "http://127.0.0.1:5683/x",
        "coaps://127.0.0.1:5683/x",
    ],
)
def test_other_recipient_gets_5_05(uri):
    c = core()
    link(c)
    ans = only(c.on_pc5(UE_A, request(mid=9, token=b"q", proxy_uri=uri), 0.0), Answer)
    assert ans.problem.code == 0xA5 and ans.problem.cause == "RECIPIENT_NOT_CM_SERVER"
    m = ans.message
    assert m.code == Code.PROXYING_NOT_SUPPORTED and m.mtype == Type.ACK and m.mid == 9 and m.token == b"q"
    assert m.opt.content_format == 257 and cbor2.loads(m.payload)[-4] == 0xA5
    assert c.counters.answered["5.05"] == 1 and c.counters.relayed_up == 0


def _req_with(*options, proxy_uri=None, code=Code.GET):
    m = Message(code=code)
    m.mtype, m.mid, m.token = Type.CON, 3, b"x"
    if proxy_uri is not None:
        m.opt.proxy_uri = proxy_uri
    for o in options:
        m.opt.add_option(o)
    return wire(m)


@pytest.mark.parametrize(
    ("msg", "code", "cause"),
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
        (_req_with(), 0x84, "NOT_A_PROXY_REQUEST"),
        (_req_with(proxy_uri=SERVER, code=Code.PUT), 0x85, "METHOD_NOT_RELAYED"),
        (_req_with(proxy_uri=SERVER, code=Code.POST), 0x85, "METHOD_NOT_RELAYED"),  # POST without OSCORE
    ],
)
def test_malformed_proxy_options_get_problem_details(msg, code, cause):
    c = core()
    link(c)
    ans = only(c.on_pc5(UE_A, msg, 0.0), Answer)
    assert (ans.problem.code, ans.problem.cause) == (code, cause)
    assert ans.message.code == code and ans.message.opt.content_format == 257
    assert c.counters.relayed_up == 0


def test_proxy_target_none_without_proxy_options():
    assert proxy_target(_req_with()) is None


def test_non_request_gets_non_answer():
    c = core()
    link(c)
    ans = only(c.on_pc5(UE_A, request(mtype=Type.NON, proxy_uri="coap://10.1.1.1/x"), 0.0), Answer)
    assert ans.message.mtype == Type.NON


# ---- downlink (seed 6.2.2.1 second paragraph) ------------------------------------------------------


@pytest.mark.parametrize(
    "code", [Code.CONTENT, Code.FORBIDDEN, Code.NOT_FOUND, Code.INTERNAL_SERVER_ERROR, Code.BAD_REQUEST]
)
def test_response_relayed_downlink_unchanged(code):
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(mid=11, token=b"ue-tok"), 0.0), SendUplink).message
    resp = response(up, code=code, payload=b"\xa1\x01\x02", content_format=257, max_age=30)
    down = only(c.on_uu(SHARED_UPLINK, resp, 0.1), SendDownlink)
    assert down.endpoint == UE_A
    m = down.message
    assert (m.mtype, m.mid, m.token) == (Type.ACK, 11, b"ue-tok")
    assert m.code == code and m.payload == b"\xa1\x01\x02"
    assert m.opt.content_format == 257 and m.opt.max_age == 30
    assert c.counters.relayed_down == 1


def test_response_after_link_release_is_discarded_and_counted():
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(), 0.0), SendUplink).message
    c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 0.1)
    acts = c.on_uu(SHARED_UPLINK, response(up), 0.2)
    assert not downs(acts) and c.counters.discarded["link-released"] == 1
    assert c.counters.relayed_down == 0


def test_response_for_a_re_established_link_is_still_discarded():
    """The recipient is the link that sent the request; a new link of the same UE is another one."""
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(), 0.0), SendUplink).message
    c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 0.1)
    link(c)
    acts = c.on_uu(SHARED_UPLINK, response(up), 0.2)
    assert not downs(acts) and c.counters.discarded["link-released"] == 1


def test_two_ues_with_equal_tokens_get_their_own_answers():
    c = core()
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    up_a = only(c.on_pc5(UE_A, request(mid=1, token=b"same"), 0.0), SendUplink).message
    c.on_uu(SHARED_UPLINK, response(up_a, payload=b"A"), 0.1)
    up_b = only(c.on_pc5(UE_B, request(mid=1, token=b"same"), 0.2), SendUplink).message
    assert up_a.token != up_b.token
    down_b = only(c.on_uu(SHARED_UPLINK, response(up_b, payload=b"B"), 0.3), SendDownlink)
    assert down_b.endpoint == UE_B and down_b.message.payload == b"B" and down_b.message.token == b"same"


def test_two_ues_with_equal_tokens_in_flight_together_layer2():
    c = core(mode="l2")
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    ua = only(c.on_pc5(UE_A, request(token=b"same"), 0.0), SendUplink)
    ub = only(c.on_pc5(UE_B, request(token=b"same"), 0.0), SendUplink)
    assert ua.uplink != ub.uplink
    db = only(c.on_uu(ub.uplink, response(ub.message, payload=b"B"), 0.1), SendDownlink)
    da = only(c.on_uu(ua.uplink, response(ua.message, payload=b"A"), 0.1), SendDownlink)
    assert (da.endpoint, da.message.payload) == (UE_A, b"A")
    assert (db.endpoint, db.message.payload) == (UE_B, b"B")


def test_unknown_token_from_server_is_rejected_and_counted():
    c = core()
    link(c)
    c.on_pc5(UE_A, request(), 0.0)
    stray = Message(code=Code.CONTENT)
    stray.mtype, stray.mid, stray.token = Type.CON, 999, b"nobody"
    acts = c.on_uu(SHARED_UPLINK, wire(stray), 0.1)
    rst = only(acts, SendUplink).message
    assert rst.mtype == Type.RST and rst.mid == 999 and not downs(acts)
    assert c.counters.discarded["unknown-exchange"] == 1


# ---- message layer end to end ----------------------------------------------------------------------


def test_retransmitted_con_is_relayed_once():
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(mid=5), 0.0), SendUplink).message
    # retransmission while in flight: re-sent as an uplink retransmission with the same MID
    re = only(c.on_pc5(UE_A, request(mid=5), 2.0), SendUplink).message
    assert re.mid == up.mid and re.token == up.token
    down = only(c.on_uu(SHARED_UPLINK, response(up), 2.1), SendDownlink).message
    # retransmission after the answer (the ACK was lost on PC5): the answer is replayed
    replay = only(c.on_pc5(UE_A, request(mid=5), 4.0), SendDownlink).message
    assert replay is down
    assert c.counters.relayed_up == 1 and c.counters.duplicates_from_ue == 2
    assert c.counters.retransmitted_up == 1 and c.counters.relayed_down == 1
    # the server's duplicate answer to the retransmission is not relayed again
    assert not downs(c.on_uu(SHARED_UPLINK, response(up), 4.1))


def test_retransmission_while_queued_is_absorbed():
    c = core()
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    c.on_pc5(UE_A, request(mid=1), 0.0)
    assert not ups(c.on_pc5(UE_B, request(mid=1), 0.0))  # queued behind NSTART
    assert only(c.on_pc5(UE_B, request(mid=1), 2.0), Discard).reason == "duplicate"
    assert c.counters.relayed_up == 1


def test_layer3_obeys_nstart_one():
    c = core()
    for i, ep in enumerate((UE_A, UE_B, UE_C), 1):
        link(c, ep, i)
    first = ups(c.on_pc5(UE_A, request(), 0.0))
    assert len(first) == 1
    assert ups(c.on_pc5(UE_B, request(), 0.0)) == [] and ups(c.on_pc5(UE_C, request(), 0.0)) == []
    acts = c.on_uu(SHARED_UPLINK, response(first[0].message), 0.1)
    assert len(ups(acts)) == 1 and len(downs(acts)) == 1  # answer down, next request up
    assert c.uplink_stats()["0"]["queued"] == 1


def test_layer2_gives_each_link_its_own_uplink():
    c = core(mode="l2")
    opened = []
    for i, ep in enumerate((UE_A, UE_B, UE_C), 1):
        opened.append(only(link(c, ep, i), OpenUplink).uplink)
    assert len(set(opened)) == 3
    sent = [only(c.on_pc5(ep, request(), 0.0), SendUplink) for ep in (UE_A, UE_B, UE_C)]
    assert sorted(s.uplink for s in sent) == sorted(opened)


def test_layer2_uplink_closes_after_release_once_the_answer_is_in():
    c = core(mode="l2")
    link(c)
    up = only(c.on_pc5(UE_A, request(), 0.0), SendUplink)
    rel = c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 0.1)
    assert not [a for a in rel if isinstance(a, CloseUplink)]  # the response is still due
    acts = c.on_uu(up.uplink, response(up.message), 0.2)
    assert only(acts, CloseUplink).uplink == up.uplink
    assert c.counters.discarded["link-released"] == 1


def test_layer2_uplink_closes_at_once_when_idle():
    c = core(mode="l2")
    key = only(link(c), OpenUplink).uplink
    rel = c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 0.1)
    assert only(rel, CloseUplink).uplink == key


def test_separate_response_path():
    """Empty ACK, then a CON response whose ACK comes from the UE (RFC 7252 §5.2.2)."""
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(mid=21, token=b"t"), 0.0), SendUplink).message
    ack = only(c.on_uu(SHARED_UPLINK, empty(Type.ACK, up.mid), 0.1), SendDownlink).message
    assert (ack.mtype, ack.mid, ack.code) == (Type.ACK, 21, Code.EMPTY)
    sep = response(up, mtype=Type.CON, mid=4000)
    down = only(c.on_uu(SHARED_UPLINK, sep, 0.5), SendDownlink).message
    assert down.mtype == Type.CON and down.token == b"t"
    # server retransmits before the UE's ACK arrives: the same downlink message
    again = only(c.on_uu(SHARED_UPLINK, sep, 2.5), SendDownlink).message
    assert again is down and c.counters.retransmitted_down == 1
    up_ack = only(c.on_pc5(UE_A, empty(Type.ACK, down.mid), 2.6), SendUplink).message
    assert (up_ack.mtype, up_ack.mid) == (Type.ACK, 4000)
    # UE retransmits its request after the empty ACK was lost: the empty ACK is replayed
    assert only(c.on_pc5(UE_A, request(mid=21, token=b"t"), 3.0), SendDownlink).message.code == Code.EMPTY


def test_ping_from_ue_gets_rst_and_refreshes_link():
    c = core(link_timeout=10)
    link(c, now=0.0)
    rst = only(c.on_pc5(UE_A, empty(Type.CON, 8), 9.0), SendDownlink).message
    assert rst.mtype == Type.RST and rst.mid == 8
    assert not [a for a in c.on_tick(15.0) if isinstance(a, SendPc5)]


# ---- Observe (RFC 7641) through the relay ---------------------------------------------------------


def test_observe_notifications_follow_the_link():
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(token=b"obs", observe=0), 0.0), SendUplink).message
    first = only(c.on_uu(SHARED_UPLINK, response(up, observe=1), 0.1), SendDownlink).message
    assert first.opt.observe == 1 and first.token == b"obs"
    note = response(up, mtype=Type.NON, mid=300, observe=2, payload=b"v2")
    n2 = only(c.on_uu(SHARED_UPLINK, note, 1.0), SendDownlink).message
    assert n2.payload == b"v2" and n2.token == b"obs" and n2.mtype == Type.NON
    c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=1, cause=2), 2.0)
    acts = c.on_uu(SHARED_UPLINK, response(up, mtype=Type.CON, mid=301, observe=3), 3.0)
    assert not downs(acts)
    assert only(acts, SendUplink).message.mtype == Type.RST  # the server cancels the observation
    assert c.counters.discarded["link-released"] == 1 and c.counters.relayed_down == 2


def test_ue_rst_of_a_notification_goes_upstream_and_ends_the_observation():
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(token=b"obs", observe=0), 0.0), SendUplink).message
    c.on_uu(SHARED_UPLINK, response(up, observe=1), 0.1)
    down = only(c.on_uu(SHARED_UPLINK, response(up, mtype=Type.CON, mid=50, observe=2), 1.0), SendDownlink)
    rst = only(c.on_pc5(UE_A, empty(Type.RST, down.message.mid), 1.1), SendUplink).message
    assert (rst.mtype, rst.mid) == (Type.RST, 50)
    later = c.on_uu(SHARED_UPLINK, response(up, mtype=Type.NON, mid=51, observe=3), 2.0)
    assert not downs(later) and c.counters.discarded["unknown-exchange"] == 1


def test_deregistration_with_the_same_token_reuses_the_relay_token():
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(mid=1, token=b"obs", observe=0), 0.0), SendUplink).message
    c.on_uu(SHARED_UPLINK, response(up, observe=1), 0.1)
    dereg = only(c.on_pc5(UE_A, request(mid=2, token=b"obs", observe=1), 1.0), SendUplink).message
    assert dereg.token == up.token and dereg.opt.observe == 1


# ---- message IDs and time (RFC 7252 §4.7, §4.8.2) --------------------------------------------------


def test_mid_allocator_budget():
    m = MidAllocator(lifetime=247.0, start=65530)
    mids = [m.take(0.0) for _ in range(MID_SPACE)]
    assert len(set(mids)) == MID_SPACE and mids[0] == 65530 and mids[6] == 0
    assert m.take(246.9) is None and not m.available(246.9)
    assert m.next_free_at() == 247.0
    assert m.take(247.0) == 65530


def test_uplink_waits_when_the_mid_budget_is_spent():
    c = core(exchange_lifetime=10.0)
    link(c)
    uplink = c._uplinks[SHARED_UPLINK]
    for _ in range(MID_SPACE):
        uplink.mids.take(0.0)
    assert ups(c.on_pc5(UE_A, request(), 1.0)) == []
    assert c.uplink_stats()["0"]["queued"] == 1
    assert len(ups(c.on_tick(10.0))) == 1


def test_unanswered_request_frees_its_nstart_slot_after_the_wait():
    c = core(con_wait=93.0, link_timeout=1000.0)
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    up_a = only(c.on_pc5(UE_A, request(), 0.0), SendUplink).message
    c.on_pc5(UE_B, request(), 0.0)
    assert ups(c.on_tick(50.0)) == []
    assert len(ups(c.on_tick(93.0))) == 1
    # the late answer to A is still relayed
    assert only(c.on_uu(SHARED_UPLINK, response(up_a), 94.0), SendDownlink).endpoint == UE_A


def test_state_is_forgotten_after_exchange_lifetime():
    c = core()
    link(c)
    up = only(c.on_pc5(UE_A, request(mid=5), 0.0), SendUplink).message
    c.on_uu(SHARED_UPLINK, response(up), 0.1)
    c.on_tick(300.0)
    assert not c._by_ue_mid and not c._uplinks[SHARED_UPLINK].by_mid


# ---- robustness -----------------------------------------------------------------------------------


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
@given(st.lists(st.binary(max_size=60), max_size=8), st.booleans())
def test_core_never_raises_on_arbitrary_datagrams(datagrams, linked):
    c = core(auto_link=not linked)
    if linked:
        link(c)
    for i, data in enumerate(datagrams):
        for side in ("pc5", "uu"):
            try:
                msg = parse_datagram(data)
            except MalformedDatagram:
                c.on_pc5_malformed(UE_A, "x", float(i))
                continue
            if side == "pc5":
                c.on_pc5(UE_A, msg, float(i))
            elif not isinstance(msg, Pc5Message) and c._uplinks:
                c.on_uu(SHARED_UPLINK, msg, float(i))
        c.on_tick(float(i))


def test_response_from_ue_and_unexpected_signalling_are_dropped():
    c = core()
    link(c)
    resp = Message(code=Code.CONTENT)
    resp.mtype, resp.mid = Type.NON, 3
    c.on_pc5(UE_A, wire(resp), 0.0)
    c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_ESTABLISHMENT_ACCEPT, 1, l2id=1), 0.0)
    assert c.counters.dropped_malformed == 2


def test_counters_snapshot_is_plain_data():
    c = core()
    link(c)
    c.on_pc5(UE_B, request(), 0.0)
    snap = c.snapshot()
    assert snap["counters"]["dropped_no_link"] == 1 and snap["links"][0]["l2id"] == "000001"
    cbor2.dumps(snap)
    pc5.encode(Pc5Message(Pc5Type.LINK_RELEASE_ACCEPT, 1))


def test_l3_released_link_does_not_hold_the_shared_uplink_slot():
    """A released UE never retransmits its request again, so its unanswered CON must not keep the
    shared L3 uplink's NSTART slot: the next UE's request goes up at once (SPEC D8)."""
    c = core(mode="l3")
    link(c, UE_A, 1)
    link(c, UE_B, 2)
    first = ups(c.on_pc5(UE_A, request(mid=10, token=b"a"), 0.0))
    assert len(first) == 1  # ... and lost on Uu
    assert ups(c.on_pc5(UE_B, request(mid=20, token=b"b"), 1.0)) == []  # queued behind A (NSTART=1)
    released = c.on_pc5(UE_A, Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 3, l2id=1, cause=2), 10.0)
    sent = ups(released)
    assert len(sent) == 1 and sent[0].message.opt.proxy_uri is None  # B's request, relayed now
    # A's late answer is discarded, not delivered to anyone
    late = c.on_uu(first[0].uplink, response(first[0].message), 11.0)
    assert downs(late) == []
