"""SU_UserProfile over real CoAP (UDP and TCP) against a real SCM-S on a real SQLite file.

TS 24.546 C.2.1.2 (resources, methods, codes), C.2.1.3 / C.2.1.5 (ProfileDoc, ProfileInfo,
ProfileConfig, ValTargetUe), C.1.2 (ETag / Max-Age), C.1.3 (problem details), RFC 7252 §5.10.7
(Location-Path), §5.10.8 (If-Match, If-None-Match), RFC 7641 (Observe); SPEC D1, D12, D16.
Expected values are written from those texts; bad bodies are checked to leave nothing stored.
"""

from __future__ import annotations

import asyncio
import json

import cbor2
import pytest
from aiocoap import Message
from aiocoap import error as aiocoap_error
from aiocoap.numbers.codes import Code

from msgin5g.server.app import ServerConfig, start_server

from .test_server_api import TRANSPORTS, RawUdp, problem, req

SID = "msgin5g"
UE_A = "urn:gsma:imei:35209900-000001-8"
USER_A = "sip:alice@msgin5g.example"
UE_B = "urn:gsma:imei:35209900-000002-6"


def coll(srv, scheme="coap", sid=SID) -> str:
    return srv.base_uri(scheme).replace("/su-uc/v1", "/su-up/v1") + f"/val-services/{sid}/user-profiles"


def profile(*, ue: str | None = None, user: str | None = None, name: str = "p", **extra) -> dict:
    tgt = {"valUeId": ue} if ue is not None else {"valUserId": user}
    return {
        "profileInformation": {
            "profileName": name,
            "status": True,
            "isDefault": False,
            "profileConfigs": [{"configType": "ON_NETWORK", "configData": '{"k":1}'}],
        },
        "valTgtUe": tgt,
        **extra,
    }


async def post(ctx, srv, doc, scheme="coap") -> dict:
    r = await req(ctx, Code.POST, coll(srv, scheme), cbor2.dumps(doc), content_format=60)
    assert r.code == Code.CREATED, r.payload
    return cbor2.loads(r.payload)


def stored_count(srv) -> int:
    return srv.store.count_profiles(SID)


@pytest.mark.parametrize("scheme", TRANSPORTS)
async def test_profile_crud_cycle(scm_server, coap, scheme):
    srv = scm_server
    doc = profile(ue=UE_A, name="one", **{"x-ext": {"k": [1, 2]}})
    doc["profileInformation"]["x-info-ext"] = "kept"
    doc["profileInformation"]["profileConfigs"].append(
        {"configType": "FUTURE_TYPE", "configData": "opaque", "x-cfg-ext": 7}
    )
    doc["valTgtUe"]["x-tgt-ext"] = True  # ignored, never rejected
    r = await req(coap, Code.POST, coll(srv, scheme), cbor2.dumps(doc), content_format=60)
    assert r.code == Code.CREATED and int(r.opt.content_format) == 60
    body = cbor2.loads(r.payload)
    pid = body["profileDocId"]
    # C.2.1.2.2.3.2 + RFC 7252 §5.10.7: the whole absolute path, ending in the profileDocId
    assert r.opt.location_path == ("su-up", "v1", "val-services", "msgin5g", "user-profiles", pid)
    assert body["x-ext"] == {"k": [1, 2]} and body["profileInformation"]["x-info-ext"] == "kept"
    assert body["profileInformation"]["profileConfigs"][1] == {
        "configType": "FUTURE_TYPE",
        "configData": "opaque",
        "x-cfg-ext": 7,
    }

    uri = f"{coll(srv, scheme)}/{pid}"
    r = await req(coap, Code.GET, uri)
    assert r.code == Code.CONTENT and int(r.opt.content_format) == 60
    got = cbor2.loads(r.payload)
    assert got["profileDocId"] == pid and got["valTgtUe"]["valUeId"] == UE_A
    etag = r.opt.etag
    assert etag and r.opt.max_age == 300
    r = await req(coap, Code.GET, uri, etags=[etag])
    assert r.code == Code.VALID and r.opt.etag == etag and not r.payload

    changed = profile(ue=UE_A, name="two")
    r = await req(coap, Code.PUT, uri, cbor2.dumps(changed), content_format=60, if_match=[b"\x01" * 8])
    problem(r, Code.PRECONDITION_FAILED, "PRECONDITION_FAILED")
    r = await req(coap, Code.PUT, uri, cbor2.dumps(changed), content_format=60, if_none_match=True)
    problem(r, Code.PRECONDITION_FAILED, "PRECONDITION_FAILED")  # RFC 7252 §5.10.8.2
    assert srv.store.get_profile(SID, pid).doc["profileInformation"]["profileName"] == "one"
    r = await req(coap, Code.PUT, uri, cbor2.dumps(changed), content_format=60, if_match=[etag])
    assert r.code == Code.CHANGED
    assert cbor2.loads(r.payload)["profileInformation"]["profileName"] == "two"
    assert cbor2.loads(r.payload)["profileDocId"] == pid
    r = await req(coap, Code.GET, uri, etags=[etag])
    assert r.code == Code.CONTENT and r.opt.etag != etag

    r = await req(coap, Code.DELETE, uri)
    assert r.code == Code.DELETED and not r.payload
    problem(await req(coap, Code.GET, uri), Code.NOT_FOUND, "NO_SUCH_PROFILE")
    problem(await req(coap, Code.DELETE, uri), Code.NOT_FOUND, "NO_SUCH_PROFILE")
    problem(await req(coap, Code.PUT, uri, cbor2.dumps(changed), content_format=60), Code.NOT_FOUND)
    assert stored_count(srv) == 0


