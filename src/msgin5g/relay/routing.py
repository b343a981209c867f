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

Plus :func:`parse_datagram`, which tells PC5 signalling from CoAP and refuses garbage.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from .. import pc5
from ..pc5 import Pc5Message
from ..problem import Problem
from .links import Pc5Link, Pc5LinkTable

DEFAULT_PORT = 5683
MAX_PROXY_URI = 1034  # RFC 7252 §5.10 option length limit

PROXY_URI = OptionNumber.PROXY_URI
PROXY_SCHEME = OptionNumber.PROXY_SCHEME
URI_HOST = OptionNumber.URI_HOST
URI_PORT = OptionNumber.URI_PORT
URI_PATH = OptionNumber.URI_PATH
URI_QUERY = OptionNumber.URI_QUERY
OSCORE = OptionNumber.OSCORE
NOT_REPEATABLE = (PROXY_URI, PROXY_SCHEME, URI_HOST, URI_PORT)


# --------------------------------------------------------------------------------------------
# Datagram classification


class MalformedDatagram(ValueError):
    pass


def parse_datagram(data: bytes) -> Message | Pc5Message:
    """PC5 signalling or CoAP (by the first octet, see :mod:`msgin5g.pc5`); raises MalformedDatagram."""
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
    try:
        Code(msg.code)
    except ValueError:
        raise MalformedDatagram(f"unknown code {msg.code}") from None
    return msg


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
            return Problem(0x82, f"option {number.name} repeated", "REPEATED_OPTION")
    proxy_uri = opt.proxy_uri
    proxy_scheme = opt.proxy_scheme
    if proxy_uri is not None:
        conflicting = [
            n.name for n in (PROXY_SCHEME, URI_HOST, URI_PORT, URI_PATH, URI_QUERY) if opt.get_option(n)
        ]
        if conflicting:
            return Problem(
                0x82,
                f"Proxy-Uri must not be combined with {', '.join(conflicting)} (RFC 7252 §5.10.2)",
                "CONFLICTING_PROXY_OPTIONS",
            )
        return _parse_proxy_uri(proxy_uri)
    if proxy_scheme is not None:
        host = opt.uri_host
        if not host:
            detail = "Proxy-Scheme without Uri-Host: the recipient is unknown"
            return Problem(0x80, detail, "MISSING_URI_HOST")
        port = opt.uri_port
        if port is None:
            port = DEFAULT_PORT
        if not isinstance(port, int) or not 0 < port <= 0xFFFF:
            return Problem(0x80, f"Uri-Port {port!r} out of range", "INVALID_URI_PORT")
        return Recipient(proxy_scheme.lower(), norm_host(host), port), ()
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
    extra = []
    if not _is_ip_literal(parts.hostname):
        extra.append(URI_HOST.create_option(value=host))
    extra.extend(URI_PATH.create_option(value=p) for p in path)
    extra.extend(URI_QUERY.create_option(value=q) for q in query)
    return Recipient(parts.scheme.lower(), host, port if port is not None else DEFAULT_PORT), tuple(extra)


def uplink_request(msg: Message, extra: tuple) -> Message:
    """The request as it goes uplink: proxy options removed (and Proxy-Uri decomposed), all else kept.

    Type, message ID and token stay the UE's: the upstream flow is that UE's alone (SPEC D8)."""
    up = Message(code=msg.code, payload=msg.payload)
    up.mtype, up.mid, up.token = msg.mtype, msg.mid, msg.token
    for o in msg.opt.option_list():
        if o.number not in (PROXY_URI, PROXY_SCHEME):
            up.opt.add_option(o)
    for o in extra:
        up.opt.add_option(o)
    return up


def forwardable_method(msg: Message) -> bool:
    """GET (seed 6.2.2.1); POST/FETCH only as the outer code of an OSCORE request (RFC 8613 §4.2)."""
    if msg.code == Code.GET:
        return True
    return msg.code in (Code.POST, Code.FETCH) and bool(msg.opt.get_option(OSCORE))


# --------------------------------------------------------------------------------------------
# The two rules of 6.2.2.1


@dataclass(frozen=True, slots=True)
class Forward:
    """Relay the request uplink: ``datagram`` is the request as it goes to the SCM-S."""

    datagram: bytes


def relay_uplink(msg: Message, server: CmServer) -> Forward | Problem:
    """The uplink forwarding decision of TS 24.538 6.2.2.1 (SPEC D8) for one CoAP request.

    Recipient = the configured configuration management server → :class:`Forward`; another
    recipient → 5.05; malformed proxy options → 4.00 / 4.02; no proxy options → 4.04; a method
    the seed does not relay → 4.05.
    """
    try:
        target = proxy_target(msg)
    except Exception as e:  # option values the decoder accepted but that make no sense
        return Problem(0x80, f"unusable proxy options: {e}", "INVALID_PROXY_OPTIONS")
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
        return Problem(
            0x85,
            f"the relay forwards GET only (seed 6.2.2.1), not {Code(msg.code).name_printable}",
            "METHOD_NOT_RELAYED",
        )
    try:
        return Forward(uplink_request(msg, extra).encode())
    except Exception as e:  # an option the encoder refuses (e.g. a decomposed path segment too long)
        return Problem(0x80, f"the request cannot be relayed: {e}", "INVALID_PROXY_OPTIONS")


def relay_downlink(link: Pc5Link | None, links: Pc5LinkTable) -> bool:
    """The downlink discard rule of TS 24.538 6.2.2.1 (SPEC D8).

    A response is relayed to its recipient only while the recipient's PC5 one-to-one link — the
    link whose flow the response arrived on — is established; otherwise (released, timed out,
    replaced by a newer link of the same UE) it is discarded.
    """
    return link is not None and links.is_established(link)
