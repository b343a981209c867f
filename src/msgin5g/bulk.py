"""Bulk configuration wire format, packing and splitting (TS 24.538 6.2.2.x; SPEC D6, D7).

A bulk GET is the ordinary collection GET with one ``bulk-conf-flag=<id>`` Uri-Query option
followed by one ``ue-uri=<id>`` option per constrained UE (plus ``ue-vendor``/``ue-type`` when
given). Its 2.05 answer is ``array(UeConfigDoc)`` with exactly one entry per requested UE, in
request order: the UE's resolved document, or a stub carrying a concise problem details map under
the ``problem`` extension key (4.03 / 4.04).

Gateway side (the MSGin5G Gateway Client and its SCM-C):

- :func:`bulk_item` turns one constrained UE's request into what a bulk GET can carry;
- :func:`pack` packs many of them into bulk GETs that each fit the transport (D7 a, c);
- :func:`split` turns one bulk answer back into one individual response per requested UE —
  never fewer, never more: a missing, extra or malformed entry becomes a per-UE 5.02.

Pure functions only: no sockets, no clocks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from .api import Q_BULK_FLAG
from .codec import decode_cbor_item
from .model import IMEI_URN_RE, PROBLEM_KEY, ModelError, UeIdentity, validate_doc
from .problem import CF_PROBLEM, KEY_RESPONSE_CODE, Problem, problem_from_map

BULK_FLAG_PARAM = Q_BULK_FLAG
CF_CBOR = 60
CONTENT = 0x45

# CoAP option numbers (RFC 7252 §12.2, RFC 7959)
OPT_URI_HOST = 3
OPT_URI_PORT = 7
OPT_URI_PATH = 11
OPT_URI_QUERY = 15
OPT_BLOCK2 = 23

#: What a bulk GET over UDP may take, header to last option (SPEC D7 a): fits the 1,152-byte
#: default of RFC 8323 / the IPv6 minimum MTU with room for IP, UDP and DTLS/OSCORE overhead.
UDP_BULK_BUDGET = 1100
#: Largest token a CoAP message can carry (RFC 7252 §3); packing assumes it unless told.
MAX_TOKEN_LEN = 8
#: Max-Age of a stub entry's individual 4.03/4.04 (the CoAP default, RFC 7252 §5.10.5).
STUB_MAX_AGE = 60


def stub_entry(domain: str, ue_uri: str, problem: Problem) -> dict:
    """The per-UE entry of a bulk answer for a UE that gets no document (SPEC D6)."""
    return {"valServiceDomain": domain, "valUeIds": {"uris": [ue_uri]}, PROBLEM_KEY: problem.to_map()}


def entry_problem(entry: dict) -> Problem | None:
    """The problem of a stub entry, or None when the entry is a real document."""
    p = entry.get(PROBLEM_KEY)
    return problem_from_map(p) if isinstance(p, dict) else None


# ---------------------------------------------------------------------------------------------
# CoAP message sizes (RFC 7252 §3, §3.1; RFC 8323 §3.2)
# ---------------------------------------------------------------------------------------------


def _ext_bytes(n: int) -> int:
    """Extended bytes of an option delta or length nibble (RFC 7252 §3.1)."""
    return 0 if n < 13 else 1 if n < 269 else 2


def option_size(delta: int, length: int) -> int:
    """Bytes of one encoded option: header byte, extended delta, extended length, value."""
    return 1 + _ext_bytes(delta) + _ext_bytes(length) + length


def options_size(options: Iterable[tuple[int, bytes]]) -> int:
    """Bytes of an option list once encoded in number order (stable for repeated options)."""
    size, prev = 0, 0
    for number, value in sorted(options, key=lambda o: o[0]):
        size += option_size(number - prev, len(value))
        prev = number
    return size


def udp_message_size(body_len: int, token_len: int = MAX_TOKEN_LEN) -> int:
    """CoAP over UDP: 4-byte fixed header + token + options/payload (RFC 7252 §3)."""
    return 4 + token_len + body_len


def tcp_message_size(body_len: int, token_len: int = MAX_TOKEN_LEN) -> int:
    """CoAP over TCP: Len/TKL byte, extended length, code, token + options/payload (RFC 8323 §3.2)."""
    ext = 0 if body_len < 13 else 1 if body_len < 269 else 2 if body_len < 65805 else 4
    return 1 + ext + 1 + token_len + body_len


MESSAGE_SIZE = {"udp": udp_message_size, "tcp": tcp_message_size}


def request_options(
    path: Sequence[str], host: str | None = None, extra: Iterable[tuple[int, bytes]] = ()
) -> list[tuple[int, bytes]]:
    """The options of a request other than Uri-Query: Uri-Host when ``host`` is a name (an IP
    literal is implied by the destination address), the Uri-Path segments and ``extra``."""
    opts: list[tuple[int, bytes]] = []
    if host:
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            opts.append((OPT_URI_HOST, host.encode()))
    opts.extend((OPT_URI_PATH, seg.encode()) for seg in path)
    opts.extend(extra)
    return opts


# ---------------------------------------------------------------------------------------------
# Requests: what one constrained UE asked for, as a bulk GET can carry it
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BulkItem:
    """One constrained UE's configuration request in bulk form (TS 24.538 6.2.2.x 4) i, ii).

    ``ue_vendor``/``ue_type`` are the MSGin5G UE information; a bulk GET carries each at most
    once, so items are grouped by ``(ue_vendor, ue_type)`` when packed.
    """

    ue_uri: str
    ue_vendor: str | None = None
    ue_type: str | None = None

    @property
    def group(self) -> tuple[str | None, str | None]:
        return (self.ue_vendor, self.ue_type)


def bulk_item(
    ue_uri: str, ue_vendor: str | None = None, ue_type: str | None = None, ue_snr: str | None = None
) -> BulkItem | None:
    """Normalise a constrained UE's query (SPEC D3, D6).

    Raises :class:`ModelError` when the query is invalid (the gateway answers 4.00 itself, as the
    SCM-S would). Returns None when the request cannot travel in a bulk GET — a ``ue-snr`` that the
    UE's URI does not already imply (a bulk GET has no per-UE ``ue-snr``); such a request is
    forwarded on its own. ``ue-type``/``ue-snr`` implied by an IMEI URN are dropped, so that such
    UEs share one bulk GET whatever they stated.
    """
    UeIdentity.from_query(ue_uri, ue_type, ue_snr, ue_vendor)  # raises ModelError
    if IMEI_URN_RE.match(ue_uri):
        return BulkItem(ue_uri, ue_vendor, None)
    if ue_snr is not None:
        return None
    return BulkItem(ue_uri, ue_vendor, ue_type)


@dataclass(frozen=True, slots=True)
class BulkGet:
    """One bulk GET (SPEC D6): its bulk configuration identifier and the UEs it asks for."""

    flag: str
    ue_uris: tuple[str, ...]
    ue_vendor: str | None = None
    ue_type: str | None = None

    def uri_query(self) -> list[str]:
        """Uri-Query options in the order of SPEC D6: flag, every ue-uri, ue-vendor, ue-type."""
        q = [f"{BULK_FLAG_PARAM}={self.flag}"]
        q.extend(f"ue-uri={u}" for u in self.ue_uris)
        if self.ue_vendor is not None:
            q.append(f"ue-vendor={self.ue_vendor}")
        if self.ue_type is not None:
            q.append(f"ue-type={self.ue_type}")
        return q

    def items(self) -> list[BulkItem]:
        return [BulkItem(u, self.ue_vendor, self.ue_type) for u in self.ue_uris]


def followup_query(flag: str) -> list[str]:
    """Uri-Query of a Block2 follow-up: only the bulk configuration identifier (SPEC D7 b)."""
    return [f"{BULK_FLAG_PARAM}={flag}"]


def _query_option_size(text: str) -> int:
    """A Uri-Query option repeated after another one (option delta 0)."""
    return option_size(0, len(text.encode()))


def bulk_get_size(
    get: BulkGet,
    fixed_options: Sequence[tuple[int, bytes]] = (),
    transport: str = "udp",
    token_len: int = MAX_TOKEN_LEN,
) -> int:
    """Exact encoded size of a bulk GET with the given non-query options."""
    opts = list(fixed_options) + [(OPT_URI_QUERY, q.encode()) for q in get.uri_query()]
    return MESSAGE_SIZE[transport](options_size(opts), token_len)


def pack(
    items: Sequence[BulkItem],
    *,
    new_flag: Callable[[], str],
    max_message: int = UDP_BULK_BUDGET,
    fixed_options: Sequence[tuple[int, bytes]] = (),
    transport: str = "udp",
    token_len: int = MAX_TOKEN_LEN,
    max_ues: int = 10_000,
) -> list[BulkGet]:
    """Pack requests into bulk GETs that each fit ``max_message`` bytes (SPEC D7 a, c).

    Over UDP ``max_message`` is the datagram budget (:data:`UDP_BULK_BUDGET`), over TCP the
    peer's Max-Message-Size; ``max_ues`` is the SCM-S policy's per-GET maximum. Every distinct
    item ends up in exactly one bulk GET; items are grouped by ``(ue_vendor, ue_type)`` (each GET
    carries those once) and keep their order within a group. ``new_flag`` gives each bulk GET
    its own bulk configuration identifier. An item too large to fit even alone travels alone
    (the SCM-S's answer to it is split like any other: nothing is lost).
    """
    if max_ues < 1:
        raise ValueError("max_ues must be at least 1")
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    seen: set[BulkItem] = set()
    for item in items:
        if item in seen:
            continue
        seen.add(item)
        groups.setdefault(item.group, []).append(item.ue_uri)
    size_of = MESSAGE_SIZE[transport]
    gets: list[BulkGet] = []
    for (vendor, tac), uris in groups.items():
        i = 0
        while i < len(uris):
            flag = new_flag()
            base = BulkGet(flag, (), vendor, tac)
            # the first ue-uri follows bulk-conf-flag (delta 0), so each one adds a fixed size
            body = options_size(list(fixed_options) + [(OPT_URI_QUERY, q.encode()) for q in base.uri_query()])
            chosen: list[str] = []
            while i < len(uris) and len(chosen) < max_ues:
                cost = _query_option_size(f"ue-uri={uris[i]}")
                if chosen and size_of(body + cost, token_len) > max_message:
                    break
                body += cost
                chosen.append(uris[i])
                i += 1
            gets.append(BulkGet(flag, tuple(chosen), vendor, tac))
    return gets


# ---------------------------------------------------------------------------------------------
# Answers: one individual response per requested UE
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndividualResponse:
    """The response a constrained UE gets for its configuration request (SPEC §3.3, D9).

    2.05 carries ``array(UeConfigDoc)`` (the UE-scoped GET's representation); 4.xx/5.xx carry
    concise problem details (Content-Format 257).
    """

    code: int
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None

    @classmethod
    def content(cls, docs: list, max_age: int | None = None) -> IndividualResponse:
        return cls(CONTENT, cbor2.dumps(docs), CF_CBOR, max_age)

    @classmethod
    def from_problem(cls, problem: Problem, max_age: int | None = None) -> IndividualResponse:
        return cls(problem.code, problem.encode(), CF_PROBLEM, max_age)

    @property
    def cacheable(self) -> bool:
        """Final answers the gateway may repeat while their Max-Age lasts (RFC 7252 §5.6)."""
        return self.code in (CONTENT, 0x83, 0x84)


def bad_gateway(detail: str, cause: str = "BAD_BULK_ANSWER") -> Problem:
    return Problem(0xA2, detail, cause)


def _entry_names(entry: Any) -> str | None:
    """The single UE an answer entry is for (SPEC D6: valUeIds.uris = [that UE]), else None."""
    if not isinstance(entry, dict):
        return None
    ids = entry.get("valUeIds")
    if not isinstance(ids, dict):
        return None
    uris = ids.get("uris")
    if isinstance(uris, list) and len(uris) == 1 and isinstance(uris[0], str):
        return uris[0]
    return None


def _individual(entry: dict, max_age: int | None) -> IndividualResponse:
    """One entry of a bulk answer → the response its UE gets."""
    problem = entry.get(PROBLEM_KEY)
    if problem is not None:
        if not isinstance(problem, dict):
            return IndividualResponse.from_problem(bad_gateway("bulk answer entry has a malformed problem"))
        code = problem.get(KEY_RESPONSE_CODE)
        if not isinstance(code, int) or isinstance(code, bool) or not 0x80 <= code <= 0x9F:
            return IndividualResponse.from_problem(
                bad_gateway(f"bulk answer entry has an unusable response code {code!r}")
            )
        try:
            payload = cbor2.dumps(problem)
        except Exception:  # cbor2 may refuse exotic values
            return IndividualResponse.from_problem(bad_gateway("bulk answer entry has a malformed problem"))
        # a stub has no freshness of its own: what a UE-scoped GET's error would have, the CoAP
        # default (RFC 7252 §5.10.5), unless the whole answer is fresh for less
        age = STUB_MAX_AGE if max_age is None else min(max_age, STUB_MAX_AGE)
        return IndividualResponse(code, payload, CF_PROBLEM, age)
    try:
        validate_doc(dict(entry))  # it only ever renames a top-level key: a shallow copy is enough
    except ModelError as e:
        return IndividualResponse.from_problem(bad_gateway(f"bulk answer entry is not a UeConfigDoc: {e}"))
    return IndividualResponse.content([entry], max_age)


def decode_answer(payload: bytes) -> Any:
    """The CBOR data item of a bulk answer. Unlike :func:`msgin5g.codec.decode` this accepts the
    integer keys of the concise problem details inside stub entries; :func:`split` checks the
    rest. Raises ValueError (CodecError) when the payload is not exactly one well-formed data item."""
    return decode_cbor_item(payload)


def split(requested: Sequence[str], answer: Any, max_age: int | None = None) -> list[IndividualResponse]:
    """Split a bulk 2.05 answer into one individual response per requested UE (TS 24.538 6.2.2.x;
    SPEC D6).

    ``requested`` are the ``ue-uri`` values of the bulk GET in request order; the result has the
    same length and order. Entry *i* answers UE *i* when it names that UE; otherwise the first
    unused entry naming the UE is taken (an answer in another order still reaches the right
    UEs). A UE without an entry, or whose entry is malformed, gets a 5.02 problem; entries naming
    nobody requested are ignored. Documents become ``[doc]`` with Content-Format 60, stubs their
    own 4.xx problem.
    """
    if not isinstance(answer, list):
        return fail_all(requested, bad_gateway("bulk answer is not an array"), max_age=None)
    out: list[IndividualResponse | None] = [None] * len(requested)
    used = [False] * len(answer)
    unmatched: list[int] = []
    for i, uri in enumerate(requested):
        if i < len(answer) and _entry_names(answer[i]) == uri:
            used[i] = True
            out[i] = _individual(answer[i], max_age)
        else:
            unmatched.append(i)
    if unmatched:
        by_uri: dict[str, list[int]] = {}
        for j, entry in enumerate(answer):
            name = _entry_names(entry)
            if not used[j] and name is not None:
                by_uri.setdefault(name, []).append(j)
        for i in unmatched:
            candidates = by_uri.get(requested[i])
            if candidates:
                j = candidates.pop(0)
                used[j] = True
                out[i] = _individual(answer[j], max_age)
            else:
                out[i] = IndividualResponse.from_problem(
                    bad_gateway("the bulk answer has no entry for this UE", "MISSING_BULK_ENTRY")
                )
    return [r for r in out if r is not None]


def fail_all(
    requested: Sequence[str], problem: Problem, max_age: int | None = None
) -> list[IndividualResponse]:
    """The same problem for every requested UE (a bulk GET that failed as a whole)."""
    resp = IndividualResponse.from_problem(problem, max_age)
    return [resp] * len(requested)


def answer_responses(
    requested: Sequence[str],
    code: int,
    payload: bytes,
    content_format: int | None = None,
    max_age: int | None = None,
) -> list[IndividualResponse]:
    """Individual responses for the UEs of one bulk GET from its final answer (TS 24.538
    6.2.2.x, last paragraph; SPEC D6): a 2.05 is split; a 4.03/4.04 refusing the whole bulk GET
    reaches every UE as such; any other code becomes a per-UE 5.02 naming it. (No answer, 5.xx,
    4.29 and 4.08 are retried instead, never split.)"""
    if code == CONTENT:
        try:
            answer = decode_answer(payload)
        except ValueError as e:
            return fail_all(requested, bad_gateway(f"bulk answer is not CBOR: {e}"))
        return split(requested, answer, max_age)
    detail = ""
    if content_format == CF_PROBLEM:
        try:
            detail = problem_from_map(decode_answer(payload)).detail
        except (ValueError, TypeError):
            detail = ""
    if code in (0x83, 0x84):
        return fail_all(requested, Problem(code, detail or "refused by the SCM-S", "BULK_REFUSED"))
    code_txt = f"{code >> 5}.{code & 0x1F:02d}"
    return fail_all(
        requested,
        bad_gateway(f"the SCM-S answered the bulk GET with {code_txt} {detail}".strip(), "BULK_REJECTED"),
    )
