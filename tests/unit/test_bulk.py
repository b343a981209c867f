"""Bulk packing and splitting without sockets (TS 24.538 6.2.2.x; SPEC D6, D7)."""

from __future__ import annotations

import itertools
import random

import cbor2
import pytest
from aiocoap import CON, GET, Message, optiontypes
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.transports.tcp import _serialize
from hypothesis import given, settings
from hypothesis import strategies as st

from msgin5g import bulk
from msgin5g.bulk import (
    BulkGet,
    BulkItem,
    IndividualResponse,
    bulk_get_size,
    bulk_item,
    fail_all,
    followup_query,
    pack,
    request_options,
    split,
    stub_entry,
)
from msgin5g.model import ModelError, imei_urn
from msgin5g.problem import CF_PROBLEM, Problem, decode_problem

PATH = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
LAB = (65000, b"gateway:gw1")


def flags():
    counter = itertools.count()
    return lambda: f"f{next(counter):011d}"


def doc_for(uri: str) -> dict:
    return {
        "ueConfigDocId": "d" + str(abs(hash(uri)) % 10_000),
        "valServiceDomain": "msgin5g.example",
        "valUeIds": {"uris": [uri]},
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": '{"ueServiceId": "x"}'}],
    }


def fake_scm_s(uris, outcome):
    """What the SCM-S answers (D6): one entry per UE in order; ``outcome(uri)`` picks 2.05/4.03/4.04."""
    out = []
    for u in uris:
        code = outcome(u)
        if code == 0x45:
            out.append(doc_for(u))
        else:
            out.append(stub_entry("msgin5g.example", u, Problem(code, "no")))
    return out


uri_st = st.builds(lambda n, kind: f"urn:dev:ops:{kind}-{n}", st.integers(0, 10**9), st.sampled_from("abc"))
item_st = st.builds(
    BulkItem,
    uri_st,
    st.sampled_from([None, "acme", "other"]),
    st.sampled_from([None, "35209900", "12345678"]),
)


# -- sizes -----------------------------------------------------------------------------------------
def aiocoap_udp_size(get: BulkGet, extra=()) -> int:
    m = Message(code=GET, uri="coap://127.0.0.1:5683/" + "/".join(PATH))
    m.opt.uri_query = get.uri_query()
    for num, val in extra:
        m.opt.add_option(optiontypes.OpaqueOption(OptionNumber(num), val))
    m.mid = 1
    m.mtype = CON
    m.token = b"12345678"
    return len(m.encode())


def aiocoap_tcp_size(get: BulkGet, extra=()) -> int:
    m = Message(code=GET, uri="coap+tcp://127.0.0.1:5683/" + "/".join(PATH))
    m.opt.uri_query = get.uri_query()
    for num, val in extra:
        m.opt.add_option(optiontypes.OpaqueOption(OptionNumber(num), val))
    m.token = b"12345678"
    return len(_serialize(m))


@pytest.mark.parametrize("n", [0, 1, 5, 30, 400])
def test_size_model_matches_aiocoap_encoding(n):
    get = BulkGet("abcdef012345", tuple(imei_urn("35209900", i) for i in range(n)), "acme", "35209900")
    fixed = request_options(PATH, "127.0.0.1", [LAB])
    assert bulk_get_size(get, fixed, "udp") == aiocoap_udp_size(get, [LAB])
    assert bulk_get_size(get, fixed, "tcp") == aiocoap_tcp_size(get, [LAB])


def test_request_options_adds_uri_host_only_for_names():
    assert request_options(PATH, "127.0.0.1")[0][0] == bulk.OPT_URI_PATH
    assert request_options(PATH, "::1")[0][0] == bulk.OPT_URI_PATH
    assert request_options(PATH, "scm.example")[0] == (bulk.OPT_URI_HOST, b"scm.example")


# -- bulk_item -------------------------------------------------------------------------------------
def test_bulk_item_normalises_imei_urns_and_keeps_others():
    urn = imei_urn("35209900", 176148)
    assert bulk_item(urn, None, "35209900", "176148") == BulkItem(urn)
    assert bulk_item("urn:dev:ops:x", "acme", "35209900") == BulkItem("urn:dev:ops:x", "acme", "35209900")
    assert bulk_item("urn:dev:ops:x", None, "35209900", "12") is None  # ue-snr: forwarded alone
    with pytest.raises(ModelError):
        bulk_item("not a uri")
    with pytest.raises(ModelError):
        bulk_item(urn, None, "11111111")  # contradicts the URN's TAC


