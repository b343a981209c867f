"""Concise problem details (RFC 9290) for every error answer (TS 24.546 C.1.3, NOTE 2; SPEC §2).

Errors are values: the pure core returns a :class:`Problem`, the CoAP shells encode it as
``application/concise-problem-details+cbor`` (Content-Format 257) with the standard integer
keys and the spec's ``cause`` member under a text key (digest §10.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cbor2

CF_PROBLEM = 257  # application/concise-problem-details+cbor

KEY_TITLE = -1
KEY_DETAIL = -2
KEY_INSTANCE = -3
KEY_RESPONSE_CODE = -4

#: Fixed titles per response code, as RFC 9290 asks (the same for every occurrence of a type).
TITLES: dict[int, str] = {
    0x80: "Bad Request",
    0x81: "Unauthorized",
    0x82: "Bad Option",
    0x83: "Forbidden",
    0x84: "Not Found",
    0x85: "Method Not Allowed",
    0x86: "Not Acceptable",
    0x88: "Request Entity Incomplete",
    0x8C: "Precondition Failed",
    0x8D: "Request Entity Too Large",
    0x8F: "Unsupported Content-Format",
    0x96: "Unprocessable Entity",
    0x9D: "Too Many Requests",
    0xA0: "Internal Server Error",
    0xA2: "Bad Gateway",
    0xA3: "Service Unavailable",
    0xA4: "Gateway Timeout",
    0xA5: "Proxying Not Supported",
}


def code_text(code: int) -> str:
    """'4.04' for 0x84."""
    return f"{code >> 5}.{code & 0x1F:02d}"


@dataclass(frozen=True)
class Problem:
    """One error outcome: CoAP response code (int, e.g. 0x84) + problem details members."""

    code: int
    detail: str
    cause: str | None = None
    instance: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"size1": 4096} for 4.13

    @property
    def title(self) -> str:
        return TITLES.get(self.code, code_text(self.code))

    def to_map(self) -> dict:
        m: dict[Any, Any] = {KEY_TITLE: self.title, KEY_DETAIL: self.detail, KEY_RESPONSE_CODE: self.code}
        if self.instance is not None:
            m[KEY_INSTANCE] = self.instance
        if self.cause is not None:
            m["cause"] = self.cause
        return m

    def encode(self) -> bytes:
        return cbor2.dumps(self.to_map())

    def __str__(self) -> str:
        cause = f" [{self.cause}]" if self.cause else ""
        return f"{code_text(self.code)} {self.title}: {self.detail}{cause}"


def decode_problem(payload: bytes | dict, fallback_code: int = 0) -> Problem:
    """Parse concise problem details, accepting integer (RFC 9290) and text (C.1.4.4.2) keys."""
    m = cbor2.loads(payload) if isinstance(payload, bytes | bytearray) else payload
    if not isinstance(m, dict):
        raise ValueError("problem details must be a CBOR map")
    code = m.get(KEY_RESPONSE_CODE, fallback_code)
    detail = m.get(KEY_DETAIL, m.get("detail", ""))
    return Problem(
        code=int(code) if isinstance(code, int) else fallback_code,
        detail=str(detail),
        cause=m.get("cause"),
        instance=m.get(KEY_INSTANCE, m.get("instance")),
    )


def problem_from_map(m: dict) -> Problem:
    return decode_problem(m)


class ProblemError(Exception):
    """Raised inside the pure core where unwinding is simpler than returning; carries a Problem."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem


def bad_request(detail: str, cause: str = "BAD_REQUEST") -> ProblemError:
    return ProblemError(Problem(0x80, detail, cause))
