"""PC5 link signalling codec (SPEC D8; modelled on TS 24.554 direct link establishment)."""

from __future__ import annotations

import cbor2
import pytest
from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given
from hypothesis import strategies as st

from msgin5g import pc5
from msgin5g.pc5 import Pc5Cause, Pc5Error, Pc5Message, Pc5Type

SAMPLES = [
    Pc5Message(
        Pc5Type.LINK_ESTABLISHMENT_REQUEST, 1, l2id=0x123456, user_info="urn:gsma:imei:35209900-000001-9"
    ),
    Pc5Message(Pc5Type.LINK_ESTABLISHMENT_ACCEPT, 1, l2id=0x123456, user_info="relay", keepalive=20),
    Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REJECT, 1, l2id=0x123456, cause=Pc5Cause.LACK_OF_RESOURCES),
    Pc5Message(Pc5Type.LINK_KEEPALIVE_REQUEST, 2, l2id=1, counter=7),
    Pc5Message(Pc5Type.LINK_KEEPALIVE_RESPONSE, 2, l2id=1, counter=7),
    Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 0xFFFF, l2id=0xFFFFFF, cause=Pc5Cause.NO_LONGER_NEEDED),
    Pc5Message(Pc5Type.LINK_RELEASE_ACCEPT, 0xFFFF, l2id=0xFFFFFF),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.type.name)
def test_round_trip(msg):
    wire = pc5.encode(msg)
    assert pc5.is_pc5(wire)
    assert pc5.decode(wire) == msg


def test_first_octet_is_never_coap():
    """CoAP requires version 1 (RFC 7252 §3); PC5 signalling starts with version bits 00."""
    wire = pc5.encode(SAMPLES[0])
    assert wire[0] >> 6 == 0
    coap = Message(code=Code.GET)
    coap.mtype, coap.mid = Type.CON, 1
    assert not pc5.is_pc5(coap.encode())
    assert not pc5.is_pc5(b"")


def test_reply_echoes_sequence_and_l2id():
    req = SAMPLES[0]
    acc = req.reply(Pc5Type.LINK_ESTABLISHMENT_ACCEPT, keepalive=5)
    assert (acc.seq, acc.l2id, acc.keepalive) == (req.seq, req.l2id, 5)


def test_unknown_body_keys_are_ignored():
    wire = pc5.HEADER.pack(5, Pc5Type.LINK_RELEASE_ACCEPT, 3) + cbor2.dumps({"l2id": 4, "future": [1, 2]})
    assert pc5.decode(wire) == Pc5Message(Pc5Type.LINK_RELEASE_ACCEPT, 3, l2id=4)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x05",  # truncated header
        b"\x05\x01\x00",
        b"\x05\x7f\x00\x01",  # unknown type
        b"\x06\x01\x00\x01",  # wrong discriminator
        pc5.HEADER.pack(5, 1, 1) + b"\xff\xff",  # not CBOR
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps([1, 2]),  # not a map
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps({"l2id": 1, "userInfo": "x"}) + b"\x00",  # trailing byte
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps({"userInfo": "x"}),  # request without l2id
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps({"l2id": 1 << 24, "userInfo": "x"}),  # 25-bit L2 ID
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps({"l2id": "1", "userInfo": "x"}),
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps({"l2id": True, "userInfo": "x"}),
        pc5.HEADER.pack(5, 1, 1) + cbor2.dumps({"l2id": 1, "userInfo": "x" * 300}),
        pc5.HEADER.pack(5, 3, 1) + cbor2.dumps({"cause": -1}),
        pc5.HEADER.pack(5, 2, 1) + b"\x00" * 600,  # oversized
    ],
)
def test_malformed_is_a_pc5_error(wire):
    with pytest.raises(Pc5Error):
        pc5.decode(wire)


def test_encode_checks_fields():
    with pytest.raises(Pc5Error):
        pc5.encode(Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 1, l2id=1))  # no user info
    with pytest.raises(Pc5Error):
        pc5.encode(Pc5Message(Pc5Type.LINK_KEEPALIVE_REQUEST, 70000, l2id=1))


@given(st.binary(max_size=80))
def test_decode_never_raises_anything_else(data):
    try:
        pc5.decode(b"\x05" + data)
    except Pc5Error:
        pass


@given(
    st.sampled_from(SAMPLES),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFF),
)
def test_round_trip_property(msg, seq, l2id):
    m = Pc5Message(
        msg.type,
        seq,
        l2id=l2id,
        user_info=msg.user_info,
        cause=msg.cause,
        keepalive=msg.keepalive,
        counter=msg.counter,
    )
    assert pc5.decode(pc5.encode(m)) == m
