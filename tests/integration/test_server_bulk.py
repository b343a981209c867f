"""Server side of the bulk GET (TS 24.538 6.2.2.x; SPEC D6, D7) and lab identities (SPEC D12).

Real CoAP over UDP and TCP against a real SCM-S on SQLite; Block2 follow-ups are done by hand so
that the test sees exactly what travels: follow-ups carry only ``bulk-conf-flag`` and Block2.
"""

from __future__ import annotations

import asyncio
import json

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption, OpaqueOption

from msgin5g.authz import LAB_IDENTITY_OPTION
from msgin5g.bulk import entry_problem
from msgin5g.model import imei_urn

from .conftest import DOMAIN, make_doc
from .test_server_api import problem, req

TAC = "35209900"


def ue(n: int) -> str:
    return imei_urn(TAC, n)


async def provision(srv, n_range=100):
    """UEs 0..n_range-1 by one range document with placeholders; UE 5 also has its own document."""
    srv.store.import_docs(
        "msgin5g",
        [
            make_doc(
                ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": str(n_range - 1)}}],
                service_id="s-{snr}",
            ),
            make_doc(uris=[ue(5)], service_id="special"),
        ],
    )


def bulk_query(flag, uris, **extra):
    return [f"bulk-conf-flag={flag}", *(f"ue-uri={u}" for u in uris), *(f"{k}={v}" for k, v in extra.items())]


async def send(ctx, uri, query, identity=None, block2=None):
    m = Message(code=Code.GET, uri=uri)
    m.opt.uri_query = tuple(query)
    if identity:
        m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, identity.encode()))
    if block2 is not None:
        m.opt.block2 = block2
    return await asyncio.wait_for(ctx.request(m, handle_blockwise=False).response, 10)


async def fetch_bulk(ctx, uri, flag, uris, identity=None):
    """First request with every ue-uri, then Block2 follow-ups naming only the flag (SPEC D7 b)."""
    first = await send(ctx, uri, bulk_query(flag, uris), identity)
    responses = [first]
    payload = first.payload
    while responses[-1].opt.block2 is not None and responses[-1].opt.block2.more:
        b2 = responses[-1].opt.block2
        nxt = await send(
            ctx,
            uri,
            [f"bulk-conf-flag={flag}"],
            identity,
            BlockOption.BlockwiseTuple(b2.block_number + 1, 0, b2.size_exponent),
        )
        assert nxt.code == Code.CONTENT, nxt.payload
        responses.append(nxt)
        payload += nxt.payload
    return responses, payload


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_one_entry_per_ue_in_request_order(scm_server, coap, scheme):
    srv = scm_server
    await provision(srv)
    uris = [ue(7), "urn:nobody:1", ue(5), ue(7), ue(500)]
    responses, payload = await fetch_bulk(coap, srv.collection_uri(scheme=scheme), "b-order", uris)
    entries = cbor2.loads(payload)
    assert len(entries) == len(uris)
    assert [e["valUeIds"]["uris"] for e in entries] == [[u] for u in uris]
    sid = [
        None if entry_problem(e) else json.loads(e["ueConfigs"][0]["configData"])["ueServiceId"]
        for e in entries
    ]
    assert sid == ["s-000007", None, "special", "s-000007", None]
    assert entry_problem(entries[1]).code == 0x84 and entry_problem(entries[4]).code == 0x84
    assert entries[1]["valServiceDomain"] == DOMAIN
    assert all(r.opt.etag == responses[0].opt.etag for r in responses)


async def test_udp_answer_is_block_wise_with_tiny_follow_ups(scm_server, coap):
    srv = scm_server
    await provision(srv, 400)
    uris = [ue(i) for i in range(25)]
    responses, payload = await fetch_bulk(coap, srv.collection_uri(), "b-blocks", uris)
    assert len(responses) > 2, "the answer must need several blocks"
    assert responses[0].opt.size2 == len(payload)
    assert len({r.opt.etag for r in responses}) == 1  # one stable representation
    entries = cbor2.loads(payload)
    assert [e["valUeIds"]["uris"][0] for e in entries] == uris


async def test_tcp_answer_comes_in_one_message(scm_server, coap):
    srv = scm_server
    await provision(srv, 3000)
    uris = [ue(i) for i in range(2000)]
    r = await send(coap, srv.collection_uri(scheme="coap+tcp"), bulk_query("b-tcp", uris))
    assert r.code == Code.CONTENT and r.opt.block2 is None
    assert len(cbor2.loads(r.payload)) == 2000


async def test_retransmitted_bulk_sees_the_same_answer(scm_server, coap):
    srv = scm_server
    await provision(srv)
    uri = srv.collection_uri(scheme="coap+tcp")
    a = await send(coap, uri, bulk_query("b-same", [ue(1), ue(2)]))
    srv.store.import_docs("msgin5g", [make_doc(uris=[ue(1)], service_id="changed")])
    b = await send(coap, uri, bulk_query("b-same", [ue(1), ue(2)]))
    assert a.payload == b.payload and a.opt.etag == b.opt.etag
    c = await send(coap, uri, bulk_query("b-new", [ue(1), ue(2)]))
    assert c.payload != a.payload  # a fresh bulk operation sees the change


async def test_follow_up_for_unknown_flag_is_408(scm_server, coap):
    r = await send(
        coap,
        scm_server.collection_uri(),
        ["bulk-conf-flag=never-seen"],
        block2=BlockOption.BlockwiseTuple(1, 0, 6),
    )
    problem(r, Code.REQUEST_ENTITY_INCOMPLETE, "BULK_ANSWER_EXPIRED")


