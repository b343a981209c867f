"""The one place for the API's names: paths, query parameters, option numbers, ports, URI parsing.

TS 24.546 Annex C.1.1 (URI structure ``{apiRoot}/<apiName>/<apiVersion>/...``), C.2 (SU_UserProfile,
``su-up``), C.3 (SU_UeConfig, ``su-uc``); the seed's Gateway UE bulk GET (SPEC D6); the project's
private-use options (SPEC D9, D12) and default ports (SPEC D11).

Every actor, the CLI and the tests build paths and queries through this module; nothing else spells
``su-uc`` or an option number.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

# -- URI structure (TS 24.546 C.1.1, C.2.1.1, C.3.1.1) -------------------------------------------
SU_UC = "su-uc"  # SU_UeConfig API name
SU_UP = "su-up"  # SU_UserProfile API name
API_VERSION = "v1"
VAL_SERVICES = "val-services"
UE_CONFIGURATIONS = "ue-configurations"
USER_PROFILES = "user-profiles"
DEFAULT_SERVICE_ID = "msgin5g"  # the MSGin5G service identifier = VAL service ID (TS 23.554 8.1.2)

# -- query parameters (Table C.3.1.2.2.3.1-1; SPEC D6) -------------------------------------------
Q_UE_VENDOR = "ue-vendor"
Q_UE_TYPE = "ue-type"
Q_UE_SNR = "ue-snr"
Q_UE_URI = "ue-uri"
QUERY_PARAMS = (Q_UE_VENDOR, Q_UE_TYPE, Q_UE_SNR, Q_UE_URI)
#: The bulk configuration identifier (SPEC D6); the seed spells it ``bulkConfFlag``, also accepted.
Q_BULK_FLAG = "bulk-conf-flag"
Q_BULK_FLAG_SEED = "bulkConfFlag"
#: su-up's mandatory query parameter (Table C.2.1.2.2.3.1-1; SPEC D16)
Q_VAL_TGT_UE = "val-tgt-ue"

# -- option numbers (RFC 7252 §12.2, RFC 7959, RFC 7641, RFC 8613, RFC 9175, RFC 9177) -----------
OPT_IF_MATCH = 1
OPT_URI_HOST = 3
OPT_ETAG = 4
OPT_IF_NONE_MATCH = 5
OPT_OBSERVE = 6
OPT_URI_PORT = 7
OPT_OSCORE = 9
OPT_URI_PATH = 11
OPT_CONTENT_FORMAT = 12
OPT_MAX_AGE = 14
OPT_URI_QUERY = 15
OPT_Q_BLOCK1 = 19
OPT_ACCEPT = 17
OPT_LOCATION_PATH = 8
OPT_BLOCK2 = 23
OPT_BLOCK1 = 27
OPT_SIZE2 = 28
OPT_Q_BLOCK2 = 31
OPT_PROXY_URI = 35
OPT_PROXY_SCHEME = 39
OPT_SIZE1 = 60
OPT_ECHO = 252
OPT_NO_RESPONSE = 258
#: Private-use option claiming an identity to an ``--insecure`` (lab) SCM-S (SPEC D12).
OPT_LAB_IDENTITY = 65000
#: Private-use, elective, safe-to-forward, NoCacheKey ((65020 & 0x1e) == 0x1c) option: the request
#: is urgent and the gateway flushes its batch at once (SPEC D9). Value: empty.
OPT_URGENT = 65020

# -- default ports (SPEC D11) --------------------------------------------------------------------
SCM_PORT = 5683
RELAY_PC5_PORT = 65401  # seed 6.2.2.1
GATEWAY_PORT = 65402
SEAL_C_PORT = 65403

# -- schemes --------------------------------------------------------------------------------------
PLAIN_SCHEMES = ("coap", "coap+tcp", "coap+ws")
SECURE_SCHEMES = ("coaps", "coaps+tcp", "coaps+ws")  # TS 24.546 C.1.1
DEFAULT_PORTS = {
    "coap": 5683,
    "coap+tcp": 5683,
    "coaps": 5684,
    "coaps+tcp": 5684,
    "coap+ws": 80,
    "coaps+ws": 443,
}


class ApiUriError(ValueError):
    """A server URI or HOST:PORT that cannot be used; the message says what is expected."""


@dataclass(frozen=True)
class ApiRoot:
    """``{apiRoot}`` = scheme + host + optional port + optional path prefix (TS 24.546 C.1.1)."""

    scheme: str
    host: str
    port: int
    prefix: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{uri_host(self.host)}:{self.port}"

    @property
    def uri(self) -> str:
        return self.origin + "".join("/" + urllib.parse.quote(s, safe="") for s in self.prefix)

    def collection_path(self, service_id: str = DEFAULT_SERVICE_ID) -> tuple[str, ...]:
        return collection_path(service_id, self.prefix)

    def collection_uri(self, service_id: str = DEFAULT_SERVICE_ID) -> str:
        return self.origin + path_text(self.collection_path(service_id))

    def doc_uri(self, service_id: str, doc_id: str) -> str:
        return self.origin + path_text(doc_path(service_id, doc_id, self.prefix))


def uri_host(host: str) -> str:
    """A host as it stands in a URI: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_api_root(uri: str, schemes: tuple[str, ...] = PLAIN_SCHEMES) -> ApiRoot:
    """``scheme://host[:port][/prefix][/su-uc/v1]`` → :class:`ApiRoot`.

    A trailing ``/su-uc/v1`` (or ``/su-up/v1``) is the API base, not part of the prefix, so the
    apiRoot and the API base URI are both accepted. Raises :class:`ApiUriError` with a message that
    names what is expected.
    """
    expected = " or ".join(f"{s}://HOST[:PORT]" for s in schemes)
    if "://" not in uri:
        raise ApiUriError(f"{uri!r} has no scheme: give {expected}")
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise ApiUriError(f"{uri!r} is not a valid URI ({e}): give {expected}") from None
    if parts.scheme not in schemes:
        raise ApiUriError(f"{uri!r}: scheme {parts.scheme!r} is not supported here; give {expected}")
    if not parts.hostname:
        raise ApiUriError(f"{uri!r} has no host: give {expected}")
    if parts.query or parts.fragment:
        raise ApiUriError(f"{uri!r}: an apiRoot has no query or fragment")
    segs = tuple(urllib.parse.unquote(s) for s in parts.path.split("/") if s)
    if len(segs) >= 2 and segs[-1] == API_VERSION and segs[-2] in (SU_UC, SU_UP):
        segs = segs[:-2]
    return ApiRoot(parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme], segs)


