"""Request parsing (TS 24.546 C.3.1.2; SPEC D1, D6) and authorization (SPEC D12) — pure."""

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
    gateway_covers,
    may_read_doc,
    parse_identity,
)
from msgin5g.model import ModelError, UeIdentity, imei_urn
from msgin5g.problem import ProblemError
from msgin5g.server.requests import (
    Target,
    body_format,
    doc_path,
    parse_collection_query,
    parse_path,
    response_format,
)


def test_parse_scoped_query():
    q = parse_collection_query(["ue-uri=urn:a:1", "ue-type=12345678", "ue-snr=5", "ue-vendor=v"])
    assert (
        q.is_scoped
        and not q.is_bulk
        and q.uris == ("urn:a:1",)
        and (q.tac, q.snr, q.vendor) == ("12345678", "5", "v")
    )


def test_parse_bulk_and_followup():
    q = parse_collection_query(["bulk-conf-flag=b1", "ue-uri=urn:a:1", "ue-uri=urn:a:2", "ue-type=12345678"])
    assert q.is_bulk and q.uris == ("urn:a:1", "urn:a:2") and not q.is_bulk_followup
    assert parse_collection_query(["bulk-conf-flag=b1"]).is_bulk_followup


@pytest.mark.parametrize(
    "query",
    [
        ["x"],
        ["ue-uri="],
        ["color=red"],
        ["ue-type=1", "ue-type=1"],
        ["ue-uri=urn:a", "ue-uri=urn:b"],
        ["bulk-conf-flag=a", "bulk-conf-flag=b"],
        ["bulk-conf-flag=a", "ue-uri=urn:a", "ue-snr=1"],
    ],
)
def test_parse_query_rejects(query):
    with pytest.raises(ProblemError) as e:
        parse_collection_query(query)
    assert e.value.problem.code == 0x80


@given(st.lists(st.text(max_size=12), max_size=6))
def test_parse_query_never_crashes(items):
    try:
        parse_collection_query(items)
    except ProblemError as e:
        assert e.problem.code == 0x80


def test_formats():
    assert response_format(None) == 60 and response_format(50) == 50 and response_format(60) == 60
    assert response_format(11542, seal_cf=11542) == 11542
    assert body_format(None) == 60 and body_format(50) == 50 and body_format(11542, seal_cf=11542) == 60
    with pytest.raises(ProblemError) as e:
        response_format(0)
    assert e.value.problem.code == 0x86
    with pytest.raises(ProblemError) as e:
        body_format(42)
    assert e.value.problem.code == 0x8F


def test_paths():
    base = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
    assert parse_path(base, ()) == Target("msgin5g")
    assert parse_path((*base, "d1"), ()) == Target("msgin5g", "d1")
    assert parse_path(("p", *base, "d1"), ("p",)) == Target("msgin5g", "d1")
    for bad in [
        (),
        ("su-uc",),
        ("su-uc", "v2", "val-services", "m", "ue-configurations"),
        (*base, "d", "x"),
        ("su-uc", "v1", "val-services", "", "ue-configurations"),
        (*base, ""),
    ]:
        assert parse_path(bad, ()) is None
    assert parse_path(base, ("p",)) is None
    assert doc_path(("p",), "m", "d") == ("p", "su-uc", "v1", "val-services", "m", "ue-configurations", "d")


# -- authorization matrix (SPEC D12) -----------------------------------------------------------------------

ME = imei_urn("35209900", 1)
OTHER = imei_urn("35209900", 2)
UE_ME = Identity(Role.UE, ME)
GW = Identity(Role.GATEWAY, "gw1")
COVER = {"imeiRanges": [{"tac": "35209900", "snrRange": {"low": "0", "high": "1"}}]}


@pytest.mark.parametrize(
    ("identity", "op", "ue", "coverage", "code"),
    [
        (ANONYMOUS, Op.QUERY_SCOPED, ME, None, 0x81),
        (ANONYMOUS, Op.CREATE, None, None, 0x81),
        (ADMIN, Op.CREATE, None, None, None),
        (ADMIN, Op.QUERY_UNSCOPED, None, None, None),
        (ADMIN, Op.BULK, None, None, None),
        (UE_ME, Op.QUERY_SCOPED, ME, None, None),
        (UE_ME, Op.QUERY_SCOPED, OTHER, None, 0x83),
        (UE_ME, Op.QUERY_UNSCOPED, None, None, 0x83),
        (UE_ME, Op.BULK, None, None, 0x83),
        (UE_ME, Op.READ_DOC, None, None, None),
        (UE_ME, Op.CREATE, None, None, 0x83),
        (UE_ME, Op.UPDATE, None, None, 0x83),
        (UE_ME, Op.DELETE, None, None, 0x83),
        (GW, Op.BULK, None, COVER, None),
        (GW, Op.QUERY_SCOPED, ME, COVER, None),
        (GW, Op.QUERY_SCOPED, OTHER, COVER, 0x83),
        (GW, Op.QUERY_SCOPED, ME, None, 0x83),
        (GW, Op.QUERY_UNSCOPED, None, COVER, 0x83),
        (GW, Op.CREATE, None, {"all": True}, 0x83),
    ],
)
def test_authorize_matrix(identity, op, ue, coverage, code):
    ue_id = UeIdentity.from_query(uri=ue) if ue else None
    problem = authorize(identity, op, ue=ue_id, coverage=coverage)
    assert (problem.code if problem else None) == code


def test_denials_for_foreign_ues_read_the_same():
    a = authorize(UE_ME, Op.QUERY_SCOPED, ue=UeIdentity.from_query(uri=OTHER))
    b = authorize(GW, Op.QUERY_SCOPED, ue=UeIdentity.from_query(uri=OTHER), coverage=COVER)
    assert a == b


def test_gateway_coverage():
    assert gateway_covers({"all": True}, UeIdentity(uri="urn:any"))
    assert not gateway_covers(None, UeIdentity(uri="urn:any"))
    assert not gateway_covers({}, UeIdentity(uri="urn:any"))
    assert gateway_covers({"uris": ["urn:a"]}, UeIdentity(uri="urn:a"))
    assert gateway_covers(COVER, UeIdentity.from_query(uri=ME))
    assert not gateway_covers(COVER, UeIdentity.from_query(uri=OTHER))


def test_may_read_doc():
    mine = {"valServiceDomain": "d", "valUeIds": {"uris": [ME]}}
    assert may_read_doc(ADMIN, mine)
    assert may_read_doc(UE_ME, mine)
    assert not may_read_doc(Identity(Role.UE, OTHER), mine)
    assert not may_read_doc(GW, mine, {"all": True})


def test_parse_identity():
    assert parse_identity("admin") == ADMIN
    assert parse_identity(f"ue:{ME}") == UE_ME
    assert parse_identity("gateway:gw1") == GW
    for bad in ["", "ue:", "king:x", "ue:not a uri", "gateway"]:
        with pytest.raises(ModelError):
            parse_identity(bad)
