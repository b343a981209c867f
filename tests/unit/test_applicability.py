"""Which documents apply to a UE and in which order (TS 24.546 7.2.5; SPEC D3, D4) — pure."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from msgin5g.applicability import (
    RANK_DOMAIN,
    RANK_SNR,
    RANK_TAC,
    RANK_URI,
    applicable,
    matches_any,
    specificity,
)
from msgin5g.model import UeIdentity, imei_urn

UE = UeIdentity.from_query(uri=imei_urn("35209900", 12))


def doc(doc_id, **ids):
    d = {"valServiceDomain": "d", "ueConfigDocId": doc_id}
    if ids:
        d["valUeIds"] = ids
    return d


def test_ranks():
    assert specificity(doc("a", uris=[UE.uri]), UE) == RANK_URI
    assert specificity(doc("b", imeiRanges=[{"tac": "35209900", "snrs": ["12"]}]), UE) == RANK_SNR
    assert (
        specificity(doc("c", imeiRanges=[{"tac": "35209900", "snrRange": {"low": "12", "high": "12"}}]), UE)
        == RANK_SNR
    )
    assert specificity(doc("d", imeiRanges=[{"tac": "35209900"}]), UE) == RANK_TAC
    assert specificity(doc("e"), UE) == RANK_DOMAIN


def test_not_applicable():
    assert specificity(doc("a", uris=["urn:other"]), UE) is None
    assert specificity(doc("b", imeiRanges=[{"tac": "35209900", "snrs": ["13"]}]), UE) is None
    assert (
        specificity(doc("c", imeiRanges=[{"tac": "35209900", "snrRange": {"low": "13", "high": "20"}}]), UE)
        is None
    )
    assert specificity(doc("d", imeiRanges=[{"tac": "35209901"}]), UE) is None
    assert specificity(doc("e", uris=["urn:x"], imeiRanges=[{"tac": "1"}]), UE) is None
    # SNR-specific entries cannot apply to a UE whose SNR is unknown
    no_snr = UeIdentity.from_query(uri="sip:a@b", tac="35209900")
    assert specificity(doc("f", imeiRanges=[{"tac": "35209900", "snrs": ["12"]}]), no_snr) is None
    assert specificity(doc("g", imeiRanges=[{"tac": "35209900"}]), no_snr) == RANK_TAC


def test_range_boundaries_inclusive():
    rng = doc("r", imeiRanges=[{"tac": "35209900", "snrRange": {"low": "000010", "high": "20"}}])
    for snr, ok in ((9, False), (10, True), (20, True), (21, False)):
        assert (specificity(rng, UeIdentity(uri=None, tac="35209900", snr=snr)) is not None) is ok


def test_vendor_restricted_documents():
    d = dict(doc("v"), ueVendor="acme")
    assert specificity(d, UE) is None
    assert specificity(d, UeIdentity(uri=UE.uri, tac=UE.tac, snr=UE.snr, vendor="acme")) == RANK_DOMAIN
    assert specificity(d, UeIdentity(uri=UE.uri, vendor="other")) is None


def test_order_most_specific_first_then_by_id():
    docs = [
        doc("z-domain"),
        doc("y-tac", imeiRanges=[{"tac": "35209900"}]),
        doc("b-uri", uris=[UE.uri]),
        doc("a-uri", uris=[UE.uri]),
        doc("x-snr", imeiRanges=[{"tac": "35209900", "snrs": ["12"]}]),
        doc("nope", uris=["urn:nope"]),
    ]
    assert [d["ueConfigDocId"] for d in applicable(docs, UE)] == [
        "a-uri",
        "b-uri",
        "x-snr",
        "y-tac",
        "z-domain",
    ]


def test_best_entry_of_a_document_counts():
    d = doc("m", imeiRanges=[{"tac": "35209900"}, {"tac": "35209900", "snrs": ["12"]}])
    assert specificity(d, UE) == RANK_SNR


# -- property: applicability agrees with a brute-force reading of 7.2.5 ---------------------------------

tacs = st.sampled_from(["11111111", "22222222"])
snrs = st.integers(0, 30)
ranges = st.builds(
    lambda tac, kind, a, b: (
        {"tac": tac}
        | ({"snrs": [str(a), f"{b:06d}"]} if kind == 1 else {})
        | ({"snrRange": {"low": str(min(a, b)), "high": str(max(a, b))}} if kind == 2 else {})
    ),
    tacs,
    st.integers(0, 2),
    snrs,
    snrs,
)
uris = st.sampled_from(["urn:u:1", "urn:u:2"])
val_ue_ids = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "uris": st.lists(uris, min_size=1, max_size=2),
        "imeiRanges": st.lists(ranges, min_size=1, max_size=3),
    },
)
identities = st.builds(
    lambda u, t, s: UeIdentity(uri=u, tac=t, snr=s), st.none() | uris, st.none() | tacs, st.none() | snrs
)


def brute_force_applies(d: dict, ue: UeIdentity) -> bool:
    ids = d.get("valUeIds")
    if ids is None:
        return True
    if ue.uri in ids.get("uris", []):
        return True
    for r in ids.get("imeiRanges", []):
        if r["tac"] != ue.tac:
            continue
        if "snrs" not in r and "snrRange" not in r:
            return True
        if ue.snr is not None and ue.snr in {int(s) for s in r.get("snrs", [])}:
            return True
        sr = r.get("snrRange")
        if ue.snr is not None and sr and int(sr["low"]) <= ue.snr <= int(sr["high"]):
            return True
    return False


@given(st.lists(val_ue_ids, max_size=6), identities)
def test_applicable_matches_brute_force_and_is_sorted(id_sets, ue):
    docs = []
    for i, ids in enumerate(id_sets):
        d = {"valServiceDomain": "d", "ueConfigDocId": f"{i:03d}"}
        if ids is not None:
            d["valUeIds"] = ids
        docs.append(d)
    got = applicable(docs, ue)
    assert {d["ueConfigDocId"] for d in got} == {
        d["ueConfigDocId"] for d in docs if brute_force_applies(d, ue)
    }
    ranks = [specificity(d, ue) for d in got]
    assert ranks == sorted(ranks)


def test_matches_any_literal_semantics():
    d = doc("a", uris=["urn:a"], imeiRanges=[{"tac": "12345678", "snrRange": {"low": "5", "high": "9"}}])
    assert matches_any(d)
    assert matches_any(d, uri="urn:a")
    assert matches_any(d, tac="12345678")
    assert matches_any(d, snr=7)
    assert not matches_any(d, snr=10)
    assert matches_any(d, uri="urn:nope", snr=5)  # any parameter suffices
    assert not matches_any(d, uri="urn:nope", tac="00000000")
    assert matches_any(dict(d, ueVendor="v"), vendor="v")
