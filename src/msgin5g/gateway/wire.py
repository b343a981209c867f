"""The MSGin5G-6 side of the Gateway UE: CoAP messages and constrained UEs' requests (SPEC D9).

Pure: over the RFC 7252 §3 codec of :mod:`msgin5g.coap.wire` (the gateway answers requests after
a restart, for tokens it has only in its store, so it handles datagrams itself rather than through
a CoAP library's exchange state), the interpretation of a constrained UE's configuration request, and the
messages the gateway sends back. Bad input becomes a :class:`WireError` or an error response
with concise problem details, never an exception escaping to the shell.

How a constrained UE marks a request urgent: the elective, safe-to-forward, no-cache-key
option :data:`URGENT_OPTION` (65020, private use; empty value). A node that does not know it
ignores it, and it does not change the cache key (RFC 7252 §5.4.6) — urgency changes when the
request travels, not what it asks for. TS 23.554 8.2.7 has the same idea as the "urgent
degree" of bulk registration.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import api
from ..bulk import BULK_FLAG_PARAM, BulkItem, IndividualResponse, bulk_item

# The codec is the message layer's (msgin5g.coap.wire); these names stay importable from here.
from ..coap.wire import (  # noqa: F401
    ACK,
    CON,
    EMPTY,
    GET,
    NON,
    OPT_ACCEPT,
    OPT_BLOCK1,
    OPT_BLOCK2,
    OPT_CONTENT_FORMAT,
    OPT_ETAG,
    OPT_IF_MATCH,
    OPT_IF_NONE_MATCH,
    OPT_MAX_AGE,
    OPT_NO_RESPONSE,
    OPT_OBSERVE,
    OPT_PROXY_SCHEME,
    OPT_PROXY_URI,
    OPT_SIZE1,
    OPT_SIZE2,
    OPT_URI_HOST,
    OPT_URI_PATH,
    OPT_URI_PORT,
    OPT_URI_QUERY,
    RST,
    VERSION,
    CoapMessage,
    WireError,
    block_option,
    decode,
    empty_ack,
    encode,
    parse_block,
    reset,
    uint_bytes,
)
from ..model import ModelError
from ..problem import Problem

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
