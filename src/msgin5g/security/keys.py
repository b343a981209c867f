"""Key registry state and identity mapping, pure (TS 24.546 6.2.1.2; TS 33.501 Annex Y; SPEC D12).

A registry is a list of :class:`KeyEntry`: one OSCORE key per entry, named by its key identifier
(``kid``, the client's OSCORE Sender ID, RFC 8613 §3.1) and bound to one identity. Entries are
never deleted: a revoked entry keeps its kid reserved, so a kid never names two identities.

What a verified request's security context carries (its ``authenticated_claims``) is
``["oscore-kid:<hex>"]``; :func:`identity_from_claims` turns that into the identity of a live
entry, or ``None`` (unknown, revoked or malformed: the request is treated as unauthenticated).

No files and no sockets here: :mod:`.registry` reads and writes the JSON this module defines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ..authz import Identity, Role, make_identity, parse_identity
from ..model import ModelError

REGISTRY_FORMAT = "msgin5g-oscore-registry"
CREDENTIALS_FORMAT = "msgin5g-oscore-credentials"
FORMAT_VERSION = 1

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


@dataclass(frozen=True)
class RegistryState:
    """The whole registry: its entries by kid, and the number of the next kid to hand out."""

    entries: dict[bytes, KeyEntry] = field(default_factory=dict)
    next_number: int = 1

    def active_for(self, identity: Identity) -> list[KeyEntry]:
        return [e for e in self.entries.values() if e.active and e.identity == identity]

    def to_json(self) -> dict:
        return {
            "format": REGISTRY_FORMAT,
            "version": FORMAT_VERSION,
            "nextKey": self.next_number,
            "entries": [e.to_json() for e in self.entries.values()],
        }

    @classmethod
    def from_json(cls, m: object) -> RegistryState:
        if not isinstance(m, dict) or m.get("format") != REGISTRY_FORMAT:
            raise RegistryError(f"not a {REGISTRY_FORMAT} file")
        if m.get("version") != FORMAT_VERSION:
            raise RegistryError(f"unsupported registry version {m.get('version')!r}")
        raw = m.get("entries")
        if not isinstance(raw, list):
            raise RegistryError("registry entries must be a list")
        entries: dict[bytes, KeyEntry] = {}
        for item in raw:
            e = KeyEntry.from_json(item)
            if e.kid in entries:
                raise RegistryError(f"kid {e.kid.hex()} appears twice")
            entries[e.kid] = e
        nxt = m.get("nextKey")
        if not isinstance(nxt, int) or isinstance(nxt, bool) or nxt < 1:
            raise RegistryError("nextKey must be a positive integer")
        if entries and nxt <= max(int.from_bytes(k, "big") for k in entries):
            raise RegistryError("nextKey is not above every kid in use")
        return cls(entries, nxt)


def add_key(
    state: RegistryState, identity: Identity, now: str, algorithm: str = DEFAULT_ALGORITHM
) -> tuple[RegistryState, KeyEntry]:
    """A new key for ``identity``. Refused while it has an active one: two live keys for one
    identity are a rotation nobody planned (revoke the old one first)."""
    state, (entry,) = add_keys(state, [identity], now, algorithm)
    return state, entry


def add_keys(
    state: RegistryState, identities: list[Identity], now: str, algorithm: str = DEFAULT_ALGORITHM
) -> tuple[RegistryState, list[KeyEntry]]:
    """:func:`add_key` for many identities at once (each at most once, none with an active key)."""
    if algorithm not in ALGORITHMS:
        raise RegistryError(f"unknown algorithm {algorithm!r}; one of {', '.join(ALGORITHMS)}")
    active = {e.identity for e in state.entries.values() if e.active}
    entries = dict(state.entries)
    number = state.next_number
    made = []
    for identity in identities:
        if identity.role is Role.ANONYMOUS:
            raise RegistryError("keys are for UEs, gateways and administrators")
        if identity in active:
            raise RegistryError(f"{identity} already has an active key; revoke it first")
        active.add(identity)
        entry = KeyEntry(kid_for(number, algorithm), identity, now, algorithm=algorithm)
        entries[entry.kid] = entry
        made.append(entry)
        number += 1
    return RegistryState(entries, number), made


def revoke_keys(
    state: RegistryState, now: str, *, identity: Identity | None = None, kid: bytes | None = None
) -> tuple[RegistryState, list[KeyEntry]]:
    """Revoke the active keys of ``identity``, or the key ``kid``. Raises when nothing matches."""
    if (identity is None) == (kid is None):
        raise ValueError("give an identity or a kid")
    if kid is not None:
        entry = state.entries.get(kid)
        if entry is None:
            raise RegistryError(f"no key {kid.hex()}")
        targets = [entry] if entry.active else []
        if not targets:
            raise RegistryError(f"key {kid.hex()} is already revoked")
    else:
        targets = state.active_for(identity)  # type: ignore[arg-type]
        if not targets:
            raise RegistryError(f"{identity} has no active key")
    entries = dict(state.entries)
    revoked = []
    for e in targets:
        entries[e.kid] = replace(e, revoked=now)
        revoked.append(entries[e.kid])
    return RegistryState(entries, state.next_number), revoked


def identity_from_claims(claims: Iterable[str] | None, entries: Mapping[bytes, KeyEntry]) -> Identity | None:
    """The identity a verified request's context stands for (TS 24.546 6.2.1.2; SPEC D12), or
    None when it names no active key — the request then counts as unauthenticated (4.01)."""
    if not claims:
        return None
    found: Identity | None = None
    for claim in claims:
        if not isinstance(claim, str) or not claim.startswith(CLAIM_PREFIX):
            continue
        try:
            kid = parse_kid(claim[len(CLAIM_PREFIX) :])
        except RegistryError:
            return None
        entry = entries.get(kid)
        if entry is None or not entry.active:
            return None
        if found is not None and found != entry.identity:
            return None  # two different identities: trust neither
        found = entry.identity
    return found
