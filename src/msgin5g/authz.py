"""Authorization of SCM-S requests by authenticated identity (TS 24.546 6.2.1.2; SPEC D12).

Pure decisions: ``(identity, operation, target) -> None (allow) | Problem (4.01 / 4.03)``.
Problem details never reveal whether a foreign UE has a configuration: every denial of a UE
for another UE's data reads the same.

Identities come from the security layer: on a secured server, the OSCORE (RFC 8613) security
context that verified the request names it (:mod:`msgin5g.security`; TS 24.546 6.2.1.2). In the
explicitly insecure lab mode the shell takes a *claimed* identity from the private-use option
:data:`LAB_IDENTITY_OPTION` (absent → administrator), so the same rules can be exercised without keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .api import OPT_LAB_IDENTITY
from .applicability import specificity
from .model import ModelError, UeIdentity, check_uri
from .problem import Problem

#: Private-use, elective, safe-to-forward CoAP option carrying a claimed identity in lab mode:
#: "admin", "ue:<MSGin5G UE ID>" or "gateway:<gateway id>".
LAB_IDENTITY_OPTION = OPT_LAB_IDENTITY


class Role(enum.Enum):
    ADMIN = "admin"
    UE = "ue"
    GATEWAY = "gateway"
    ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    name: str = ""  # the UE's MSGin5G UE ID (a URI), the gateway id, or an administrator's label

    def __str__(self) -> str:
        return self.role.value if not self.name else f"{self.role.value}:{self.name}"

    @property
    def ue(self) -> UeIdentity:
        """The UE identity of a UE requester (SPEC D3: an IMEI URN also gives TAC/SNR)."""
        return UeIdentity.from_query(uri=self.name)


ADMIN = Identity(Role.ADMIN)
ANONYMOUS = Identity(Role.ANONYMOUS)


#: Roles a key or a lab claim can carry (ANONYMOUS is what a request without one is).
ROLES = (Role.UE, Role.GATEWAY, Role.ADMIN)


def parse_identity(text: str) -> Identity:
    """Parse "admin" | "admin:<label>" | "ue:<uri>" | "gateway:<id>" (lab identity option, key
    registry entries and credentials files; SPEC D12)."""
    if text == "admin":
        return ADMIN
    role, sep, name = text.partition(":")
    if not sep or not name:
        raise ModelError(
            "identity", f"expected admin, ue:<uri> or gateway:<id>, got {text!r}", "BAD_IDENTITY"
        )
    return make_identity(role, name)


def make_identity(role: str, name: str) -> Identity:
    """An identity from a role name and its name (a UE's must be a URI; none may be empty or
    contain control characters)."""
    if not name or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise ModelError("identity", f"bad {role} name {name!r}", "BAD_IDENTITY")
    if role == "ue":
        check_uri(name, "identity")
        return Identity(Role.UE, name)
    if role == "gateway":
        return Identity(Role.GATEWAY, name)
    if role == "admin":
        return Identity(Role.ADMIN, name)
    raise ModelError("identity", f"unknown role {role!r}", "BAD_IDENTITY")


class Op(enum.Enum):
    QUERY_SCOPED = "query-scoped"  # collection GET naming one UE (ue-uri)
    QUERY_UNSCOPED = "query-unscoped"  # collection GET without ue-uri (admin listing)
    BULK = "bulk"  # collection GET with bulk-conf-flag
    READ_DOC = "read-doc"  # individual GET (with or without Observe)
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


WRITE_OPS = {Op.CREATE, Op.UPDATE, Op.DELETE}

UNAUTHENTICATED = Problem(0x81, "the request is not authenticated", "UNAUTHENTICATED")
_FORBIDDEN_UE = Problem(0x83, "the requester is not authorized for this UE's configuration", "NOT_AUTHORIZED")


def forbidden(detail: str, cause: str = "NOT_AUTHORIZED") -> Problem:
    return Problem(0x83, detail, cause)


def gateway_covers(coverage: dict | None, ue: UeIdentity) -> bool:
    """Whether a gateway registry entry covers ``ue`` (explicit URIs, IMEI ranges, or all)."""
    if not coverage:
        return False
    if coverage.get("all") is True:
        return True
    probe = {"valUeIds": {k: v for k, v in coverage.items() if k in ("uris", "imeiRanges")}}
    return specificity(probe, UeIdentity(uri=ue.uri, tac=ue.tac, snr=ue.snr)) is not None


def requested_ue(
    identity: Identity,
    uri: str,
    tac: str | None = None,
    snr: str | None = None,
    vendor: str | None = None,
) -> UeIdentity:
    """The UE a scoped or bulk query is resolved for (SPEC D3; TS 24.546 6.2.1.2).

    For a UE or a gateway, the TAC and serial number come only from the named UE's own IMEI URN
    (RFC 7254): ``ue-type`` / ``ue-snr`` may narrow what that URN already implies — a value that
    contradicts it is a 4.00 (``IDENTITY_MISMATCH``, raised as :class:`ModelError`) — and never
    widen it: a UE whose ID is not an IMEI URN gets no TAC or serial number from a claim, so it
    never matches a TAC- or serial-number-scoped document, and neither does a gateway asking for it.
    ``ue-vendor`` is kept: it only chooses among documents whose ``valUeIds`` already apply to
    that identity (a vendor restriction never reaches another UE's URI, TAC or serial number).
    An administrator's claims are taken as given ("what would such a UE get", SPEC D4).
    """
    claimed = UeIdentity.from_query(uri, tac, snr, vendor)  # validates; rejects contradictions
    if identity.role is Role.ADMIN:
        return claimed
    own = UeIdentity.from_query(uri)
    return UeIdentity(uri=own.uri, tac=own.tac, snr=own.snr, vendor=claimed.vendor)


def authorize(
    identity: Identity, op: Op, *, ue: UeIdentity | None = None, coverage: dict | None = None
) -> Problem | None:
    """Request-level decision (before any data is read).

    ``ue`` is the UE a scoped query names; ``coverage`` the requesting gateway's registry entry.
    Per-document (READ_DOC) and per-UE (BULK) checks follow with :func:`may_read_doc` and
    :func:`gateway_covers`.
    """
    if identity.role is Role.ANONYMOUS:
        return UNAUTHENTICATED
    if identity.role is Role.ADMIN:
        return None
    if op in WRITE_OPS:
        return forbidden("only an administrator may create, update or delete configurations", "ADMIN_ONLY")
    if op is Op.QUERY_UNSCOPED:
        return forbidden("a query must name the requesting UE (ue-uri)", "SCOPE_REQUIRED")
    if identity.role is Role.UE:
        if op is Op.BULK:
            return forbidden("bulk configuration is for gateway UEs", "GATEWAY_ONLY")
        if op is Op.QUERY_SCOPED and (ue is None or ue.uri != identity.name):
            return _FORBIDDEN_UE
        return None
    # gateway
    if op is Op.QUERY_SCOPED and (ue is None or not gateway_covers(coverage, ue)):
        return _FORBIDDEN_UE
    return None


def authorize_doc(identity: Identity, doc: dict | None, missing: Problem) -> Problem | None:
    """Individual GET / Observe once the document was looked up (``doc`` None: it does not exist,
    and ``missing`` is the 4.04 an administrator gets).

    A UE reads and observes only documents applicable to itself; a gateway reads none (it works
    through queries for the UEs its registry entry covers). Neither can tell a missing document
    from another UE's: both get the one 4.03 of :func:`forbidden_ue_problem` (SPEC D12).
    """
    problem = authorize(identity, Op.READ_DOC)
    if problem is not None:
        return problem
    if identity.role is Role.ADMIN:
        return missing if doc is None else None
    if doc is None or not may_read_doc(identity, doc):
        return _FORBIDDEN_UE
    return None


def may_read_doc(identity: Identity, doc: dict, coverage: dict | None = None) -> bool:
    """Individual GET/Observe: a UE only documents applicable to itself; a gateway none (it works
    through queries for its UEs); an administrator everything."""
    if identity.role is Role.ADMIN:
        return True
    if identity.role is Role.UE:
        return specificity(doc, identity.ue) is not None
    return False


def forbidden_ue_problem() -> Problem:
    """The one 4.03 used whenever a UE's data is withheld (reveals nothing about existence)."""
    return _FORBIDDEN_UE
