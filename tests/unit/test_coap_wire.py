"""The CoAP-over-UDP codec (RFC 7252 §3; RFC 7959 §2.2) and its aiocoap conversion (RFC 8613 boundary)."""

from __future__ import annotations

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g.coap import wire
from msgin5g.coap.wire import CON, GET, CoapMessage, WireError, decode, encode


def test_rfc_7252_figure_example_bytes():
    # RFC 7252 Appendix A / §3: CON GET, MID 0x7d34, no token, Uri-Path "temperature"
    # header 0x40 0x01 0x7d 0x34; option delta 11, length 11 → 0xbb
    data = bytes([0x40, 0x01, 0x7D, 0x34, 0xBB]) + b"temperature"
    msg = decode(data)
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (CON, GET, 0x7D34, b"")
    assert msg.options == [(11, b"temperature")]
    assert encode(msg) == data


def test_empty_ack_and_reset_bytes():
    # RFC 7252 §3: Ver 01, T ACK 10 / RST 11, TKL 0000 → 0x60 / 0x70; code 0.00; MID big-endian
    assert wire.empty_ack(0x7D34) == bytes([0x60, 0x00, 0x7D, 0x34])
    assert wire.reset(0x0001) == bytes([0x70, 0x00, 0x00, 0x01])
    assert decode(wire.empty_ack(65535)) == CoapMessage(wire.ACK, wire.EMPTY, 65535)
    assert decode(wire.reset(0)) == CoapMessage(wire.RST, wire.EMPTY, 0)


def test_extended_option_delta_and_length():
    # option 65020 after 0: delta 65020 = 269 + 64751 → nibble 14, 2-byte extension 0xfcef
    value = b"x" * 20  # length 20 = 13 + 7 → nibble 13, 1-byte extension 0x07
    data = encode(CoapMessage(CON, GET, 1, b"", [(65020, value)]))
    assert data[4] == 0xED and data[5:7] == bytes([0xFC, 0xEF]) and data[7] == 7
    assert decode(data).options == [(65020, value)]


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x40\x01\x00", "header"),
        (b"\x80\x01\x00\x00", "version"),
        (b"\x49\x01\x00\x00" + b"t" * 9, "token length"),
        (b"\x42\x01\x00\x00t", "truncated token"),
        (b"\x40\x01\x00\x00\xff", "payload marker"),
        (b"\x40\x01\x00\x00\xf0", "nibble 15"),
        (b"\x40\x01\x00\x00\x15", "truncated option value"),
        (b"\x40\x00\x00\x00\xff\x01", "empty with payload"),
    ],
)
def test_format_errors(data, why):
    with pytest.raises(WireError):
        decode(data)


def test_peek_header_of_a_malformed_con():
    assert wire.peek_header(b"\x40\x01\x12\x34\xff") == (CON, 0x1234)
    assert wire.peek_header(b"\x40\x01") is None


def test_block_option_values():
    # RFC 7959 §2.2: NUM << 4 | M << 3 | SZX; block 0, more, 1024 bytes → 0x0e
    assert wire.block_option(0, True, 6) == b"\x0e"
    assert wire.block_option(1, False, 6) == b"\x16"
    assert wire.block_option(0, False, 0) == b""  # uint 0 is the empty string (RFC 7252 §3.2)
    assert wire.parse_block(b"\x16") == (1, False, 6)
    assert wire.parse_block(b"\x01\x0e") == (16, True, 6)
    with pytest.raises(WireError):
        wire.parse_block(b"\x0f")  # SZX 7 is reserved over UDP
    assert wire.block_size(6) == 1024 and wire.block_size(0) == 16


options = st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=300)), max_size=8).map(
    lambda opts: sorted(opts, key=lambda o: o[0])
)
messages = st.builds(
    CoapMessage,
    mtype=st.integers(0, 3),
    code=st.integers(1, 255),
    mid=st.integers(0, 0xFFFF),
    token=st.binary(max_size=8),
    options=options,
    payload=st.binary(max_size=200),
)


@settings(max_examples=300, derandomize=True)
@given(messages)
def test_codec_round_trip(msg):
    assert decode(encode(msg)) == msg


@settings(max_examples=300, derandomize=True)
@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_wire_error(data):
    try:
        msg = decode(data)
    except WireError:
        return
    assert decode(encode(msg)) == msg


def test_aiocoap_conversion_both_ways():
    msg = CoapMessage(CON, GET, 0x1234, b"tk", [(11, b"a"), (11, b"b"), (15, b"q=1"), (65020, b"")], b"body")
    m = wire.to_aiocoap(msg, incoming=False)
    assert (m.mtype, m.code, m.mid, m.token, m.payload) == (Type.CON, Code.GET, 0x1234, b"tk", b"body")
    assert m.opt.uri_path == ("a", "b") and m.opt.uri_query == ("q=1",)
    assert m.encode() == encode(msg)
    assert wire.from_aiocoap(m) == msg
    received = wire.to_aiocoap(msg)  # as decoded from a datagram: what OSCORE unprotects
    assert received.direction is Message.decode(encode(msg)).direction
    assert wire.from_aiocoap(received) == msg


def test_from_aiocoap_of_an_unaddressed_request():
    m = Message(code=Code.GET, uri="coap://127.0.0.1/x")
    msg = wire.from_aiocoap(m)
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (CON, GET, 0, b"")
    assert (11, b"x") in msg.options