async def test_collection_get_by_val_tgt_ue(scm_server, coap):
    srv = scm_server
    a_ue = await post(coap, srv, profile(ue=UE_A, name="a-ue"))
    a_user = await post(coap, srv, profile(user=UE_A, name="a-as-user"))  # same id, other kind
    u = await post(coap, srv, profile(user=USER_A, name="alice"))
    await post(coap, srv, profile(ue=UE_B, name="b"))

    async def names(value: str) -> list[str]:
        r = await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={value}"])
        assert r.code == Code.CONTENT and int(r.opt.content_format) == 60, r.payload
        return [d["profileDocId"] for d in cbor2.loads(r.payload)]

    # the id itself (SPEC D16) matches either kind, in creation order
    assert await names(UE_A) == [a_ue["profileDocId"], a_user["profileDocId"]]
    assert await names(f"valUeId:{UE_A}") == [a_ue["profileDocId"]]
    assert await names(f"valUserId:{UE_A}") == [a_user["profileDocId"]]
    assert await names(json.dumps({"valUserId": USER_A})) == [u["profileDocId"]]
    assert await names(USER_A) == [u["profileDocId"]]
    assert await names("sip:nobody@msgin5g.example") == []  # array(ProfileDoc), 0..N

    for query, cause in (
        ([], "MISSING_VAL_TGT_UE"),  # M, cardinality 1
        ([f"val-tgt-ue={UE_A}", f"val-tgt-ue={UE_B}"], "INVALID_QUERY"),
        (["val-tgt-ue="], "INVALID_VAL_TGT_UE"),
        (["val-tgt-ue=valUeId:"], "INVALID_VAL_TGT_UE"),
        (['val-tgt-ue={"valUeId":"a","valUserId":"b"}'], "INVALID_VAL_TGT_UE"),
        (["val-tgt-ue={nope"], "INVALID_VAL_TGT_UE"),
        ([f"ue-uri={UE_A}"], "UNKNOWN_QUERY_PARAMETER"),
        (["val-tgt-ue"], "INVALID_QUERY"),
    ):
        problem(await req(coap, Code.GET, coll(srv), query=query), Code.BAD_REQUEST, cause)


async def test_json_is_served_and_accepted_when_asked(scm_server, coap):
    srv = scm_server
    body = json.dumps(profile(user=USER_A, name="json")).encode()
    r = await req(coap, Code.POST, coll(srv), body, content_format=50, accept=50)
    assert r.code == Code.CREATED and int(r.opt.content_format) == 50
    pid = json.loads(r.payload)["profileDocId"]
    r = await req(coap, Code.GET, f"{coll(srv)}/{pid}", accept=50)
    assert int(r.opt.content_format) == 50
    assert json.loads(r.payload)["profileInformation"]["profileName"] == "json"
    r = await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={USER_A}"], accept=50)
    assert [d["profileDocId"] for d in json.loads(r.payload)] == [pid]


