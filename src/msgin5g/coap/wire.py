"""The CoAP-over-UDP codec of the project's datagram actors (RFC 7252 §3; RFC 7959 §2.2).

One fast, dependency-free codec: a datagram is decoded once into a :class:`CoapMessage` (type,
code, message ID, token, options as ``(number, raw value)`` pairs in order, payload) and encoded
back. The gateway's throughput depends on it, so it does no option interpretation beyond what
the message layer needs; option numbers come from :mod:`msgin5g.api`.

Where a message crosses into aiocoap — OSCORE protection and verification
(:mod:`msgin5g.security.endpoint` works on aiocoap ``Message`` objects) — :func:`to_aiocoap` and
:func:`from_aiocoap` convert without re-encoding the datagram, so a secured actor still decodes
each datagram once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import api

VERSION = 1
# message types (RFC 7252 §3)
CON, NON, ACK, RST = 0, 1, 2, 3
# method and special codes (RFC 7252 §12.1)
EMPTY = 0x00
GET, POST, PUT, DELETE, FETCH = 0x01, 0x02, 0x03, 0x04, 0x05

OPT_IF_MATCH = api.OPT_IF_MATCH
OPT_URI_HOST = api.OPT_URI_HOST
OPT_ETAG = api.OPT_ETAG
OPT_IF_NONE_MATCH = api.OPT_IF_NONE_MATCH
OPT_OBSERVE = api.OPT_OBSERVE
OPT_URI_PORT = api.OPT_URI_PORT
OPT_OSCORE = api.OPT_OSCORE
OPT_URI_PATH = api.OPT_URI_PATH
OPT_CONTENT_FORMAT = api.OPT_CONTENT_FORMAT
OPT_MAX_AGE = api.OPT_MAX_AGE
OPT_URI_QUERY = api.OPT_URI_QUERY
OPT_ACCEPT = api.OPT_ACCEPT
OPT_BLOCK2 = api.OPT_BLOCK2
OPT_BLOCK1 = api.OPT_BLOCK1
OPT_SIZE2 = api.OPT_SIZE2
OPT_Q_BLOCK2 = api.OPT_Q_BLOCK2
OPT_Q_BLOCK1 = api.OPT_Q_BLOCK1
OPT_PROXY_URI = api.OPT_PROXY_URI
OPT_PROXY_SCHEME = api.OPT_PROXY_SCHEME
OPT_SIZE1 = api.OPT_SIZE1
OPT_ECHO = api.OPT_ECHO
OPT_NO_RESPONSE = api.OPT_NO_RESPONSE
OPT_REQUEST_TAG = 292  # RFC 9175 §3.2: one body's blocks share it (RFC 9177 §4.3)

#: Block size exponents over UDP: 0..6 (16..1024 bytes; 7 is reserved for BERT, RFC 8323)
MAX_SZX = 6


class WireError(ValueError):
    """A datagram that is not a well-formed CoAP message (RFC 7252 §3 "message format error")."""


@dataclass(slots=True)
class CoapMessage:
    """One CoAP-over-UDP message (RFC 7252 §3). ``options`` are (number, value) in order."""

    mtype: int
    code: int
    mid: int
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31

    @property
    def is_response(self) -> bool:
        return self.code >= 64

    @property
    def is_empty(self) -> bool:
        return self.code == EMPTY

    def values(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    def first(self, number: int) -> bytes | None:
        for n, v in self.options:
            if n == number:
                return v
        return None

    def uint(self, number: int) -> int | None:
        """The first ``number`` option as an unsigned integer (RFC 7252 §3.2), None when absent."""
        v = self.first(number)
        return None if v is None else int.from_bytes(v, "big")

    def without(self, *numbers: int) -> list[tuple[int, bytes]]:
        """The options other than ``numbers``."""
        return [(n, v) for n, v in self.options if n not in numbers]


def _read_ext(nibble: int, data: bytes, i: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, i
    if nibble == 13:
        if i + 1 > len(data):
            raise WireError("truncated option")
        return data[i] + 13, i + 1
    if nibble == 14:
        if i + 2 > len(data):
            raise WireError("truncated option")
        return int.from_bytes(data[i : i + 2], "big") + 269, i + 2
    raise WireError("reserved option nibble 15")


def decode(data: bytes) -> CoapMessage:
    """Parse a datagram; raises WireError for anything RFC 7252 §3 calls a format error."""
    if len(data) < 4:
        raise WireError("shorter than the 4-byte header")
    b0, code = data[0], data[1]
    if b0 >> 6 != VERSION:
        raise WireError(f"unknown CoAP version {b0 >> 6}")
    mtype, tkl = (b0 >> 4) & 3, b0 & 0x0F
    if tkl > 8:
        raise WireError(f"token length {tkl}")
    mid = (data[2] << 8) | data[3]
    i = 4 + tkl
    if i > len(data):
        raise WireError("truncated token")
    token = bytes(data[4:i])
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    n = len(data)
    while i < n:
        byte = data[i]
        i += 1
        if byte == 0xFF:
            payload = bytes(data[i:])
            if not payload:
                raise WireError("payload marker without payload")
            break
        delta, i = _read_ext(byte >> 4, data, i)
        length, i = _read_ext(byte & 0x0F, data, i)
        if i + length > n:
            raise WireError("truncated option value")
        number += delta
        options.append((number, bytes(data[i : i + length])))
        i += length
    if code == EMPTY and (tkl or options or payload):
        raise WireError("empty message with content")
    return CoapMessage(mtype, code, mid, token, options, payload)


def peek_header(data: bytes) -> tuple[int, int] | None:
    """(type, message ID) of a datagram whose header is readable, else None: what a receiver needs
    to reject a malformed CON with RST (RFC 7252 §4.2)."""
    if len(data) < 4 or data[0] >> 6 != VERSION:
        return None
    return (data[0] >> 4) & 3, (data[2] << 8) | data[3]


def _ext(n: int) -> tuple[int, bytes]:
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes([n - 13])
    return 14, (n - 269).to_bytes(2, "big")


def encode(msg: CoapMessage) -> bytes:
    """Serialise a message; options are written in number order (stable for repeats)."""
    out = bytearray()
    out.append((VERSION << 6) | (msg.mtype << 4) | len(msg.token))
    out.append(msg.code)
    out += (msg.mid & 0xFFFF).to_bytes(2, "big")
    out += msg.token
    prev = 0
    for number, value in sorted(msg.options, key=lambda o: o[0]):
        dn, dx = _ext(number - prev)
        ln, lx = _ext(len(value))
        out.append((dn << 4) | ln)
        out += dx + lx + value
        prev = number
    if msg.payload:
        out.append(0xFF)
        out += msg.payload
    return bytes(out)


def uint_bytes(value: int) -> bytes:
    """A uint option value in the fewest bytes (RFC 7252 §3.2: 0 is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def block_option(num: int, more: bool, szx: int) -> bytes:
    """Block1/Block2 option value (RFC 7959 §2.2)."""
    return uint_bytes((num << 4) | (int(more) << 3) | szx)


def parse_block(value: bytes) -> tuple[int, bool, int]:
    """(num, more, szx) of a Block1/Block2 option value; raises WireError on szx 7 over UDP."""
    if len(value) > 3:
        raise WireError("Block option longer than 3 bytes")
    v = int.from_bytes(value, "big")
    szx = v & 7
    if szx == 7:
        raise WireError("Block size exponent 7 is reserved over UDP")
    return v >> 4, bool(v & 8), szx


def block_size(szx: int) -> int:
    """Bytes in a block of size exponent ``szx`` (RFC 7959 §2.2: 2**(SZX+4))."""
    return 1 << (szx + 4)


def empty_ack(mid: int) -> bytes:
    """An empty ACK (RFC 7252 §4.2): acknowledges a CON, the answer follows separately."""
    return encode(CoapMessage(ACK, EMPTY, mid))


def reset(mid: int) -> bytes:
    """An RST (RFC 7252 §4.2, §4.3): rejects a message the receiver cannot process."""
    return encode(CoapMessage(RST, EMPTY, mid))


def code_text(code: int) -> str:
    """``2.05`` style (RFC 7252 §3)."""
    return f"{code >> 5}.{code & 0x1F:02d}"


# -- the OSCORE boundary: aiocoap's Message ------------------------------------------------------


def to_aiocoap(msg: CoapMessage, incoming: bool = True):
    """The same message as an aiocoap ``Message`` — a received one (``incoming``, what OSCORE
    verifies, RFC 8613 §8.2/§8.4) or one to send."""
    from aiocoap import Message
    from aiocoap.message import Direction
    from aiocoap.numbers.codes import Code
    from aiocoap.numbers.optionnumbers import OptionNumber
    from aiocoap.numbers.types import Type

    m = Message(mtype=Type(msg.mtype), mid=msg.mid, code=Code(msg.code), token=msg.token, payload=msg.payload)
    for number, value in msg.options:
        m.opt.add_option(OptionNumber(number).create_option(decode=value))
    if incoming:
        m.direction = Direction.INCOMING
    return m


def from_aiocoap(m, mtype: int | None = None, mid: int | None = None) -> CoapMessage:
    """An aiocoap ``Message`` as a :class:`CoapMessage`; an unset type/MID become ``mtype``/``mid``
    (default CON / 0; the message layer assigns the MID)."""
    options = [(int(o.number), o.encode()) for o in m.opt.option_list()]
    t = m.mtype if m.mtype is not None else (CON if mtype is None else mtype)
    return CoapMessage(
        int(t),
        int(m.code),
        m.mid if m.mid is not None else (mid or 0),
        bytes(m.token or b""),
        options,
        bytes(m.payload),
    )