# -- pack ------------------------------------------------------------------------------------------
def test_pack_udp_fills_datagrams_and_keeps_order():
    items = [BulkItem(imei_urn("35209900", i)) for i in range(500)]
    fixed = request_options(PATH, "127.0.0.1", [LAB])
    gets = pack(items, new_flag=flags(), fixed_options=fixed)
    assert len(gets) > 1
    assert [u for g in gets for u in g.ue_uris] == [i.ue_uri for i in items]
    for g in gets:
        assert bulk_get_size(g, fixed) <= bulk.UDP_BULK_BUDGET
        assert aiocoap_udp_size(g, [LAB]) <= bulk.UDP_BULK_BUDGET
    # full datagrams: one more UE would not have fitted
    cost = bulk.option_size(0, len(f"ue-uri={items[0].ue_uri}"))
    assert all(bulk_get_size(g, fixed) + cost > bulk.UDP_BULK_BUDGET for g in gets[:-1])
    assert len({g.flag for g in gets}) == len(gets)


def test_pack_tcp_one_request_for_thousands():
    items = [BulkItem(imei_urn("35209900", i)) for i in range(5000)]
    gets = pack(items, new_flag=flags(), transport="tcp", max_message=1024 * 1024, max_ues=10_000)
    assert len(gets) == 1 and len(gets[0].ue_uris) == 5000
    assert len(pack(items, new_flag=flags(), transport="tcp", max_message=1024 * 1024, max_ues=2000)) == 3


def test_pack_oversize_item_travels_alone():
    big = BulkItem("urn:dev:ops:" + "x" * 2000)
    gets = pack([BulkItem("urn:a:1"), big, BulkItem("urn:a:2")], new_flag=flags())
    assert [g.ue_uris for g in gets] == [("urn:a:1",), (big.ue_uri,), ("urn:a:2",)]


def test_bulk_get_query_order():
    g = BulkGet("F", ("urn:a:1", "urn:a:2"), "acme", "35209900")
    assert g.uri_query() == [
        "bulk-conf-flag=F",
        "ue-uri=urn:a:1",
        "ue-uri=urn:a:2",
        "ue-vendor=acme",
        "ue-type=35209900",
    ]
    assert followup_query("F") == ["bulk-conf-flag=F"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(item_st, max_size=300),
    st.integers(300, 3000),
    st.integers(1, 50),
    st.sampled_from(["udp", "tcp"]),
)
def test_pack_property_every_item_exactly_once(items, budget, max_ues, transport):
    gets = pack(items, new_flag=flags(), max_message=budget, transport=transport, max_ues=max_ues)
    packed = [i for g in gets for i in g.items()]
    assert sorted(packed, key=repr) == sorted(set(items), key=repr)
    assert len({g.flag for g in gets}) == len(gets)
    for g in gets:
        assert 1 <= len(g.ue_uris) <= max_ues
        if len(g.ue_uris) > 1:
            assert bulk_get_size(g, (), transport) <= budget
    # order within a group is the order of first appearance
    for group in {i.group for i in items}:
        first = list(dict.fromkeys(i.ue_uri for i in items if i.group == group))
        assert [u for g in gets if (g.ue_vendor, g.ue_type) == group for u in g.ue_uris] == first


# -- split -----------------------------------------------------------------------------------------
def outcome_of(uri: str) -> int:
    return (0x45, 0x83, 0x84)[hash(uri) % 3]


def check_response(uri: str, resp: IndividualResponse, code: int) -> None:
    assert resp.code == code
    if code == 0x45:
        docs = cbor2.loads(resp.payload)
        assert resp.content_format == 60
        assert docs == [doc_for(uri)]
    else:
        assert resp.content_format == CF_PROBLEM
        assert decode_problem(resp.payload).code == code


def test_split_in_order():
    uris = [f"urn:dev:ops:{i}" for i in range(30)]
    out = split(uris, fake_scm_s(uris, outcome_of), max_age=77)
    assert len(out) == 30
    for u, r in zip(uris, out, strict=True):
        check_response(u, r, outcome_of(u))
        assert r.max_age == (77 if r.code == 0x45 else 60)  # a stub: the CoAP default at most


def test_split_answer_in_another_order_still_reaches_the_right_ue():
    uris = [f"urn:dev:ops:{i}" for i in range(30)]
    answer = fake_scm_s(uris, outcome_of)
    random.Random(1).shuffle(answer)
    for u, r in zip(uris, split(uris, answer), strict=True):
        check_response(u, r, outcome_of(u))