NAN = cbor2.dumps({**profile(ue=UE_A), "x": float("nan")})
BIG = cbor2.dumps({**profile(ue=UE_A), "x": 10**40})
BYTES = cbor2.dumps({**profile(ue=UE_A), "x": b"\x00"})


def _without(path: tuple[str, ...]) -> bytes:
    doc = profile(ue=UE_A)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return cbor2.dumps(doc)


def _with(path: tuple, value) -> bytes:
    doc = profile(ue=UE_A)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cbor2.dumps(doc)


BAD_BODIES = [
    # (body, Content-Format, cause)
    (cbor2.dumps([profile(ue=UE_A)]), 60, "INVALID_DOCUMENT"),
    (_without(("profileInformation",)), 60, "MISSING_PROFILE_INFORMATION"),
    (_without(("profileInformation", "status")), 60, "MISSING_STATUS"),
    (_with(("profileInformation", "status"), "true"), 60, "INVALID_DOCUMENT"),
    (_with(("profileInformation", "isDefault"), 1), 60, "INVALID_DOCUMENT"),
    (_with(("profileInformation", "profileConfigs"), []), 60, "INVALID_DOCUMENT"),
    (_with(("profileInformation", "profileConfigs", 0, "configData"), {"k": 1}), 60, "INVALID_DOCUMENT"),
    (_without(("profileInformation", "profileConfigs", 0, "configType")), 60, "INVALID_DOCUMENT"),
    (_without(("valTgtUe",)), 60, "MISSING_VAL_TGT_UE"),
    (_with(("valTgtUe",), {}), 60, "INVALID_VAL_TGT_UE"),
    (_with(("valTgtUe",), {"valUeId": UE_A, "valUserId": USER_A}), 60, "INVALID_VAL_TGT_UE"),
    (_with(("valTgtUe",), {"valUeId": ""}), 60, "INVALID_IDENTIFIER"),
    (_with(("valTgtUe",), {"valUeId": UE_A + "\n"}), 60, "INVALID_IDENTIFIER"),
    (_with(("valTgtUe",), {"valUserId": 42}), 60, "INVALID_DOCUMENT"),
    (_with(("profileDocId",), "mine"), 60, "PROFILE_DOC_ID_NOT_ALLOWED"),
    (NAN, 60, "INVALID_NUMBER"),
    (BIG, 60, "INVALID_NUMBER"),
    (BYTES, 60, "INVALID_DOCUMENT"),
    (b"\xa1", 60, "MALFORMED_BODY"),
    (cbor2.dumps(profile(ue=UE_A)) + b"\x00", 60, "MALFORMED_BODY"),
    (b"", 60, "MALFORMED_BODY"),
    (b'{"profileInformation":{"status":true},"valTgtUe":{"valUeId":"\\ud800"}}', 50, "INVALID_TEXT"),
    (b"[" * 10_000 + b"]" * 10_000, 50, "MALFORMED_BODY"),
    (b'{"profileInformation":{"status":true},"valTgtUe":{"valUeId":"a"},"x":NaN}', 50, "INVALID_NUMBER"),
]


@pytest.mark.parametrize(("body", "cf", "cause"), BAD_BODIES)
async def test_bad_bodies_are_refused_and_nothing_is_stored(scm_server, coap, body, cf, cause):
    srv = scm_server
    r = await req(coap, Code.POST, coll(srv, "coap+tcp"), body, content_format=cf)
    problem(r, Code.BAD_REQUEST, cause)
    assert stored_count(srv) == 0


async def test_bad_put_leaves_the_profile_unchanged(scm_server, coap):
    srv = scm_server
    p = await post(coap, srv, profile(ue=UE_A, name="orig"))
    other = await post(coap, srv, profile(ue=UE_B, name="other"))
    uri = f"{coll(srv)}/{p['profileDocId']}"
    naming_other = profile(ue=UE_A, name="hijack", profileDocId=other["profileDocId"])
    r = await req(coap, Code.PUT, uri, cbor2.dumps(naming_other), content_format=60)
    problem(r, Code.BAD_REQUEST, "PROFILE_DOC_ID_MISMATCH")
    r = await req(coap, Code.PUT, uri, _without(("valTgtUe",)), content_format=60)
    problem(r, Code.BAD_REQUEST, "MISSING_VAL_TGT_UE")
    r = await req(coap, Code.PUT, uri, b"x", content_format=0)
    problem(r, Code.UNSUPPORTED_CONTENT_FORMAT, "UNSUPPORTED_CONTENT_FORMAT")
    for pid, name in ((p["profileDocId"], "orig"), (other["profileDocId"], "other")):
        stored = srv.store.get_profile(SID, pid)
        assert stored.version == 1 and stored.doc["profileInformation"]["profileName"] == name
    # the id it names already is fine
    same = profile(ue=UE_A, name="renamed", profileDocId=p["profileDocId"])
    assert (await req(coap, Code.PUT, uri, cbor2.dumps(same), content_format=60)).code == Code.CHANGED


