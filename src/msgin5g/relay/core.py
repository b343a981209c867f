"""The MSGin5G Relay UE as a pure state machine (TS 24.538 6.2.2.1; SPEC §3.2, D8).

No sockets, no asyncio, no clock: the shell feeds datagrams it has parsed (``on_pc5`` from the
PC5 side, ``on_uu`` from the Uu side), calls ``on_tick`` now and then, always passing ``now``, and
performs the :class:`Action` values it gets back. Every rule lives here:

* **PC5 link table** (:class:`Pc5LinkTable`): remote UE Layer-2 ID ↔ endpoint, at most
  ``max_links`` entries (8 by default, TS 23.304's recommendation), established, kept alive and
  released by the :mod:`.pc5` signalling. CoAP from an endpoint without a link is dropped and
  counted (SPEC D8).
* **Uplink** (seed 6.2.2.1, first paragraph): a CoAP GET whose recipient, given in the
  forward-proxy options (``Proxy-Uri``, or ``Proxy-Scheme`` + ``Uri-Host``/``Uri-Port``/``Uri-Path``,
  RFC 7252 §5.7.2), is the configured configuration management server functionality is relayed;
  any other recipient gets 5.05, malformed proxy options 4.00/4.02 with problem details. Only the
  proxy options, the token and the message ID are rewritten: every other option and the payload
  travel untouched, so OSCORE (RFC 8613) protected requests — outer ``Proxy-Scheme``/``Uri-Host``,
  outer code POST or FETCH — pass through unchanged.
* **Downlink** (seed 6.2.2.1, second paragraph): a response (2.05, 4.03, 4.04 and every other
  code, unchanged) is matched by token to the request it answers; its recipient is that request's
  client. It is relayed only while that client's PC5 link is the one that sent the request;
  otherwise it is discarded and counted, and a confirmable or observe response is answered with
  RST so that the server stops retransmitting or cancels the observation (RFC 7252 §4.2,
  RFC 7641 §3.6).
* **CoAP message layer kept end to end.** The relay is a CoAP endpoint on each side (RFC 7252
  §5.7: message IDs and tokens are hop-by-hop). It maps (PC5 link, UE token) ↔ (uplink, relay
  token) and (PC5 link, UE MID) ↔ (uplink, relay MID). Reliability is driven by the UE: a
  retransmitted CON is recognised by its MID and never becomes a second request; while the
  relayed request is in flight it is re-sent upstream as a retransmission (same relay MID, which
  the server deduplicates), once answered the answer is replayed. Likewise a server CON is relayed
  as a downlink CON whose ACK from the UE is relayed back, and server retransmissions map to the
  same downlink MID. The relay therefore needs no retransmission timers of its own.
* **Uplink endpoints and their limits.** In layer-3 mode every remote UE shares one uplink
  endpoint (an IP router with NAT); in layer-2 mode each PC5 link gets its own, so the SCM-S sees
  each remote UE separately (SPEC D8). Per uplink endpoint the relay is an ordinary CoAP client
  and obeys RFC 7252 §4.7 congestion control — at most NSTART (1) outstanding interactions, the
  rest queue — and never reuses a message ID within EXCHANGE_LIFETIME (247 s, §4.8.2; a server
  such as aiocoap would take a reused MID for a duplicate and replay an old answer): 65,536 IDs
  per 247 s, ≈ 265 CON/s sustained per endpoint pair. Layer-3 mode puts every remote UE behind
  that one budget; see docs/relay.md for the measured consequence.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type

from .. import pc5
from ..pc5 import Pc5Cause, Pc5Message, Pc5Type
from ..problem import CF_PROBLEM, Problem, code_text

Endpoint = tuple  # a socket address as the shell reports it, e.g. ("127.0.0.1", 40123)

MODE_L2 = "l2"
MODE_L3 = "l3"
SHARED_UPLINK = 0  # layer-3 mode's single uplink endpoint; layer-2 uplinks are keyed by link id (≥ 1)

# RFC 7252 §4.8 transmission parameters (defaults)
EXCHANGE_LIFETIME = 247.0
NON_LIFETIME = 145.0
MAX_TRANSMIT_WAIT = 93.0
ACK_TIMEOUT = 2.0
ACK_RANDOM_FACTOR = 1.5
MID_SPACE = 0x10000
DEFAULT_PORT = 5683
MAX_PROXY_URI = 1034  # RFC 7252 §5.10 option length limit

# Options rewritten by the relay (everything else passes through untouched).
PROXY_URI = OptionNumber.PROXY_URI
PROXY_SCHEME = OptionNumber.PROXY_SCHEME
URI_HOST = OptionNumber.URI_HOST
URI_PORT = OptionNumber.URI_PORT
URI_PATH = OptionNumber.URI_PATH
URI_QUERY = OptionNumber.URI_QUERY
OSCORE = OptionNumber.OSCORE
NOT_REPEATABLE = (PROXY_URI, PROXY_SCHEME, URI_HOST, URI_PORT)


# --------------------------------------------------------------------------------------------
# Actions: what the shell must do


@dataclass(frozen=True, slots=True)
class SendUplink:
    """Send ``message`` to the SCM-S from the uplink endpoint ``uplink``."""

    uplink: int
    message: Message


@dataclass(frozen=True, slots=True)
class SendDownlink:
    """Send a CoAP ``message`` to a remote UE over PC5."""

    endpoint: Endpoint
    message: Message


@dataclass(frozen=True, slots=True)
class Answer:
    """The relay itself answers a remote UE's request (5.05, 4.00, 4.02, 4.04, 4.05)."""

    endpoint: Endpoint
    message: Message
    problem: Problem


@dataclass(frozen=True, slots=True)
class SendPc5:
    """Send PC5 signalling (SPEC D8) to a remote UE."""

    endpoint: Endpoint
    message: Pc5Message


