"""Key identifiers, key entries and identity arguments, pure (TS 24.546 6.2.1.2; TS 33.501 Annex Y;
SPEC D12).

A key is one row of the store's key table (:mod:`msgin5g.store.keys`), named by its key identifier
(``kid``, the client's OSCORE Sender ID, RFC 8613 §3.1) and bound to one identity; rows are never
deleted, so a kid never names two identities. :class:`KeyEntry` is a key as the command line shows
it. What a verified request's security context carries (its ``authenticated_claims``) is
``["oscore-kid:<hex>"]`` (:func:`claims_for`); the server takes the identity from the key row it
loaded the context from (:mod:`.storekeys`).

No files and no sockets here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..authz import Identity, Role, make_identity, parse_identity
from ..model import ModelError

#: Sender ID of every server side context. The client's Sender ID (the kid) tells contexts apart;
#: each pair has its own master secret, so one fixed server ID is safe (RFC 8613 §3.3).
SERVER_SENDER_ID = b""
#: The AEAD algorithms a key may use (RFC 8613 §3.2.1; aiocoap's names) and their nonce lengths.
#: AES-CCM-16-64-128 is RFC 8613's mandatory one and the default: what a constrained UE has. Its
#: 13-byte nonce leaves L = 2 (RFC 8152 §10.2): at most 65,535 bytes of plaintext per protected
#: message, so a larger answer goes block-wise even over TCP. A128GCM (12-byte nonce, no such
#: limit in practice) suits a key between unconstrained nodes — a Gateway UE's bulk GETs over TCP.
ALGORITHMS = {"AES-CCM-16-64-128": 13, "A128GCM": 12}
DEFAULT_ALGORITHM = "AES-CCM-16-64-128"
#: The longest Sender ID any of them allows (RFC 8613 §3.3: nonce length − 6).
MAX_KID_LENGTH = 7


def max_kid_length(algorithm: str) -> int:
    return ALGORITHMS[algorithm] - 6


CLAIM_PREFIX = "oscore-kid:"
MASTER_SECRET_BYTES = 32
MASTER_SALT_BYTES = 8

_HEX = re.compile(r"^(?:[0-9a-f]{2})+$")


class RegistryError(ValueError):
    """A registry operation that cannot be done (unknown identity, already active, bad file)."""


def kid_for(number: int, algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """The n-th key identifier (n ≥ 1), big-endian in as few bytes as it needs: short on the wire
    (the kid travels in every request's OSCORE option)."""
    if number < 1:
        raise ValueError("key numbers start at 1")
    kid = number.to_bytes((number.bit_length() + 7) // 8, "big")
    if len(kid) > max_kid_length(algorithm):
        raise RegistryError(f"key number {number} does not fit a Sender ID of {algorithm}")
    return kid


def parse_kid(text: str) -> bytes:
    """A kid written as lower-case hex ("01", "0a2f")."""
    t = text.strip().lower()
    if not _HEX.match(t) or len(t) // 2 > MAX_KID_LENGTH:
        raise RegistryError(f"a kid is 1 to {MAX_KID_LENGTH} bytes in hex, got {text!r}")
    return bytes.fromhex(t)


def claims_for(kid: bytes) -> list[str]:
    """The ``authenticated_claims`` a server-side context for ``kid`` carries."""
    return [CLAIM_PREFIX + kid.hex()]


def identity_text(identity: Identity) -> str:
    """The registry spelling of an identity: ``ue:<uri>``, ``gateway:<id>``, ``admin[:<label>]``."""
    return str(identity)


def identity_arg(text: str, role: str | None = None) -> Identity:
    """An identity as given on the command line: ``ue:<uri>`` / ``gateway:<id>`` / ``admin[:<label>]``,
    or, with ``role``, also the bare name (``--role ue urn:gsma:imei:...``). Raises ModelError."""
    if role is None:
        return parse_identity(text)
    if role not in {r.value for r in (Role.UE, Role.GATEWAY, Role.ADMIN)}:
        raise ModelError("role", f"unknown role {role!r}", "BAD_IDENTITY")
    prefix = f"{role}:"
    if role == "admin" and text == "admin":
        return parse_identity(text)
    name = text[len(prefix) :] if text.startswith(prefix) else text
    return make_identity(role, name)


@dataclass(frozen=True)
class KeyEntry:
    """One key of the registry."""

    kid: bytes
    identity: Identity
    created: str  # ISO 8601, UTC
    revoked: str | None = None  # when it was revoked (ISO 8601), None while active
    algorithm: str = DEFAULT_ALGORITHM

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_json(self) -> dict:
        return {
            "kid": self.kid.hex(),
            "identity": identity_text(self.identity),
            "created": self.created,
            "revoked": self.revoked,
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_json(cls, m: object) -> KeyEntry:
        if not isinstance(m, dict):
            raise RegistryError("a registry entry must be an object")
        try:
            kid = parse_kid(str(m["kid"]))
            identity = parse_identity(str(m["identity"]))
        except KeyError as e:
            raise RegistryError(f"registry entry without {e.args[0]!r}") from None
        except ModelError as e:
            raise RegistryError(f"registry entry {m.get('kid')!r}: {e}") from None
        revoked = m.get("revoked")
        if revoked is not None and not isinstance(revoked, str):
            raise RegistryError(f"registry entry {kid.hex()}: revoked must be a time or null")
        algorithm = m.get("algorithm", DEFAULT_ALGORITHM)
        if algorithm not in ALGORITHMS:
            raise RegistryError(f"registry entry {kid.hex()}: unknown algorithm {algorithm!r}")
        return cls(kid, identity, str(m.get("created", "")), revoked, algorithm)