async def test_formats_methods_targets_and_size(scm_server, coap):
    srv = scm_server
    good = cbor2.dumps(profile(ue=UE_A))
    problem(await req(coap, Code.POST, coll(srv), good, content_format=0), Code.UNSUPPORTED_CONTENT_FORMAT)
    problem(
        await req(coap, Code.POST, coll(srv), good, content_format=60, accept=0),
        Code.NOT_ACCEPTABLE,
        "NOT_ACCEPTABLE",
    )
    problem(
        await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={UE_A}"], accept=0),
        Code.NOT_ACCEPTABLE,
        "NOT_ACCEPTABLE",
    )
    assert stored_count(srv) == 0
    p = await post(coap, srv, profile(ue=UE_A))
    problem(await req(coap, Code.PUT, coll(srv), good, content_format=60), Code.METHOD_NOT_ALLOWED)
    problem(await req(coap, Code.DELETE, coll(srv)), Code.METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED")
    problem(
        await req(coap, Code.POST, f"{coll(srv)}/{p['profileDocId']}", good, content_format=60),
        Code.METHOD_NOT_ALLOWED,
    )
    problem(
        await req(coap, Code.GET, coll(srv, sid="other"), query=[f"val-tgt-ue={UE_A}"]),
        Code.NOT_FOUND,
        "UNKNOWN_SERVICE",
    )
    wrong = coll(srv).replace("/user-profiles", "/profiles")
    problem(await req(coap, Code.GET, wrong), Code.NOT_FOUND, "NO_SUCH_RESOURCE")
    problem(await req(coap, Code.GET, coll(srv).replace("/v1/", "/v2/")), Code.NOT_FOUND, "NO_SUCH_RESOURCE")
    big = cbor2.dumps(profile(ue=UE_A, name="x" * 70_000))
    r = await req(coap, Code.POST, coll(srv, "coap+tcp"), big, content_format=60)
    problem(r, Code.REQUEST_ENTITY_TOO_LARGE, "BODY_TOO_LARGE")
    assert r.opt.size1 == 64 * 1024
    assert stored_count(srv) == 1


async def test_large_listing_block_wise_over_udp(scm_server, coap):
    srv = scm_server
    for i in range(12):
        srv.store.create_profile(SID, profile(user=USER_A, name=f"{i:02d}-" + "n" * 200))
    r = await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={USER_A}"])
    assert r.code == Code.CONTENT and len(r.payload) > 2048
    got = cbor2.loads(r.payload)
    assert [d["profileInformation"]["profileName"][:2] for d in got] == [f"{i:02d}" for i in range(12)]


@pytest.mark.parametrize("scheme", TRANSPORTS)
async def test_observe_notifies_on_put_and_ends_on_delete(scm_server, coap, scheme):
    srv = scm_server
    p = await post(coap, srv, profile(user=USER_A, name="v1"))
    pid = p["profileDocId"]
    uri = f"{coll(srv, scheme)}/{pid}"
    obs_req = coap.request(Message(code=Code.GET, uri=uri, observe=0))
    first = await asyncio.wait_for(obs_req.response, 10)
    assert first.code == Code.CONTENT and first.opt.observe is not None
    sub = srv.site.apis[0]
    assert sub.observer_count(SID, pid) == 1
    notes = obs_req.observation.__aiter__()
    r = await req(coap, Code.PUT, uri, cbor2.dumps(profile(user=USER_A, name="v2")), content_format=60)
    assert r.code == Code.CHANGED
    n = await asyncio.wait_for(notes.__anext__(), 10)
    assert cbor2.loads(n.payload)["profileInformation"]["profileName"] == "v2"
    assert n.opt.observe > first.opt.observe
    await req(coap, Code.DELETE, uri)
    with pytest.raises((StopAsyncIteration, aiocoap_error.Error)):
        await asyncio.wait_for(notes.__anext__(), 10)
    await asyncio.sleep(0.05)
    assert sub.observer_count(SID, pid) == 0


async def test_delete_sends_final_404_notification_on_the_wire(scm_server, coap):
    """RFC 7641 §3.2: the last notification of a deleted profile is 4.04 with problem details."""
    srv = scm_server
    p = await post(coap, srv, profile(ue=UE_A))
    path = ("su-up", "v1", "val-services", "msgin5g", "user-profiles", p["profileDocId"])
    raw = RawUdp(srv.port)
    try:
        raw.send(Message(code=Code.GET, observe=0, uri_path=path), mid=9, token=b"up")
        first = await raw.recv()
        assert first.code == Code.CONTENT and first.opt.observe is not None and first.token == b"up"
        await req(coap, Code.DELETE, f"{coll(srv)}/{p['profileDocId']}")
        final = await raw.recv()
        assert final.token == b"up" and final.opt.observe is None
        problem(final, Code.NOT_FOUND, "PROFILE_DELETED")
    finally:
        raw.close()


async def test_observe_on_a_missing_profile_is_404(scm_server, coap):
    srv = scm_server
    r = await req(coap, Code.GET, f"{coll(srv)}/nope", observe=0)
    problem(r, Code.NOT_FOUND, "NO_SUCH_PROFILE")
    assert r.opt.observe is None


async def test_lab_identities_read_only_their_own(scm_server, coap):
    """Insecure lab mode with claimed identities: the same rules as the secured matrix
    (test_security_profiles.py) — a UE or VAL user reads its own profiles only; writes are admin's."""
    srv = scm_server
    mine = await post(coap, srv, profile(ue=UE_A, name="mine"))
    theirs = await post(coap, srv, profile(ue=UE_B, name="theirs"))
    me = f"ue:{UE_A}"
    r = await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={UE_A}"], identity=me)
    assert r.code == Code.CONTENT
    assert [d["profileDocId"] for d in cbor2.loads(r.payload)] == [mine["profileDocId"]]
    r = await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={UE_B}"], identity=me)
    denial = problem(r, Code.FORBIDDEN, "NOT_AUTHORIZED")
    r = await req(coap, Code.GET, f"{coll(srv)}/{theirs['profileDocId']}", identity=me)
    assert problem(r, Code.FORBIDDEN) == denial  # a foreign profile reads like a missing one:
    r = await req(coap, Code.GET, f"{coll(srv)}/no-such-profile", identity=me)
    assert problem(r, Code.FORBIDDEN) == denial
    r = await req(coap, Code.GET, f"{coll(srv)}/{mine['profileDocId']}", identity=me)
    assert r.code == Code.CONTENT
    r = await req(coap, Code.DELETE, f"{coll(srv)}/{mine['profileDocId']}", identity=me)
    problem(r, Code.FORBIDDEN, "ADMIN_ONLY")
    r = await req(coap, Code.GET, coll(srv), query=[f"val-tgt-ue={UE_A}"], identity="gateway:gw1")
    problem(r, Code.FORBIDDEN, "NOT_AUTHORIZED")
    assert stored_count(srv) == 2


async def test_api_prefix_in_paths_and_location(tmp_path, coap):
    """C.1.1: apiRoot may carry a path prefix; Location-Path then starts with it (RFC 7252 §5.10.7)."""
    srv = await start_server(
        ServerConfig(port=0, db_url=f"sqlite:///{tmp_path}/scm.db", insecure=True, api_prefix=("seal", "cm"))
    )
    try:
        c = f"coap://127.0.0.1:{srv.port}/seal/cm/su-up/v1/val-services/msgin5g/user-profiles"
        r = await req(coap, Code.POST, c, cbor2.dumps(profile(user=USER_A)), content_format=60)
        assert r.code == Code.CREATED
        pid = cbor2.loads(r.payload)["profileDocId"]
        expected = ("seal", "cm", "su-up", "v1", "val-services", "msgin5g", "user-profiles", pid)
        assert r.opt.location_path == expected
        assert (await req(coap, Code.GET, f"{c}/{pid}")).code == Code.CONTENT
        unprefixed = c.replace("/seal/cm", "")
        problem(await req(coap, Code.GET, f"{unprefixed}/{pid}"), Code.NOT_FOUND, "NO_SUCH_RESOURCE")
    finally:
        await srv.close()
