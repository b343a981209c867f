"""PC5 one-to-one link signalling between a constrained UE and the Relay UE (SPEC D8; TS 24.538 6.2.2.1).

TS 24.538 6.2.2.1 relays only for MSGin5G Clients that "established a connection for one-to-one
ProSe direct communication" (TS 23.304). On a real sidelink that connection is set up by PC5
signalling (TS 24.554 clause 7.2.2, "5G ProSe direct link establishment") below IP. This project
runs PC5 over loopback UDP, so the exchange is simulated by a small datagram protocol on the same
UDP port as the CoAP traffic (65401, SPEC D11), modelled on the TS 24.554 messages:

====================================  ======  ============================================
message                                type    body (CBOR map, text keys)
====================================  ======  ============================================
DIRECT LINK ESTABLISHMENT REQUEST      0x01    ``l2id`` (int, 24 bit), ``userInfo`` (text)
DIRECT LINK ESTABLISHMENT ACCEPT       0x02    ``l2id`` (echo), ``userInfo`` (relay's),
                                               ``keepalive`` (seconds between keep-alives)
DIRECT LINK ESTABLISHMENT REJECT       0x03    ``l2id`` (echo), ``cause`` (int)
DIRECT LINK KEEPALIVE REQUEST          0x04    ``l2id``, ``counter`` (int)
DIRECT LINK KEEPALIVE RESPONSE         0x05    ``l2id``, ``counter`` (echo)
DIRECT LINK RELEASE REQUEST            0x06    ``l2id``, ``cause`` (int)
DIRECT LINK RELEASE ACCEPT             0x07    ``l2id`` (echo)
====================================  ======  ============================================

Wire format: ``0x05 | type | sequence number (16 bit, big endian) | CBOR map``. The first octet's
two most significant bits are 00, i.e. CoAP version 0, which no CoAP message can carry (RFC 7252
§3 requires version 1): a receiver tells PC5 signalling from CoAP by the first octet alone. A
response echoes the request's sequence number, as TS 24.554 responses echo the request's
transaction. ``l2id`` stands for the remote UE's Layer-2 ID, which on a real sidelink travels in
the MAC header rather than in the message. Unknown body keys are ignored. The cause values are
named after TS 24.554's PC5 signalling protocol causes; their numbers are this project's.

Everything here is pure: bytes in, :class:`Pc5Message` out, and back.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from .codec import CodecError, decode_cbor_item

PC5_DISCRIMINATOR = 0x05
HEADER = struct.Struct("!BBH")
MAX_L2_ID = 0xFFFFFF  # Layer-2 IDs are 24 bit (TS 23.304 5.8.2.1)
MAX_USER_INFO = 253
MAX_DATAGRAM = 512


class Pc5Type(enum.IntEnum):
    """PC5 signalling message types (modelled on TS 24.554 clause 11.3)."""

    LINK_ESTABLISHMENT_REQUEST = 0x01
    LINK_ESTABLISHMENT_ACCEPT = 0x02
    LINK_ESTABLISHMENT_REJECT = 0x03
    LINK_KEEPALIVE_REQUEST = 0x04
    LINK_KEEPALIVE_RESPONSE = 0x05
    LINK_RELEASE_REQUEST = 0x06
    LINK_RELEASE_ACCEPT = 0x07


class Pc5Cause(enum.IntEnum):
    """PC5 signalling protocol cause values (named after TS 24.554; numbering is this project's)."""

    NOT_ALLOWED = 1  # direct communication to the target UE not allowed
    NO_LONGER_NEEDED = 2  # direct communication to the target UE no longer needed
    L2_ID_CONFLICT = 3  # conflict of Layer-2 ID for unicast communication is detected
    LACK_OF_RESOURCES = 4  # lack of resources for 5G ProSe direct link (link table full)
    LINK_TIMEOUT = 5  # no keep-alive within the link timeout (released by the relay)
    PROTOCOL_ERROR = 111  # protocol error, unspecified


REQUESTS = frozenset(
    {Pc5Type.LINK_ESTABLISHMENT_REQUEST, Pc5Type.LINK_KEEPALIVE_REQUEST, Pc5Type.LINK_RELEASE_REQUEST}
)


class Pc5Error(ValueError):
    """A datagram that claims to be PC5 signalling but is not well formed."""


@dataclass(frozen=True, slots=True)
class Pc5Message:
    """One PC5 signalling message (SPEC D8); fields that a type does not use stay ``None``."""

    type: Pc5Type
    seq: int = 0
    l2id: int | None = None
    user_info: str | None = None
    cause: int | None = None
    keepalive: int | None = None
    counter: int | None = None

    def reply(self, type: Pc5Type, **fields: Any) -> Pc5Message:
        """The response to this request: same sequence number, the request's ``l2id`` echoed."""
        fields.setdefault("l2id", self.l2id)
        return Pc5Message(type, self.seq, **fields)


# body key ↔ field name
_KEYS = {
    "l2id": "l2id",
    "userInfo": "user_info",
    "cause": "cause",
    "keepalive": "keepalive",
    "counter": "counter",
}
#: fields each message type must carry
_REQUIRED: dict[Pc5Type, tuple[str, ...]] = {
    Pc5Type.LINK_ESTABLISHMENT_REQUEST: ("l2id", "user_info"),
    Pc5Type.LINK_ESTABLISHMENT_ACCEPT: ("l2id",),
    Pc5Type.LINK_ESTABLISHMENT_REJECT: ("cause",),
    Pc5Type.LINK_KEEPALIVE_REQUEST: ("l2id",),
    Pc5Type.LINK_KEEPALIVE_RESPONSE: (),
    Pc5Type.LINK_RELEASE_REQUEST: ("l2id",),
    Pc5Type.LINK_RELEASE_ACCEPT: (),
}


def is_pc5(datagram: bytes) -> bool:
    """True when the datagram is PC5 signalling rather than CoAP (decided by the first octet)."""
    return len(datagram) > 0 and datagram[0] == PC5_DISCRIMINATOR


def _check(msg: Pc5Message) -> Pc5Message:
    for name in _REQUIRED[msg.type]:
        if getattr(msg, name) is None:
            raise Pc5Error(f"{msg.type.name} without {name}")
    if not 0 <= msg.seq <= 0xFFFF:
        raise Pc5Error(f"sequence number {msg.seq} out of range")
    if msg.l2id is not None and (
        not isinstance(msg.l2id, int) or isinstance(msg.l2id, bool) or not 0 <= msg.l2id <= MAX_L2_ID
    ):
        raise Pc5Error(f"Layer-2 ID must be a 24-bit unsigned integer, got {msg.l2id!r}")
    if msg.user_info is not None and (
        not isinstance(msg.user_info, str) or len(msg.user_info) > MAX_USER_INFO
    ):
        raise Pc5Error(f"user info must be text of at most {MAX_USER_INFO} characters")
    for name in ("cause", "keepalive", "counter"):
        value = getattr(msg, name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0xFFFFFFFF
        ):
            raise Pc5Error(f"{name} must be an unsigned 32-bit integer, got {value!r}")
    return msg


def encode(msg: Pc5Message) -> bytes:
    """Serialise one PC5 signalling message (SPEC D8)."""
    _check(msg)
    body = {key: getattr(msg, name) for key, name in _KEYS.items() if getattr(msg, name) is not None}
    return HEADER.pack(PC5_DISCRIMINATOR, msg.type, msg.seq) + cbor2.dumps(body)


def decode(datagram: bytes) -> Pc5Message:
    """Parse one PC5 signalling message; raises :class:`Pc5Error` on anything malformed."""
    if len(datagram) > MAX_DATAGRAM:
        raise Pc5Error(f"PC5 signalling datagram of {len(datagram)} bytes (at most {MAX_DATAGRAM})")
    if len(datagram) < HEADER.size:
        raise Pc5Error("truncated PC5 signalling header")
    disc, mtype, seq = HEADER.unpack_from(datagram)
    if disc != PC5_DISCRIMINATOR:
        raise Pc5Error("not PC5 signalling")
    try:
        ptype = Pc5Type(mtype)
    except ValueError:
        raise Pc5Error(f"unknown PC5 signalling message type {mtype:#04x}") from None
    raw = datagram[HEADER.size :]
    body: Any = {}
    if raw:
        try:
            body = decode_cbor_item(raw)
        except CodecError as e:
            raise Pc5Error(f"PC5 signalling body: {e}") from None
    if not isinstance(body, dict):
        raise Pc5Error("body must be a CBOR map")
    fields = {name: body[key] for key, name in _KEYS.items() if key in body}
    return _check(Pc5Message(ptype, seq, **fields))
