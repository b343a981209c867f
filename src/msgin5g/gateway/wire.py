"""The MSGin5G-6 side of the Gateway UE: CoAP messages and constrained UEs' requests (SPEC D9).

Pure: a minimal RFC 7252 §3 codec (the gateway answers requests after a restart, for tokens it
has only in its store, so it handles datagrams itself rather than through a CoAP library's
exchange state), the interpretation of a constrained UE's configuration request, and the
messages the gateway sends back. Bad input becomes a :class:`WireError` or an error response
with concise problem details, never an exception escaping to the shell.

How a constrained UE marks a request urgent: the elective, safe-to-forward, no-cache-key
option :data:`URGENT_OPTION` (65020, private use; empty value). A node that does not know it
ignores it, and it does not change the cache key (RFC 7252 §5.4.6) — urgency changes when the
request travels, not what it asks for. TS 23.554 8.2.7 has the same idea as the "urgent
degree" of bulk registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import api
from ..bulk import BULK_FLAG_PARAM, BulkItem, IndividualResponse, bulk_item
from ..model import ModelError
from ..problem import Problem

VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3
GET = 0x01
EMPTY = 0x00

OPT_IF_MATCH = 1
OPT_URI_HOST = 3
OPT_ETAG = 4
OPT_IF_NONE_MATCH = 5
OPT_OBSERVE = 6
OPT_URI_PORT = 7
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
OPT_MAX_AGE = 14
OPT_URI_QUERY = 15
OPT_ACCEPT = 17
OPT_BLOCK2 = 23
OPT_BLOCK1 = 27
OPT_SIZE2 = 28
OPT_PROXY_URI = 35
OPT_PROXY_SCHEME = 39
OPT_SIZE1 = 60
OPT_NO_RESPONSE = 258
#: Private-use option claiming an identity in lab mode (msgin5g.authz.LAB_IDENTITY_OPTION).
OPT_LAB_IDENTITY = api.OPT_LAB_IDENTITY
#: Private-use, elective, safe-to-forward, NoCacheKey ((65020 & 0x1e) == 0x1c) option: the
#: request is urgent and is flushed upstream at once (SPEC D9). Value: empty.
URGENT_OPTION = api.OPT_URGENT

#: Options a constrained UE's GET may carry; any other critical (odd) option → 4.02.
KNOWN_OPTIONS = frozenset(
    {
        OPT_IF_MATCH,
        OPT_URI_HOST,
        OPT_ETAG,
        OPT_IF_NONE_MATCH,
        OPT_OBSERVE,
        OPT_URI_PORT,
        OPT_URI_PATH,
        OPT_CONTENT_FORMAT,
        OPT_URI_QUERY,
        OPT_ACCEPT,
        OPT_BLOCK2,
        OPT_BLOCK1,
        OPT_SIZE2,
        OPT_SIZE1,
        OPT_NO_RESPONSE,
        OPT_LAB_IDENTITY,
        URGENT_OPTION,
    }
)

API_PATH = ("su-uc", "v1", "val-services")
COLLECTION = "ue-configurations"
CF_CBOR = 60


class WireError(ValueError):
    """A datagram that is not a well-formed CoAP message."""


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

    def values(self, number: int) -> list[bytes]:
        return [v for n, v in self.options if n == number]

    def first(self, number: int) -> bytes | None:
        for n, v in self.options:
            if n == number:
                return v
        return None


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
    mid = int.from_bytes(data[2:4], "big")
    i = 4 + tkl
    if i > len(data):
        raise WireError("truncated token")
    token = bytes(data[4:i])
    options: list[tuple[int, bytes]] = []
    number = 0
    payload = b""
    while i < len(data):
        byte = data[i]
        i += 1
        if byte == 0xFF:
            payload = bytes(data[i:])
            if not payload:
                raise WireError("payload marker without payload")
            break
        delta, i = _read_ext(byte >> 4, data, i)
        length, i = _read_ext(byte & 0x0F, data, i)
        if i + length > len(data):
            raise WireError("truncated option value")
        number += delta
        options.append((number, bytes(data[i : i + length])))
        i += length
    if code == EMPTY and (tkl or options or payload):
        raise WireError("empty message with content")
    return CoapMessage(mtype, code, mid, token, options, payload)


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
    """Block2 option value (RFC 7959 §2.2)."""
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


def empty_ack(mid: int) -> bytes:
    return encode(CoapMessage(ACK, EMPTY, mid))


def reset(mid: int) -> bytes:
    return encode(CoapMessage(RST, EMPTY, mid))


# ---------------------------------------------------------------------------------------------
# The constrained UE's configuration request (TS 24.538 6.2.2.2 → 6.2.1.2; SPEC §3.3, D9)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UeQuery:
    """The UE-scoped collection GET's query as the UE sent it (Table C.3.1.2.2.3.1-1)."""

    ue_uri: str
    ue_vendor: str | None = None
    ue_type: str | None = None
    ue_snr: str | None = None

    def uri_query(self) -> list[str]:
        q = [f"ue-uri={self.ue_uri}"]
        for name, value in (
            ("ue-vendor", self.ue_vendor),
            ("ue-type", self.ue_type),
            ("ue-snr", self.ue_snr),
        ):
            if value is not None:
                q.append(f"{name}={value}")
        return q


