"""The authorization model, exhaustively and without sockets (TS 24.546 6.2.1.2; TS 33.501 Annex Y; SPEC D12).

Requesters {UE, other UE, gateway with and without coverage, administrator, unauthenticated,
revoked} × operations {scoped query for the UE, unscoped query, bulk (request and per UE),
individual GET and Observe of the UE's document and of a missing one, POST, PUT, DELETE}, each
cell with its expected code; plus the mapping from a verified OSCORE context's claims to an
identity, and the key registry's state transitions.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from msgin5g.authz import (
    ADMIN,
    ANONYMOUS,
    Identity,
    Op,
    Role,
    authorize,
    authorize_doc,
    forbidden_ue_problem,
    gateway_covers,
    parse_identity,
)
from msgin5g.model import ModelError, UeIdentity, imei_urn
from msgin5g.problem import Problem
from msgin5g.security.keys import (
    KeyEntry,
    RegistryError,
    identity_arg,
    kid_for,
    parse_kid,
)

TAC = "35209900"
ME = imei_urn(TAC, 1)
OTHER = imei_urn(TAC, 2)
MY_DOC = {"valServiceDomain": "d", "valUeIds": {"uris": [ME]}}
MISSING = Problem(0x84, "no UE configuration document 'x'", "NO_SUCH_DOCUMENT")
COVERS_ME = {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "1"}}]}
COVERS_OTHERS = {"uris": ["urn:dev:somebody-else"]}


#: requester → (identity as the server takes it from the verified context's key, gateway coverage);
#: a revoked key verifies nothing, so its requests are unauthenticated
REQUESTERS = {
    "ue": (Identity(Role.UE, ME), None),
    "other-ue": (Identity(Role.UE, OTHER), None),
    "gateway-covering": (Identity(Role.GATEWAY, "gw1"), COVERS_ME),
    "gateway-not-covering": (Identity(Role.GATEWAY, "gw2"), COVERS_OTHERS),
    "admin": (Identity(Role.ADMIN, "ops"), None),
    "unauthenticated": (ANONYMOUS, None),
    "revoked": (ANONYMOUS, None),
}

OPERATIONS = (
    "query-scoped",
    "query-unscoped",
    "bulk",
    "bulk-entry",
    "get-doc",
    "get-missing",
    "observe-doc",
    "post",
    "put",
    "delete",
)

OK, NA, NO, NF = None, 0x81, 0x83, 0x84  # allowed, 4.01 not authenticated, 4.03, 4.04
FORBID = NO
# fmt: off
EXPECTED = {
    #                        scoped unscop bulk entry get  missing observe post put delete
    "ue":                   (OK,    NO,    NO,  NO,   OK,  NO,     OK,     NO,  NO, NO),
    "other-ue":             (NO,    NO,    NO,  NO,   NO,  NO,     NO,     NO,  NO, NO),
    "gateway-covering":     (OK,    NO,    OK,  OK,   NO,  NO,     NO,     NO,  NO, NO),
    "gateway-not-covering": (NO,    NO,    OK,  NO,   NO,  NO,     NO,     NO,  NO, NO),
    "admin":                (OK,    OK,    OK,  OK,   OK,  NF,     OK,     OK,  OK, OK),
    "unauthenticated":      (NA,    NA,    NA,  NA,   NA,  NA,     NA,     NA,  NA, NA),
    "revoked":              (NA,    NA,    NA,  NA,   NA,  NA,     NA,     NA,  NA, NA),
}
# fmt: on


def decide(identity: Identity, coverage: dict | None, operation: str) -> Problem | None:
    """What the SCM-S decides for one request, composed from the pure core as service.py does."""
    me = UeIdentity.from_query(uri=ME)
    if operation == "query-scoped":
        return authorize(identity, Op.QUERY_SCOPED, ue=me, coverage=coverage)
    if operation == "query-unscoped":
        return authorize(identity, Op.QUERY_UNSCOPED)
    if operation == "bulk":
        return authorize(identity, Op.BULK)
    if operation == "bulk-entry":  # the per-UE stub decision for this UE inside an allowed bulk GET
        problem = authorize(identity, Op.BULK)
        if problem is not None:
            return problem
        ok = identity.role is Role.ADMIN or gateway_covers(coverage, me)
        return None if ok else forbidden_ue_problem()
    if operation in ("get-doc", "observe-doc"):
        return authorize_doc(identity, MY_DOC, MISSING)
    if operation == "get-missing":
        return authorize_doc(identity, None, MISSING)
    op = {"post": Op.CREATE, "put": Op.UPDATE, "delete": Op.DELETE}[operation]
    return authorize(identity, op)


@pytest.mark.parametrize("requester", sorted(REQUESTERS))
@pytest.mark.parametrize("operation", OPERATIONS)
def test_matrix(requester, operation):
    identity, coverage = REQUESTERS[requester]
    problem = decide(identity, coverage, operation)
    expected = EXPECTED[requester][OPERATIONS.index(operation)]
    assert (problem.code if problem else None) == expected
    per_ue = ("query-scoped", "get-doc", "get-missing") + (
        ("bulk-entry",) if authorize(identity, Op.BULK) is None else ()
    )
    if expected == FORBID and operation in per_ue:
        # withholding a UE's data always reads the same (no hint whether it exists)
        assert problem == forbidden_ue_problem()


def test_expected_table_is_complete():
    assert set(EXPECTED) == set(REQUESTERS)
    assert all(len(row) == len(OPERATIONS) for row in EXPECTED.values())


uris = st.one_of(
    st.integers(0, 999_999).map(lambda n: imei_urn(TAC, n)),
    st.from_regex(r"urn:dev:[a-z0-9]{1,8}", fullmatch=True),
)
docs = st.builds(
    lambda u, ranged: (
        {"valServiceDomain": "d", "valUeIds": {"uris": [u]}}
        if not ranged
        else {"valServiceDomain": "d", "valUeIds": {"imeiRanges": [{"tac": TAC, "snrs": ["7"]}]}}
    ),
    uris,
    st.booleans(),
)
non_admins = st.one_of(
    uris.map(lambda u: Identity(Role.UE, u)),
    st.from_regex(r"gw[0-9]{1,3}", fullmatch=True).map(lambda g: Identity(Role.GATEWAY, g)),
    st.just(ANONYMOUS),
)


@given(non_admins, docs)
def test_a_foreign_document_reads_like_a_missing_one(identity, doc):
    """SPEC D12: a non-administrator cannot tell another UE's document from no document."""
    decision = authorize_doc(identity, doc, MISSING)
    if decision is not None:
        assert decision == authorize_doc(identity, None, MISSING)


