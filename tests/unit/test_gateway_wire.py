"""The Gateway UE's MSGin5G-6 side codec and request interpretation (RFC 7252 §3; SPEC D9)."""

from __future__ import annotations

import cbor2
import pytest
from aiocoap import CON as A_CON
from aiocoap import GET as A_GET
from aiocoap import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g.bulk import BulkItem, IndividualResponse
from msgin5g.gateway import wire
from msgin5g.gateway.wire import (
    CON,
    URGENT_OPTION,
    CoapMessage,
    ConfigRequest,
    UeQuery,
    WireError,
    decode,
    encode,
    parse_config_request,
    response_message,
)
from msgin5g.model import imei_urn
from msgin5g.problem import decode_problem

PATH = [b"su-uc", b"v1", b"val-services", b"msgin5g", b"ue-configurations"]


def request(query=(b"ue-uri=urn:dev:ops:1",), code=wire.GET, extra=(), path=PATH) -> CoapMessage:
    opts = [(wire.OPT_URI_PATH, p) for p in path] + [(wire.OPT_URI_QUERY, q) for q in query] + list(extra)
    return CoapMessage(CON, code, 0x1234, b"tok", opts)


def test_encode_matches_aiocoap():
    m = Message(
        code=A_GET, uri="coap://127.0.0.1/su-uc/v1/val-services/msgin5g/ue-configurations?ue-uri=urn:x:1"
    )
    m.mid, m.mtype, m.token = 7, A_CON, b"\x01\x02"
    raw = m.encode()
    mine = decode(raw)
    assert mine.mid == 7 and mine.token == b"\x01\x02" and mine.code == wire.GET
    assert encode(mine) == raw
    long = CoapMessage(CON, 0x45, 1, b"", [(65000, b"x" * 300), (11, b"a" * 20)], b"payload")
    assert decode(encode(long)) == CoapMessage(
        CON, 0x45, 1, b"", [(11, b"a" * 20), (65000, b"x" * 300)], b"payload"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x40\x01",
        b"\x80\x01\x00\x00",
        b"\x49\x01\x00\x00",
        b"\x44\x01\x00\x00ab",
        b"\x40\x01\x00\x00\xff",
        b"\x40\x01\x00\x00\xf1a",
        b"\x40\x01\x00\x00\xd1",
        b"\x41\x00\x00\x00t",
    ],
)
def test_malformed_datagrams_raise_wire_error(data):
    with pytest.raises(WireError):
        decode(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_decode_never_raises_anything_else(data):
    try:
        msg = decode(data)
    except WireError:
        return
    assert decode(encode(msg)) == msg
    parse_config_request(msg, "msgin5g")  # never raises


def test_parse_valid_request_and_urgency():
    r = parse_config_request(request(), "msgin5g")
    assert r == ConfigRequest(UeQuery("urn:dev:ops:1"), item=BulkItem("urn:dev:ops:1"))
    r = parse_config_request(request(extra=[(URGENT_OPTION, b"")]), "msgin5g")
    assert isinstance(r, ConfigRequest) and r.urgent
    q = [b"ue-uri=urn:dev:ops:1", b"ue-vendor=acme", b"ue-type=35209900", b"ue-snr=12"]
    r = parse_config_request(request(q), "msgin5g")
    assert r.query == UeQuery("urn:dev:ops:1", "acme", "35209900", "12")
    assert r.key(True) == UeQuery("urn:dev:ops:1", "acme", "35209900", "12")  # ue-snr: alone
    urn = imei_urn("35209900", 5)
    r = parse_config_request(request([f"ue-uri={urn}".encode(), b"ue-type=35209900"]), "msgin5g")
    assert r.key(True) == BulkItem(urn)
    assert r.key(False) == UeQuery(urn, None, "35209900")


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        (request(code=0x02), 0x85),
        (request(path=PATH[:-1]), 0x84),
        (request(path=[*PATH[:3], b"other", PATH[4]]), 0x84),
        (request(query=()), 0x80),
        (request(query=(b"ue-uri=not a uri",)), 0x80),
        (request(query=(b"ue-uri=urn:x:1", b"ue-uri=urn:x:2")), 0x80),
        (request(query=(b"bulk-conf-flag=x", b"ue-uri=urn:x:1")), 0x80),
        (request(query=(b"color=red", b"ue-uri=urn:x:1")), 0x80),
        (request(query=(b"ue-uri",)), 0x80),
        (request(query=(b"\xff\xfe",)), 0x80),
        (request(extra=[(9, b"")]), 0x82),
        (request(extra=[(wire.OPT_PROXY_URI, b"coap://x")]), 0xA5),
        (request(extra=[(wire.OPT_ACCEPT, b"\x32")]), 0x86),
        (request(extra=[(wire.OPT_BLOCK2, b"\x0f")]), 0x80),
    ],
)
def test_bad_requests_get_problem_details(msg, code):
    r = parse_config_request(msg, "msgin5g")
    assert isinstance(r, IndividualResponse) and r.code == code
    assert decode_problem(r.payload).code == code


def test_response_message_blocks_large_answers():
    resp = IndividualResponse.content([{"x": "y" * 3000}], 60)
    first = response_message(wire.ACK, 1, b"t", resp)
    blocks = [first]
    assert wire.parse_block(first.first(wire.OPT_BLOCK2)) == (0, True, 6)
    num = 1
    while True:
        m = response_message(wire.ACK, 1, b"t", resp, block_num=num)
        blocks.append(m)
        _, more, _ = wire.parse_block(m.first(wire.OPT_BLOCK2))
        if not more:
            break
        num += 1
    assert cbor2.loads(b"".join(b.payload for b in blocks)) == [{"x": "y" * 3000}]
    assert response_message(wire.ACK, 1, b"t", resp, block_num=num + 1) is None
    small = response_message(CON, 9, b"t", IndividualResponse.content([], 30), max_age=12)
    assert small.first(wire.OPT_BLOCK2) is None and small.first(wire.OPT_MAX_AGE) == b"\x0c"