@dataclass(frozen=True, slots=True)
class ConfigRequest:
    """A valid configuration request of a constrained UE."""

    query: UeQuery
    urgent: bool = False
    block_num: int = 0  # Block2 block the UE asks for (0 = from the start)
    block_szx: int = 6  # largest block size the UE accepts (2**(szx+4) bytes)
    item: BulkItem | None = None  # the bulk form (None: it cannot travel in a bulk GET)

    @classmethod
    def of(
        cls, query: UeQuery, urgent: bool = False, block_num: int = 0, block_szx: int = 6
    ) -> ConfigRequest:
        """Validate ``query`` (raises ModelError) and derive its bulk form."""
        item = bulk_item(query.ue_uri, query.ue_vendor, query.ue_type, query.ue_snr)
        return cls(query, urgent, block_num, block_szx, item)

    def key(self, bulk: bool):
        """What the gateway merges and caches by: the bulk form of the request when it can go
        into a bulk GET (``bulk`` policy), otherwise the query as sent."""
        return self.item if bulk and self.item is not None else self.query


def _problem(code: int, detail: str, cause: str) -> IndividualResponse:
    return IndividualResponse.from_problem(Problem(code, detail, cause))


def parse_config_request(msg: CoapMessage, service_id: str) -> ConfigRequest | IndividualResponse:
    """Interpret a request from a constrained UE: the configuration request, or the error
    response the gateway answers at once (4.00, 4.02, 4.04, 4.05, 4.06, 5.05)."""
    if msg.first(OPT_PROXY_URI) is not None or msg.first(OPT_PROXY_SCHEME) is not None:
        return _problem(0xA5, "the gateway is not a forward proxy", "PROXY_NOT_SUPPORTED")
    for number, _ in msg.options:
        if number not in KNOWN_OPTIONS and number & 1:
            return _problem(0x82, f"unknown critical option {number}", "BAD_OPTION")
    if msg.code != GET:
        return _problem(0x85, "only GET is supported on the gateway's configuration resource", "METHOD")
    try:
        path = tuple(v.decode("utf-8") for v in msg.values(OPT_URI_PATH))
        queries = [v.decode("utf-8") for v in msg.values(OPT_URI_QUERY)]
    except UnicodeDecodeError:
        return _problem(0x80, "Uri-Path and Uri-Query must be UTF-8", "BAD_ENCODING")
    if path != (*API_PATH, service_id, COLLECTION):
        return _problem(
            0x84,
            f"the gateway serves /su-uc/v1/val-services/{service_id}/ue-configurations only",
            "UNKNOWN_RESOURCE",
        )
    accept = msg.first(OPT_ACCEPT)
    if accept is not None and int.from_bytes(accept, "big") != CF_CBOR:
        return _problem(0x86, "the gateway answers with Content-Format 60 (CBOR) only", "NOT_ACCEPTABLE")
    values: dict[str, str] = {}
    for q in queries:
        name, sep, value = q.partition("=")
        if not sep or not value:
            return _problem(0x80, f"query option {q!r} is not name=value", "INVALID_QUERY")
        if name == BULK_FLAG_PARAM:
            return _problem(0x80, "bulk configuration is the gateway's own business", "INVALID_QUERY")
        if name not in ("ue-uri", "ue-vendor", "ue-type", "ue-snr"):
            return _problem(0x80, f"unknown query parameter {name!r}", "UNKNOWN_QUERY_PARAMETER")
        if name in values:
            return _problem(0x80, f"query parameter {name!r} given twice (cardinality 0..1)", "INVALID_QUERY")
        values[name] = value
    if "ue-uri" not in values:
        return _problem(0x80, "a constrained UE's request must name the UE (ue-uri)", "SCOPE_REQUIRED")
    query = UeQuery(values["ue-uri"], values.get("ue-vendor"), values.get("ue-type"), values.get("ue-snr"))
    block_num, block_szx = 0, 6
    block2 = msg.first(OPT_BLOCK2)
    if block2 is not None:
        try:
            block_num, _, block_szx = parse_block(block2)
        except WireError as e:
            return _problem(0x80, str(e), "BAD_BLOCK2")
    try:
        return ConfigRequest.of(query, msg.first(URGENT_OPTION) is not None, block_num, block_szx)
    except ModelError as e:
        return _problem(0x80, str(e), e.cause)


def response_message(
    mtype: int,
    mid: int,
    token: bytes,
    resp: IndividualResponse,
    block_num: int = 0,
    block_szx: int = 6,
    max_age: int | None = None,
) -> CoapMessage | None:
    """The CoAP response carrying ``resp`` (block ``block_num`` of it when it does not fit one
    block of 2**(szx+4) bytes, RFC 7959). None when the UE asked for a block past the end."""
    options: list[tuple[int, bytes]] = []
    if resp.content_format is not None:
        options.append((OPT_CONTENT_FORMAT, uint_bytes(resp.content_format)))
    age = resp.max_age if max_age is None else max_age
    if age is not None:
        options.append((OPT_MAX_AGE, uint_bytes(max(0, int(age)))))
    payload = resp.payload
    size = 1 << (block_szx + 4)
    if len(payload) > size or block_num > 0:
        start = block_num * size
        if start >= len(payload) and not (start == 0 and not payload):
            return None
        more = start + size < len(payload)
        options.append((OPT_BLOCK2, block_option(block_num, more, block_szx)))
        if block_num == 0:
            options.append((OPT_SIZE2, uint_bytes(len(payload))))
        payload = payload[start : start + size]
    return CoapMessage(mtype, resp.code, mid, token, options, payload)