@dataclass(frozen=True, slots=True)
class OpenUplink:
    """Create the uplink endpoint ``uplink`` (one in layer-3 mode, one per PC5 link in layer 2)."""

    uplink: int


@dataclass(frozen=True, slots=True)
class CloseUplink:
    uplink: int


@dataclass(frozen=True, slots=True)
class Discard:
    """Nothing is sent; the datagram was discarded for ``reason`` (already counted)."""

    reason: str
    detail: str = ""


Action = SendUplink | SendDownlink | Answer | SendPc5 | OpenUplink | CloseUplink | Discard


# --------------------------------------------------------------------------------------------
# Configuration and counters


@dataclass(frozen=True)
class RelayConfig:
    """What the relay is told (SPEC D8, D11). ``server_host`` as written in URIs, without brackets."""

    server_host: str
    server_port: int = DEFAULT_PORT
    server_scheme: str = "coap"
    server_aliases: frozenset[str] = frozenset()  # other spellings of the same host (its address)
    mode: str = MODE_L3
    max_links: int = 8
    auto_link: bool = False
    user_info: str = "msgin5g-relay"
    keepalive: int = 20  # seconds, advertised in the link establishment accept
    link_timeout: float = 60.0  # a link without any datagram for this long is released
    nstart: int = 1
    exchange_lifetime: float = EXCHANGE_LIFETIME
    non_lifetime: float = NON_LIFETIME
    con_wait: float = MAX_TRANSMIT_WAIT  # a relayed CON stays outstanding at most this long
    non_wait: float = ACK_TIMEOUT * ACK_RANDOM_FACTOR  # a relayed NON request at most this long

    def __post_init__(self) -> None:
        if self.mode not in (MODE_L2, MODE_L3):
            raise ValueError(f"mode must be l2 or l3, got {self.mode!r}")
        if self.max_links < 1 or self.nstart < 1:
            raise ValueError("max_links and nstart must be at least 1")

    def server_names(self) -> frozenset[str]:
        return frozenset(_norm_host(h) for h in (self.server_host, *self.server_aliases))


@dataclass
class RelayCounters:
    """What the relay did (printed on shutdown, served on the admin side)."""

    relayed_up: int = 0  # requests relayed to the SCM-S (each once)
    relayed_down: int = 0  # responses and notifications relayed to remote UEs
    retransmitted_up: int = 0  # UE retransmissions re-sent as uplink retransmissions (same MID)
    retransmitted_down: int = 0  # server retransmissions re-sent downlink (same MID)
    duplicates_from_ue: int = 0  # UE retransmissions recognised (never relayed as a new request)
    answered: Counter = field(default_factory=Counter)  # relay's own answers by code ("5.05": n)
    discarded: Counter = field(default_factory=Counter)  # by reason
    dropped_no_link: int = 0  # datagrams from endpoints without a PC5 link
    dropped_malformed: int = 0  # undecodable datagrams and messages that make no sense here
    links_established: int = 0
    links_rejected: int = 0
    links_released: Counter = field(default_factory=Counter)  # by reason
    errors: Counter = field(default_factory=Counter)  # socket errors reported by the shell

    def to_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = dict(sorted(value.items())) if isinstance(value, Counter) else value
        return out


# --------------------------------------------------------------------------------------------
# Message IDs


class MidAllocator:
    """Message IDs for one endpoint pair, never reused within EXCHANGE_LIFETIME (RFC 7252 §4.4, §4.8.2).

    IDs are handed out in sequence, so the ID to reuse next is always the oldest one: a deque of
    the times they were taken is the whole state. When all 65,536 were taken less than
    ``lifetime`` ago, :meth:`take` returns ``None`` and the caller waits — this is the ≈ 265 CON/s
    per endpoint pair budget.
    """

    __slots__ = ("_next", "_used", "lifetime")

    def __init__(self, lifetime: float = EXCHANGE_LIFETIME, start: int = 0):
        self.lifetime = lifetime
        self._next = start & 0xFFFF
        self._used: deque[float] = deque()

    def available(self, now: float) -> bool:
        return len(self._used) < MID_SPACE or self._used[0] + self.lifetime <= now

    def take(self, now: float) -> int | None:
        if len(self._used) >= MID_SPACE:
            if self._used[0] + self.lifetime > now:
                return None
            self._used.popleft()
        self._used.append(now)
        mid = self._next
        self._next = (mid + 1) & 0xFFFF
        return mid

    def next_free_at(self) -> float:
        return self._used[0] + self.lifetime if len(self._used) >= MID_SPACE else 0.0


# --------------------------------------------------------------------------------------------
# PC5 links


@dataclass(eq=False)
class Pc5Link:
    """One PC5 one-to-one link (TS 23.304 5.8.2; SPEC D8)."""

    link_id: int
    l2id: int
    endpoint: Endpoint
    user_info: str
    established_at: float
    last_seen: float
    auto: bool = False
    released: bool = False
    released_at: float = 0.0
    mids: MidAllocator = field(default_factory=MidAllocator)  # downlink MIDs towards this UE
    exchanges: set = field(default_factory=set)
    # downlink CON MID → (uplink, server MID): the UE's ACK/RST is relayed back as the server's
    pending_acks: dict[int, tuple[Any, int]] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "l2id": f"{self.l2id:06x}",
            "endpoint": f"{self.endpoint[0]}:{self.endpoint[1]}",
            "userInfo": self.user_info,
            "auto": self.auto,
            "exchanges": len(self.exchanges),
        }


class LinkTableFull(Exception):
    pass


