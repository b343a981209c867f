"""The Relay UE's routing rules, by name (TS 24.538 6.2.2.1; SPEC §3.2, D8; RFC 7252 §5.7.2).

Two rules of the seed, each a pure function:

* :func:`relay_uplink` — **the uplink forwarding decision** (6.2.2.1, first paragraph): a CoAP
  request whose recipient, given in the forward-proxy options (``Proxy-Uri``, or ``Proxy-Scheme``
  + ``Uri-Host``/``Uri-Port``/``Uri-Path``, RFC 7252 §5.7.2), is the configured configuration
  management server functionality is forwarded (:class:`Forward`, the request as it goes up);
  any other recipient gets 5.05 Proxying Not Supported; malformed proxy options 4.00 / 4.02; no
  proxy options 4.04; another method 4.05 — each a :class:`~msgin5g.problem.Problem` that the core
  sends back with concise problem details. Only the proxy options are rewritten: the token, the
  message ID, every other option and the payload travel untouched, so OSCORE (RFC 8613) protected
  requests — outer ``Proxy-Scheme``/``Uri-Host``, outer code POST or FETCH — pass through.
* :func:`relay_downlink` — **the downlink discard rule** (6.2.2.1, second paragraph): a response
  from the SCM-S is relayed to its recipient only while that MSGin5G Client has an established
  PC5 one-to-one link with the relay, and it is the link the request came from; otherwise it is
  discarded (and counted by the core). The recipient of a response is the remote UE whose
  upstream flow it arrives on (SPEC D8: each remote UE has a flow of its own), and within that
  flow it answers the request with the same token.

Plus :func:`parse_datagram`, which tells PC5 signalling from CoAP and refuses garbage. CoAP is
read and written with the project's one codec, :mod:`msgin5g.coap.wire`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from .. import api, pc5
from ..coap import wire
from ..coap.wire import CoapMessage, WireError
from ..pc5 import Pc5Message
from ..problem import Problem
from .links import Pc5Link, Pc5LinkTable

DEFAULT_PORT = api.SCM_PORT  # coap:// default port (RFC 7252 §6.1)
MAX_PROXY_URI = 1034  # RFC 7252 §5.10 option length limit

PROXY_URI = api.OPT_PROXY_URI
PROXY_SCHEME = api.OPT_PROXY_SCHEME
URI_HOST = api.OPT_URI_HOST
URI_PORT = api.OPT_URI_PORT
URI_PATH = api.OPT_URI_PATH
URI_QUERY = api.OPT_URI_QUERY
OSCORE = api.OPT_OSCORE
NOT_REPEATABLE = {
    PROXY_URI: "Proxy-Uri",
    PROXY_SCHEME: "Proxy-Scheme",
    URI_HOST: "Uri-Host",
    URI_PORT: "Uri-Port",
}
OPTION_NAMES = {**NOT_REPEATABLE, URI_PATH: "Uri-Path", URI_QUERY: "Uri-Query"}
#: code classes 1, 6 and 7 are reserved (RFC 7252 §12.1)
_RESERVED_CLASSES = frozenset({1, 6, 7})


# --------------------------------------------------------------------------------------------
# Datagram classification


class MalformedDatagram(ValueError):
    pass


def parse_datagram(data: bytes) -> CoapMessage | Pc5Message:
    """PC5 signalling or CoAP (by the first octet, see :mod:`msgin5g.pc5`); raises MalformedDatagram."""
    if pc5.is_pc5(data):
        try:
            return pc5.decode(data)
        except pc5.Pc5Error as e:
            raise MalformedDatagram(str(e)) from None
    try:
        msg = wire.decode(data)
    except WireError as e:
        raise MalformedDatagram(f"not a CoAP message: {e}") from None
    if msg.code >> 5 in _RESERVED_CLASSES:
        raise MalformedDatagram(f"reserved code {wire.code_text(msg.code)}")
    return msg


def _text(value: bytes) -> str | None:
    """A string option's value (RFC 7252 §3.2: UTF-8), None when it is not UTF-8."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --------------------------------------------------------------------------------------------
# The recipient of a request (forward-proxy options, RFC 7252 §5.7.2 / §6.4 / §6.5)


