"""SU_UserProfile: the VAL user profile data model, its query and its authorization rules, pure
(TS 24.546 C.2; SPEC D16, D12).

Profiles are kept as plain dicts — exactly the map that travels on the wire — so that unknown keys
(the CDDL ``* tstr => any`` extension points, and the media type's rule that receivers ignore what
they do not understand) survive every round trip. This module only checks and decides:

- :func:`validate_profile_doc` — ProfileDoc / ProfileInfo / ProfileConfig / ValTargetUe
  (C.2.1.3, C.2.1.5), raising :class:`~msgin5g.model.ModelError` that names the field;
- :func:`parse_val_tgt_ue` / :func:`parse_profile_query` — the mandatory ``val-tgt-ue`` query
  parameter (Table C.2.1.2.2.3.1-1), whose serialization the spec leaves open (digest §10.3);
- :func:`parse_profile_path` — ``{prefix}/su-up/v1/val-services/{valServiceId}/user-profiles[/{id}]``;
- :func:`authorize_query` / :func:`authorize_read` / :func:`authorize_write` — who may read and
  write which profiles (SPEC D12: a VAL user or UE reads only its own; an administrator writes).

``val-tgt-ue`` serialization (our decision, documented in docs/user-profiles.md): the value is the
VAL user ID or VAL UE ID itself (SPEC D16) and matches profiles whose target has either equal to
it. Liberal on input: ``valUserId:<id>`` / ``valUeId:<id>`` name the kind explicitly, and a JSON
ValTargetUe (``{"valUeId": "<id>"}``) is read as the data model says.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from . import api
from .authz import UNAUTHENTICATED, Identity, Role, forbidden
from .model import ModelError
from .problem import Problem, ProblemError

PROFILE_DOC_ID_KEY = "profileDocId"
PROFILE_INFO_KEY = "profileInformation"
VAL_TGT_UE_KEY = "valTgtUe"
VAL_USER_ID = "valUserId"
VAL_UE_ID = "valUeId"
TARGET_KINDS = (VAL_USER_ID, VAL_UE_ID)
#: ConfigType (C.2.1.3.3.1); any other text string is tolerated (forward compatibility)
CONFIG_TYPES = ("COMMON", "ON_NETWORK", "OFF_NETWORK")
#: CBOR integers outside major types 0/1 (bignums) have no place in a JSON-representable model
INT_MIN, INT_MAX = -(2**64), 2**64 - 1
MAX_DEPTH = 32


# -- data model (C.2.1.3, C.2.1.5) ------------------------------------------------------------------
def _map(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise ModelError(field, "must be a map")
    return value


def _text(value: Any, field: str, *, identifier: bool = False) -> str:
    if not isinstance(value, str):
        raise ModelError(field, f"must be a text string, got {type(value).__name__}")
    if identifier:
        if not value:
            raise ModelError(field, "must not be empty", "INVALID_IDENTIFIER")
        if value != value.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ModelError(
                field, f"{value!r} has white space at an end or control characters", "INVALID_IDENTIFIER"
            )
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ModelError(field, f"must be a boolean, got {type(value).__name__}")
    return value


def check_representable(value: Any, field: str = "", depth: int = 0) -> None:
    """Every value of a profile is one the JSON mapping of the media type can carry (SPEC D1):
    text-keyed maps, arrays, text without lone surrogates, finite floats, integers of CBOR major
    types 0/1, booleans and null. Anything else is refused (4.00) rather than stored and then
    unservable as JSON."""
    where = field or "(document)"
    if depth > MAX_DEPTH:
        raise ModelError(where, f"nested deeper than {MAX_DEPTH} levels", "TOO_DEEP")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(where, f"map key {k!r} is not a text string")
            check_representable(k, f"{field}/{k}" if field else k, depth + 1)
            check_representable(v, f"{field}/{k}" if field else k, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_representable(v, f"{field}/{i}", depth + 1)
    elif isinstance(value, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise ModelError(where, "text with a lone surrogate is not Unicode text", "INVALID_TEXT")
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ModelError(where, "integer outside the 64-bit range", "INVALID_NUMBER")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ModelError(where, "NaN and infinities are not JSON numbers", "INVALID_NUMBER")
    else:
        raise ModelError(where, f"{type(value).__name__} values are not part of the data model")


def validate_val_tgt_ue(value: Any, field: str = VAL_TGT_UE_KEY) -> tuple[str, str]:
    """ValTargetUe (C.2.1.3.2.4): exactly one of ``valUserId`` / ``valUeId`` (the CDDL is a
    choice), a non-empty identifier. Other keys are ignored. Returns (kind, id)."""
    tgt = _map(value, field)
    present = [k for k in TARGET_KINDS if k in tgt]
    if len(present) != 1:
        got = "both" if present else "neither"
        raise ModelError(
            field, f"exactly one of valUserId and valUeId must be present, got {got}", "INVALID_VAL_TGT_UE"
        )
    kind = present[0]
    return kind, _text(tgt[kind], f"{field}/{kind}", identifier=True)


def validate_profile_doc(doc: Any) -> dict:
    """Check a ProfileDoc against C.2.1.3.2 and the CDDL of C.2.1.5. Unknown keys are accepted and
    kept; returns the (same) dict. Raises ModelError naming the field (→ 4.00)."""
    doc = _map(doc, "")
    check_representable(doc)
    if PROFILE_DOC_ID_KEY in doc:
        _text(doc[PROFILE_DOC_ID_KEY], PROFILE_DOC_ID_KEY, identifier=True)
    if PROFILE_INFO_KEY not in doc:
        raise ModelError(PROFILE_INFO_KEY, "mandatory attribute missing", "MISSING_PROFILE_INFORMATION")
    info = _map(doc[PROFILE_INFO_KEY], PROFILE_INFO_KEY)
    if "status" not in info:
        raise ModelError(f"{PROFILE_INFO_KEY}/status", "mandatory attribute missing", "MISSING_STATUS")
    _bool(info["status"], f"{PROFILE_INFO_KEY}/status")
    if "profileName" in info:
        _text(info["profileName"], f"{PROFILE_INFO_KEY}/profileName")
    if "isDefault" in info:
        _bool(info["isDefault"], f"{PROFILE_INFO_KEY}/isDefault")
    if "profileConfigs" in info:
        configs = info["profileConfigs"]
        if not isinstance(configs, list) or not configs:
            raise ModelError(f"{PROFILE_INFO_KEY}/profileConfigs", "must be a non-empty array ([+ ...])")
        for i, cfg in enumerate(configs):
            where = f"{PROFILE_INFO_KEY}/profileConfigs/{i}"
            _map(cfg, where)
            for k in ("configType", "configData"):
                if k not in cfg:
                    raise ModelError(f"{where}/{k}", "mandatory attribute missing")
            _text(cfg["configType"], f"{where}/configType", identifier=True)
            _text(cfg["configData"], f"{where}/configData")
    if VAL_TGT_UE_KEY not in doc:
        raise ModelError(VAL_TGT_UE_KEY, "mandatory attribute missing", "MISSING_VAL_TGT_UE")
    validate_val_tgt_ue(doc[VAL_TGT_UE_KEY])
    return doc


def target_of(doc: dict) -> tuple[str, str]:
    """(kind, id) of a validated profile's ValTargetUe."""
    return validate_val_tgt_ue(doc[VAL_TGT_UE_KEY])