class Pc5LinkTable:
    """Remote UE Layer-2 ID ↔ endpoint, at most ``max_links`` links (SPEC D8; TS 23.304)."""

    def __init__(self, max_links: int = 8):
        self.max_links = max_links
        self._by_endpoint: dict[Endpoint, Pc5Link] = {}
        self._by_l2id: dict[int, Pc5Link] = {}
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._by_endpoint)

    def __iter__(self):
        return iter(list(self._by_endpoint.values()))

    @property
    def full(self) -> bool:
        return len(self._by_endpoint) >= self.max_links

    def by_endpoint(self, endpoint: Endpoint) -> Pc5Link | None:
        return self._by_endpoint.get(endpoint)

    def by_l2id(self, l2id: int) -> Pc5Link | None:
        return self._by_l2id.get(l2id)

    def add(self, endpoint: Endpoint, l2id: int, user_info: str, now: float, auto: bool = False) -> Pc5Link:
        """Create a link; the caller has released any link on the same endpoint or Layer-2 ID."""
        if endpoint in self._by_endpoint or l2id in self._by_l2id:
            raise ValueError("endpoint or Layer-2 ID already linked")
        if self.full:
            raise LinkTableFull
        link = Pc5Link(self._next_id, l2id, endpoint, user_info, now, now, auto=auto)
        link.mids = MidAllocator(start=(self._next_id * 7919) & 0xFFFF)
        self._next_id += 1
        self._by_endpoint[endpoint] = link
        self._by_l2id[l2id] = link
        return link

    def remove(self, link: Pc5Link) -> None:
        if self._by_endpoint.get(link.endpoint) is link:
            del self._by_endpoint[link.endpoint]
        if self._by_l2id.get(link.l2id) is link:
            del self._by_l2id[link.l2id]
        link.released = True

    def expired(self, now: float, timeout: float) -> list[Pc5Link]:
        return [link for link in self._by_endpoint.values() if now - link.last_seen > timeout]


# --------------------------------------------------------------------------------------------
# Recipient (forward-proxy options, RFC 7252 §5.7.2 / §6.4 / §6.5)


@dataclass(frozen=True, slots=True)
class Recipient:
    scheme: str
    host: str  # lower case; IP literals normalised, without brackets
    port: int


_NOT_URI_CHAR = re.compile(r"[^\x21-\x7e]")  # RFC 3986: anything else must be percent-encoded


@functools.lru_cache(maxsize=1024)
def _norm_host(host: str) -> str:
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _bad(code: int, detail: str, cause: str) -> Problem:
    return Problem(code, detail, cause)


def proxy_target(msg: Message) -> tuple[Recipient, tuple] | Problem | None:
    """Read the recipient of a request from its forward-proxy options (SPEC D8; RFC 7252 §5.7.2).

    Returns ``(recipient, extra options for the uplink request)``, a :class:`Problem` (4.00 /
    4.02) for malformed proxy options, or ``None`` when the request carries none (it is then
    addressed to the relay itself). With ``Proxy-Uri`` the URI is decomposed into Uri-Host (for
    names, not IP literals), Uri-Path and Uri-Query per RFC 7252 §6.4; with ``Proxy-Scheme`` the
    Uri-* options already present travel on unchanged (this is the form OSCORE uses).
    """
    opt = msg.opt
    for number in NOT_REPEATABLE:
        if len(opt.get_option(number)) > 1:
            return _bad(0x82, f"option {number.name} repeated", "REPEATED_OPTION")
    proxy_uri = opt.proxy_uri
    proxy_scheme = opt.proxy_scheme
    if proxy_uri is not None:
        conflicting = [
            n.name for n in (PROXY_SCHEME, URI_HOST, URI_PORT, URI_PATH, URI_QUERY) if opt.get_option(n)
        ]
        if conflicting:
            return _bad(
                0x82,
                f"Proxy-Uri must not be combined with {', '.join(conflicting)} (RFC 7252 §5.10.2)",
                "CONFLICTING_PROXY_OPTIONS",
            )
        return _parse_proxy_uri(proxy_uri)
    if proxy_scheme is not None:
        host = opt.uri_host
        if not host:
            return _bad(0x80, "Proxy-Scheme without Uri-Host: the recipient is unknown", "MISSING_URI_HOST")
        port = opt.uri_port
        if port is None:
            port = DEFAULT_PORT
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            return _bad(0x80, f"Uri-Port {port!r} out of range", "INVALID_URI_PORT")
        return Recipient(proxy_scheme.lower(), _norm_host(host), port), ()
    return None


@functools.lru_cache(maxsize=4096)  # block-wise follow-ups and retries repeat the same Proxy-Uri
def _parse_proxy_uri(uri: str) -> tuple[Recipient, tuple] | Problem:
    if len(uri.encode()) > MAX_PROXY_URI:
        return _bad(0x80, f"Proxy-Uri longer than {MAX_PROXY_URI} bytes", "INVALID_PROXY_URI")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as e:
        return _bad(0x80, f"Proxy-Uri is not a URI: {e}", "INVALID_PROXY_URI")
    if not parts.scheme or not parts.netloc or not parts.hostname:
        return _bad(0x80, "Proxy-Uri must be an absolute URI with a host", "INVALID_PROXY_URI")
    if parts.fragment or "#" in uri:
        return _bad(0x80, "Proxy-Uri must not carry a fragment", "INVALID_PROXY_URI")
    if parts.username is not None or parts.password is not None:
        return _bad(0x80, "Proxy-Uri must not carry user information", "INVALID_PROXY_URI")
    if _NOT_URI_CHAR.search(uri):
        return _bad(0x80, "Proxy-Uri contains characters that must be percent-encoded", "INVALID_PROXY_URI")
    try:
        path = (
            [urllib.parse.unquote(p, errors="strict") for p in parts.path.split("/")[1:]]
            if parts.path not in ("", "/")
            else []
        )
        query = (
            [urllib.parse.unquote(q, errors="strict") for q in parts.query.split("&")] if parts.query else []
        )
    except UnicodeError:
        return _bad(0x80, "Proxy-Uri percent-encodes something that is not UTF-8", "INVALID_PROXY_URI")
    if parts.path and not parts.path.startswith("/"):
        return _bad(0x80, "Proxy-Uri path must be absolute", "INVALID_PROXY_URI")
    host = _norm_host(parts.hostname)
    extra = []
    if not _is_ip_literal(parts.hostname):
        extra.append(URI_HOST.create_option(value=host))
    extra.extend(URI_PATH.create_option(value=p) for p in path)
    extra.extend(URI_QUERY.create_option(value=q) for q in query)
    return Recipient(parts.scheme.lower(), host, port if port is not None else DEFAULT_PORT), tuple(extra)


