"""VAL user profiles in the store (store/profiles.py), run against SQLite and PostgreSQL alike.

CRUD with versions (TS 24.546 C.2.1.2.3.3; 4.04 / 4.12 outcomes), ``profileDocId`` set by the store
(C.2.1.3.2.1), unknown keys (the CDDL extension points of C.2.1.5), the lookup behind the
collection GET by ``val-tgt-ue`` (Table C.2.1.2.2.3.1-1; SPEC D16), separation from the UE
configuration documents and between services, and persistence across reopening.
"""

from __future__ import annotations

import pytest

from msgin5g.store import DocNotFound, Store, VersionMismatch, open_store

SVC = "msgin5g-svc"
UE = "urn:gsma:imei:35209900-000001-8"
USER = "sip:alice@msgin5g.example"


def profile(*, ue: str | None = None, user: str | None = None, name: str = "p", **extra) -> dict:
    tgt = {"valUeId": ue} if ue is not None else {"valUserId": user}
    return {"profileInformation": {"profileName": name, "status": True}, "valTgtUe": tgt, **extra}


def names(found) -> list[str]:
    return [s.doc["profileInformation"]["profileName"] for s in found]


def test_create_sets_id_and_version_one(store: Store):
    s = store.create_profile(SVC, profile(ue=UE, name="a"))
    assert s.version == 1 and s.service_id == SVC and s.doc_id
    assert s.doc["profileDocId"] == s.doc_id
    got = store.get_profile(SVC, s.doc_id)
    assert got == s
    assert store.create_profile(SVC, profile(ue=UE)).doc_id != s.doc_id


def test_unknown_keys_round_trip(store: Store):
    doc = profile(user=USER, **{"x-top": {"n": [1, 2.5, None, True]}})
    doc["profileInformation"]["x-info"] = "kept"
    doc["valTgtUe"]["x-tgt"] = 1
    s = store.create_profile(SVC, doc)
    got = store.get_profile(SVC, s.doc_id).doc
    assert got["x-top"] == {"n": [1, 2.5, None, True]}
    assert got["profileInformation"]["x-info"] == "kept" and got["valTgtUe"]["x-tgt"] == 1


def test_get_unknown_is_none_and_services_are_separate(store: Store):
    s = store.create_profile(SVC, profile(ue=UE))
    assert store.get_profile(SVC, "nope") is None
    assert store.get_profile("other-svc", s.doc_id) is None
    assert store.profiles_for("other-svc", UE) == []
    assert store.count_profiles(SVC) == 1 and store.count_profiles("other-svc") == 0


def test_profiles_are_not_ue_configuration_documents(store: Store):
    s = store.create_profile(SVC, profile(ue=UE))
    assert store.get(SVC, s.doc_id) is None and store.count(SVC) == 0
    d = store.create(SVC, {"valServiceDomain": "msgin5g.example"})
    assert store.get_profile(SVC, d.doc_id) is None and store.count_profiles(SVC) == 1


def test_replace_bumps_version_and_retargets(store: Store):
    s = store.create_profile(SVC, profile(ue=UE, name="a"))
    new = store.replace_profile(SVC, s.doc_id, profile(user=USER, name="b"), expected_version=1)
    assert new.version == 2 and new.doc["profileDocId"] == s.doc_id
    assert store.get_profile(SVC, s.doc_id) == new
    assert store.profiles_for(SVC, UE) == []
    assert names(store.profiles_for(SVC, USER)) == ["b"]
    assert store.replace_profile(SVC, s.doc_id, profile(user=USER, name="c")).version == 3


def test_replace_with_stale_version_changes_nothing(store: Store):
    s = store.create_profile(SVC, profile(ue=UE, name="a"))
    store.replace_profile(SVC, s.doc_id, profile(ue=UE, name="b"))
    with pytest.raises(VersionMismatch):
        store.replace_profile(SVC, s.doc_id, profile(ue=UE, name="stale"), expected_version=1)
    got = store.get_profile(SVC, s.doc_id)
    assert got.version == 2 and names([got]) == ["b"]
    with pytest.raises(DocNotFound):
        store.replace_profile(SVC, "nope", profile(ue=UE))
    with pytest.raises(DocNotFound):
        store.replace_profile(SVC, "nope", profile(ue=UE), expected_version=1)


def test_delete_returns_profile_and_unindexes(store: Store):
    s = store.create_profile(SVC, profile(ue=UE, name="a"))
    with pytest.raises(VersionMismatch):
        store.delete_profile(SVC, s.doc_id, expected_version=7)
    assert store.get_profile(SVC, s.doc_id) is not None
    gone = store.delete_profile(SVC, s.doc_id, expected_version=1)
    assert gone == s
    assert store.get_profile(SVC, s.doc_id) is None and store.profiles_for(SVC, UE) == []
    with pytest.raises(DocNotFound):
        store.delete_profile(SVC, s.doc_id)


def test_profiles_for_by_identifier_and_kind(store: Store):
    store.create_profile(SVC, profile(ue=UE, name="ue-1"))
    store.create_profile(SVC, profile(user=UE, name="same-id-as-user"))
    store.create_profile(SVC, profile(user=USER, name="alice"))
    store.create_profile(SVC, profile(ue=UE, name="ue-2"))
    store.create_profile(SVC, profile(ue=UE + "0", name="prefix-is-not-equal"))
    assert names(store.profiles_for(SVC, UE)) == ["ue-1", "same-id-as-user", "ue-2"]  # creation order
    assert names(store.profiles_for(SVC, UE, "valUeId")) == ["ue-1", "ue-2"]
    assert names(store.profiles_for(SVC, UE, "valUserId")) == ["same-id-as-user"]
    assert names(store.profiles_for(SVC, USER)) == ["alice"]
    assert store.profiles_for(SVC, "sip:nobody@x") == []
    assert names(store.iter_profiles(SVC)) == [
        "ue-1",
        "same-id-as-user",
        "alice",
        "ue-2",
        "prefix-is-not-equal",
    ]


def test_profiles_survive_reopen(store_url: str):
    s = open_store(store_url)
    try:
        created = s.create_profile(SVC, profile(user=USER, name="persisted"))
    finally:
        s.close()
    s = open_store(store_url)
    try:
        assert s.get_profile(SVC, created.doc_id) == created
        assert names(s.profiles_for(SVC, USER)) == ["persisted"]
    finally:
        s.close()