# -- the val-tgt-ue query parameter (Table C.2.1.2.2.3.1-1; digest §10.3) ------------------------------
@dataclass(frozen=True)
class TargetQuery:
    """What ``val-tgt-ue`` names: an identifier and, when the client said so, its kind
    (``valUserId`` / ``valUeId``); ``kind`` None matches either."""

    ident: str
    kind: str | None = None

    def matches(self, doc: dict) -> bool:
        kind, ident = target_of(doc)
        return ident == self.ident and (self.kind is None or self.kind == kind)

    def as_query(self) -> str:
        return f"{api.Q_VAL_TGT_UE}={self.ident if self.kind is None else f'{self.kind}:{self.ident}'}"


def _bad_query(detail: str, cause: str = "INVALID_QUERY") -> ProblemError:
    return ProblemError(Problem(0x80, detail, cause))


def parse_val_tgt_ue(value: str) -> TargetQuery:
    """One ``val-tgt-ue`` value → TargetQuery: ``<id>`` (SPEC D16), ``valUserId:<id>``,
    ``valUeId:<id>``, or a JSON ValTargetUe map. 4.00 when malformed."""
    try:
        if value.startswith("{"):
            try:
                tgt = json.loads(value)
            except ValueError as e:
                raise _bad_query(f"val-tgt-ue is not a JSON ValTargetUe: {e}", "INVALID_VAL_TGT_UE") from None
            kind, ident = validate_val_tgt_ue(tgt, api.Q_VAL_TGT_UE)
            return TargetQuery(ident, kind)
        for kind in TARGET_KINDS:
            if value.startswith(kind + ":"):
                ident = value[len(kind) + 1 :]
                return TargetQuery(_text(ident, f"{api.Q_VAL_TGT_UE} {kind}", identifier=True), kind)
        return TargetQuery(_text(value, api.Q_VAL_TGT_UE, identifier=True))
    except ModelError as e:
        raise _bad_query(str(e), "INVALID_VAL_TGT_UE") from None