def parse_hostport(text: str, default_port: int, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``HOST`` or ``:PORT`` → (host, port); :class:`ApiUriError` if not."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        value = int(port) if port else default_port
    except ValueError:
        raise ApiUriError(f"{text!r} is not HOST:PORT") from None
    if not 0 <= value <= 65535:
        raise ApiUriError(f"{text!r}: port {value} is out of range")
    return host or default_host, value


# -- paths ----------------------------------------------------------------------------------------
def collection_path(service_id: str, prefix: tuple[str, ...] = (), api: str = SU_UC) -> tuple[str, ...]:
    """``{prefix}/su-uc/v1/val-services/{valServiceId}/ue-configurations`` (C.3.1.2.1), or the su-up
    ``user-profiles`` collection (C.2.1.2.1) with ``api=SU_UP``."""
    leaf = UE_CONFIGURATIONS if api == SU_UC else USER_PROFILES
    return (*prefix, api, API_VERSION, VAL_SERVICES, service_id, leaf)


def doc_path(service_id: str, doc_id: str, prefix: tuple[str, ...] = (), api: str = SU_UC) -> tuple[str, ...]:
    """The absolute path of one document (Location-Path segments, RFC 7252 §5.10.7)."""
    return (*collection_path(service_id, prefix, api), doc_id)


def path_text(segments: tuple[str, ...]) -> str:
    return "".join("/" + urllib.parse.quote(s, safe="") for s in segments)


# -- queries --------------------------------------------------------------------------------------
def ue_query(
    ue_uri: str | None = None,
    ue_type: str | None = None,
    ue_snr: str | None = None,
    ue_vendor: str | None = None,
) -> list[str]:
    """Uri-Query values of the §3.1 request (Table C.3.1.2.2.3.1-1): MSGin5G UE ID + UE information."""
    pairs = ((Q_UE_URI, ue_uri), (Q_UE_VENDOR, ue_vendor), (Q_UE_TYPE, ue_type), (Q_UE_SNR, ue_snr))
    return [f"{name}={value}" for name, value in pairs if value is not None]


def bulk_query(
    flag: str, ue_uris: list[str] | tuple[str, ...], ue_type: str | None = None, ue_vendor: str | None = None
) -> list[str]:
    """The Gateway UE's bulk GET (seed 6.2.2.x; SPEC D6): the flag first, one ``ue-uri`` per UE."""
    uris = [f"{Q_UE_URI}={u}" for u in ue_uris]
    return [f"{Q_BULK_FLAG}={flag}", *uris, *ue_query(ue_type=ue_type, ue_vendor=ue_vendor)]


def query_item(item: str) -> str:
    """One Uri-Query item percent-encoded for a URI string (RFC 7252 §6.5: '&' inside an item)."""
    return urllib.parse.quote(item, safe="=:@/?!$'()*+,;-._~")


def with_query(uri: str, items: list[str]) -> str:
    return f"{uri}?{'&'.join(query_item(i) for i in items)}" if items else uri


def collection_uri(api_root: str | ApiRoot, service_id: str = DEFAULT_SERVICE_ID) -> str:
    """``{apiRoot}/su-uc/v1/val-services/{valServiceId}/ue-configurations`` as a URI (C.3.1.2.1);
    ``api_root`` may also be the API base ending in ``/su-uc/v1``."""
    root = api_root if isinstance(api_root, ApiRoot) else parse_api_root(api_root)
    return root.collection_uri(service_id)


def config_query_uri(
    api_root: str | ApiRoot,
    service_id: str,
    ue_uri: str,
    ue_type: str | None = None,
    ue_snr: str | None = None,
    ue_vendor: str | None = None,
) -> str:
    """The §3.1 GET as one URI (for Proxy-Uri through a relay, SPEC D8)."""
    root = api_root if isinstance(api_root, ApiRoot) else parse_api_root(api_root)
    return with_query(root.collection_uri(service_id), ue_query(ue_uri, ue_type, ue_snr, ue_vendor))