def uplink_request(msg: Message, extra: tuple) -> Message:
    """The request as it goes uplink: proxy options removed (and Proxy-Uri decomposed), all else kept."""
    up = Message(code=msg.code, payload=msg.payload)
    for o in msg.opt.option_list():
        if o.number not in (PROXY_URI, PROXY_SCHEME):
            up.opt.add_option(o)
    for o in extra:
        up.opt.add_option(o)
    return up


def _forwardable_method(msg: Message) -> bool:
    """GET (seed 6.2.2.1); POST/FETCH only as the outer code of an OSCORE request (RFC 8613 §4.2)."""
    if msg.code == Code.GET:
        return True
    return msg.code in (Code.POST, Code.FETCH) and bool(msg.opt.get_option(OSCORE))


# --------------------------------------------------------------------------------------------
# Exchanges and uplink endpoints

QUEUED = "queued"  # waiting for an NSTART slot or a message ID
SENT = "sent"  # relayed, nothing back yet
ACKED = "acked"  # the server sent an empty ACK; the response follows separately
ANSWERED = "answered"  # final response relayed (or discarded)
OBSERVING = "observing"  # response carried Observe: notifications follow (RFC 7641)
DONE = "done"


@dataclass(eq=False)
class Exchange:
    """One request of one remote UE, relayed uplink, and everything that answers it."""

    link: Pc5Link
    uplink: Uplink
    ue_token: bytes
    ue_mid: int
    ue_con: bool
    up_token: bytes
    request: Message
    created: float
    up_mid: int | None = None
    state: str = QUEUED
    sent_at: float = 0.0
    outstanding: bool = False
    ue_acked: bool = False  # the UE's CON has been acknowledged (piggybacked or empty ACK)
    replay: Message | None = None  # what answered the UE's CON, for its retransmissions
    ended_at: float | None = None


@dataclass(eq=False)
class ServerMessage:
    """A CON/NON response or notification from the server, remembered for its retransmissions."""

    at: float
    up_token: bytes
    down: tuple[Endpoint, Message] | None = None  # what was sent downlink (None: discarded → RST)
    ue_acked: bool = False


class Uplink:
    """One uplink endpoint: a CoAP client towards the SCM-S bound by NSTART and its MID budget."""

    def __init__(self, key: int, lifetime: float, start: int):
        self.key = key
        self.mids = MidAllocator(lifetime, start)
        self.queue: deque[Exchange] = deque()
        self.outstanding: list[Exchange] = []
        self.by_token: dict[bytes, Exchange] = {}
        self.by_mid: dict[int, Exchange] = {}
        self.server_msgs: dict[int, ServerMessage] = {}
        self.server_order: deque[tuple[float, int]] = deque()
        self._token = (start * 2654435761) & 0xFFFFFFFF
        self.closing_since: float | None = None

    def new_token(self) -> bytes:
        while True:
            self._token = (self._token + 1) & 0xFFFFFFFF
            token = self._token.to_bytes(4, "big")
            if token not in self.by_token:
                return token

    def live(self) -> bool:
        return bool(self.queue or self.outstanding or self.by_token)


# --------------------------------------------------------------------------------------------
# Datagram classification (used by the shell)


class MalformedDatagram(ValueError):
    pass


def parse_datagram(data: bytes) -> Message | Pc5Message:
    """PC5 signalling or CoAP (by the first octet, see :mod:`.pc5`); raises MalformedDatagram."""
    if pc5.is_pc5(data):
        try:
            return pc5.decode(data)
        except pc5.Pc5Error as e:
            raise MalformedDatagram(str(e)) from None
    try:
        msg = Message.decode(data)
    except Exception as e:  # aiocoap raises several types for garbage (struct, unicode, value errors)
        raise MalformedDatagram(f"not a CoAP message: {e}") from None
    tkl = data[0] & 0x0F
    if tkl > 8 or len(msg.token) != tkl:  # TKL 9-15 are reserved (RFC 7252 §3); or the token is cut off
        raise MalformedDatagram("bad token length")
    return msg


def _message(mtype: Type, code: Code, mid: int, token: bytes = b"", payload: bytes = b"") -> Message:
    m = Message(code=code, payload=payload)
    m.mtype = mtype
    m.mid = mid
    m.token = token
    return m


def _relabel(msg: Message, mtype: Type, mid: int, token: bytes) -> Message:
    """The same message (code, options, payload untouched) with this hop's type, MID and token."""
    m = Message(code=msg.code, payload=msg.payload)
    m.opt = msg.opt
    m.mtype = mtype
    m.mid = mid
    m.token = token
    return m


# --------------------------------------------------------------------------------------------
# The relay


