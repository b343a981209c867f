"""The pure SU_UserProfile rules (msgin5g.profiles): data model (TS 24.546 C.2.1.3, C.2.1.5), the
``val-tgt-ue`` query (Table C.2.1.2.2.3.1-1; digest §10.3), paths (C.2.1.2.1) and authorization
(SPEC D12, D16). No sockets; expected values from the spec's tables."""

from __future__ import annotations

import uuid

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgin5g.authz import ADMIN, ANONYMOUS, Identity, Role
from msgin5g.model import ModelError
from msgin5g.problem import Problem, ProblemError
from msgin5g.profiles import (
    TargetQuery,
    authorize_query,
    authorize_read,
    authorize_write,
    is_profile_path,
    parse_profile_path,
    parse_profile_query,
    parse_val_tgt_ue,
    validate_profile_doc,
)
from msgin5g.server.profile_service import ProfileRequest, ProfileService
from msgin5g.server.service import ServiceConfig
from msgin5g.store.sqlite import SqliteStore

UE = "urn:gsma:imei:35209900-000001-8"
USER = "sip:alice@msgin5g.example"


def doc(**over) -> dict:
    d = {"profileInformation": {"status": False}, "valTgtUe": {"valUeId": UE}}
    d.update(over)
    return d


# -- data model ---------------------------------------------------------------------------------------
def test_minimal_profile_is_mandatory_attributes_only():
    # ProfileDoc: profileInformation M, valTgtUe M; ProfileInfo: status M
    assert validate_profile_doc(doc()) == doc()


def test_every_config_type_is_accepted_including_unknown_text():
    configs = [{"configType": t, "configData": "x"} for t in ("COMMON", "ON_NETWORK", "OFF_NETWORK", "LATER")]
    d = doc(profileInformation={"status": True, "profileConfigs": configs, "isDefault": True})
    validate_profile_doc(d)


def test_unknown_keys_are_kept_everywhere():
    d = doc(x=1, profileInformation={"status": True, "y": [1]}, valTgtUe={"valUserId": USER, "z": {}})
    d["profileInformation"]["profileConfigs"] = [{"configType": "COMMON", "configData": "", "w": 2}]
    before = repr(d)
    validate_profile_doc(d)
    assert repr(d) == before


@pytest.mark.parametrize(
    ("bad", "field", "cause"),
    [
        ({"valTgtUe": {"valUeId": UE}}, "profileInformation", "MISSING_PROFILE_INFORMATION"),
        (
            {"profileInformation": {}, "valTgtUe": {"valUeId": UE}},
            "profileInformation/status",
            "MISSING_STATUS",
        ),
        (doc(profileInformation={"status": 1}), "profileInformation/status", "INVALID_DOCUMENT"),
        (doc(profileInformation={"status": True, "profileName": 5}), "profileInformation/profileName", None),
        (doc(profileInformation={"status": True, "isDefault": "no"}), "profileInformation/isDefault", None),
        (
            doc(profileInformation={"status": True, "profileConfigs": {}}),
            "profileInformation/profileConfigs",
            None,
        ),
        (
            doc(profileInformation={"status": True, "profileConfigs": [{"configType": "COMMON"}]}),
            "profileInformation/profileConfigs/0/configData",
            None,
        ),
        (
            doc(
                profileInformation={"status": True, "profileConfigs": [{"configType": "", "configData": ""}]}
            ),
            "profileInformation/profileConfigs/0/configType",
            "INVALID_IDENTIFIER",
        ),
        ({"profileInformation": {"status": True}}, "valTgtUe", "MISSING_VAL_TGT_UE"),
        (doc(valTgtUe={"valUeId": UE, "valUserId": USER}), "valTgtUe", "INVALID_VAL_TGT_UE"),
        (doc(valTgtUe={"other": UE}), "valTgtUe", "INVALID_VAL_TGT_UE"),
        (doc(valTgtUe=UE), "valTgtUe", None),
        (doc(valTgtUe={"valUeId": " " + UE}), "valTgtUe/valUeId", "INVALID_IDENTIFIER"),
        (doc(valTgtUe={"valUserId": "a\tb"}), "valTgtUe/valUserId", "INVALID_IDENTIFIER"),
        (doc(profileDocId=""), "profileDocId", "INVALID_IDENTIFIER"),
        (doc(x=float("inf")), "x", "INVALID_NUMBER"),
        (doc(x=-(2**64) - 1), "x", "INVALID_NUMBER"),
        (doc(x=b"bytes"), "x", None),
        (doc(x="\udc00"), "x", "INVALID_TEXT"),
        (["not", "a", "map"], "", None),
    ],
)
def test_invalid_profiles_name_the_field(bad, field, cause):
    with pytest.raises(ModelError) as e:
        validate_profile_doc(bad)
    assert e.value.field == field
    if cause is not None:
        assert e.value.cause == cause