@dataclass(frozen=True, slots=True)
class Recipient:
    scheme: str
    host: str  # lower case; IP literals normalised, without brackets
    port: int


@functools.lru_cache(maxsize=1024)
def norm_host(host: str) -> str:
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


@dataclass(frozen=True)
class CmServer:
    """The configured configuration management server functionality (SPEC D8): the only recipient."""

    scheme: str
    names: frozenset[str]  # the host as configured and its addresses, normalised
    port: int

    @classmethod
    def of(cls, scheme: str, host: str, port: int, aliases=()) -> CmServer:
        return cls(scheme.lower(), frozenset(norm_host(h) for h in (host, *aliases)), port)

    def is_recipient(self, r: Recipient) -> bool:
        return r.scheme == self.scheme and r.host in self.names and r.port == self.port

    def describe(self) -> str:
        host = sorted(self.names)[0]
        return f"{self.scheme}://{host}:{self.port}"


_NOT_URI_CHAR = re.compile(r"[^\x21-\x7e]")  # RFC 3986: anything else must be percent-encoded


def proxy_target(msg: CoapMessage) -> tuple[Recipient, tuple] | Problem | None:
    """Read the recipient of a request from its forward-proxy options (SPEC D8; RFC 7252 §5.7.2).

    Returns ``(recipient, extra options for the uplink request)``, a :class:`Problem` (4.00 /
    4.02) for malformed proxy options, or ``None`` when the request carries none (it is then
    addressed to the relay itself). With ``Proxy-Uri`` the URI is decomposed into Uri-Host (for
    names, not IP literals), Uri-Path and Uri-Query per RFC 7252 §6.4; with ``Proxy-Scheme`` the
    Uri-* options already present travel on unchanged (this is the form OSCORE uses).
    """
    for number, name in NOT_REPEATABLE.items():
        if len(msg.values(number)) > 1:
            return Problem(0x82, f"option {name} repeated", "REPEATED_OPTION")
    proxy_uri = msg.first(PROXY_URI)
    proxy_scheme = msg.first(PROXY_SCHEME)
    if proxy_uri is not None:
        conflicting = [
            OPTION_NAMES[n]
            for n in (PROXY_SCHEME, URI_HOST, URI_PORT, URI_PATH, URI_QUERY)
            if msg.first(n) is not None
        ]
        if conflicting:
            return Problem(
                0x82,
                f"Proxy-Uri must not be combined with {', '.join(conflicting)} (RFC 7252 §5.10.2)",
                "CONFLICTING_PROXY_OPTIONS",
            )
        uri = _text(proxy_uri)
        if uri is None:
            return _bad_uri("Proxy-Uri is not UTF-8")
        return _parse_proxy_uri(uri)
    if proxy_scheme is not None:
        scheme = _text(proxy_scheme)
        host = _text(msg.first(URI_HOST) or b"")
        if scheme is None or host is None:
            return Problem(0x80, "Proxy-Scheme or Uri-Host is not UTF-8", "INVALID_PROXY_OPTIONS")
        if not host:
            detail = "Proxy-Scheme without Uri-Host: the recipient is unknown"
            return Problem(0x80, detail, "MISSING_URI_HOST")
        scheme = scheme.lower()
        port = msg.uint(URI_PORT)
        if port is None:
            port = api.DEFAULT_PORTS.get(scheme, DEFAULT_PORT)
        if not 0 < port <= 0xFFFF:
            return Problem(0x80, f"Uri-Port {port} out of range", "INVALID_URI_PORT")
        return Recipient(scheme, norm_host(host), port), ()
    return None


def _bad_uri(detail: str) -> Problem:
    return Problem(0x80, detail, "INVALID_PROXY_URI")