class RelayCore:
    """Relay UE decision logic (TS 24.538 6.2.2.1; SPEC D8). See the module docstring."""

    def __init__(self, config: RelayConfig):
        self.config = config
        self.links = Pc5LinkTable(config.max_links)
        self.counters = RelayCounters()
        self._server_names = config.server_names()
        self._uplinks: dict[int, Uplink] = {}
        self._by_ue_mid: dict[tuple[int, int], Exchange] = {}  # (link id, UE MID) → exchange
        self._by_ue_token: dict[tuple[int, bytes], Exchange] = {}  # live exchanges only
        self._ended: deque[tuple[float, Exchange]] = deque()
        self._auto_l2 = 0

    # ---- small helpers ----------------------------------------------------------------------

    def _discard(self, reason: str, detail: str = "") -> Discard:
        self.counters.discarded[reason] += 1
        return Discard(reason, detail)

    def _drop_malformed(self, detail: str) -> list[Action]:
        self.counters.dropped_malformed += 1
        return [Discard("malformed", detail)]

    def is_cm_server(self, r: Recipient) -> bool:
        return (
            r.scheme == self.config.server_scheme
            and r.host in self._server_names
            and r.port == self.config.server_port
        )

    def uplink_stats(self) -> dict[str, Any]:
        return {
            str(k): {"queued": len(u.queue), "outstanding": len(u.outstanding), "exchanges": len(u.by_token)}
            for k, u in self._uplinks.items()
        }

    # ---- PC5 side -----------------------------------------------------------------------------

    def on_pc5_malformed(self, endpoint: Endpoint, detail: str, now: float) -> list[Action]:
        """A datagram on the PC5 port that is neither CoAP nor PC5 signalling: dropped, counted."""
        return self._drop_malformed(detail)

    def on_pc5(self, endpoint: Endpoint, msg: Message | Pc5Message, now: float) -> list[Action]:
        """One parsed datagram from a remote UE (TS 24.538 6.2.2.1; SPEC D8)."""
        if isinstance(msg, Pc5Message):
            return self._on_signalling(endpoint, msg, now)
        actions: list[Action] = []
        link = self.links.by_endpoint(endpoint)
        if link is None:
            if not self.config.auto_link:
                self.counters.dropped_no_link += 1
                return [Discard("no-link", f"{endpoint}")]
            link = self._auto_link(endpoint, now, actions)
            if link is None:
                self.counters.dropped_no_link += 1
                return [*actions, Discard("no-link", "link table full")]
        link.last_seen = now
        try:
            code = Code(msg.code)
        except ValueError:
            return self._drop_malformed("unknown code")
        if code == Code.EMPTY:
            actions += self._on_pc5_empty(link, msg, now)
        elif code.is_request():
            actions += self._on_request(link, msg, now)
        elif msg.mtype == Type.CON:
            self.counters.dropped_malformed += 1  # a UE does not answer the relay
            actions.append(SendDownlink(link.endpoint, _message(Type.RST, Code.EMPTY, msg.mid)))
        else:
            actions += self._drop_malformed("response from a remote UE")
        return actions

    def _on_signalling(self, endpoint: Endpoint, m: Pc5Message, now: float) -> list[Action]:
        """PC5 link establishment, keep-alive and release (SPEC D8, modelled on TS 24.554 7.2.2-7.2.4)."""
        link = self.links.by_endpoint(endpoint)
        if m.type == Pc5Type.LINK_ESTABLISHMENT_REQUEST:
            if link is not None and link.l2id == m.l2id:  # retransmitted request: same link
                link.last_seen = now
                return [SendPc5(endpoint, self._accept(m))]
            actions: list[Action] = []
            if link is not None:
                actions += self._release(link, now, "replaced")
            other = self.links.by_l2id(m.l2id)
            if other is not None:  # the Layer-2 ID moved to a new endpoint: the newest link wins
                actions += self._release(other, now, "replaced")
            if self.links.full:
                self.counters.links_rejected += 1
                return [
                    *actions,
                    SendPc5(
                        endpoint, m.reply(Pc5Type.LINK_ESTABLISHMENT_REJECT, cause=Pc5Cause.LACK_OF_RESOURCES)
                    ),
                ]
            link = self.links.add(endpoint, m.l2id, m.user_info or "", now)
            self.counters.links_established += 1
            actions += self._open_uplink_for(link)
            actions.append(SendPc5(endpoint, self._accept(m)))
            return actions
        if m.type == Pc5Type.LINK_KEEPALIVE_REQUEST:
            if link is None or link.l2id != m.l2id:
                self.counters.dropped_no_link += 1
                return [Discard("no-link", "keep-alive without a link")]
            link.last_seen = now
            return [SendPc5(endpoint, m.reply(Pc5Type.LINK_KEEPALIVE_RESPONSE, counter=m.counter))]
        if m.type == Pc5Type.LINK_RELEASE_REQUEST:
            actions = []
            if link is not None and link.l2id == m.l2id:
                actions += self._release(link, now, "requested")
            # a release for a link that no longer exists is accepted again (its accept was lost)
            actions.append(SendPc5(endpoint, m.reply(Pc5Type.LINK_RELEASE_ACCEPT)))
            return actions
        return self._drop_malformed(f"unexpected PC5 signalling {m.type.name}")

    def _accept(self, m: Pc5Message) -> Pc5Message:
        return m.reply(
            Pc5Type.LINK_ESTABLISHMENT_ACCEPT,
            user_info=self.config.user_info,
            keepalive=self.config.keepalive,
        )

    def _auto_link(self, endpoint: Endpoint, now: float, actions: list[Action]) -> Pc5Link | None:
        """``--auto-link``: the first datagram from a new endpoint establishes its link (lab aid)."""
        if self.links.full:
            self.counters.links_rejected += 1
            return None
        while True:
            self._auto_l2 = (self._auto_l2 + 1) & 0x7FFFFF
            l2id = 0x800000 | self._auto_l2  # synthetic Layer-2 IDs: top bit set
            if self.links.by_l2id(l2id) is None:
                break
        link = self.links.add(endpoint, l2id, f"auto:{endpoint[0]}:{endpoint[1]}", now, auto=True)
        self.counters.links_established += 1
        actions += self._open_uplink_for(link)
        return link

    def _open_uplink_for(self, link: Pc5Link) -> list[Action]:
        key = link.link_id if self.config.mode == MODE_L2 else SHARED_UPLINK
        if key in self._uplinks:
            return []
        self._uplinks[key] = Uplink(key, self.config.exchange_lifetime, start=(key * 40503 + 1) & 0xFFFF)
        return [OpenUplink(key)]

    def _uplink_of(self, link: Pc5Link) -> Uplink:
        return self._uplinks[link.link_id if self.config.mode == MODE_L2 else SHARED_UPLINK]

    def release_link(self, link: Pc5Link, now: float, reason: str = "admin") -> list[Action]:
        return self._release(link, now, reason)

    def _release(self, link: Pc5Link, now: float, reason: str) -> list[Action]:
        """Release a link; requests not yet relayed are dropped, responses still due will be discarded."""
        self.links.remove(link)
        link.released_at = now
        self.counters.links_released[reason] += 1
        actions: list[Action] = []
        freed: set[int] = set()
        for ex in list(link.exchanges):
            if ex.state == QUEUED:
                ex.uplink.queue.remove(ex)
                actions.append(self._discard("request-link-released"))
                self._end(ex, now)
            elif ex.outstanding:
                # Nobody will retransmit this request any more (the relay mirrors the UE's
                # retransmissions): stop holding the uplink's NSTART slot for it, or in L3 mode every
                # other UE would wait up to MAX_TRANSMIT_WAIT. A late answer is still discarded.
                self._settle(ex)
                freed.add(ex.uplink.key)
        for key in freed:
            if key in self._uplinks:
                actions += self._pump(self._uplinks[key], now)
        if self.config.mode == MODE_L2:
            uplink = self._uplinks.get(link.link_id)
            if uplink is not None:
                uplink.closing_since = now
                actions += self._maybe_close(uplink, now)
        return actions

    def _maybe_close(self, uplink: Uplink, now: float) -> list[Action]:
        """Close a released link's layer-2 uplink once nothing more can arrive for it."""
        if uplink.closing_since is None:
            return []
        if uplink.live() and now - uplink.closing_since < self.config.exchange_lifetime:
            return []
        del self._uplinks[uplink.key]
        for ex in list(uplink.by_token.values()):
            self._end(ex, now)
        return [CloseUplink(uplink.key)]

    def _on_pc5_empty(self, link: Pc5Link, msg: Message, now: float) -> list[Action]:
        """Empty messages from a remote UE: ping, or the ACK/RST of a downlink CON."""
        if msg.mtype == Type.CON:  # CoAP ping (RFC 7252 §4.3): answered by the relay, refreshes the link
            return [SendDownlink(link.endpoint, _message(Type.RST, Code.EMPTY, msg.mid))]
        if msg.mtype in (Type.ACK, Type.RST):
            pending = link.pending_acks.pop(msg.mid, None)
            if pending is None:
                return [Discard("stray-ack")]
            uplink, server_mid = pending
            if self._uplinks.get(uplink.key) is not uplink:
                return [Discard("stray-ack")]
            record = uplink.server_msgs.get(server_mid)
            if record is not None:
                record.ue_acked = True
            actions: list[Action] = [SendUplink(uplink.key, _message(msg.mtype, Code.EMPTY, server_mid))]
            if msg.mtype == Type.RST and record is not None:
                # the UE rejected a notification: the server cancels the observation (RFC 7641 §3.6)
                ex = uplink.by_token.get(record.up_token)
                if ex is not None and ex.link is link:
                    self._end(ex, now)
            return actions
        return self._drop_malformed("empty NON")

    # ---- requests from remote UEs ---------------------------------------------------------------

    def _answer(self, link: Pc5Link, req: Message, problem: Problem, now: float) -> Answer:
        """The relay's own error answer, with concise problem details (SPEC §2, D8)."""
        self.counters.answered[code_text(problem.code)] += 1
        if req.mtype == Type.CON:  # piggybacked on the ACK
            resp = _message(Type.ACK, Code(problem.code), req.mid, req.token, problem.encode())
        else:
            mid = link.mids.take(now)
            mid = req.mid if mid is None else mid
            resp = _message(Type.NON, Code(problem.code), mid, req.token, problem.encode())
        resp.opt.content_format = CF_PROBLEM
        return Answer(link.endpoint, resp, problem)

    def _on_request(self, link: Pc5Link, msg: Message, now: float) -> list[Action]:
        """A request from a linked remote UE: relay it uplink, or answer it (seed 6.2.2.1; SPEC D8)."""
        if msg.mtype not in (Type.CON, Type.NON):
            return self._drop_malformed("request in an ACK or RST")
        dup = self._by_ue_mid.get((link.link_id, msg.mid))
        if dup is not None and dup.ue_token == msg.token:
            return self._on_duplicate(dup, now)
        try:
            target = proxy_target(msg)
        except Exception as e:  # option values the decoder accepted but that make no sense
            return [
                self._answer(
                    link, msg, _bad(0x80, f"unusable proxy options: {e}", "INVALID_PROXY_OPTIONS"), now
                )
            ]
        if target is None:
            return [
                self._answer(
                    link,
                    msg,
                    Problem(
                        0x84,
                        "the relay serves no resources on its PC5 side; name the configuration management "
                        "server in Proxy-Uri or Proxy-Scheme + Uri-Host",
                        "NOT_A_PROXY_REQUEST",
                    ),
                    now,
                )
            ]
        if isinstance(target, Problem):
            return [self._answer(link, msg, target, now)]
        recipient, extra = target
        if not self.is_cm_server(recipient):
            return [
                self._answer(
                    link,
                    msg,
                    Problem(
                        0xA5,
                        f"this relay forwards only to its configuration management server "
                        f"{self.config.server_scheme}://{self.config.server_host}:{self.config.server_port}, "
                        f"not to {recipient.scheme}://{recipient.host}:{recipient.port}",
                        "RECIPIENT_NOT_CM_SERVER",
                    ),
                    now,
                )
            ]
        if not _forwardable_method(msg):
            return [
                self._answer(
                    link,
                    msg,
                    Problem(
                        0x85,
                        f"the relay forwards GET only (seed 6.2.2.1), not {Code(msg.code).name_printable}",
                        "METHOD_NOT_RELAYED",
                    ),
                    now,
                )
            ]
        uplink = self._uplink_of(link)
        old = self._by_ue_token.get((link.link_id, msg.token))
        if old is not None:
            # Same token again (re-registration or deregistration of an observation, RFC 7641 §3.6;
            # or a follow-up the client chose to send with the same token): it keeps its relay token.
            up_token = old.up_token
            self._end(old, now)
        else:
            up_token = uplink.new_token()
        ex = Exchange(
            link=link,
            uplink=uplink,
            ue_token=msg.token,
            ue_mid=msg.mid,
            ue_con=msg.mtype == Type.CON,
            up_token=up_token,
            request=uplink_request(msg, extra),
            created=now,
        )
        ex.request.token = up_token
        ex.request.mtype = msg.mtype
        link.exchanges.add(ex)
        uplink.by_token[up_token] = ex
        self._by_ue_mid[(link.link_id, msg.mid)] = ex
        self._by_ue_token[(link.link_id, msg.token)] = ex
        uplink.queue.append(ex)
        return self._pump(uplink, now)

    def _on_duplicate(self, ex: Exchange, now: float) -> list[Action]:
        """A UE retransmission (same MID): never a second request (RFC 7252 §4.5)."""
        self.counters.duplicates_from_ue += 1
        if ex.state == SENT and ex.outstanding and ex.up_mid is not None:
            # still no answer: retransmit uplink with the same relay MID (the server deduplicates)
            self.counters.retransmitted_up += 1
            return [SendUplink(ex.uplink.key, ex.request)]
        if ex.replay is not None and ex.ue_con:
            return [SendDownlink(ex.link.endpoint, ex.replay)]
        return [Discard("duplicate")]

    def _pump(self, uplink: Uplink, now: float) -> list[Action]:
        """Send queued requests while NSTART and the MID budget allow (RFC 7252 §4.7, §4.8.2)."""
        actions: list[Action] = []
        while uplink.queue and len(uplink.outstanding) < self.config.nstart:
            mid = uplink.mids.take(now)
            if mid is None:  # all 65,536 MIDs used within EXCHANGE_LIFETIME: wait (≈ 265/s budget)
                break
            ex = uplink.queue.popleft()
            ex.request.mid = mid
            ex.up_mid = mid
            ex.state = SENT
            ex.sent_at = now
            ex.outstanding = True
            uplink.outstanding.append(ex)
            uplink.by_mid[mid] = ex
            self.counters.relayed_up += 1
            actions.append(SendUplink(uplink.key, ex.request))
        return actions

    def _settle(self, ex: Exchange) -> None:
        """The request is no longer outstanding (ACK, response, RST or timeout): frees its NSTART slot."""
        if ex.outstanding:
            ex.outstanding = False
            ex.uplink.outstanding.remove(ex)

    def _end(self, ex: Exchange, now: float) -> None:
        """No more responses are expected for this exchange."""
        if ex.state == DONE:
            return
        self._settle(ex)
        ex.state = DONE
        ex.ended_at = now
        if ex.uplink.by_token.get(ex.up_token) is ex:
            del ex.uplink.by_token[ex.up_token]
        key = (ex.link.link_id, ex.ue_token)
        if self._by_ue_token.get(key) is ex:
            del self._by_ue_token[key]
        ex.link.exchanges.discard(ex)
        self._ended.append((now, ex))

    # ---- Uu side --------------------------------------------------------------------------------

    def on_uu(self, uplink_key: int, msg: Message, now: float) -> list[Action]:
        """One parsed datagram from the SCM-S on uplink endpoint ``uplink_key`` (seed 6.2.2.1)."""
        uplink = self._uplinks.get(uplink_key)
        if uplink is None:
            return [self._discard("unknown-uplink")]
        try:
            code = Code(msg.code)
        except ValueError:
            return self._drop_malformed("unknown code")
        if code == Code.EMPTY:
            actions = self._on_uu_empty(uplink, msg, now)
        elif code.is_response():
            actions = self._on_response(uplink, msg, code, now)
        elif msg.mtype == Type.CON:  # requests from the server (or pings): nothing here serves them
            actions = [SendUplink(uplink.key, _message(Type.RST, Code.EMPTY, msg.mid))]
        else:
            actions = self._drop_malformed("request from the server")
        if uplink.closing_since is not None:
            actions += self._maybe_close(uplink, now)
        return actions

    def _on_uu_empty(self, uplink: Uplink, msg: Message, now: float) -> list[Action]:
        if msg.mtype == Type.CON:  # ping
            return [SendUplink(uplink.key, _message(Type.RST, Code.EMPTY, msg.mid))]
        if msg.mtype not in (Type.ACK, Type.RST):
            return self._drop_malformed("empty NON")
        ex = uplink.by_mid.get(msg.mid)
        if ex is None or ex.state not in (SENT, ACKED):
            return [Discard("stray-ack")]
        actions: list[Action] = []
        self._settle(ex)
        actions += self._pump(uplink, now)
        down_ok = not ex.link.released and ex.ue_con and not ex.ue_acked
        if msg.mtype == Type.ACK:  # the response follows separately (RFC 7252 §5.2.2): tell the UE
            ex.state = ACKED
            if down_ok:
                ex.ue_acked = True
                ex.replay = _message(Type.ACK, Code.EMPTY, ex.ue_mid)
                actions.append(SendDownlink(ex.link.endpoint, ex.replay))
        else:  # the server rejected the request
            if down_ok:
                ex.ue_acked = True
                ex.replay = _message(Type.RST, Code.EMPTY, ex.ue_mid)
                actions.append(SendDownlink(ex.link.endpoint, ex.replay))
            elif ex.link.released:
                actions.append(self._discard("link-released"))
            self._end(ex, now)
        return actions

    def _on_response(self, uplink: Uplink, msg: Message, code: Code, now: float) -> list[Action]:
        """Relay a response downlink to the client whose request it answers, if its link lives."""
        actions: list[Action] = []
        if msg.mtype == Type.ACK:  # piggybacked: matched by MID and token (RFC 7252 §5.3.2)
            ex = uplink.by_mid.get(msg.mid)
            if ex is None or ex.up_token != msg.token or ex.state not in (SENT, ACKED):
                return [Discard("duplicate-response" if ex is not None else "stray-ack")]
        elif msg.mtype in (Type.CON, Type.NON):
            record = uplink.server_msgs.get(msg.mid)
            if record is not None:  # the server retransmitted: repeat what we did (same MIDs)
                return self._repeat(uplink, msg, record)
            ex = uplink.by_token.get(msg.token)
            record = ServerMessage(now, msg.token)
            uplink.server_msgs[msg.mid] = record
            uplink.server_order.append((now, msg.mid))
            if ex is None:  # nobody asked for this (anymore): reject it (RFC 7252 §4.2, RFC 7641 §3.6)
                return [
                    self._discard("unknown-exchange"),
                    SendUplink(uplink.key, _message(Type.RST, Code.EMPTY, msg.mid)),
                ]
        else:
            return self._drop_malformed("response in an RST")
        self._settle(ex)
        actions += self._pump(uplink, now)
        link = ex.link
        observing = msg.opt.observe is not None and code.is_successful()
        if link.released:
            actions.append(
                self._discard("link-released", f"{code_text(code)} for Layer-2 ID {link.l2id:06x}")
            )
            if msg.mtype != Type.ACK:
                actions.append(SendUplink(uplink.key, _message(Type.RST, Code.EMPTY, msg.mid)))
            self._end(ex, now)
            return actions
        # build the downlink message: same code, options, payload; the UE's token; this hop's MID
        if msg.mtype == Type.ACK and ex.ue_con and not ex.ue_acked:
            down = _relabel(msg, Type.ACK, ex.ue_mid, ex.ue_token)
            ex.ue_acked = True
            ex.replay = down
        else:
            mtype = Type.CON if msg.mtype == Type.CON else Type.NON
            mid = link.mids.take(now)
            if mid is None:
                actions.append(self._discard("downlink-mid-exhausted"))
                if msg.mtype == Type.CON:
                    actions.append(SendUplink(uplink.key, _message(Type.RST, Code.EMPTY, msg.mid)))
                return actions
            down = _relabel(msg, mtype, mid, ex.ue_token)
            if mtype == Type.CON:
                link.pending_acks[mid] = (uplink, msg.mid)
            record = uplink.server_msgs.get(msg.mid)
            if record is not None:
                record.down = (link.endpoint, down)
        self.counters.relayed_down += 1
        actions.append(SendDownlink(link.endpoint, down))
        if observing:
            ex.state = OBSERVING
        else:
            ex.state = ANSWERED
            self._end(ex, now)
        return actions

    def _repeat(self, uplink: Uplink, msg: Message, record: ServerMessage) -> list[Action]:
        """A server retransmission: the same downlink message again, or the same ACK/RST upstream."""
        if record.down is None:
            return [SendUplink(uplink.key, _message(Type.RST, Code.EMPTY, msg.mid)), Discard("repeat")]
        if record.ue_acked and msg.mtype == Type.CON:
            return [SendUplink(uplink.key, _message(Type.ACK, Code.EMPTY, msg.mid))]
        endpoint, down = record.down
        link = self.links.by_endpoint(endpoint)
        if link is None or msg.mtype != Type.CON:
            return [Discard("repeat")]
        self.counters.retransmitted_down += 1
        return [SendDownlink(endpoint, down)]

    # ---- time -------------------------------------------------------------------------------

    def on_tick(self, now: float) -> list[Action]:
        """Expire links, free NSTART slots of unanswered requests, resume queues, forget old state."""
        actions: list[Action] = []
        for link in self.links.expired(now, self.config.link_timeout):
            actions += self._release(link, now, "timeout")
            actions.append(
                SendPc5(
                    link.endpoint,
                    Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 0, l2id=link.l2id, cause=Pc5Cause.LINK_TIMEOUT),
                )
            )
        for uplink in list(self._uplinks.values()):
            for ex in list(uplink.outstanding):
                wait = self.config.con_wait if ex.ue_con else self.config.non_wait
                if now - ex.sent_at >= wait:
                    self._settle(ex)  # no longer expected (RFC 7252 §4.7); a late answer is still relayed
            actions += self._pump(uplink, now)
            while uplink.server_order and uplink.server_order[0][0] + self.config.exchange_lifetime <= now:
                _, mid = uplink.server_order.popleft()
                rec = uplink.server_msgs.get(mid)
                if rec is not None and rec.at + self.config.exchange_lifetime <= now:
                    del uplink.server_msgs[mid]
            for ex in list(uplink.by_token.values()):
                stale = (
                    ex.state in (SENT, ACKED)
                    and not ex.outstanding
                    and now - ex.created >= self.config.exchange_lifetime
                )
                orphan = ex.link.released and now - ex.link.released_at >= self.config.exchange_lifetime
                if stale or orphan:
                    self._end(ex, now)
            if uplink.closing_since is not None:
                actions += self._maybe_close(uplink, now)
        while self._ended and self._ended[0][0] + self.config.exchange_lifetime <= now:
            _, ex = self._ended.popleft()
            key = (ex.link.link_id, ex.ue_mid)
            if self._by_ue_mid.get(key) is ex:
                del self._by_ue_mid[key]
            if ex.up_mid is not None and ex.uplink.by_mid.get(ex.up_mid) is ex:
                del ex.uplink.by_mid[ex.up_mid]
        return actions

    def snapshot(self) -> dict[str, Any]:
        """Counters, links and uplinks for the admin resource."""
        return {
            "mode": self.config.mode,
            "server": f"{self.config.server_scheme}://{self.config.server_host}:{self.config.server_port}",
            "links": [link.describe() for link in self.links],
            "maxLinks": self.config.max_links,
            "uplinks": self.uplink_stats(),
            "counters": self.counters.to_map(),
        }
