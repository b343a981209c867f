"""Hardening of the SCM-S, each item sent exactly as a device or an attacker would send it, over a real
UDP socket to a real ``msgin5g server`` process, checking code, Content-Format 257, cause — for bad
bodies that nothing was stored — and that the server's log holds no traceback (RFC 7252 §4.2, §5.4,
§5.9; RFC 7959; RFC 7641; RFC 8516; RFC 9290; TS 24.546 C.1.3, C.3.1.3; SPEC D2, D3, §2).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import socket

import aiocoap
import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from msgin5g.testing.fuzz import (
    CON,
    GET,
    NON,
    OPT_BLOCK1,
    OPT_CONTENT_FORMAT,
    OPT_OBSERVE,
    OPT_URI_PATH,
    OPT_URI_QUERY,
    POST,
    RST,
    encode_message,
    path_options,
    request,
    uint,
)

from .scm_wire import COLLECTION, LoggedServer, UdpClient, no_tracebacks, problem_of

MIDS = itertools.count(0x1000)
TOKENS = itertools.count(1)
UE = "urn:gsma:imei:35209900-000001-8"


def ids() -> dict:
    return {"mid": next(MIDS), "token": next(TOKENS).to_bytes(4, "big")}


def config_data(address: str = "coap://msg.example", sid: str = "svc-1", **more) -> str:
    return json.dumps({"msgin5gServerAddress": address, "ueServiceId": sid, **more})


def doc(**over) -> dict:
    d = {
        "valServiceDomain": "msgin5g.example",
        "valUeIds": {"uris": [UE]},
        "ueConfigs": [{"configType": "ON_NETWORK", "configData": config_data()}],
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = LoggedServer(tmp_path_factory.mktemp("wire"))
    yield s
    no_tracebacks(s.stop())


@pytest.fixture
def cli(srv):
    c = UdpClient(srv.addr)
    yield c
    c.close()


@pytest.fixture
async def coap():
    ctx = await aiocoap.Context.create_client_context()
    yield ctx
    await ctx.shutdown()


def uri(srv, path: str = COLLECTION) -> str:
    return f"coap://127.0.0.1:{srv.port}/{path}"


async def send(ctx, code, url, payload=b"", **opts) -> Message:
    return await asyncio.wait_for(
        ctx.request(Message(code=code, uri=url, payload=payload, **opts)).response, 20
    )


async def listing(ctx, srv) -> list:
    r = await send(ctx, Code.GET, uri(srv))
    assert r.code == Code.CONTENT, r
    return cbor2.loads(r.payload)


def assert_answers_valid_request(cli: UdpClient) -> None:
    """After whatever came before, an ordinary scoped GET still gets its ordinary answer."""
    m = cli.exchange(request(GET, COLLECTION, query=[f"ue-uri={UE}"], **ids()))
    assert int(m.code) in (0x45, 0x84), m  # 2.05, or 4.04 when nothing is provisioned for it
    assert int(m.opt.content_format) in (60, 257)


# -- malformed options and datagrams (RFC 7252 §5.4.1, §4.2) ---------------------------------------------
@pytest.mark.parametrize("number", [OPT_URI_PATH, OPT_URI_QUERY])
@pytest.mark.parametrize("mtype", [CON, NON])
def test_invalid_utf8_in_a_text_option_gets_4_02(srv, cli, number, mtype):
    i = ids()
    opts = [*path_options(COLLECTION), (number, b"\xff\xfe\xc3\x28")]
    m = cli.exchange(encode_message(mtype, GET, i["mid"], i["token"], opts))
    problem_of(m, 0x82, "BAD_OPTION")
    if mtype == CON:
        assert m.mtype == 2 and m.mid == i["mid"]  # piggybacked ACK of that very message
    assert_answers_valid_request(cli)
    no_tracebacks(srv.log())


def test_a_message_format_error_in_a_confirmable_message_gets_rst(srv, cli):
    i = ids()
    bad = encode_message(CON, GET, i["mid"], i["token"]) + bytes([0xF1, 0x00])  # reserved option nibble
    cli.send(bad)
    m = cli.recv()
    assert m.mtype == RST and m.mid == i["mid"] and int(m.code) == 0
    assert_answers_valid_request(cli)
    no_tracebacks(srv.log())


def test_a_request_longer_than_the_receive_buffer_gets_4_13_with_size1(srv, cli):
    # the gateway's bulk GET with 200 UEs in one 8.5 KB datagram (issue: silently ignored before)
    query = ["bulk-conf-flag=big"] + [f"ue-uri=urn:dev:sensor-{n:06d}-abcdefghij" for n in range(200)]
    datagram = request(GET, COLLECTION, query=query, **ids())
    assert len(datagram) > 8000
    m = cli.exchange(datagram)
    problem_of(m, 0x8D, "REQUEST_TOO_LARGE")
    assert m.opt.size1 == 4096
    assert_answers_valid_request(cli)
    no_tracebacks(srv.log())


# -- Observe the site does not accept (RFC 7641 §4.1) ----------------------------------------------------
def test_observe_on_a_collection_is_answered_without_observe_and_without_a_false_error(srv, cli):
    m = cli.exchange(request(GET, COLLECTION, options=[(OPT_OBSERVE, b"")], **ids()))
    assert int(m.code) == 0x45 and m.opt.observe is None
    m = cli.exchange(request(GET, f"{COLLECTION}/no-such-doc", options=[(OPT_OBSERVE, b"")], **ids()))
    problem_of(m, 0x84, "NO_SUCH_DOCUMENT")
    assert m.opt.observe is None
    profiles = "su-up/v1/val-services/msgin5g/user-profiles"
    m = cli.exchange(request(GET, f"{profiles}/no-such-profile", options=[(OPT_OBSERVE, b"")], **ids()))
    assert int(m.code) >> 5 == 4 and int(m.opt.content_format) == 257 and m.opt.observe is None
    log = srv.log()
    assert "_cancellation_callback" not in log
    no_tracebacks(log)


# -- aiocoap's own errors become problem details (RFC 7959 §2.9) ------------------------------------------
def test_a_gap_in_a_block1_upload_gets_4_08(srv, cli):
    token = next(TOKENS).to_bytes(4, "big")
    body = cbor2.dumps(doc()).ljust(48, b" ")
    cf = (OPT_CONTENT_FORMAT, uint(60))
    first = encode_message(
        CON, POST, next(MIDS), token, [*path_options(COLLECTION), cf, (OPT_BLOCK1, uint(0x08))], body[:16]
    )
    m = cli.exchange(first)
    assert int(m.code) == 0x5F, m  # 2.31 Continue
    third = encode_message(
        CON, POST, next(MIDS), token, [*path_options(COLLECTION), cf, (OPT_BLOCK1, uint(0x28))], body[32:48]
    )
    m = cli.exchange(third)
    problem_of(m, 0x88, "REQUEST_ENTITY_INCOMPLETE")
    no_tracebacks(srv.log())


def test_a_block1_whose_size_does_not_match_gets_a_problem_not_plain_text(srv, cli):
    token = next(TOKENS).to_bytes(4, "big")
    cf = (OPT_CONTENT_FORMAT, uint(60))
    opts = [*path_options(COLLECTION), cf]
    m = cli.exchange(
        encode_message(CON, POST, next(MIDS), token, [*opts, (OPT_BLOCK1, uint(0x08))], b"x" * 16)
    )
    assert int(m.code) == 0x5F
    short = encode_message(CON, POST, next(MIDS), token, [*opts, (OPT_BLOCK1, uint(0x18))], b"x" * 5)
    problem_of(cli.exchange(short), 0x80, "BAD_REQUEST")  # aiocoap's "Payload size does not match Block1"
    no_tracebacks(srv.log())


# -- what must not be stored (TS 24.546 C.3.1.3; SPEC D2; RFC 8949 §4.2, §6.1) ---------------------------
def _with_ids(ids: dict) -> bytes:
    return cbor2.dumps(doc(valUeIds=ids))


def _with_config(data: str) -> bytes:
    return cbor2.dumps(doc(ueConfigs=[{"configType": "ON_NETWORK", "configData": data}]))


def _deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_CBOR_BODIES = {
    "empty valUeIds": (_with_ids({}), "EMPTY_VAL_UE_IDS"),
    "valUeIds with unknown keys only": (_with_ids({"foo": ["x"]}), "EMPTY_VAL_UE_IDS"),
    "TAC with a trailing newline": (_with_ids({"imeiRanges": [{"tac": "35209900\n"}]}), "INVALID_TAC"),
    "SNR with a trailing newline": (
        _with_ids({"imeiRanges": [{"tac": "35209900", "snrs": ["1\n"]}]}),
        "INVALID_SNR",
    ),
    "SNR range with a trailing newline": (
        _with_ids({"imeiRanges": [{"tac": "35209900", "snrRange": {"low": "1", "high": "9\n"}}]}),
        "INVALID_SNR",
    ),
    "URI with a trailing newline": (_with_ids({"uris": [UE + "\n"]}), "INVALID_URI"),
    "server address with a trailing newline": (
        _with_config(config_data("coap://msg.example\n")),
        "INVALID_CONFIG_DATA",
    ),
    "NaN in configData": (
        _with_config('{"msgin5gServerAddress":"coap://a","ueServiceId":"x","segmentSize":NaN}'),
        "INVALID_CONFIG_DATA",
    ),
    "lone surrogate in configData": (
        _with_config('{"msgin5gServerAddress":"coap://a","ueServiceId":"x\\ud800"}'),
        "INVALID_CONFIG_DATA",
    ),
    "control character in ueServiceId": (
        _with_config(config_data(sid="svc\u0007bell")),
        "INVALID_CONFIG_DATA",
    ),
    "trailing newline in ueServiceId": (_with_config(config_data(sid="svc\n")), "INVALID_CONFIG_DATA"),
    "configData nested 10,000 deep": (
        _with_config('{"msgin5gServerAddress":"coap://a","ueServiceId":"x","n":' + _deep_json(10_000) + "}"),
        "INVALID_CONFIG_DATA",
    ),
    "CBOR bignum 10^5000": (cbor2.dumps(doc(ext=10**5000)), "MALFORMED_BODY"),
    "CBOR integer beyond 64 bits": (cbor2.dumps(doc(ext=2**64)), "MALFORMED_BODY"),
    "CBOR NaN": (cbor2.dumps(doc(ext=math.nan)), "MALFORMED_BODY"),
    "CBOR infinity": (cbor2.dumps(doc(ext=-math.inf)), "MALFORMED_BODY"),
    "CBOR byte string": (cbor2.dumps(doc(ext=b"\x00\x01")), "MALFORMED_BODY"),
}

BAD_JSON_BODIES = {
    "JSON nested 10,000 deep": (_deep_json(10_000).encode(), "MALFORMED_BODY"),
    "JSON document nested 10,000 deep": (
        ('{"valServiceDomain":"d","x":' + _deep_json(10_000) + "}").encode(),
        "MALFORMED_BODY",
    ),
    "JSON NaN": (b'{"valServiceDomain":"d","x":NaN}', "MALFORMED_BODY"),
    "JSON lone surrogate": (b'{"valServiceDomain":"d\\udc00"}', "MALFORMED_BODY"),
    "JSON huge integer": (('{"valServiceDomain":"d","x":1' + "0" * 5000 + "}").encode(), "MALFORMED_BODY"),
}


@pytest.mark.parametrize("name", list(BAD_CBOR_BODIES))
async def test_bad_cbor_body_is_refused_and_nothing_is_stored(srv, coap, name):
    body, cause = BAD_CBOR_BODIES[name]
    before = await listing(coap, srv)
    r = await send(coap, Code.POST, uri(srv), body, content_format=60)
    problem_of(r, 0x80, cause)
    assert await listing(coap, srv) == before
    no_tracebacks(srv.log())


@pytest.mark.parametrize("name", list(BAD_JSON_BODIES))
async def test_bad_json_body_is_refused_and_nothing_is_stored(srv, coap, name):
    body, cause = BAD_JSON_BODIES[name]
    before = await listing(coap, srv)
    r = await send(coap, Code.POST, uri(srv), body, content_format=50)
    problem_of(r, 0x80, cause)
    assert await listing(coap, srv) == before
    no_tracebacks(srv.log())


async def test_put_naming_another_documents_id_is_refused_and_nothing_changes(srv, coap):
    a = cbor2.loads(
        (await send(coap, Code.POST, uri(srv), cbor2.dumps(doc(configName="a")), content_format=60)).payload
    )
    b = cbor2.loads(
        (await send(coap, Code.POST, uri(srv), cbor2.dumps(doc(configName="b")), content_format=60)).payload
    )
    before = await listing(coap, srv)
    hijack = cbor2.dumps(doc(configName="hijack", ueConfigDocId=b["ueConfigDocId"]))
    r = await send(coap, Code.PUT, uri(srv, f"{COLLECTION}/{a['ueConfigDocId']}"), hijack, content_format=60)
    problem_of(r, 0x80, "DOCUMENT_ID_MISMATCH")
    assert await listing(coap, srv) == before
    # the same id in the body as in the URI is fine
    same = cbor2.dumps(doc(configName="a2", ueConfigDocId=a["ueConfigDocId"]))
    r = await send(coap, Code.PUT, uri(srv, f"{COLLECTION}/{a['ueConfigDocId']}"), same, content_format=60)
    assert r.code == Code.CHANGED


async def test_post_carrying_an_existing_id_is_refused_and_nothing_is_stored(srv, coap):
    a = cbor2.loads(
        (
            await send(coap, Code.POST, uri(srv), cbor2.dumps(doc(configName="orig")), content_format=60)
        ).payload
    )
    before = await listing(coap, srv)
    r = await send(
        coap,
        Code.POST,
        uri(srv),
        cbor2.dumps(doc(configName="dup", ueConfigDocId=a["ueConfigDocId"])),
        content_format=60,
    )
    problem_of(r, 0x80, "DOCUMENT_ID_EXISTS")
    assert await listing(coap, srv) == before
    no_tracebacks(srv.log())


# -- admission: 4.29 and 5.03 with Max-Age (RFC 8516; RFC 7252 §5.9.3.4) ---------------------------------
def test_a_client_beyond_its_rate_gets_4_29_with_max_age(tmp_path):
    s = LoggedServer(tmp_path, "--client-rate", "0.01", "--client-burst", "2")
    try:
        c = UdpClient(s.addr)
        for _ in range(2):
            assert int(c.exchange(request(GET, COLLECTION, **ids())).code) == 0x45
        m = c.exchange(request(GET, COLLECTION, **ids()))
        problem_of(m, 0x9D, "TOO_MANY_REQUESTS")
        assert m.opt.max_age >= 1
        other = UdpClient(s.addr)  # another client endpoint has its own budget
        assert int(other.exchange(request(GET, COLLECTION, **ids())).code) == 0x45
        c.close()
        other.close()
    finally:
        no_tracebacks(s.stop())


def test_an_overloaded_server_sheds_with_5_03_and_max_age(tmp_path):
    # every request has waited longer than a (tiny) overload delay by the time it is rendered
    s = LoggedServer(tmp_path, "--overload-delay", "1e-9")
    try:
        c = UdpClient(s.addr)
        m = c.exchange(request(GET, COLLECTION, **ids()))
        problem_of(m, 0xA3, "OVERLOADED")
        assert m.opt.max_age == 2
        c.close()
    finally:
        no_tracebacks(s.stop())


# -- apiRoot with a path prefix (TS 24.546 C.1.1) ---------------------------------------------------------
async def test_api_prefix_over_a_socket(tmp_path, coap):
    s = LoggedServer(tmp_path, "--api-prefix", "seal/cm")
    try:
        prefixed = f"seal/cm/{COLLECTION}"
        r = await send(coap, Code.POST, uri(s, prefixed), cbor2.dumps(doc()), content_format=60)
        assert r.code == Code.CREATED
        doc_id = cbor2.loads(r.payload)["ueConfigDocId"]
        assert r.opt.location_path == ("seal", "cm", *COLLECTION.split("/"), doc_id)
        r = await send(coap, Code.GET, uri(s, f"{prefixed}/{doc_id}"))
        assert r.code == Code.CONTENT and cbor2.loads(r.payload)["ueConfigDocId"] == doc_id
        problem_of(await send(coap, Code.GET, uri(s, f"{COLLECTION}/{doc_id}")), 0x84, "NO_SUCH_RESOURCE")
    finally:
        no_tracebacks(s.stop())


# -- bounded duplicate detection (RFC 7252 §4.5) -----------------------------------------------------------
def _post(mid: int, token: bytes, name: str) -> bytes:
    body = cbor2.dumps(doc(configName=name))
    return request(
        POST, COLLECTION, mid=mid, token=token, options=[(OPT_CONTENT_FORMAT, uint(60))], payload=body
    )


async def test_a_retransmitted_post_is_answered_from_the_cache_and_stored_once(srv, cli, coap):
    name = f"dedup-{next(TOKENS)}"
    datagram = _post(next(MIDS), next(TOKENS).to_bytes(4, "big"), name)
    first = cli.exchange(datagram)
    again = cli.exchange(datagram)
    assert int(first.code) == 0x41 and again.payload == first.payload
    assert [d["configName"] for d in await listing(coap, srv)].count(name) == 1


async def test_a_full_duplicate_cache_sheds_the_oldest_and_says_so(tmp_path, coap):
    s = LoggedServer(tmp_path, "--max-exchanges", "2")
    try:
        c = UdpClient(s.addr)
        oldest = _post(next(MIDS), b"old1", "shed-me")
        assert int(c.exchange(oldest).code) == 0x41
        for _ in range(2):  # two newer exchanges push the oldest out of the cache
            assert int(c.exchange(request(GET, COLLECTION, **ids())).code) == 0x45
        assert int(c.exchange(oldest).code) == 0x41  # processed again: documented consequence
        assert [d["configName"] for d in await listing(coap, s)].count("shed-me") == 2
        c.close()
    finally:
        log = s.stop()
    assert "duplicate detection full, oldest exchanges shed: duplicate-cache-shed +1" in log
    no_tracebacks(log)


# -- CoAP over TCP (RFC 8323 §5.6) -------------------------------------------------------------------------
def test_invalid_utf8_over_tcp_aborts_the_connection_with_a_diagnostic_not_a_traceback(srv):
    conn = socket.create_connection(srv.addr, timeout=10)
    try:
        csm = bytes([0x00, 0xE1])  # 7.01 CSM, no options
        opt = bytes([0xB0 | 2]) + b"\xff\xfe"  # Uri-Path (11) that is not UTF-8
        get = bytes([len(opt) << 4, 0x01]) + opt  # RFC 8323 §3.2 framing, GET, no token
        conn.sendall(csm + get)
        received = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            received += chunk
    finally:
        conn.close()
    assert bytes([0xE5]) in received and b"Failed to parse message" in received  # 7.05 Abort
    udp = UdpClient(srv.addr)
    assert_answers_valid_request(udp)
    udp.close()
    no_tracebacks(srv.log())
