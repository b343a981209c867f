"""SU_UeConfig over real CoAP (UDP and TCP) against a real SCM-S on a real SQLite file.

TS 24.546 C.3.1.2 (methods and codes), C.1.2 (ETag/Max-Age), C.1.3 (errors with problem
details), clause 5 (CoAP, Observe, block-wise, TCP, WebSockets, CBOR); SPEC D1-D5.
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiocoap
import cbor2
import pytest
from aiocoap import Message
from aiocoap import error as aiocoap_error
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption

from msgin5g.authz import LAB_IDENTITY_OPTION
from msgin5g.model import imei_urn

from .conftest import DOMAIN, make_doc

TRANSPORTS = ["coap", "coap+tcp"]
UE = imei_urn("35209900", 12)


def coll(srv, scheme="coap", sid="msgin5g"):
    return srv.collection_uri(sid, scheme)


async def req(ctx, code, uri, payload=b"", query=(), identity=None, **opts):
    m = Message(code=code, uri=uri, payload=payload, **opts)
    if query:
        m.opt.uri_query = tuple(query)
    if identity:
        m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, identity.encode()))
    return await asyncio.wait_for(ctx.request(m).response, 10)


def problem(resp, code: Code, cause: str | None = None) -> dict:
    """Assert an error response with concise problem details (Content-Format 257)."""
    assert resp.code == code, (resp.code, resp.payload)
    assert int(resp.opt.content_format) == 257
    pd = cbor2.loads(resp.payload)
    assert pd[-4] == int(code)
    assert isinstance(pd[-1], str) and pd[-1]
    assert isinstance(pd[-2], str) and pd[-2]
    if cause is not None:
        assert pd["cause"] == cause, pd
    return pd


async def post(ctx, srv, doc, scheme="coap"):
    r = await req(ctx, Code.POST, coll(srv, scheme), cbor2.dumps(doc), content_format=60)
    assert r.code == Code.CREATED, r.payload
    return cbor2.loads(r.payload)


@pytest.mark.parametrize("scheme", TRANSPORTS)
async def test_crud_cycle(scm_server, coap, scheme):
    srv = scm_server
    doc = make_doc(uris=[UE], name="one", **{"x-vendor-ext": {"k": [1, 2]}})
    r = await req(coap, Code.POST, coll(srv, scheme), cbor2.dumps(doc), content_format=60)
    assert r.code == Code.CREATED
    body = cbor2.loads(r.payload)
    doc_id = body["ueConfigDocId"]
    # Location-Path carries the full absolute path (RFC 7252 §5.10.7) ending in the id.
    assert r.opt.location_path == ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations", doc_id)
    assert body["x-vendor-ext"] == {"k": [1, 2]}  # unknown keys kept

    doc_uri = f"{coll(srv, scheme)}/{doc_id}"
    r = await req(coap, Code.GET, doc_uri)
    assert r.code == Code.CONTENT and int(r.opt.content_format) == 60
    assert cbor2.loads(r.payload)["x-vendor-ext"] == {"k": [1, 2]}
    etag = r.opt.etag
    assert etag and r.opt.max_age == 300
    r2 = await req(coap, Code.GET, doc_uri, etags=[etag])
    assert r2.code == Code.VALID and r2.opt.etag == etag and not r2.payload

    changed = dict(doc, configName="two")
    r = await req(coap, Code.PUT, doc_uri, cbor2.dumps(changed), content_format=60, if_match=[b"\x00" * 8])
    problem(r, Code.PRECONDITION_FAILED, "PRECONDITION_FAILED")
    r = await req(coap, Code.PUT, doc_uri, cbor2.dumps(changed), content_format=60, if_match=[etag])
    assert r.code == Code.CHANGED
    assert cbor2.loads(r.payload)["configName"] == "two"
    r = await req(coap, Code.GET, doc_uri, etags=[etag])
    assert r.code == Code.CONTENT and r.opt.etag != etag  # new state, new ETag

    r = await req(coap, Code.DELETE, doc_uri)
    assert r.code == Code.DELETED
    problem(await req(coap, Code.GET, doc_uri), Code.NOT_FOUND, "NO_SUCH_DOCUMENT")
    problem(await req(coap, Code.DELETE, doc_uri), Code.NOT_FOUND)


@pytest.mark.parametrize("scheme", TRANSPORTS)
async def test_ue_scoped_query_most_specific_first_and_expanded(scm_server, coap, scheme):
    srv = scm_server
    tac_snr = {"tac": "35209900", "snrRange": {"low": "10", "high": "20"}}
    d_domain = await post(coap, srv, make_doc(service_id="all-{ueUri}"))
    d_tac = await post(coap, srv, make_doc(ranges=[{"tac": "35209900"}], service_id="tac-{tac}"))
    d_snr = await post(coap, srv, make_doc(ranges=[tac_snr], service_id="s-{tac}-{snr}@x"))
    d_uri = await post(coap, srv, make_doc(uris=[UE, "urn:other:ue"], service_id="mine"))
    await post(coap, srv, make_doc(ranges=[{"tac": "11111111"}]))  # not applicable

    r = await req(coap, Code.GET, coll(srv, scheme), query=[f"ue-uri={UE}"])
    assert r.code == Code.CONTENT
    docs = cbor2.loads(r.payload)
    assert [d["ueConfigDocId"] for d in docs] == [
        d_uri["ueConfigDocId"],
        d_snr["ueConfigDocId"],
        d_tac["ueConfigDocId"],
        d_domain["ueConfigDocId"],
    ]
    sids = [json.loads(d["ueConfigs"][0]["configData"])["ueServiceId"] for d in docs]
    assert sids == ["mine", "s-35209900-000012@x", "tac-35209900", f"all-{UE}"]
    # resolved for this UE: no other UE's identity leaks from a shared document
    assert all(d["valUeIds"] == {"uris": [UE]} for d in docs)
    assert r.opt.etag and r.opt.max_age == 300


async def test_scoped_query_by_tac_and_snr_for_non_imei_uri(scm_server, coap):
    srv = scm_server
    await post(coap, srv, make_doc(ranges=[{"tac": "35209900", "snrs": ["7", "000012"]}], service_id="{snr}"))
    r = await req(coap, Code.GET, coll(srv), query=["ue-uri=sip:ue@x", "ue-type=35209900", "ue-snr=12"])
    docs = cbor2.loads(r.payload)
    assert json.loads(docs[0]["ueConfigs"][0]["configData"])["ueServiceId"] == "000012"
    pd = problem(
        await req(coap, Code.GET, coll(srv), query=[f"ue-uri={UE}", "ue-type=35209901"]), Code.BAD_REQUEST
    )
    assert pd["cause"] == "IDENTITY_MISMATCH"


async def test_scoped_query_without_configuration_is_404(scm_server, coap):
    pd = problem(
        await req(coap, Code.GET, coll(scm_server), query=[f"ue-uri={UE}"]),
        Code.NOT_FOUND,
        "NO_CONFIGURATION",
    )
    assert "no configuration" in pd[-2]


async def test_admin_query_is_literal_any_match(scm_server, coap):
    srv = scm_server
    a = await post(coap, srv, make_doc(uris=["urn:a:1"]))
    b = await post(coap, srv, make_doc(ranges=[{"tac": "35209900"}]))
    c = await post(coap, srv, make_doc(ranges=[{"tac": "11111111", "snrRange": {"low": "5", "high": "9"}}]))
    d = await post(coap, srv, make_doc(ueVendor="acme"))

    async def ids(*query):
        r = await req(coap, Code.GET, coll(srv), query=list(query))
        assert r.code == Code.CONTENT and r.opt.max_age == 0
        return {x["ueConfigDocId"] for x in cbor2.loads(r.payload)}

    everything = {x["ueConfigDocId"] for x in (a, b, c, d)}
    assert await ids() == everything
    assert await ids("ue-type=35209900") == {b["ueConfigDocId"]}
    assert await ids("ue-snr=000007") == {c["ueConfigDocId"]}
    assert await ids("ue-type=35209900", "ue-snr=7") == {b["ueConfigDocId"], c["ueConfigDocId"]}
    assert await ids("ue-vendor=acme") == {d["ueConfigDocId"]}
    assert await ids("ue-vendor=ACME") == set()  # vendors compare exactly
    assert await ids("ue-type=99999999") == set()


async def test_json_is_served_and_accepted_when_asked(scm_server, coap):
    srv = scm_server
    doc = make_doc(uris=[UE])
    r = await req(coap, Code.POST, coll(srv), json.dumps(doc).encode(), content_format=50, accept=50)
    assert r.code == Code.CREATED and int(r.opt.content_format) == 50
    doc_id = json.loads(r.payload)["ueConfigDocId"]
    r = await req(coap, Code.GET, coll(srv), query=[f"ue-uri={UE}"], accept=50)
    assert int(r.opt.content_format) == 50 and json.loads(r.payload)[0]["ueConfigDocId"] == doc_id


# -- bad input: every case gets the right code and problem details --------------------------------------

BAD_BODIES = [
    (b"\xa1\x61", Code.BAD_REQUEST, "MALFORMED_BODY"),  # truncated CBOR
    (cbor2.dumps({"valServiceDomain": "d"}) + b"\x00", Code.BAD_REQUEST, "MALFORMED_BODY"),  # trailing bytes
    (cbor2.dumps([1, 2]), Code.BAD_REQUEST, "INVALID_DOCUMENT"),  # not a map
    (cbor2.dumps({1: "x", "valServiceDomain": "d"}), Code.BAD_REQUEST, "MALFORMED_BODY"),  # non-text key
    (cbor2.dumps({"configName": "x"}), Code.BAD_REQUEST, "MISSING_VAL_SERVICE_DOMAIN"),
    (cbor2.dumps({"valServiceDomain": 5}), Code.BAD_REQUEST, "INVALID_DOCUMENT"),  # wrong type
    (cbor2.dumps(make_doc(ranges=[{"tac": "123"}])), Code.BAD_REQUEST, "INVALID_TAC"),
    (
        cbor2.dumps(make_doc(ranges=[{"tac": "12345678", "snrs": ["1234567"]}])),
        Code.BAD_REQUEST,
        "INVALID_SNR",
    ),
    (cbor2.dumps(make_doc(uris=["not a uri"])), Code.BAD_REQUEST, "INVALID_URI"),
    (
        cbor2.dumps(
            {
                "valServiceDomain": "d",
                "ueConfigs": [
                    {"configType": "COMMON", "configData": "a"},
                    {"configType": "COMMON", "configData": "b"},
                ],
            }
        ),
        Code.BAD_REQUEST,
        "DUPLICATE_CONFIG_TYPE",
    ),
    (
        cbor2.dumps(
            {"valServiceDomain": "d", "ueConfigs": [{"configType": "ON_NETWORK", "configData": "{}"}]}
        ),
        Code.BAD_REQUEST,
        "INVALID_CONFIG_DATA",
    ),
    (cbor2.dumps(cbor2.CBORTag(1234, {"valServiceDomain": "d"})), Code.BAD_REQUEST, "MALFORMED_BODY"),
]


@pytest.mark.parametrize("scheme", TRANSPORTS)
@pytest.mark.parametrize(("body", "code", "cause"), BAD_BODIES)
async def test_bad_bodies(scm_server, coap, scheme, body, code, cause):
    problem(await req(coap, Code.POST, coll(scm_server, scheme), body, content_format=60), code, cause)


async def test_bad_config_data_names_the_field(scm_server, coap):
    bad = make_doc()
    bad["ueConfigs"][0]["configData"] = json.dumps(
        {"msgin5gServerAddress": "coap://x", "ueServiceId": "a", "segmentSize": "big"}
    )
    pd = problem(
        await req(coap, Code.POST, coll(scm_server), cbor2.dumps(bad), content_format=60), Code.BAD_REQUEST
    )
    assert "ueConfigs/0/configData/segmentSize" in pd[-2]
    bad["ueConfigs"][0]["configData"] = json.dumps({"msgin5gServerAddress": "coap://x"})
    pd = problem(
        await req(coap, Code.POST, coll(scm_server), cbor2.dumps(bad), content_format=60), Code.BAD_REQUEST
    )
    assert "ueServiceId" in pd[-2]


async def test_oversize_body_413_with_size1(scm_server, coap):
    doc = make_doc(configName="x" * 70_000)
    r = await req(coap, Code.POST, coll(scm_server, "coap+tcp"), cbor2.dumps(doc), content_format=60)
    problem(r, Code.REQUEST_ENTITY_TOO_LARGE, "BODY_TOO_LARGE")
    assert r.opt.size1 == 64 * 1024


async def test_large_body_block1_over_udp_is_accepted(scm_server, coap):
    doc = make_doc(configName="x" * 5000)
    r = await req(coap, Code.POST, coll(scm_server), cbor2.dumps(doc), content_format=60)
    assert r.code == Code.CREATED and cbor2.loads(r.payload)["configName"] == "x" * 5000


async def test_formats(scm_server, coap):
    srv = scm_server
    problem(
        await req(coap, Code.POST, coll(srv), b"hello", content_format=0), Code.UNSUPPORTED_CONTENT_FORMAT
    )
    problem(await req(coap, Code.GET, coll(srv), accept=0), Code.NOT_ACCEPTABLE, "NOT_ACCEPTABLE")


async def test_unknown_targets_and_methods(scm_server, coap):
    srv = scm_server
    problem(await req(coap, Code.GET, coll(srv, sid="other")), Code.NOT_FOUND, "UNKNOWN_SERVICE")
    problem(await req(coap, Code.GET, coll(srv) + "/nosuchdoc"), Code.NOT_FOUND, "NO_SUCH_DOCUMENT")
    problem(await req(coap, Code.GET, f"coap://127.0.0.1:{srv.port}/su-uc/v2/x"), Code.NOT_FOUND)
    problem(await req(coap, Code.PUT, coll(srv), cbor2.dumps(make_doc())), Code.METHOD_NOT_ALLOWED)
    problem(await req(coap, Code.DELETE, coll(srv)), Code.METHOD_NOT_ALLOWED)
    d = await post(coap, srv, make_doc())
    problem(
        await req(coap, Code.POST, f"{coll(srv)}/{d['ueConfigDocId']}", cbor2.dumps(make_doc())),
        Code.METHOD_NOT_ALLOWED,
    )
    problem(
        await req(coap, Code.PUT, f"{coll(srv)}/{d['ueConfigDocId']}", b"\xff", content_format=60),
        Code.BAD_REQUEST,
    )


@pytest.mark.parametrize(
    ("query", "cause"),
    [
        (["ue-color=blue"], "UNKNOWN_QUERY_PARAMETER"),
        (["ue-uri"], "INVALID_QUERY"),
        (["ue-type=1", "ue-type=2"], "INVALID_QUERY"),
        (["ue-uri=urn:a:1", "ue-uri=urn:a:2"], "INVALID_QUERY"),
        (["ue-snr=abc"], "INVALID_SNR"),
        (["ue-type=1234567x"], "INVALID_TAC"),
        (["ue-uri=no spaces allowed"], "INVALID_URI"),
        (["ue-uri="], "INVALID_QUERY"),
    ],
)
async def test_bad_queries(scm_server, coap, query, cause):
    problem(await req(coap, Code.GET, coll(scm_server), query=query), Code.BAD_REQUEST, cause)


async def test_bad_options(scm_server, coap):
    srv = scm_server
    m = Message(code=Code.GET, uri=coll(srv))
    m.opt.add_option(OpaqueOption(65001, b"x"))  # unknown critical (odd) option
    r = await asyncio.wait_for(coap.request(m).response, 10)
    problem(r, Code.BAD_OPTION, "BAD_OPTION")
    m = Message(code=Code.GET, uri=coll(srv))
    m.opt.add_option(OpaqueOption(65002, b"x"))  # unknown elective option: ignored
    assert (await asyncio.wait_for(coap.request(m).response, 10)).code == Code.CONTENT
    m = Message(code=Code.GET, proxy_uri="coap://elsewhere.example/x")
    m.remote = (await coap.request(Message(code=Code.GET, uri=coll(srv))).response).remote
    r = await asyncio.wait_for(coap.request(m).response, 10)
    problem(r, Code.PROXYING_NOT_SUPPORTED, "PROXYING_NOT_SUPPORTED")
    r = await req(coap, Code.GET, coll(srv), identity="king:arthur")
    problem(r, Code.BAD_REQUEST, "BAD_IDENTITY")


async def test_garbage_datagrams_do_not_hurt(scm_server, coap):
    srv = scm_server
    garbage = [
        b"",
        b"\x00",
        b"\xff" * 40,
        b"\x40\x01\x00",
        b"\x48\x01\x00\x01abc",
        bytes(range(256)),
        b"\x40\x01\x12\x34\xbf",
        b"\x44\x01\x12\x34\x01\x02\x03\x04\xdd\xff\xff\xff",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for g in garbage:
            s.sendto(g, ("127.0.0.1", srv.port))
    with socket.create_connection(("127.0.0.1", srv.port)) as t:
        t.sendall(b"\xff\xff\xff\xff garbage over tcp")
    await asyncio.sleep(0.2)
    r = await req(coap, Code.GET, coll(srv))
    assert r.code == Code.CONTENT


async def test_well_known_core(scm_server, coap):
    r = await req(coap, Code.GET, f"coap://127.0.0.1:{scm_server.port}/.well-known/core")
    assert r.code == Code.CONTENT and b"/su-uc/v1/val-services/msgin5g/ue-configurations" in r.payload


# -- Observe (RFC 7641) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", TRANSPORTS)
async def test_observe_notifies_on_put_and_ends_with_404_on_delete(scm_server, coap, scheme):
    srv = scm_server
    d = await post(coap, srv, make_doc(uris=[UE], name="v1"))
    doc_uri = f"{coll(srv, scheme)}/{d['ueConfigDocId']}"
    obs_req = coap.request(Message(code=Code.GET, uri=doc_uri, observe=0))
    first = await asyncio.wait_for(obs_req.response, 10)
    assert first.code == Code.CONTENT and first.opt.observe is not None
    assert srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 1
    notes = obs_req.observation.__aiter__()

    r = await req(coap, Code.PUT, doc_uri, cbor2.dumps(make_doc(uris=[UE], name="v2")), content_format=60)
    assert r.code == Code.CHANGED
    n = await asyncio.wait_for(notes.__anext__(), 10)
    assert cbor2.loads(n.payload)["configName"] == "v2" and n.opt.observe > first.opt.observe

    await req(coap, Code.DELETE, doc_uri)
    with pytest.raises((StopAsyncIteration, aiocoap_error.Error)):  # the observation has ended
        await asyncio.wait_for(notes.__anext__(), 10)
    await asyncio.sleep(0.05)
    assert srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 0


async def test_delete_sends_final_404_notification_on_the_wire(scm_server, coap):
    """Seen by a raw UDP observer: the last notification is 4.04 with problem details (RFC 7641 §3.2)."""
    srv = scm_server
    d = await post(coap, srv, make_doc(uris=[UE]))
    path = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations", d["ueConfigDocId"])
    raw = RawUdp(srv.port)
    try:
        raw.send(Message(code=Code.GET, observe=0, uri_path=path), mid=7, token=b"ob")
        first = await raw.recv()
        assert first.code == Code.CONTENT and first.opt.observe is not None and first.token == b"ob"
        await req(coap, Code.DELETE, coll(srv) + "/" + d["ueConfigDocId"])
        final = await raw.recv()
        assert final.token == b"ob" and final.opt.observe is None
        problem(final, Code.NOT_FOUND, "DOCUMENT_DELETED")
    finally:
        raw.close()


class RawUdp:
    """A bare UDP endpoint for checking exact on-the-wire behaviour."""

    def __init__(self, port: int):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setblocking(False)
        self.addr = ("127.0.0.1", port)

    def send(self, m: Message, mtype=aiocoap.CON, mid=1, token=b"") -> None:
        m.mtype, m.mid, m.token = mtype, mid, token
        self.s.sendto(m.encode(), self.addr)

    async def recv_bytes(self) -> bytes:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.s, 65536), 5)

    async def recv(self) -> Message:
        return Message.decode(await self.recv_bytes())

    def close(self) -> None:
        self.s.close()


async def test_observe_deregistration_with_observe_1_and_with_rst(scm_server, coap):
    srv = scm_server
    d = await post(coap, srv, make_doc(uris=[UE]))
    path = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations", d["ueConfigDocId"])
    raw = RawUdp(srv.port)
    try:
        raw.send(Message(code=Code.GET, observe=0, uri_path=path), mid=1, token=b"t1")
        assert (await raw.recv()).opt.observe is not None
        assert srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 1
        raw.send(Message(code=Code.GET, observe=1, uri_path=path), mid=2, token=b"t1")  # RFC 7641 §3.6
        answer = await raw.recv()
        assert answer.code == Code.CONTENT and answer.opt.observe is None
        await asyncio.sleep(0.1)
        assert srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 0

        raw.send(Message(code=Code.GET, observe=0, uri_path=path), mid=3, token=b"t2")
        await raw.recv()
        assert srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 1
        await req(
            coap,
            Code.PUT,
            coll(srv) + "/" + d["ueConfigDocId"],
            cbor2.dumps(make_doc(uris=[UE], name="n")),
            content_format=60,
        )
        note = await raw.recv()
        assert note.token == b"t2" and cbor2.loads(note.payload)["configName"] == "n"
        raw.send(Message(code=Code.EMPTY), mtype=aiocoap.RST, mid=note.mid)  # RFC 7641 §3.6: reject it
        for _ in range(20):
            if srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 0:
                break
            await asyncio.sleep(0.05)
        assert srv.site.observer_count("msgin5g", d["ueConfigDocId"]) == 0
    finally:
        raw.close()


async def test_observe_on_missing_document_is_404(scm_server, coap):
    r = await asyncio.wait_for(
        coap.request(Message(code=Code.GET, uri=coll(scm_server) + "/missing", observe=0)).response, 10
    )
    problem(r, Code.NOT_FOUND)
    assert r.opt.observe is None


# -- block-wise (RFC 7959) ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", TRANSPORTS)
async def test_large_listing_blockwise(scm_server, coap, scheme):
    srv = scm_server
    docs = [make_doc(uris=[imei_urn("35209900", i)], service_id=f"ue{i}") for i in range(3000)]
    srv.store.import_docs("msgin5g", docs)
    r = await asyncio.wait_for(coap.request(Message(code=Code.GET, uri=coll(srv, scheme))).response, 60)
    assert r.code == Code.CONTENT
    got = cbor2.loads(r.payload)
    assert len(got) == 3000 and len(r.payload) > 100_000
    assert {d["valUeIds"]["uris"][0] for d in got} == {imei_urn("35209900", i) for i in range(3000)}


# -- WebSockets (RFC 8323) --------------------------------------------------------------------------------


async def test_websocket_transport(tmp_path, coap):
    from msgin5g.server.app import ServerConfig, pick_port, start_server

    ws_port = pick_port("127.0.0.1") if False else None
    # aiocoap's WS server listens on bind port + 3000: choose a free port above 3000
    for _ in range(20):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            cand = s.getsockname()[1]
        if cand > 3000:
            ws_port = cand
            break
    srv = await start_server(
        ServerConfig(port=0, ws_port=ws_port, db_url=f"sqlite:///{tmp_path}/ws.db", insecure=True)
    )
    try:
        assert srv.base_uri("coap+ws") in srv.listeners
        r = await req(
            coap,
            Code.POST,
            srv.collection_uri("msgin5g", "coap+ws"),
            cbor2.dumps(make_doc(uris=[UE])),
            content_format=60,
        )
        assert r.code == Code.CREATED
        r = await req(coap, Code.GET, srv.collection_uri("msgin5g", "coap+ws"), query=[f"ue-uri={UE}"])
        assert r.code == Code.CONTENT and cbor2.loads(r.payload)[0]["valServiceDomain"] == DOMAIN
    finally:
        await srv.close()


async def test_retransmitted_con_is_answered_from_the_duplicate_cache(scm_server, coap):
    """RFC 7252 §4.5: a duplicate CON gets the same response and is not processed again; the
    compact cache (coap.aiocoap_tweaks.EncodedResponse) resends the identical bytes."""
    srv = scm_server
    await post(coap, srv, make_doc(uris=[UE]))
    raw = RawUdp(srv.port)
    try:
        m = Message(code=Code.GET, uri_path=("su-uc", "v1", "val-services", "msgin5g", "ue-configurations"))
        m.opt.uri_query = (f"ue-uri={UE}",)
        before = dict(srv.service.counters)
        raw.send(m, mid=4242, token=b"dup")
        first = await raw.recv_bytes()
        raw.send(m, mid=4242, token=b"dup")
        second = await raw.recv_bytes()
        assert first == second and Message.decode(first).code == Code.CONTENT
        assert srv.service.counters.get("scoped-ok", 0) == before.get("scoped-ok", 0) + 1
    finally:
        raw.close()


async def test_duplicate_cache_keeps_only_the_encoded_response(scm_server):
    """coap.aiocoap_tweaks: the SCM-S's UDP message layer keeps a piggybacked response as its bytes."""
    from msgin5g.coap.aiocoap_tweaks import EncodedResponse

    srv = scm_server
    raw = RawUdp(srv.port)
    try:
        raw.send(Message(code=Code.GET, uri_path=(".well-known", "core")), mid=777, token=b"wk")
        first = await raw.recv_bytes()
        mm = srv.contexts[0].request_interfaces[0].token_interface
        kept = [v for (remote, mid), v in mm._recent_messages.items() if mid == 777]
        assert len(kept) == 1 and isinstance(kept[0], EncodedResponse) and kept[0].encode() == first
    finally:
        raw.close()