@functools.lru_cache(maxsize=4096)  # block-wise follow-ups and retries repeat the same Proxy-Uri
def _parse_proxy_uri(uri: str) -> tuple[Recipient, tuple] | Problem:
    if len(uri.encode()) > MAX_PROXY_URI:
        return _bad_uri(f"Proxy-Uri longer than {MAX_PROXY_URI} bytes")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as e:
        return _bad_uri(f"Proxy-Uri is not a URI: {e}")
    if not parts.scheme or not parts.netloc or not parts.hostname:
        return _bad_uri("Proxy-Uri must be an absolute URI with a host")
    if parts.fragment or "#" in uri:
        return _bad_uri("Proxy-Uri must not carry a fragment")
    if parts.username is not None or parts.password is not None:
        return _bad_uri("Proxy-Uri must not carry user information")
    if _NOT_URI_CHAR.search(uri):
        return _bad_uri("Proxy-Uri contains characters that must be percent-encoded")
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
        return _bad_uri("Proxy-Uri percent-encodes something that is not UTF-8")
    if parts.path and not parts.path.startswith("/"):
        return _bad_uri("Proxy-Uri path must be absolute")
    host = norm_host(parts.hostname)
    extra: list[tuple[int, bytes]] = []
    if not _is_ip_literal(parts.hostname):
        extra.append((URI_HOST, host.encode()))
    extra.extend((URI_PATH, p.encode()) for p in path)
    extra.extend((URI_QUERY, q.encode()) for q in query)
    scheme = parts.scheme.lower()
    return Recipient(
        scheme, host, port if port is not None else api.DEFAULT_PORTS.get(scheme, DEFAULT_PORT)
    ), tuple(extra)


def uplink_request(msg: CoapMessage, extra: tuple) -> CoapMessage:
    """The request as it goes uplink: proxy options removed (and Proxy-Uri decomposed), all else kept.

    Type, message ID and token stay the UE's: the upstream flow is that UE's alone (SPEC D8)."""
    options = msg.without(PROXY_URI, PROXY_SCHEME) + list(extra)
    return CoapMessage(msg.mtype, msg.code, msg.mid, msg.token, options, msg.payload)


def forwardable_method(msg: CoapMessage) -> bool:
    """GET (seed 6.2.2.1); POST/FETCH only as the outer code of an OSCORE request (RFC 8613 §4.2)."""
    if msg.code == wire.GET:
        return True
    return msg.code in (wire.POST, wire.FETCH) and msg.first(OSCORE) is not None


# --------------------------------------------------------------------------------------------
# The two rules of 6.2.2.1


_METHODS = {wire.GET: "GET", wire.POST: "POST", wire.PUT: "PUT", wire.DELETE: "DELETE", wire.FETCH: "FETCH"}


@dataclass(frozen=True, slots=True)
class Forward:
    """Relay the request uplink: ``datagram`` is the request as it goes to the SCM-S."""

    datagram: bytes


def relay_uplink(msg: CoapMessage, server: CmServer) -> Forward | Problem:
    """The uplink forwarding decision of TS 24.538 6.2.2.1 (SPEC D8) for one CoAP request.

    Recipient = the configured configuration management server → :class:`Forward`; another
    recipient → 5.05; malformed proxy options → 4.00 / 4.02; no proxy options → 4.04; a method
    the seed does not relay → 4.05.
    """
    target = proxy_target(msg)
    if target is None:
        return Problem(
            0x84,
            "the relay serves no resources on its PC5 side; name the configuration management "
            "server in Proxy-Uri or Proxy-Scheme + Uri-Host",
            "NOT_A_PROXY_REQUEST",
        )
    if isinstance(target, Problem):
        return target
    recipient, extra = target
    if not server.is_recipient(recipient):
        return Problem(
            0xA5,
            f"this relay forwards only to its configuration management server {server.describe()}, "
            f"not to {recipient.scheme}://{recipient.host}:{recipient.port}",
            "RECIPIENT_NOT_CM_SERVER",
        )
    if not forwardable_method(msg):
        method = _METHODS.get(msg.code, wire.code_text(msg.code))
        return Problem(
            0x85, f"the relay forwards GET only (seed 6.2.2.1), not {method}", "METHOD_NOT_RELAYED"
        )
    return Forward(wire.encode(uplink_request(msg, extra)))


def relay_downlink(link: Pc5Link | None, links: Pc5LinkTable) -> bool:
    """The downlink discard rule of TS 24.538 6.2.2.1 (SPEC D8).

    A response is relayed to its recipient only while the recipient's PC5 one-to-one link — the
    link whose flow the response arrived on — is established; otherwise (released, timed out,
    replaced by a newer link of the same UE) it is discarded.
    """
    return link is not None and links.is_established(link)
