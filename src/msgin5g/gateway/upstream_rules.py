"""The SCM-C's rules for bulk GETs, pure (TS 24.538 6.2.2.x c); SPEC D6, D7, D13).

No sockets, no clocks, no aiocoap: the values the configuration management client hands to the
Gateway Client (:class:`UpstreamOutcome`, also the SEAL-C payload of SPEC D10) and the decisions
the SCM-C takes on an answer:

- :func:`after_bulk_answer`: a 4.13 (more UEs than the SCM-S policy allows in one bulk GET) halves
  the GET and lowers the per-GET maximum for the rest of the run; a 4.08 (the answer kept for the
  bulk configuration id expired between blocks) starts the GET once more under a fresh id;
  anything else is the GET's outcome.
- :func:`remaining_blocks`: which Block2 blocks of a bulk answer are still to be fetched once
  block 0 (with its Size2, RFC 7959 §4) is in — they name only the flag (D7 b), so they are
  independent of each other and are fetched side by side, not one after the other (D13).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..bulk import BulkGet, BulkItem

REQUEST_ENTITY_TOO_LARGE = 0x8D  # 4.13
REQUEST_ENTITY_INCOMPLETE = 0x88  # 4.08: BULK_ANSWER_EXPIRED (SPEC D6)
TOO_MANY_REQUESTS = 0x9D  # 4.29 (RFC 8516)
SERVICE_UNAVAILABLE = 0xA3  # 5.03


def new_flag() -> str:
    """A fresh bulk configuration identifier (TS 24.538 6.2.2.x c) 3); SPEC D6): 96 random bits."""
    return secrets.token_hex(12)


@dataclass
class UpstreamOutcome:
    """One upstream GET's result as handed to the Gateway Client (SEAL-C payload, D10).

    ``code`` None means no answer at all (unreachable, timeout, broken connection). For a bulk
    GET, ``payload`` is the SCM-S's answer array exactly as received (CBOR), to be split by the
    Gateway Client; for a single GET it is the answer for that UE.
    """

    ue_uris: tuple[str, ...]
    bulk: bool
    code: int | None
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None
    ue_vendor: str | None = None
    ue_type: str | None = None
    detail: str = ""

    @property
    def retryable(self) -> bool:
        """No answer, 5.xx, 4.29, or a bulk answer that expired between blocks (4.08)."""
        return (
            self.code is None
            or self.code >= 0xA0
            or self.code in (TOO_MANY_REQUESTS, REQUEST_ENTITY_INCOMPLETE)
        )

    @property
    def retry_after(self) -> float | None:
        """A 5.03 / 4.29 Max-Age says when to come back (RFC 7252 §5.9.3.4, RFC 8516)."""
        if self.code in (SERVICE_UNAVAILABLE, TOO_MANY_REQUESTS) and self.max_age:
            return float(self.max_age)
        return None

    def items(self) -> list[BulkItem]:
        return [BulkItem(u, self.ue_vendor, self.ue_type) for u in self.ue_uris]

    def to_map(self) -> dict:
        m: dict[str, Any] = {"ueUris": list(self.ue_uris), "bulk": self.bulk, "code": self.code}
        for k, v in (
            ("payload", self.payload),
            ("contentFormat", self.content_format),
            ("maxAge", self.max_age),
            ("ueVendor", self.ue_vendor),
            ("ueType", self.ue_type),
            ("detail", self.detail),
        ):
            if v:
                m[k] = v
        return m

    @classmethod
    def from_map(cls, m: Any) -> UpstreamOutcome:
        if not isinstance(m, dict) or not isinstance(m.get("ueUris"), list):
            raise ValueError("an outcome must be a map with ueUris")
        code = m.get("code")
        if code is not None and (not isinstance(code, int) or not 0 <= code <= 255):
            raise ValueError(f"bad code {code!r}")
        payload = m.get("payload", b"")
        if not isinstance(payload, bytes):
            raise ValueError("payload must be a byte string")
        uris = m["ueUris"]
        if not all(isinstance(u, str) for u in uris):
            raise ValueError("ueUris must be text strings")
        return cls(
            tuple(uris),
            bool(m.get("bulk")),
            code,
            payload,
            _opt_int(m.get("contentFormat")),
            _opt_int(m.get("maxAge")),
            _opt_str(m.get("ueVendor")),
            _opt_str(m.get("ueType")),
            str(m.get("detail", "")),
        )


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def bulk_outcome(
    get: BulkGet, code: int | None, payload: bytes = b"", cf=None, max_age=None, detail=""
) -> UpstreamOutcome:
    """The outcome of bulk GET ``get``."""
    return UpstreamOutcome(get.ue_uris, True, code, payload, cf, max_age, get.ue_vendor, get.ue_type, detail)


def no_answer(get: BulkGet, detail: str) -> UpstreamOutcome:
    return bulk_outcome(get, None, detail=detail)


# -- what to do with a bulk GET's answer -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """The answer is the GET's outcome (success or a final/retryable error for the Gateway Client)."""


@dataclass(frozen=True, slots=True)
class Split:
    """4.13: send these smaller GETs instead; ``max_ues`` is the per-GET maximum from now on."""

    gets: tuple[BulkGet, ...]
    max_ues: int


@dataclass(frozen=True, slots=True)
class Restart:
    """4.08: the kept answer expired between blocks — the same UEs once more under a fresh flag."""

    get: BulkGet


BulkStep = Done | Split | Restart


def after_bulk_answer(
    get: BulkGet, code: int | None, max_ues: int, restarted: bool, flag=new_flag
) -> tuple[BulkStep, int]:
    """The SCM-C's decision on a bulk GET's answer code (SPEC D6, D7): (step, per-GET maximum).

    - 4.13 with more than one UE: halve (first half, second half, each under a fresh flag) and
      remember ``max_ues = min(max_ues, half)`` so later GETs are packed small enough at once;
    - 4.08 and not ``restarted`` already: restart once under a fresh flag (a second 4.08 is
      handed on: retryable, the Gateway Client backs off);
    - anything else: done.
    """
    if code == REQUEST_ENTITY_TOO_LARGE and len(get.ue_uris) > 1:
        half = len(get.ue_uris) // 2
        parts = (get.ue_uris[:half], get.ue_uris[half:])
        gets = tuple(BulkGet(flag(), p, get.ue_vendor, get.ue_type) for p in parts)
        new_max = max(1, min(max_ues, half))
        return Split(gets, new_max), new_max
    if code == REQUEST_ENTITY_INCOMPLETE and not restarted:
        return Restart(BulkGet(flag(), get.ue_uris, get.ue_vendor, get.ue_type)), max_ues
    return Done(), max_ues


def block_size(szx: int) -> int:
    """Bytes in a Block2 block of size exponent ``szx`` (RFC 7959 §2.2; BERT szx 7 counts as 1024)."""
    return 1 << (min(szx, 6) + 4)


def remaining_blocks(size2: int | None, first_len: int, szx: int) -> list[int] | None:
    """Block numbers still to fetch after block 0 (``first_len`` bytes, size exponent ``szx``) of a
    representation of ``size2`` bytes; None when Size2 is missing or inconsistent, or for BERT
    blocks (RFC 8323 §6: szx 7, each as large as the peer likes, over a reliable transport) — then
    the blocks are fetched one after the other, as RFC 7959 describes."""
    if szx >= 7 or size2 is None or first_len <= 0:
        return None
    size = block_size(szx)
    if first_len != size or size2 <= first_len:
        return None
    return list(range(1, -(-size2 // size)))
