"""coaps: CoAP over DTLS 1.2 with pre-shared keys (TS 24.546 C.1.1; RFC 7252 §9.1.3.1; RFC 4279;
SPEC D12).

* The **PSK identity** is the identity itself (``ue:<MSGin5G UE ID>``, ``gateway:<id>``,
  ``admin:<label>``), so a DTLS handshake names who is asking, as an OSCORE key or a client
  certificate does.
* The **PSK** is not a second secret to store: it is derived from the identity's active OSCORE key
  in the store (:func:`derive_psk`, HKDF-SHA-256 over the key's master secret and salt with an
  info string of its own, RFC 5869), so ``keys add IDENTITY --psk`` and ``keys revoke IDENTITY``
  govern both, every process and node of one store agrees on it, and a fleet of a million UEs
  still needs one row per UE.
* Its **text form** (the ``psk`` of a PSK file, what ``coap-client -k`` takes) is 16 characters
  of base64url (96 bits from HKDF); the key used in the handshake is those 16 bytes. Sixteen
  bytes is the longest PSK aiocoap's DTLS server (tinydtls: ``DTLS_PSK_MAX_KEY_LEN``) accepts.
* **Revocation** takes effect at the next request: :class:`DtlsSite` checks, for every request,
  that the key the session was made with is still the identity's active key (4.01 otherwise),
  exactly as the OSCORE replay check and the TLS certificate check do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..authz import Identity, parse_identity
from ..model import ModelError
from .server import ChannelSecuredSite

PSK_FORMAT = "msgin5g-dtls-psk"
PSK_INFO = b"msgin5g coaps PSK v1"
#: bytes of HKDF output; their base64url text (16 characters) is the PSK
PSK_ENTROPY_BYTES = 12
#: tinydtls (aiocoap's DTLS server) accepts at most 16-byte PSKs
PSK_MAX_LENGTH = 16


def derive_psk(secret: bytes, salt: bytes) -> str:
    """The coaps PSK text of the OSCORE key with master ``secret`` and ``salt``: HKDF-SHA-256
    (RFC 5869) with the info ``msgin5g coaps PSK v1``, 12 bytes, base64url (16 characters). Pure."""
    okm = HKDF(hashes.SHA256(), PSK_ENTROPY_BYTES, salt, PSK_INFO).derive(secret)
    return base64.urlsafe_b64encode(okm).decode()


def psk_json(identity: str, psk: str) -> str:
    """One PSK file: ``{"format", "version", "psk_identity", "psk"}``."""
    return json.dumps({"format": PSK_FORMAT, "version": 1, "psk_identity": identity, "psk": psk})


def write_psk_file(path: str | os.PathLike, identity: str, psk: str) -> None:
    """Write a PSK file, mode 0600, never overwriting one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(psk_json(identity, psk) + "\n")


class PskFileError(ValueError):
    """A file that is not a PSK file."""


def load_psk_file(path: str | os.PathLike) -> tuple[str, str]:
    """(psk_identity, psk) of a PSK file; :class:`PskFileError` with one line otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise PskFileError(f"{path}: not a readable PSK file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("psk_identity"), str) or not doc.get("psk"):
        raise PskFileError(f"{path}: not a PSK file (no psk_identity and psk); make one with keys add --psk")
    return doc["psk_identity"], str(doc["psk"])


def is_psk_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a PSK file (reads its first line only: a bundle can be large)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "psk_identity" in doc and "psk" in doc


@dataclass(frozen=True)
class PskClaim:
    """What a DTLS session authenticated: the identity and the number of the key its PSK came from."""

    identity: str
    number: int


class StorePskCredentials:
    """aiocoap's server credentials for its DTLS server, looked up in the store: it calls
    ``find_dtls_psk(psk_identity)`` during each handshake (aiocoap ``CredentialsMap`` protocol)
    and keeps what it returns second as the session's ``authenticated_claims``."""

    def __init__(self, store):
        self.store = store
        self.counters: Counter = Counter()

    def find_dtls_psk(self, psk_identity: bytes) -> tuple[bytes, PskClaim]:
        try:
            identity = parse_identity(bytes(psk_identity).decode())
        except (UnicodeDecodeError, ModelError):
            self.counters["unknown-identity"] += 1
            raise KeyError(psk_identity) from None
        row = self.store.active_key(str(identity))  # during the handshake (tinydtls calls back inline)
        if row is None:
            self.counters["unknown-identity"] += 1
            raise KeyError(psk_identity)
        self.counters["handshake-psk"] += 1
        return derive_psk(row.secret, row.salt).encode(), PskClaim(str(identity), row.number)

    # aiocoap's Context asks its server credentials for OSCORE contexts too; these have none
    def find_oscore(self, unprotected):  # pragma: no cover - only called for OSCORE requests
        raise KeyError("no OSCORE contexts here")


def psk_claim(request) -> PskClaim | None:
    """The PSK claim of a request that came over coaps (None: not DTLS)."""
    from ..coap.aiocoap_tweaks import dtls_psk_claim

    return dtls_psk_claim(request.remote)


def dtls_identity(request) -> Identity | None:
    """The identity of a request that came over coaps (None: not DTLS)."""
    claim = psk_claim(request)
    return None if claim is None else parse_identity(claim.identity)


class DtlsSite(ChannelSecuredSite):
    """The SCM-S site behind coaps: a request whose session's key is no longer the identity's
    active key (revoked, or replaced) gets 4.01 problem details; otherwise the site serves it,
    the identity taken from the PSK identity (:func:`dtls_identity`)."""

    async def authenticated(self, request) -> bool:
        claim = psk_claim(request)
        if claim is None:
            return False
        row = await asyncio.to_thread(self.store.active_key, claim.identity)
        return row is not None and row.number == claim.number


@dataclass(frozen=True)
class PskCredentials:
    """A client's coaps credentials (``--credentials`` naming a PSK file)."""

    identity: str
    psk: str
    path: str = ""
    kid = None  # not an OSCORE key

    def credentials_map(self):
        """aiocoap client credentials presenting this PSK to every coaps:// server."""
        from aiocoap.credentials import DTLS, CredentialsMap

        creds = CredentialsMap()
        creds["coaps://*"] = DTLS(psk=self.psk.encode(), client_identity=self.identity.encode())
        return creds


def load_psk_credentials(path: str | os.PathLike) -> PskCredentials:
    identity, psk = load_psk_file(path)
    try:
        parse_identity(identity)
    except ModelError as e:
        raise PskFileError(f"{path}: psk_identity {identity!r} is not an identity ({e})") from None
    return PskCredentials(identity, psk, str(path))