def parse_profile_query(uri_query: tuple[str, ...] | list[str]) -> TargetQuery:
    """Uri-Query options of a collection GET → TargetQuery. ``val-tgt-ue`` is mandatory with
    cardinality 1 (4.00 when missing or repeated); no other parameter is defined (4.00)."""
    values: list[str] = []
    for item in uri_query:
        name, sep, value = item.partition("=")
        if not sep:
            raise _bad_query(f"query option {item!r} is not name=value")
        if name != api.Q_VAL_TGT_UE:
            raise _bad_query(
                f"unknown query parameter {name!r}; only {api.Q_VAL_TGT_UE} is defined",
                "UNKNOWN_QUERY_PARAMETER",
            )
        values.append(value)
    if not values:
        raise _bad_query(
            f"the query parameter {api.Q_VAL_TGT_UE} (VAL user ID or VAL UE ID) is mandatory",
            "MISSING_VAL_TGT_UE",
        )
    if len(values) > 1:
        raise _bad_query(f"{api.Q_VAL_TGT_UE} given {len(values)} times (cardinality 1)")
    return parse_val_tgt_ue(values[0])


# -- paths (C.2.1.2.1) ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileTarget:
    """What a request path names below ``{apiRoot}/su-up/v1``."""

    service_id: str
    doc_id: str | None = None  # None → the collection


def is_profile_path(path: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    """Whether a path lies under ``{prefix}/su-up`` (the SU_UserProfile API answers it, 4.04 included)."""
    n = len(prefix)
    return tuple(path[:n]) == tuple(prefix) and len(path) > n and path[n] == api.SU_UP


def parse_profile_path(path: tuple[str, ...], prefix: tuple[str, ...]) -> ProfileTarget | None:
    """``{prefix}/su-up/v1/val-services/{valServiceId}/user-profiles[/{profileDocId}]``; None when
    the path names no resource of the API (→ 4.04)."""
    n = len(prefix)
    if tuple(path[:n]) != tuple(prefix):
        return None
    rest = tuple(path[n:])
    if len(rest) not in (5, 6) or rest[:3] != (api.SU_UP, api.API_VERSION, api.VAL_SERVICES):
        return None
    if rest[4] != api.USER_PROFILES or not rest[3]:
        return None
    if len(rest) == 6:
        return ProfileTarget(rest[3], rest[5]) if rest[5] else None
    return ProfileTarget(rest[3])


# -- authorization (SPEC D12, D16) ---------------------------------------------------------------------
#: the one 4.03 of every withheld profile (a foreign profile reads like a missing one)
FORBIDDEN_PROFILE = Problem(0x83, "the requester may read only its own user profiles", "NOT_AUTHORIZED")
ADMIN_ONLY = forbidden("only an administrator may create, update or delete user profiles", "ADMIN_ONLY")


def _own_ids(identity: Identity) -> set[str]:
    """The identifiers an identity speaks for: its authenticated name, as VAL UE ID or VAL user ID.
    Gateways read no profiles (they work on behalf of constrained UEs through su-uc)."""
    return {identity.name} if identity.role is Role.UE and identity.name else set()


def authorize_query(identity: Identity, target: TargetQuery) -> Problem | None:
    """Collection GET: an administrator for anyone; a VAL user or UE only for itself — the
    authenticated identity must equal ``val-tgt-ue``; unauthenticated 4.01."""
    if identity.role is Role.ANONYMOUS:
        return UNAUTHENTICATED
    if identity.role is Role.ADMIN or target.ident in _own_ids(identity):
        return None
    return FORBIDDEN_PROFILE


def authorize_read(identity: Identity, doc: dict | None, missing: Problem) -> Problem | None:
    """Individual GET / Observe once the profile was looked up (``doc`` None: it does not exist,
    and ``missing`` is the 4.04 an administrator gets). Everyone else cannot tell a missing profile
    from someone else's: both read :data:`FORBIDDEN_PROFILE`."""
    if identity.role is Role.ANONYMOUS:
        return UNAUTHENTICATED
    if identity.role is Role.ADMIN:
        return missing if doc is None else None
    if doc is None or target_of(doc)[1] not in _own_ids(identity):
        return FORBIDDEN_PROFILE
    return None


def authorize_write(identity: Identity) -> Problem | None:
    """POST / PUT / DELETE: administrators only (SPEC D12)."""
    if identity.role is Role.ANONYMOUS:
        return UNAUTHENTICATED
    return None if identity.role is Role.ADMIN else ADMIN_ONLY
