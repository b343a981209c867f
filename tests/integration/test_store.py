"""The document store contract (store/base.py), run against SQLite and PostgreSQL alike.

Covers CRUD with versions (TS 24.546 C.3.3.3; 4.04 / 4.12 outcomes), unknown keys (C.3.1.5 CDDL
extension points), the candidate lookup behind applicability (TS 24.546 7.2.5; SPEC D3, D4), the
batched lookup of a bulk GET (SPEC D6), the admin any-match query (Table C.3.1.2.2.3.1-2), bulk
import, the gateway registry (SPEC D6, D12) and SQLite sharing between processes.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgin5g.model import DOC_ID_KEY, VENDOR_KEY, UeIdentity, imei_urn
from msgin5g.store import DocNotFound, Store, StoredDoc, VersionMismatch, open_store
from msgin5g.store import postgres as pg_store
from msgin5g.store import sqlite as sqlite_store
from msgin5g.store.base import SNR_MAX, index_rows
from msgin5g.store.sqlite import MANY_KEYS_SQL, SqliteStore, candidates_sql

SVC = "msgin5g-svc"
DOMAIN = "msgin5g.example"
TAC = "35209900"
OTHER_TAC = "86000001"


# -- documents used throughout -----------------------------------------------------------------------
def config_data(service_id: str) -> str:
    return json.dumps({"msgin5gServerAddress": "coap://msg.example", "ueServiceId": service_id})


def ue_doc(i: int, tac: str = TAC) -> dict:
    """A per-UE document, as provisioning creates them by the million."""
    return {
        "valServiceDomain": DOMAIN,
        "valUeIds": {"uris": [imei_urn(tac, i)]},
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": config_data(f"ue{i}@{DOMAIN}")}],
    }


def uri_doc(*uris: str, **extra) -> dict:
    return {"valServiceDomain": DOMAIN, "valUeIds": {"uris": list(uris)}, **extra}


def snrs_doc(tac: str, *snrs: str, **extra) -> dict:
    return {
        "valServiceDomain": DOMAIN,
        "valUeIds": {"imeiRanges": [{"tac": tac, "snrs": list(snrs)}]},
        **extra,
    }


def range_doc(tac: str, low: str, high: str, **extra) -> dict:
    rng = {"tac": tac, "snrRange": {"low": low, "high": high}}
    return {"valServiceDomain": DOMAIN, "valUeIds": {"imeiRanges": [rng]}, **extra}


def tac_doc(tac: str, **extra) -> dict:
    return {"valServiceDomain": DOMAIN, "valUeIds": {"imeiRanges": [{"tac": tac}]}, **extra}


def domain_doc(**extra) -> dict:
    return {"valServiceDomain": DOMAIN, **extra}


def ids(docs: list[StoredDoc]) -> list[str]:
    return [d.doc_id for d in docs]


def imei_ue(tac: str, snr: int) -> UeIdentity:
    return UeIdentity.from_query(uri=imei_urn(tac, snr))


def tac_ue(tac: str, snr: str | None = None) -> UeIdentity:
    return UeIdentity.from_query(tac=tac, snr=snr)


# -- create / get / replace / delete -------------------------------------------------------------------
def test_create_assigns_id_and_version_one(store: Store):
    doc = uri_doc("sip:alice@example.com", ueConfigDocId="client-chosen", configName="alice")
    created = store.create(SVC, doc)
    assert created.version == 1
    assert created.service_id == SVC
    assert created.doc_id != "client-chosen"
    assert created.doc[DOC_ID_KEY] == created.doc_id
    assert doc[DOC_ID_KEY] == "client-chosen", "the caller's dict is not modified"
    assert store.get(SVC, created.doc_id) == created


def test_create_replaces_cddl_spelled_id(store: Store):
    created = store.create(SVC, uri_doc("sip:bob@example.com", UeConfigDocId="other"))
    got = store.get(SVC, created.doc_id)
    assert "UeConfigDocId" not in got.doc
    assert got.doc[DOC_ID_KEY] == created.doc_id


def test_ids_are_unique(store: Store):
    created = [store.create(SVC, domain_doc()) for _ in range(50)]
    assert len({c.doc_id for c in created}) == 50


def test_unknown_keys_round_trip(store: Store):
    doc = {
        "valServiceDomain": DOMAIN,
        "vendorExtension": {"nested": [1, -2, 3.5, True, None, b"\x00\xff", "text"]},
        "valUeIds": {
            "uris": ["sip:carol@example.com"],
            "futureIds": ["x"],
            "imeiRanges": [{"tac": TAC, "snrs": ["1"], "rangeNote": {"k": "v"}}],
        },
        "ueConfigs": [{"configType": "COMMON", "configData": "{}", "priority": 7}],
        "big": 2**40,
    }
    created = store.create(SVC, doc)
    got = store.get(SVC, created.doc_id)
    assert got.doc == {**doc, DOC_ID_KEY: created.doc_id}
    assert got.doc["vendorExtension"]["nested"][5] == b"\x00\xff"


def test_get_unknown_document_is_none(store: Store):
    assert store.get(SVC, "does-not-exist") is None


def test_services_are_separate(store: Store):
    a = store.create("svc-a", uri_doc("sip:dave@example.com"))
    store.create("svc-a", domain_doc())
    assert store.get("svc-b", a.doc_id) is None
    assert store.count("svc-b") == 0
    assert store.candidates("svc-b", UeIdentity(uri="sip:dave@example.com")) == []
    assert store.query_any("svc-b") == []
    with pytest.raises(DocNotFound):
        store.delete("svc-b", a.doc_id)


def test_replace_bumps_version_and_reindexes(store: Store):
    created = store.create(SVC, uri_doc("sip:old@example.com"))
    replaced = store.replace(SVC, created.doc_id, uri_doc("sip:new@example.com", configName="v2"))
    assert replaced.version == 2
    assert replaced.doc[DOC_ID_KEY] == created.doc_id
    assert store.get(SVC, created.doc_id) == replaced
    assert store.candidates(SVC, UeIdentity(uri="sip:old@example.com")) == []
    assert ids(store.candidates(SVC, UeIdentity(uri="sip:new@example.com"))) == [created.doc_id]
    again = store.replace(SVC, created.doc_id, uri_doc("sip:new@example.com"), expected_version=2)
    assert again.version == 3


def test_replace_with_stale_version_changes_nothing(store: Store):
    created = store.create(SVC, uri_doc("sip:erin@example.com"))
    store.replace(SVC, created.doc_id, uri_doc("sip:erin@example.com", configName="v2"))
    with pytest.raises(VersionMismatch):
        store.replace(SVC, created.doc_id, uri_doc("sip:mallory@example.com"), expected_version=1)
    got = store.get(SVC, created.doc_id)
    assert got.version == 2
    assert got.doc["configName"] == "v2"
    assert store.candidates(SVC, UeIdentity(uri="sip:mallory@example.com")) == []


def test_replace_unknown_document(store: Store):
    with pytest.raises(DocNotFound):
        store.replace(SVC, "nope", domain_doc())
    with pytest.raises(DocNotFound):
        store.replace(SVC, "nope", domain_doc(), expected_version=1)
    assert store.count(SVC) == 0


def test_delete_returns_document_and_unindexes(store: Store):
    created = store.create(SVC, range_doc(TAC, "0", "10"))
    deleted = store.delete(SVC, created.doc_id)
    assert deleted == created
    assert store.get(SVC, created.doc_id) is None
    assert store.candidates(SVC, tac_ue(TAC, "5")) == []
    assert store.count(SVC) == 0
    with pytest.raises(DocNotFound):
        store.delete(SVC, created.doc_id)


def test_delete_with_version(store: Store):
    created = store.create(SVC, domain_doc())
    with pytest.raises(VersionMismatch):
        store.delete(SVC, created.doc_id, expected_version=2)
    assert store.get(SVC, created.doc_id) == created
    assert store.delete(SVC, created.doc_id, expected_version=1) == created


def test_data_survives_reopen(store_url: str):
    first = open_store(store_url)
    created = first.create(SVC, range_doc(TAC, "1", "9"))
    first.set_gateway("gw-1", {"all": True})
    first.close()
    second = open_store(store_url)
    try:
        assert second.get(SVC, created.doc_id) == created
        assert ids(second.candidates(SVC, tac_ue(TAC, "5"))) == [created.doc_id]
        assert second.get_gateway("gw-1") == {"all": True}
    finally:
        second.close()


# -- candidates (TS 24.546 7.2.5; SPEC D3, D4) ---------------------------------------------------------
def test_candidates_by_uri(store: Store):
    alice = store.create(SVC, uri_doc("sip:alice@example.com", "sip:alice2@example.com"))
    store.create(SVC, uri_doc("sip:bob@example.com"))
    assert ids(store.candidates(SVC, UeIdentity(uri="sip:alice@example.com"))) == [alice.doc_id]
    assert ids(store.candidates(SVC, UeIdentity(uri="sip:alice2@example.com"))) == [alice.doc_id]
    assert store.candidates(SVC, UeIdentity(uri="sip:carol@example.com")) == []


def test_candidates_by_imei_urn_uri(store: Store):
    own = store.create(SVC, ue_doc(42))
    store.create(SVC, ue_doc(43))
    assert ids(store.candidates(SVC, imei_ue(TAC, 42))) == [own.doc_id]


def test_candidates_by_snr_list_compares_numerically(store: Store):
    listed = store.create(SVC, snrs_doc(TAC, "000123", "77", "999999"))
    for ue in (tac_ue(TAC, "123"), tac_ue(TAC, "000123"), imei_ue(TAC, 123), tac_ue(TAC, "0077")):
        assert ids(store.candidates(SVC, ue)) == [listed.doc_id], ue
    assert ids(store.candidates(SVC, imei_ue(TAC, 999999))) == [listed.doc_id]
    for ue in (tac_ue(TAC, "124"), tac_ue(TAC, "0"), tac_ue(TAC, "76"), tac_ue(OTHER_TAC, "123")):
        assert store.candidates(SVC, ue) == [], ue


def test_candidates_by_snr_range_boundaries_inclusive(store: Store):
    ranged = store.create(SVC, range_doc(TAC, "000100", "200"))
    for snr in ("100", "0100", "000100", "150", "200", "000200"):
        assert ids(store.candidates(SVC, tac_ue(TAC, snr))) == [ranged.doc_id], snr
    for snr in ("99", "000099", "201", "1000", "0"):
        assert store.candidates(SVC, tac_ue(TAC, snr)) == [], snr
    assert ids(store.candidates(SVC, imei_ue(TAC, 100))) == [ranged.doc_id]
    assert ids(store.candidates(SVC, imei_ue(TAC, 200))) == [ranged.doc_id]
    assert store.candidates(SVC, imei_ue(TAC, 201)) == []
    assert store.candidates(SVC, imei_ue(OTHER_TAC, 150)) == []


def test_candidates_full_snr_range(store: Store):
    ranged = store.create(SVC, range_doc(TAC, "0", "999999"))
    for snr in (0, 1, 500_000, SNR_MAX):
        assert ids(store.candidates(SVC, imei_ue(TAC, snr))) == [ranged.doc_id]


def test_candidates_by_tac_only(store: Store):
    whole = store.create(SVC, tac_doc(TAC))
    for ue in (tac_ue(TAC), tac_ue(TAC, "0"), tac_ue(TAC, "999999"), imei_ue(TAC, 31337)):
        assert ids(store.candidates(SVC, ue)) == [whole.doc_id], ue
    assert store.candidates(SVC, tac_ue(OTHER_TAC)) == []


def test_candidates_with_unknown_snr_match_every_interval_of_the_tac(store: Store):
    listed = store.create(SVC, snrs_doc(TAC, "5"))
    ranged = store.create(SVC, range_doc(TAC, "10", "20"))
    whole = store.create(SVC, tac_doc(TAC))
    store.create(SVC, tac_doc(OTHER_TAC))
    got = set(ids(store.candidates(SVC, tac_ue(TAC))))
    assert got == {listed.doc_id, ranged.doc_id, whole.doc_id}


def test_candidates_domain_wide(store: Store):
    everyone = store.create(SVC, domain_doc())
    for ue in (UeIdentity(uri="sip:anyone@example.com"), imei_ue(OTHER_TAC, 1), tac_ue(TAC), UeIdentity()):
        assert ids(store.candidates(SVC, ue)) == [everyone.doc_id], ue


def test_candidates_combine_every_kind(store: Store):
    ue = imei_ue(TAC, 500)
    own = store.create(SVC, uri_doc(ue.uri))
    listed = store.create(SVC, snrs_doc(TAC, "500"))
    ranged = store.create(SVC, range_doc(TAC, "400", "600"))
    whole = store.create(SVC, tac_doc(TAC))
    everyone = store.create(SVC, domain_doc())
    store.create(SVC, range_doc(TAC, "501", "600"))
    store.create(SVC, snrs_doc(OTHER_TAC, "500"))
    store.create(SVC, uri_doc(imei_urn(TAC, 501)))
    got = ids(store.candidates(SVC, ue))
    assert sorted(got) == sorted(d.doc_id for d in (own, listed, ranged, whole, everyone))


def test_candidates_each_document_once(store: Store):
    ue = imei_ue(TAC, 7)
    doc = {
        "valServiceDomain": DOMAIN,
        "valUeIds": {
            "uris": [ue.uri, ue.uri],
            "imeiRanges": [
                {"tac": TAC, "snrs": ["7", "007"], "snrRange": {"low": "1", "high": "9"}},
                {"tac": TAC},
                {"tac": TAC, "snrRange": {"low": "7", "high": "7"}},
            ],
        },
    }
    created = store.create(SVC, doc)
    assert ids(store.candidates(SVC, ue)) == [created.doc_id]
    assert ids(store.candidates(SVC, tac_ue(TAC))) == [created.doc_id]
    assert store.candidates_many(SVC, [ue, ue]) == [[created], [created]]


def test_candidates_no_match(store: Store):
    store.create(SVC, uri_doc("sip:alice@example.com"))
    store.create(SVC, range_doc(TAC, "10", "20"))
    assert store.candidates(SVC, UeIdentity(uri="sip:bob@example.com")) == []
    assert store.candidates(SVC, imei_ue(TAC, 21)) == []
    assert store.candidates(SVC, UeIdentity()) == []


# -- candidates_many (bulk GET, SPEC D6) ------------------------------------------------------------------
def test_candidates_many_matches_single_lookups(store: Store):
    store.create(SVC, domain_doc())
    store.create(SVC, range_doc(TAC, "100", "199"))
    store.create(SVC, snrs_doc(TAC, "5", "150"))
    store.create(SVC, tac_doc(OTHER_TAC))
    for i in range(0, 300, 7):
        store.create(SVC, ue_doc(i))
    ues = [imei_ue(TAC, i) for i in range(0, 300, 3)] + [
        tac_ue(TAC),
        tac_ue(OTHER_TAC, "1"),
        UeIdentity(uri="sip:nobody@example.com"),
        UeIdentity(),
        imei_ue(TAC, 150),  # repeated UE
    ]
    assert store.candidates_many(SVC, ues) == [store.candidates(SVC, ue) for ue in ues]
    assert store.candidates_many(SVC, []) == []


def test_candidates_many_across_chunks(store: Store):
    n = 12_000  # more than one chunk of the batched lookup
    imported = store.import_docs(SVC, (ue_doc(i) for i in range(n)))
    everyone = store.create(SVC, domain_doc())
    ues = [imei_ue(TAC, i) for i in range(n)] + [imei_ue(TAC, n + 1)]
    got = store.candidates_many(SVC, ues)
    assert len(got) == len(ues)
    for i, found in enumerate(got[:n]):
        assert sorted(ids(found)) == sorted([imported[i], everyone.doc_id])
    assert ids(got[n]) == [everyone.doc_id]


def test_candidates_many_gives_each_ue_its_own_copies(store: Store):
    store.create(SVC, domain_doc(configName="shared"))
    first, second = store.candidates_many(SVC, [tac_ue(TAC), tac_ue(OTHER_TAC)])
    first[0].doc["configName"] = "changed by a caller"
    assert second[0].doc["configName"] == "shared"


TACS = st.sampled_from([TAC, OTHER_TAC])
SNRS = st.integers(min_value=0, max_value=40)


@st.composite
def imei_range(draw) -> dict:
    rng: dict = {"tac": draw(TACS)}
    shape = draw(st.sampled_from(["tac", "snrs", "range", "both"]))
    if shape in ("snrs", "both"):
        rng["snrs"] = [
            draw(st.sampled_from([str(s), f"{s:06d}"])) for s in draw(st.lists(SNRS, min_size=1, max_size=3))
        ]
    if shape in ("range", "both"):
        low, high = sorted(draw(st.lists(SNRS, min_size=2, max_size=2)))
        rng["snrRange"] = {"low": str(low), "high": f"{high:06d}"}
    return rng


@st.composite
def config_doc(draw) -> dict:
    if draw(st.integers(0, 9)) == 0:
        return domain_doc()
    ue_ids: dict = {}
    uris = draw(st.lists(st.builds(imei_urn, TACS, SNRS), max_size=2))
    if uris:
        ue_ids["uris"] = uris
    ranges = draw(st.lists(imei_range(), max_size=2))
    if ranges or not uris:
        ue_ids["imeiRanges"] = ranges or [{"tac": draw(TACS)}]
    return {"valServiceDomain": DOMAIN, "valUeIds": ue_ids}


UES = st.one_of(
    st.builds(imei_ue, TACS, SNRS),
    st.builds(tac_ue, TACS, st.one_of(st.none(), SNRS.map(str))),
    st.just(UeIdentity(uri="sip:someone@example.com")),
)


def applies_by_index(doc: dict, ue: UeIdentity) -> bool:
    """Reference model of the candidate lookup, straight from index_rows (TS 24.546 7.2.5)."""
    for kind, key, lo, hi in index_rows(doc):
        if kind == "all" or (kind == "uri" and key == ue.uri):
            return True
        if kind == "tac" and key == ue.tac and (ue.snr is None or lo <= ue.snr <= hi):
            return True
    return False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(config_doc(), max_size=12), ues=st.lists(UES, max_size=15))
def test_candidates_property(store: Store, docs: list[dict], ues: list[UeIdentity]):
    service = f"prop-{uuid.uuid4().hex}"  # a fresh service per example: examples share the store
    created = [store.create(service, d) for d in docs]
    batched = store.candidates_many(service, ues)
    assert len(batched) == len(ues)
    for ue, many in zip(ues, batched, strict=True):
        single = store.candidates(service, ue)
        assert many == single
        assert len(set(ids(single))) == len(single)
        assert set(ids(single)) == {c.doc_id for c in created if applies_by_index(c.doc, ue)}


# -- admin any-match query (Table C.3.1.2.2.3.1-2; SPEC D4) -------------------------------------------
@pytest.fixture
def admin_docs(store: Store) -> dict[str, StoredDoc]:
    return {
        "alice": store.create(SVC, uri_doc("sip:alice@example.com")),
        "listed": store.create(SVC, snrs_doc(TAC, "000042")),
        "ranged": store.create(SVC, range_doc(OTHER_TAC, "10", "50")),
        "whole": store.create(SVC, tac_doc(TAC)),
        "acme": store.create(SVC, domain_doc(**{VENDOR_KEY: "acme"})),
        "plain": store.create(SVC, domain_doc()),
    }


def names(found: list[StoredDoc], docs: dict[str, StoredDoc]) -> set[str]:
    by_id = {d.doc_id: name for name, d in docs.items()}
    return {by_id[d.doc_id] for d in found}


def test_query_any_without_parameters_is_everything(store: Store, admin_docs):
    assert names(store.query_any(SVC), admin_docs) == set(admin_docs)
    assert ids(store.query_any(SVC)) == ids(list(store.iter_all(SVC)))


def test_query_any_each_parameter(store: Store, admin_docs):
    assert names(store.query_any(SVC, uri="sip:alice@example.com"), admin_docs) == {"alice"}
    assert names(store.query_any(SVC, tac=TAC), admin_docs) == {"listed", "whole"}
    assert names(store.query_any(SVC, tac=OTHER_TAC), admin_docs) == {"ranged"}
    assert names(store.query_any(SVC, snr=42), admin_docs) == {"listed", "ranged"}
    assert names(store.query_any(SVC, snr=10), admin_docs) == {"ranged"}
    assert names(store.query_any(SVC, snr=50), admin_docs) == {"ranged"}
    assert names(store.query_any(SVC, vendor="acme"), admin_docs) == {"acme"}


def test_query_any_is_a_union(store: Store, admin_docs):
    got = store.query_any(SVC, uri="sip:alice@example.com", tac=OTHER_TAC, vendor="acme")
    assert names(got, admin_docs) == {"alice", "ranged", "acme"}
    got = store.query_any(SVC, tac=TAC, snr=42)
    assert names(got, admin_docs) == {"listed", "whole", "ranged"}
    assert len(got) == len(set(ids(got)))


def test_query_any_no_match(store: Store, admin_docs):
    assert store.query_any(SVC, uri="sip:nobody@example.com") == []
    assert store.query_any(SVC, tac="11111111") == []
    assert store.query_any(SVC, snr=999) == []
    assert store.query_any(SVC, vendor="other") == []


def test_query_any_vendor_follows_replace(store: Store, admin_docs):
    acme = admin_docs["acme"]
    store.replace(SVC, acme.doc_id, domain_doc(**{VENDOR_KEY: "globex"}))
    assert store.query_any(SVC, vendor="acme") == []
    assert ids(store.query_any(SVC, vendor="globex")) == [acme.doc_id]


# -- iteration, counting, import ------------------------------------------------------------------------
def test_iter_all_and_count(store: Store):
    assert store.count(SVC) == 0
    assert list(store.iter_all(SVC)) == []
    created = [store.create(SVC, ue_doc(i)) for i in range(5)]
    store.create("other-svc", domain_doc())
    assert store.count(SVC) == 5
    assert list(store.iter_all(SVC)) == created
    store.delete(SVC, created[2].doc_id)
    assert store.count(SVC) == 4
    assert ids(list(store.iter_all(SVC))) == ids(created[:2] + created[3:])


def test_iter_all_pages_through_many_documents(store: Store):
    imported = store.import_docs(SVC, (ue_doc(i) for i in range(2_345)))
    assert ids(list(store.iter_all(SVC))) == imported
    assert store.count(SVC) == 2_345


def test_import_docs(store: Store):
    docs = [ue_doc(i) for i in range(100)] + [range_doc(TAC, "1000", "1999"), domain_doc(ueConfigDocId="x")]
    imported = store.import_docs(SVC, iter(docs))
    assert len(imported) == len(set(imported)) == len(docs)
    assert store.count(SVC) == len(docs)
    for doc_id, doc in zip(imported, docs, strict=True):
        got = store.get(SVC, doc_id)
        assert got.version == 1
        assert got.doc == {**doc, DOC_ID_KEY: doc_id}
    assert set(ids(store.candidates(SVC, imei_ue(TAC, 42)))) == {imported[42], imported[-1]}
    assert set(ids(store.candidates(SVC, imei_ue(TAC, 1500)))) == {imported[-2], imported[-1]}
    assert store.import_docs(SVC, []) == []


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"valServiceDomain": DOMAIN, "extension": object()}, id="unencodable"),
        pytest.param(
            {"valServiceDomain": DOMAIN, "valUeIds": {"imeiRanges": [{"snrs": ["1"]}]}}, id="no-tac"
        ),
        pytest.param(snrs_doc(TAC, "9" * 30), id="rejected-by-database"),
    ],
)
def test_import_docs_is_all_or_nothing(store: Store, monkeypatch, bad):
    for module in (sqlite_store, pg_store):
        monkeypatch.setattr(module, "IMPORT_CHUNK", 10)  # earlier chunks reach the database first
    existing = store.create(SVC, domain_doc())

    def docs():
        yield from (ue_doc(i) for i in range(35))
        yield bad

    with pytest.raises(Exception):  # noqa: B017 - any failure must roll back
        store.import_docs(SVC, docs())
    assert store.count(SVC) == 1
    assert list(store.iter_all(SVC)) == [existing]
    assert store.candidates(SVC, imei_ue(TAC, 3)) == [existing]
    assert len(store.import_docs(SVC, (ue_doc(i) for i in range(35)))) == 35, "the store stays usable"
    assert store.count(SVC) == 36


# -- gateway registry (SPEC D6, D12) ----------------------------------------------------------------------
def test_gateway_registry(store: Store):
    assert store.list_gateways() == {}
    assert store.get_gateway("gw-1") is None
    coverage = {
        "uris": [imei_urn(TAC, 1)],
        "imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "99"}}],
    }
    store.set_gateway("gw-1", coverage)
    store.set_gateway("gw-2", {"all": True})
    assert store.get_gateway("gw-1") == coverage
    assert store.list_gateways() == {"gw-1": coverage, "gw-2": {"all": True}}
    store.set_gateway("gw-1", {"uris": [imei_urn(TAC, 2)]})
    assert store.get_gateway("gw-1") == {"uris": [imei_urn(TAC, 2)]}
    assert store.delete_gateway("gw-1") is True
    assert store.delete_gateway("gw-1") is False
    assert store.list_gateways() == {"gw-2": {"all": True}}


# -- concurrency ------------------------------------------------------------------------------------------
def test_threads_share_one_store(store: Store):
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(30):
                created = store.create(SVC, ue_doc(t * 1000 + i))
                assert ids(store.candidates(SVC, imei_ue(TAC, t * 1000 + i))) == [created.doc_id]
                store.replace(SVC, created.doc_id, ue_doc(t * 1000 + i), expected_version=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert store.count(SVC) == 120


def test_two_sqlite_stores_on_one_file_see_each_other(tmp_path):
    path = str(tmp_path / "shared.db")
    a, b = SqliteStore(path), SqliteStore(path)
    try:
        created = a.create(SVC, ue_doc(1))
        assert b.get(SVC, created.doc_id) == created
        replaced = b.replace(SVC, created.doc_id, ue_doc(1), expected_version=1)
        assert a.get(SVC, created.doc_id) == replaced
        with pytest.raises(VersionMismatch):
            a.replace(SVC, created.doc_id, ue_doc(1), expected_version=1)
        b.set_gateway("gw", {"all": True})
        assert a.list_gateways() == {"gw": {"all": True}}
    finally:
        a.close()
        b.close()


def _writer_process(path: str, first: int, n: int) -> None:
    """Child process of the test below: writes through its own SqliteStore on the shared file."""
    store = SqliteStore(path)
    try:
        for i in range(first, first + n):
            store.create(SVC, ue_doc(i))
        store.import_docs(SVC, (ue_doc(i) for i in range(first + n, first + 2 * n)))
    finally:
        store.close()


def test_sqlite_file_shared_with_another_process(tmp_path):
    path = str(tmp_path / "shared.db")
    parent = SqliteStore(path)
    try:
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=_writer_process, args=(path, 100_000, 150))
        child.start()
        for i in range(150):  # write concurrently with the child
            parent.create(SVC, ue_doc(i))
        child.join(timeout=120)
        assert child.exitcode == 0
        assert parent.count(SVC) == 450
        assert len(parent.candidates(SVC, imei_ue(TAC, 100_000))) == 1
        assert len(parent.candidates(SVC, imei_ue(TAC, 100_299))) == 1
    finally:
        parent.close()


# -- SQLite: index use -----------------------------------------------------------------------------------
def test_sqlite_schema_version_and_journal(tmp_path):
    path = str(tmp_path / "v.db")
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == sqlite_store.SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _table_access(db: sqlite3.Connection, sql: str, params, *names: str) -> list[str]:
    """EXPLAIN QUERY PLAN lines that read one of the named tables (SCAN = full scan, SEARCH = index)."""
    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
    return [line for line in plan if line.split(" ")[0] in ("SCAN", "SEARCH") and line.split(" ")[1] in names]


def test_sqlite_lookups_do_not_scan(tmp_path):
    path = str(tmp_path / "plan.db")
    s = SqliteStore(path)
    try:
        s.import_docs(SVC, (ue_doc(i) for i in range(2_000)))
        s.import_docs(SVC, (snrs_doc(TAC, str(i)) for i in range(2_000, 3_000)))
        s.create(SVC, range_doc(TAC, "0", "99999"))
        s.create(SVC, tac_doc(OTHER_TAC))
        s.create(SVC, domain_doc())
    finally:
        s.close()
    with sqlite3.connect(path) as db:
        db.execute("ANALYZE")
        for ue in (imei_ue(TAC, 2_500), tac_ue(TAC), UeIdentity(uri="sip:x@example.com"), UeIdentity()):
            access = _table_access(db, *candidates_sql(SVC, ue), "docs", "doc_keys")
            assert any(line.startswith("SEARCH docs") for line in access), access
            assert any(line.startswith("SEARCH doc_keys") for line in access), access
            assert not [line for line in access if line.startswith("SCAN")], access
        q = json.dumps([[imei_urn(TAC, 1), TAC, 1], [None, OTHER_TAC, None]])
        access = _table_access(db, MANY_KEYS_SQL, {"s": SVC, "q": q}, "k", "doc_keys")
        assert len(access) == 4, access  # URI, SNR point, SNR interval, whole TAC
        assert all(line.startswith("SEARCH k USING PRIMARY KEY") for line in access), access