def test_integers_at_the_cbor_limits_are_fine_and_nesting_is_bounded():
    validate_profile_doc(doc(lo=-(2**64), hi=2**64 - 1))
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ModelError) as e:
        validate_profile_doc(doc(deep=deep))
    assert e.value.cause == "TOO_DEEP"


# -- val-tgt-ue ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (UE, TargetQuery(UE)),
        (USER, TargetQuery(USER)),
        ("plain-user-17", TargetQuery("plain-user-17")),
        (f"valUeId:{UE}", TargetQuery(UE, "valUeId")),
        (f"valUserId:{USER}", TargetQuery(USER, "valUserId")),
        ('{"valUserId": "sip:alice@msgin5g.example"}', TargetQuery(USER, "valUserId")),
        ('{"valUeId": "u1", "ignored": 1}', TargetQuery("u1", "valUeId")),
    ],
)
def test_val_tgt_ue_forms(value, expected):
    assert parse_val_tgt_ue(value) == expected


@pytest.mark.parametrize("value", ["", "valUeId:", "valUserId: x", '{"valUeId":1}', "{", '{"a":"b"}', "x\n"])
def test_bad_val_tgt_ue_is_400(value):
    with pytest.raises(ProblemError) as e:
        parse_val_tgt_ue(value)
    assert e.value.problem.code == 0x80 and e.value.problem.cause == "INVALID_VAL_TGT_UE"


def test_val_tgt_ue_query_round_trips():
    for t in (TargetQuery(UE), TargetQuery(USER, "valUserId"), TargetQuery(UE, "valUeId")):
        assert parse_profile_query([t.as_query()]) == t


@pytest.mark.parametrize(
    ("query", "cause"),
    [
        ([], "MISSING_VAL_TGT_UE"),
        ([f"val-tgt-ue={UE}", f"val-tgt-ue={UE}"], "INVALID_QUERY"),
        ([f"ue-uri={UE}"], "UNKNOWN_QUERY_PARAMETER"),
        ([f"val-tgt-ue={UE}", "x=1"], "UNKNOWN_QUERY_PARAMETER"),
        (["val-tgt-ue"], "INVALID_QUERY"),
    ],
)
def test_bad_queries(query, cause):
    with pytest.raises(ProblemError) as e:
        parse_profile_query(query)
    assert e.value.problem.code == 0x80 and e.value.problem.cause == cause


def test_matching_by_identifier_and_kind():
    by_ue = doc(valTgtUe={"valUeId": UE})
    by_user = doc(valTgtUe={"valUserId": UE})
    assert TargetQuery(UE).matches(by_ue) and TargetQuery(UE).matches(by_user)
    assert TargetQuery(UE, "valUeId").matches(by_ue) and not TargetQuery(UE, "valUeId").matches(by_user)
    assert not TargetQuery(UE + "x").matches(by_ue)


# -- paths --------------------------------------------------------------------------------------------
def test_paths():
    base = ("su-up", "v1", "val-services", "msgin5g", "user-profiles")
    t = parse_profile_path(base, ())
    assert (t.service_id, t.doc_id) == ("msgin5g", None)
    t = parse_profile_path((*base, "p1"), ())
    assert (t.service_id, t.doc_id) == ("msgin5g", "p1")
    t = parse_profile_path(("seal", "cm", *base), ("seal", "cm"))
    assert (t.service_id, t.doc_id) == ("msgin5g", None)
    for bad in (
        ("su-uc", "v1", "val-services", "msgin5g", "user-profiles"),
        ("su-up", "v2", "val-services", "msgin5g", "user-profiles"),
        ("su-up", "v1", "val-services", "msgin5g", "ue-configurations"),
        ("su-up", "v1", "val-services", "", "user-profiles"),
        (*base, ""),
        (*base, "p1", "more"),
    ):
        assert parse_profile_path(bad, ()) is None
    assert is_profile_path(("su-up", "anything"), ()) and not is_profile_path(("su-uc", "v1"), ())
    assert is_profile_path(("p", "su-up"), ("p",)) and not is_profile_path(("su-up",), ("p",))