@given(uris, uris)
def test_a_ue_reads_only_its_own(me, other):
    identity = Identity(Role.UE, me)
    scoped = authorize(identity, Op.QUERY_SCOPED, ue=UeIdentity.from_query(uri=other))
    assert (scoped is None) == (me == other)
    assert authorize_doc(identity, {"valServiceDomain": "d", "valUeIds": {"uris": [me]}}, MISSING) is None


@given(st.sampled_from([Op.CREATE, Op.UPDATE, Op.DELETE, Op.QUERY_UNSCOPED]), non_admins)
def test_only_an_administrator_writes_or_lists(op, identity):
    assert authorize(identity, op) is not None
    assert authorize(ADMIN, op) is None


# -- key numbers and entries (the store numbers keys once: tests/integration/test_store_keys.py) ------


def test_kids_are_short():
    assert kid_for(1) == b"\x01" and kid_for(255) == b"\xff" and kid_for(256) == b"\x01\x00"
    with pytest.raises(ValueError):
        kid_for(0)
    with pytest.raises(RegistryError):
        kid_for(1 << 56)


T0 = "2026-01-01T00:00:00Z"


def test_entry_json():
    e = KeyEntry(b"\x0a", Identity(Role.ADMIN, "ops"), T0)
    assert e.to_json() == {
        "kid": "0a",
        "identity": "admin:ops",
        "created": T0,
        "revoked": None,
        "algorithm": "AES-CCM-16-64-128",
    }
    assert KeyEntry.from_json(e.to_json()) == e
    legacy = {k: v for k, v in e.to_json().items() if k != "algorithm"}
    assert KeyEntry.from_json(legacy) == e
    with pytest.raises(RegistryError):
        KeyEntry.from_json({**e.to_json(), "algorithm": "ROT13"})


def test_algorithms():
    assert len(kid_for((1 << 56) - 1)) == 7  # AES-CCM-16-64-128: 13-byte nonce, 7-byte Sender IDs
    with pytest.raises(RegistryError):
        kid_for((1 << 56) - 1, "A128GCM")  # 12-byte nonce: 6 bytes


def test_identity_arguments():
    assert identity_arg(f"ue:{ME}") == Identity(Role.UE, ME)
    assert identity_arg(ME, "ue") == Identity(Role.UE, ME)
    assert identity_arg(f"ue:{ME}", "ue") == Identity(Role.UE, ME)
    assert identity_arg("gw1", "gateway") == Identity(Role.GATEWAY, "gw1")
    assert identity_arg("admin") == ADMIN and identity_arg("admin", "admin") == ADMIN
    assert identity_arg("ops", "admin") == Identity(Role.ADMIN, "ops") == parse_identity("admin:ops")
    for text, role in (("not a uri", "ue"), ("x", "king"), ("gw\n1", "gateway"), ("", "gateway")):
        with pytest.raises(ModelError):
            identity_arg(text, role)
    assert parse_kid("0A") == b"\x0a"
    for bad in ("", "1", "0g", "00" * 8):
        with pytest.raises(RegistryError):
            parse_kid(bad)