def test_split_missing_extra_and_malformed_entries():
    uris = ["urn:a:0", "urn:a:1", "urn:a:2", "urn:a:3", "urn:a:4"]
    answer = fake_scm_s(uris, lambda u: 0x45)
    answer[1] = "garbage"
    answer[2] = {"valServiceDomain": "d", "valUeIds": {"uris": ["urn:a:2"]}, "problem": {-4: 0x45}}
    answer[3]["ueConfigs"] = "not a list"
    del answer[4]
    answer.append(doc_for("urn:not:asked"))
    out = split(uris, answer)
    assert [r.code for r in out] == [0x45, 0xA2, 0xA2, 0xA2, 0xA2]
    assert decode_problem(out[4].payload).cause == "MISSING_BULK_ENTRY"


def test_split_entry_for_another_ue_is_not_delivered():
    uris = ["urn:a:0", "urn:a:1"]
    answer = [doc_for("urn:a:0"), doc_for("urn:a:0")]
    out = split(uris, answer)
    assert out[0].code == 0x45 and out[1].code == 0xA2


def test_split_not_an_array_and_fail_all():
    assert [r.code for r in split(["urn:a:1", "urn:a:2"], {"x": 1})] == [0xA2, 0xA2]
    p = Problem(0xA4, "gave up", "GIVE_UP")
    assert [decode_problem(r.payload).cause for r in fail_all(["urn:a:1", "urn:a:2"], p)] == ["GIVE_UP"] * 2


def test_split_duplicate_uris_each_answered():
    uris = ["urn:a:1", "urn:a:1", "urn:a:2"]
    out = split(uris, fake_scm_s(uris, lambda u: 0x45))
    assert [r.code for r in out] == [0x45, 0x45, 0x45]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(item_st, max_size=200, unique_by=lambda i: i.ue_uri),
    st.integers(300, 3000),
    st.sampled_from(["udp", "tcp"]),
    st.randoms(use_true_random=False),
    st.sampled_from(["exact", "shuffled", "truncated", "garbled"]),
)
def test_split_of_pack_answers_every_request_exactly_once(items, budget, transport, rnd, damage):
    """Property (STYLE: bulk): split(bulk(requests)) answers every request exactly once."""
    gets = pack(items, new_flag=flags(), max_message=budget, transport=transport)
    answered: dict[str, list[IndividualResponse]] = {}
    for g in gets:
        answer = fake_scm_s(g.ue_uris, outcome_of)
        if damage == "shuffled":
            rnd.shuffle(answer)
        elif damage == "truncated" and answer:
            answer = answer[: rnd.randrange(len(answer))]
        elif damage == "garbled" and answer:
            answer[rnd.randrange(len(answer))] = rnd.choice([None, 1, "x", {}, {"problem": "x"}])
        out = split(g.ue_uris, answer)
        assert len(out) == len(g.ue_uris)
        for u, r in zip(g.ue_uris, out, strict=True):
            answered.setdefault(u, []).append(r)
    assert set(answered) == {i.ue_uri for i in items}
    for uri, responses in answered.items():
        assert len(responses) == 1
        r = responses[0]
        if damage in ("exact", "shuffled"):
            check_response(uri, r, outcome_of(uri))
        else:
            assert r.code in (outcome_of(uri), 0xA2)


def test_answer_responses_for_whole_bulk_outcomes():
    uris = ["urn:a:1", "urn:a:2"]
    ok = bulk.answer_responses(uris, 0x45, cbor2.dumps(fake_scm_s(uris, lambda u: 0x45)), 60, 30)
    assert [r.code for r in ok] == [0x45, 0x45] and ok[0].max_age == 30
    refused = bulk.answer_responses(uris, 0x83, Problem(0x83, "not yours").encode(), CF_PROBLEM)
    assert [decode_problem(r.payload).code for r in refused] == [0x83, 0x83]
    assert decode_problem(refused[0].payload).detail == "not yours"
    too_big = bulk.answer_responses(uris, 0x8D, Problem(0x8D, "too many").encode(), CF_PROBLEM)
    assert [r.code for r in too_big] == [0xA2, 0xA2] and "4.13" in decode_problem(too_big[0].payload).detail
    garbage = bulk.answer_responses(uris, 0x45, b"\xff\xff", 60)
    assert [r.code for r in garbage] == [0xA2, 0xA2]
    odd = bulk.answer_responses(uris, 0x80, b"\x00not cbor", CF_PROBLEM)
    assert [r.code for r in odd] == [0xA2, 0xA2]