async def test_follow_up_beyond_the_end_is_400(scm_server, coap):
    srv = scm_server
    await provision(srv)
    await send(coap, srv.collection_uri(), bulk_query("b-end", [ue(1)]))
    r = await send(
        coap, srv.collection_uri(), ["bulk-conf-flag=b-end"], block2=BlockOption.BlockwiseTuple(50, 0, 6)
    )
    problem(r, Code.BAD_REQUEST)


async def test_policy_maximum(tmp_path, coap):
    from msgin5g.server.app import ServerConfig, start_server
    from msgin5g.server.service import ServiceConfig

    srv = await start_server(
        ServerConfig(
            port=0, db_url=f"sqlite:///{tmp_path}/m.db", insecure=True, service=ServiceConfig(bulk_max_ues=3)
        )
    )
    try:
        r = await send(
            coap, srv.collection_uri(scheme="coap+tcp"), bulk_query("b-max", [ue(i) for i in range(4)])
        )
        pd = problem(r, Code.REQUEST_ENTITY_TOO_LARGE, "BULK_TOO_LARGE")
        assert "allows 3" in pd[-2]
        r = await send(
            coap, srv.collection_uri(scheme="coap+tcp"), bulk_query("b-ok", [ue(i) for i in range(3)])
        )
        assert r.code == Code.CONTENT
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("query", "cause"),
    [
        (["bulk-conf-flag=x", "ue-uri=not a uri"], "INVALID_URI"),
        (["bulk-conf-flag=x", "ue-uri=urn:a:1", "ue-snr=5"], "INVALID_QUERY"),
        (["bulk-conf-flag=x", "ue-uri=urn:a:1", "ue-type=12"], "INVALID_TAC"),
        (["bulk-conf-flag=x", "ue-type=12345678"], "NO_UE"),
    ],
)
async def test_bad_bulk_requests(scm_server, coap, query, cause):
    problem(await send(coap, scm_server.collection_uri(scheme="coap+tcp"), query), Code.BAD_REQUEST, cause)


# -- gateway registry and lab identities (SPEC D6, D12) ------------------------------------------------------


async def test_gateway_registry_coverage_gives_per_ue_403(scm_server, coap):
    srv = scm_server
    await provision(srv)
    srv.store.set_gateway("gw1", {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "9"}}]})
    uri = srv.collection_uri(scheme="coap+tcp")
    r = await send(coap, uri, bulk_query("g1", [ue(3), ue(50), ue(5)]), identity="gateway:gw1")
    entries = cbor2.loads(r.payload)
    codes = [(entry_problem(e).code if entry_problem(e) else 0x45) for e in entries]
    assert codes == [0x45, 0x83, 0x45]
    assert "ueConfigs" not in entries[1]  # nothing of the foreign UE's configuration
    # an unregistered gateway gets 4.03 for everyone, indistinguishable from "no such UE"
    r = await send(coap, uri, bulk_query("g2", [ue(3), "urn:nobody:1"]), identity="gateway:gw-unknown")
    entries = cbor2.loads(r.payload)
    assert [entry_problem(e).code for e in entries] == [0x83, 0x83]
    assert entry_problem(entries[0]) == entry_problem(entries[1])


async def test_lab_identities_over_coap(scm_server, coap):
    srv = scm_server
    await provision(srv)
    coll = srv.collection_uri()
    me, other = ue(3), ue(4)
    r = await req(coap, Code.GET, coll, query=[f"ue-uri={me}"], identity=f"ue:{me}")
    assert r.code == Code.CONTENT
    pd = problem(
        await req(coap, Code.GET, coll, query=[f"ue-uri={other}"], identity=f"ue:{me}"), Code.FORBIDDEN
    )
    assert other not in pd[-2]
    problem(await req(coap, Code.GET, coll, identity=f"ue:{me}"), Code.FORBIDDEN, "SCOPE_REQUIRED")
    problem(
        await send(coap, coll, bulk_query("u1", [me]), identity=f"ue:{me}"), Code.FORBIDDEN, "GATEWAY_ONLY"
    )
    problem(
        await req(coap, Code.POST, coll, cbor2.dumps(make_doc()), identity=f"ue:{me}", content_format=60),
        Code.FORBIDDEN,
        "ADMIN_ONLY",
    )
    # individual documents: a UE reads only what applies to itself
    mine = srv.store.create("msgin5g", make_doc(uris=[me]))
    theirs = srv.store.create("msgin5g", make_doc(uris=[other]))
    assert (await req(coap, Code.GET, f"{coll}/{mine.doc_id}", identity=f"ue:{me}")).code == Code.CONTENT
    problem(await req(coap, Code.GET, f"{coll}/{theirs.doc_id}", identity=f"ue:{me}"), Code.FORBIDDEN)
    # and may observe only its own
    for doc_id, code in ((theirs.doc_id, Code.FORBIDDEN), (mine.doc_id, Code.CONTENT)):
        m = Message(code=Code.GET, uri=f"{coll}/{doc_id}", observe=0)
        m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, f"ue:{me}".encode()))
        r = await asyncio.wait_for(coap.request(m).response, 10)
        assert r.code == code
    assert srv.site.observer_count("msgin5g", theirs.doc_id) == 0
    assert srv.site.observer_count("msgin5g", mine.doc_id) == 1