# -- authorization (SPEC D12, D16) --------------------------------------------------------------------
MISSING = Problem(0x84, "missing", "NO_SUCH_PROFILE")
ME = Identity(Role.UE, UE)
ALICE = Identity(Role.UE, USER)  # a VAL user authenticated under its VAL user ID
OTHER = Identity(Role.UE, "urn:gsma:imei:35209900-000002-6")
GATEWAY = Identity(Role.GATEWAY, UE)  # a gateway named like a UE is still not that UE


def code(p: Problem | None) -> int | None:
    return None if p is None else p.code


def test_query_authorization():
    assert code(authorize_query(ADMIN, TargetQuery(UE))) is None
    assert code(authorize_query(ME, TargetQuery(UE))) is None
    assert code(authorize_query(ME, TargetQuery(UE, "valUserId"))) is None
    assert code(authorize_query(ALICE, TargetQuery(USER, "valUserId"))) is None
    assert code(authorize_query(OTHER, TargetQuery(UE))) == 0x83
    assert code(authorize_query(GATEWAY, TargetQuery(UE))) == 0x83
    assert code(authorize_query(ANONYMOUS, TargetQuery(UE))) == 0x81


def test_read_authorization_hides_existence():
    mine, alices = doc(valTgtUe={"valUeId": UE}), doc(valTgtUe={"valUserId": USER})
    assert authorize_read(ADMIN, mine, MISSING) is None
    assert authorize_read(ADMIN, None, MISSING) is MISSING
    assert authorize_read(ME, mine, MISSING) is None
    assert authorize_read(ALICE, alices, MISSING) is None
    foreign = authorize_read(ME, alices, MISSING)
    assert code(foreign) == 0x83 and authorize_read(ME, None, MISSING) == foreign
    assert code(authorize_read(GATEWAY, mine, MISSING)) == 0x83
    assert code(authorize_read(ANONYMOUS, mine, MISSING)) == 0x81


def test_only_an_administrator_writes():
    assert authorize_write(ADMIN) is None
    assert authorize_write(Identity(Role.ADMIN, "ops")) is None
    for who in (ME, ALICE, GATEWAY):
        p = authorize_write(who)
        assert p.code == 0x83 and p.cause == "ADMIN_ONLY"
    assert code(authorize_write(ANONYMOUS)) == 0x81


# -- property: nothing of another identity ever comes back (SPEC D12, D16) ----------------------------
IDS = (UE, USER, "urn:gsma:imei:35209900-000002-6", "sip:bob@msgin5g.example")
KINDS = ("valUeId", "valUserId")


@st.composite
def scenario(draw):
    profiles = draw(st.lists(st.tuples(st.sampled_from(KINDS), st.sampled_from(IDS)), max_size=6))
    requester = draw(
        st.one_of(
            st.builds(lambda n: Identity(Role.UE, n), st.sampled_from(IDS)),
            st.builds(lambda n: Identity(Role.GATEWAY, n), st.sampled_from(IDS)),
        )
    )
    query = draw(
        st.one_of(
            st.sampled_from(IDS),
            st.builds(lambda k, i: f"{k}:{i}", st.sampled_from(KINDS), st.sampled_from(IDS)),
        )
    )
    return profiles, requester, query


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=scenario())
def test_no_route_returns_another_identitys_profile(tmp_path, case):
    """Over the service (no sockets, a real SQLite store): for any stored profiles, any non-admin
    requester and any val-tgt-ue, every profile in a 2.05 — collection or individual — has the
    requester's own identity as its target; a UE is answered for each of its own profiles."""
    profiles, requester, query = case
    store = SqliteStore(str(tmp_path / f"p{uuid.uuid4().hex}.db"))
    try:
        svc = ProfileService(store, ServiceConfig())
        ids = [store.create_profile("msgin5g", doc(valTgtUe={k: i})).doc_id for k, i in profiles]
        answers = [svc.collection_get(requester, "msgin5g", (f"val-tgt-ue={query}",), ProfileRequest())]
        answers += [svc.doc_get(requester, "msgin5g", pid, ProfileRequest()) for pid in ids]
        seen = []
        for reply in answers:
            if reply.code == 0x45:
                body = cbor2.loads(reply.payload)
                seen += body if isinstance(body, list) else [body]
            else:
                assert reply.code == 0x83
        assert all(next(iter(d["valTgtUe"].values())) == requester.name for d in seen)
        if requester.role is Role.UE:
            own = [pid for pid, (_k, i) in zip(ids, profiles, strict=True) if i == requester.name]
            assert set(own) == {d["profileDocId"] for d in seen}  # each own profile, by its GET
        else:
            assert seen == []
    finally:
        store.close()
