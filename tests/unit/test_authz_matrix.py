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
    CLAIM_PREFIX,
    KeyEntry,
    RegistryError,
    RegistryState,
    add_key,
    add_keys,
    claims_for,
    identity_arg,
    identity_from_claims,
    kid_for,
    parse_kid,
    revoke_keys,
)

TAC = "35209900"
ME = imei_urn(TAC, 1)
OTHER = imei_urn(TAC, 2)
MY_DOC = {"valServiceDomain": "d", "valUeIds": {"uris": [ME]}}
MISSING = Problem(0x84, "no UE configuration document 'x'", "NO_SUCH_DOCUMENT")
COVERS_ME = {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "1"}}]}
COVERS_OTHERS = {"uris": ["urn:dev:somebody-else"]}

T0 = "2026-01-01T00:00:00Z"
STATE, UE_KEY = add_key(RegistryState(), Identity(Role.UE, ME), T0)
STATE, _ = add_key(STATE, Identity(Role.UE, OTHER), T0)
STATE, GW_KEY = add_key(STATE, Identity(Role.GATEWAY, "gw1"), T0)
STATE, ADMIN_KEY = add_key(STATE, Identity(Role.ADMIN, "ops"), T0)
STATE, REVOKED_KEY = add_key(STATE, Identity(Role.UE, "urn:dev:revoked"), T0)
STATE, _ = revoke_keys(STATE, T0, kid=REVOKED_KEY.kid)

#: requester → (identity as the server derives it from the verified context, gateway coverage)
REQUESTERS = {
    "ue": (identity_from_claims(claims_for(UE_KEY.kid), STATE.entries), None),
    "other-ue": (Identity(Role.UE, OTHER), None),
    "gateway-covering": (Identity(Role.GATEWAY, "gw1"), COVERS_ME),
    "gateway-not-covering": (Identity(Role.GATEWAY, "gw2"), COVERS_OTHERS),
    "admin": (identity_from_claims(claims_for(ADMIN_KEY.kid), STATE.entries), None),
    "unauthenticated": (ANONYMOUS, None),
    "revoked": (identity_from_claims(claims_for(REVOKED_KEY.kid), STATE.entries) or ANONYMOUS, None),
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


# -- claims → identity --------------------------------------------------------------------------------


def test_identity_from_claims():
    entries = STATE.entries
    assert identity_from_claims(claims_for(UE_KEY.kid), entries) == Identity(Role.UE, ME)
    assert identity_from_claims(claims_for(GW_KEY.kid), entries) == Identity(Role.GATEWAY, "gw1")
    assert identity_from_claims(claims_for(REVOKED_KEY.kid), entries) is None
    assert identity_from_claims(claims_for(kid_for(999)), entries) is None
    assert identity_from_claims(None, entries) is None
    assert identity_from_claims([], entries) is None
    assert identity_from_claims([CLAIM_PREFIX + "zz"], entries) is None
    assert identity_from_claims(["something-else"], entries) is None
    assert identity_from_claims([*claims_for(UE_KEY.kid), *claims_for(GW_KEY.kid)], entries) is None


@given(st.lists(st.text(max_size=20), max_size=4))
def test_identity_from_claims_never_crashes(claims):
    result = identity_from_claims(claims, STATE.entries)
    assert result is None or isinstance(result, Identity)


# -- registry state -----------------------------------------------------------------------------------


def test_kids_are_short_and_never_reused():
    assert kid_for(1) == b"\x01" and kid_for(255) == b"\xff" and kid_for(256) == b"\x01\x00"
    with pytest.raises(ValueError):
        kid_for(0)
    with pytest.raises(RegistryError):
        kid_for(1 << 56)
    state, a = add_key(RegistryState(), Identity(Role.UE, ME), T0)
    state, _ = revoke_keys(state, T0, identity=Identity(Role.UE, ME))
    state, b = add_key(state, Identity(Role.UE, ME), T0)
    assert a.kid != b.kid and len(state.entries) == 2


def test_one_active_key_per_identity():
    with pytest.raises(RegistryError, match="already has an active key"):
        add_key(STATE, Identity(Role.UE, ME), T0)
    with pytest.raises(RegistryError):
        add_key(STATE, ANONYMOUS, T0)


def test_keys_in_a_batch():
    ues = [Identity(Role.UE, imei_urn(TAC, i)) for i in range(10, 13)]
    state, made = add_keys(STATE, ues, T0)
    assert [e.identity for e in made] == ues and state.next_number == STATE.next_number + 3
    assert [int.from_bytes(e.kid, "big") for e in made] == [STATE.next_number + i for i in range(3)]
    with pytest.raises(RegistryError, match="already has an active key"):
        add_keys(STATE, [ues[0], ues[0]], T0)  # twice in one batch
    with pytest.raises(RegistryError, match="already has an active key"):
        add_keys(STATE, [ues[0], Identity(Role.UE, ME)], T0)  # one already in the registry


def test_revoke():
    state, revoked = revoke_keys(STATE, T0, identity=Identity(Role.GATEWAY, "gw1"))
    assert [e.kid for e in revoked] == [GW_KEY.kid] and not state.entries[GW_KEY.kid].active
    assert STATE.entries[GW_KEY.kid].active  # pure: the old state is unchanged
    with pytest.raises(RegistryError, match="no active key"):
        revoke_keys(state, T0, identity=Identity(Role.GATEWAY, "gw1"))
    with pytest.raises(RegistryError, match="already revoked"):
        revoke_keys(state, T0, kid=GW_KEY.kid)
    with pytest.raises(RegistryError, match="no key"):
        revoke_keys(state, T0, kid=b"\x7f\x7f")
    with pytest.raises(ValueError):
        revoke_keys(state, T0)


def test_registry_json_roundtrip_and_rejects():
    assert RegistryState.from_json(STATE.to_json()) == STATE
    good = STATE.to_json()
    for bad in (
        {**good, "format": "x"},
        {**good, "version": 2},
        {**good, "entries": {}},
        {**good, "nextKey": 1},
        {**good, "entries": [*good["entries"], good["entries"][0]]},
        {**good, "entries": [{"kid": "01"}]},
        {**good, "entries": [{**good["entries"][0], "identity": "king:x"}]},
        {**good, "entries": [{**good["entries"][0], "kid": "xyz"}]},
        {**good, "entries": [{**good["entries"][0], "revoked": 5}]},
    ):
        with pytest.raises(RegistryError):
            RegistryState.from_json(bad)


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
    state, entry = add_key(RegistryState(), Identity(Role.GATEWAY, "gw9"), T0, "A128GCM")
    assert entry.algorithm == "A128GCM" and RegistryState.from_json(state.to_json()) == state
    with pytest.raises(RegistryError, match="unknown algorithm"):
        add_key(RegistryState(), Identity(Role.GATEWAY, "gw9"), T0, "DES")
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
