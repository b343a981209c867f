"""RFC 9177 Q-Block on the real SCM-S over UDP (TS 24.546 clause 5; SPEC D7 d).

A raw client on a UDP socket speaks Q-Block2 with the pure receiver of ``coap.qblock``; the loss
is deterministic (the first delivery of chosen block numbers is dropped). The expected body is
fetched independently with aiocoap's own RFC 7959 block-wise client.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
import subprocess
from dataclasses import dataclass, field

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import CON, NON
from aiocoap.optiontypes import BlockOption

from msgin5g.coap.qblock import BlockOpt, QBlock2Receiver, QBlockParams
from msgin5g.model import imei_urn

from .conftest import make_doc

COLLECTION = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
TAC = "35209900"
Q2 = OptionNumber.Q_BLOCK2
#: the client's own timers: short, and far longer than the server's pause between sets below
CLIENT = QBlockParams(non_receive_timeout=1.5, non_partial_timeout=30.0)


@dataclass
class Transfer:
    body: bytes = b""
    asks: list = field(default_factory=list)  # Q-Block2 option lists of the requests after the first
    received: list = field(default_factory=list)  # (token, block number) of every block datagram
    plain: list = field(default_factory=list)  # responses without Q-Block2
    oscore: list = field(default_factory=list)  # OSCORE option of every block datagram (protected)
    datagrams_up: int = 0


def qblock2_option(o: BlockOpt):
    return BlockOption(Q2, value=(o.num, o.more, o.szx))


async def qblock2_get(
    port, query=(), *, drop=frozenset(), mtype=NON, protection=None, params=CLIENT
) -> Transfer:
    """GET the collection offering Q-Block2 (NUM 0, M set); the first delivery of each block in
    ``drop`` is lost. Asks for missing blocks as the receiver decides, each request a new token."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    out = Transfer()
    rx = QBlock2Receiver(params=params)
    mids, tokens = itertools.count(100), itertools.count(1)
    bindings, seen = {}, set()

    def send(options, first=False):
        m = Message(code=Code.GET, uri_path=COLLECTION)
        m.mtype = mtype if first else NON
        m.opt.uri_query = tuple(query)
        for o in options:
            m.opt.add_option(qblock2_option(o))
        token = next(tokens).to_bytes(2, "big")
        binding = None
        if protection is not None:
            m, binding = protection.protect(m)
            m.mtype = mtype if first else NON
        m.mid, m.token = next(mids), token
        bindings[token] = binding
        sock.sendto(m.encode(), ("127.0.0.1", port))
        out.datagrams_up += 1
        if not first:
            out.asks.append(list(options))

    try:
        send([BlockOpt(0, True, 6)], first=True)
        rx.start(loop.time())
        while not rx.complete:
            wait = max(0.001, rx.deadline() - loop.time())
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
            except TimeoutError:
                ask = rx.poll(loop.time())
                if ask:
                    send(ask.options())
                continue
            m = Message.decode(data)
            if m.code.is_request() or not m.code:  # empty ACK
                continue
            plain = m if protection is None else protection.verify(m, bindings[m.token])
            raw = plain.opt.get_option(Q2)
            if not raw:
                out.plain.append(plain)
                out.body = plain.payload
                return out
            b = BlockOption(Q2)
            b.decode(raw[0].value)
            num = b.value.block_number
            out.received.append((m.token, num))
            out.oscore.append(m.opt.oscore)
            if num in drop and num not in seen:
                seen.add(num)
                continue  # lost on the way
            seen.add(num)
            rx.on_block(
                loop.time(),
                BlockOpt(num, bool(b.value.more), b.value.size_exponent),
                plain.payload,
                plain.opt.etag,
                plain.opt.size2,
            )
            ask = rx.poll(loop.time())
            if ask:
                send(ask.options())
        out.body = rx.body()
        return out
    finally:
        sock.close()


def provision_large(srv, n=40):
    """An admin listing of ``n`` documents: about 20 KiB of CBOR (20+ blocks of 1,024 bytes)."""
    docs = [make_doc(uris=[imei_urn(TAC, i)], name=f"doc-{i:03d}-" + "x" * 400) for i in range(n)]
    srv.store.import_docs("msgin5g", docs)


async def rfc7959_body(coap, srv, query=()) -> bytes:
    m = Message(code=Code.GET, uri=srv.collection_uri())
    m.opt.uri_query = tuple(query)
    r = await asyncio.wait_for(coap.request(m).response, 20)
    assert r.code == Code.CONTENT
    return r.payload


async def test_burst_without_loss_needs_one_request_per_set(qserver, coap):
    srv = qserver
    provision_large(srv)
    expected = await rfc7959_body(coap, srv)
    total = -(-len(expected) // 1024)
    assert total > 10  # more than one set of MAX_PAYLOADS
    t = await qblock2_get(srv.port)
    assert t.body == expected
    # every block exactly once; only Continue requests after the first (one per full set)
    assert sorted(n for _, n in t.received) == list(range(total))
    assert t.asks == [[BlockOpt(k, True, 6)] for k in range(10, total, 10)]


async def test_missing_blocks_are_recovered_with_one_request(qserver, coap):
    srv = qserver
    provision_large(srv)
    expected = await rfc7959_body(coap, srv)
    total = -(-len(expected) // 1024)
    assert 20 < total < 30
    lost = {3, 7, total - 3, total - 1}  # two in the first set, two at the end (the last one too)
    t = await qblock2_get(srv.port, drop=lost)
    assert t.body == expected
    # the first set had holes: no Continue, the server went on after NON_TIMEOUT; the second set
    # came whole: Continue for the third; then one request for exactly the lost blocks, each
    # answered once, on that request's token
    assert t.asks == [[BlockOpt(20, True, 6)], [BlockOpt(n, False, 6) for n in sorted(lost)]]
    answered = [n for tok, n in t.received if tok == (3).to_bytes(2, "big")]
    assert answered == sorted(lost)
    assert t.datagrams_up == 3


async def test_con_request_gets_the_first_block_piggybacked_and_the_rest_as_non(qserver):
    srv = qserver
    provision_large(srv, 12)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        m = Message(code=Code.GET, uri_path=COLLECTION)
        m.mtype = CON
        m.opt.add_option(qblock2_option(BlockOpt(0, True, 6)))
        m.mid, m.token = 4711, b"qb"
        sock.sendto(m.encode(), ("127.0.0.1", srv.port))
        first = Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
        second = Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
    finally:
        sock.close()
    assert (first.mtype, first.mid, first.token) == (aiocoap_ack(), 4711, b"qb")
    assert second.mtype == NON and second.token == b"qb"
    assert first.opt.etag and first.opt.etag == second.opt.etag and first.opt.size2 == second.opt.size2


def aiocoap_ack():
    from aiocoap.numbers.types import ACK

    return ACK


async def test_small_answer_comes_whole(qserver):
    srv = qserver
    srv.store.import_docs("msgin5g", [make_doc(uris=[imei_urn(TAC, 1)])])
    t = await qblock2_get(srv.port, query=[f"ue-uri={imei_urn(TAC, 1)}"])
    assert len(t.plain) == 1 and t.plain[0].code == Code.CONTENT and t.received == []
    assert cbor2.loads(t.body)[0]["valUeIds"]["uris"] == [imei_urn(TAC, 1)]


async def test_bulk_answer_bursts_and_missing_blocks_name_only_the_flag(qserver):
    """SPEC D6/D7 b: the blocks come from the answer kept for the bulk configuration id; a
    request for missing blocks names only the flag."""
    srv = qserver
    srv.store.import_docs(
        "msgin5g",
        [
            make_doc(
                ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": "99"}}],
                service_id="s-{snr}-" + "y" * 300,
            )
        ],
    )
    uris = [imei_urn(TAC, i) for i in range(30)]
    query = ["bulk-conf-flag=qb1", *(f"ue-uri={u}" for u in uris)]
    first = await qblock2_get(srv.port, query=query)
    entries = cbor2.loads(first.body)
    assert [e["valUeIds"]["uris"] for e in entries] == [[u] for u in uris]
    # the same answer again, asked with the flag only and a lost block: served from the kept answer
    again = await qblock2_get(srv.port, query=["bulk-conf-flag=qb1"], drop={1})
    assert again.body == first.body and again.asks == [[BlockOpt(1, False, 6)]]


async def test_block2_with_q_block2_is_refused(qserver):
    srv = qserver
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        m = Message(code=Code.GET, uri_path=COLLECTION, block2=(0, False, 6))
        m.mtype = CON
        m.opt.add_option(qblock2_option(BlockOpt(0, True, 6)))
        m.mid, m.token = 9, b"x"
        sock.sendto(m.encode(), ("127.0.0.1", srv.port))
        r = Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))
    finally:
        sock.close()
    assert r.code == Code.BAD_REQUEST and r.opt.content_format == 257


@pytest.mark.skipif(shutil.which("coap-client-notls") is None, reason="libcoap's client is not installed")
async def test_libcoap_client_asking_for_q_block_gets_the_whole_body(qserver, coap, tmp_path):
    """``-L 5`` asks libcoap for Q-Block (COAP_BLOCK_USE_LIBCOAP | COAP_BLOCK_TRY_Q_BLOCK); a
    libcoap without Q-Block (Debian's 4.3.1) falls back to RFC 7959 — the body is whole either way."""
    srv = qserver
    provision_large(srv)
    expected = await rfc7959_body(coap, srv)
    out = tmp_path / "body.cbor"
    uri = f"coap://127.0.0.1:{srv.port}/" + "/".join(COLLECTION)
    proc = await asyncio.create_subprocess_exec(
        "coap-client-notls", "-L", "5", "-B", "20", "-o", str(out), "-m", "get", uri,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.read_bytes() == expected


async def test_over_oscore_every_block_is_protected_on_its_own(tmp_path, coap):
    """TS 24.546 6.2.1.2 / RFC 8613: each block response of a Q-Block2 burst is a separately
    protected message (own partial IV), verified by the client with the request's binding."""
    from msgin5g.security.endpoint import ClientProtection

    from .conftest import start_secured_qserver

    srv, keys = await start_secured_qserver(tmp_path, {"admin": "admin:ops"})
    creds = keys["admin"]
    try:
        provision_large(srv, 16)
        expected_docs = [d.doc for d in srv.store.query_any("msgin5g")]
        t = await qblock2_get(srv.port, drop={2}, protection=ClientProtection(creds.security_context()))
        assert cbor2.loads(t.body) == expected_docs
        assert t.asks == [[BlockOpt(2, False, 6)]]
        assert len(t.received) == -(-len(t.body) // 1024) + 1  # every block once, block 2 twice
        # the first answer to each of the two requests may reuse the request's nonce (empty
        # option); every other block carries its own partial IV, none used twice
        own = [o for o in t.oscore if o]
        assert len(own) >= len(t.received) - 2 and len(set(own)) == len(own)
    finally:
        await srv.close()


async def test_q_block1_upload_with_a_missing_block_gets_408_then_completes(qserver, coap):
    """RFC 9177 §4.3: a POST body in Q-Block1 blocks (one Request-Tag, NON, a token each); the
    last block arriving with block 1 missing gets 4.08 listing [1] (application/missing-blocks+
    cbor-seq); block 1 completes the body and the document is created."""
    import json

    srv = qserver
    doc = make_doc(uris=[imei_urn(TAC, 7)], name="big-" + "z" * 2500)
    body = json.dumps(doc).encode()
    blocks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    assert len(blocks) == 3
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)

    def send_block(n, token):
        m = Message(code=Code.POST, uri_path=COLLECTION, payload=blocks[n])
        m.mtype = NON
        m.opt.content_format = 50
        m.opt.request_tag = (b"rt1",)
        m.opt.size1 = len(body)
        m.opt.add_option(BlockOption(OptionNumber.Q_BLOCK1, value=(n, n < 2, 6)))
        m.mid, m.token = 200 + token, bytes([token])
        sock.sendto(m.encode(), ("127.0.0.1", srv.port))

    async def recv():
        return Message.decode(await asyncio.wait_for(loop.sock_recv(sock, 65536), 5))

    try:
        send_block(0, 1)  # inside a set: no answer of its own
        send_block(2, 3)  # the last block, with block 1 missing
        r = await recv()
        assert (r.code, r.token, r.opt.content_format) == (Code.REQUEST_ENTITY_INCOMPLETE, b"\x03", 272)
        assert r.payload == bytes([0x01])  # CBOR sequence: 1
        send_block(1, 2)
        answers = []
        while True:  # the 2.01 carries the stored document: larger than a block, it comes as Q-Block2
            answers.append(await recv())
            q2 = answers[-1].opt.get_option(Q2)
            if not q2:
                break
            b = BlockOption(Q2)
            b.decode(q2[0].value)
            if not b.value.more:
                break
    finally:
        sock.close()
    assert all(a.code == Code.CREATED and a.token == b"\x02" for a in answers)
    created = cbor2.loads(b"".join(a.payload for a in answers))
    assert created["configName"] == doc["configName"]
    stored = srv.store.get("msgin5g", created["ueConfigDocId"])
    assert stored is not None and stored.doc["configName"] == doc["configName"]


# -- the message layer's client (coap.qblock_client) against the real SCM-S and a bare aiocoap server --
def _lossy_first_delivery(lost: set[int], dropped: list):
    """A ``demux`` that drops the first delivery of the Q-Block2 blocks numbered in ``lost``."""
    from msgin5g.coap import wire as cw

    seen: set[int] = set()

    def demux(data: bytes, addr) -> bool:
        try:
            m = cw.decode(data)
        except cw.WireError:
            return False
        value = m.first(cw.OPT_Q_BLOCK2)
        if value is None or not m.is_response:
            return False
        num = cw.parse_block(value)[0]
        if num in lost and num not in seen:
            seen.add(num)
            dropped.append(num)
            return True
        return False

    return demux


def _get(path, query=()):
    from msgin5g.coap import wire as cw

    opts = [(cw.OPT_URI_PATH, p.encode()) for p in path] + [(cw.OPT_URI_QUERY, q.encode()) for q in query]
    return cw.CoapMessage(cw.CON, cw.GET, 0, b"", opts)


async def test_message_layer_client_recovers_lost_blocks_from_the_scm_s(qserver, coap):
    from msgin5g.coap.qblock_client import QBlockOffer
    from msgin5g.coap.udp import CoapEndpoint

    srv = qserver
    provision_large(srv)
    expected = await rfc7959_body(coap, srv)
    total = -(-len(expected) // 1024)
    lost, dropped = {0, 4, total - 1}, []
    ep = CoapEndpoint.connect("127.0.0.1", srv.port, demux=_lossy_first_delivery(lost, dropped))
    try:
        offer = QBlockOffer(params=CLIENT)
        answer = await ep.request(_get(COLLECTION), qblock=offer, blockwise=True, timeout=30)
    finally:
        ep.close()
    assert answer.code == 0x45 and answer.payload == expected
    assert sorted(dropped) == sorted(lost)  # each was lost once and came again on request


async def test_message_layer_client_falls_back_to_rfc7959_against_a_bare_aiocoap_server():
    """A bare aiocoap resource ignores the (critical) Q-Block2 option and answers with Block2:
    the client goes on with RFC 7959 follow-ups and gets the whole body."""
    import aiocoap
    import aiocoap.resource as resource

    from msgin5g.coap.qblock_client import QBlockOffer
    from msgin5g.coap.udp import CoapEndpoint

    body = bytes(range(256)) * 13  # 3,328 bytes: four blocks

    class Big(resource.Resource):
        async def render_get(self, request):
            return Message(payload=body)

    site = resource.Site()
    site.add_resource(["big"], Big())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    ep = CoapEndpoint.connect("127.0.0.1", port)
    try:
        answer = await ep.request(_get(["big"]), qblock=QBlockOffer(), blockwise=True, timeout=30)
    finally:
        ep.close()
        await ctx.shutdown()
    assert answer.code == 0x45 and answer.payload == body


async def test_over_tcp_q_block2_is_served_as_one_message(qserver, coap):
    """RFC 9177 targets unreliable transports: over coap+tcp the answer comes whole (RFC 8323)."""
    srv = qserver
    provision_large(srv)
    expected = await rfc7959_body(coap, srv)
    m = Message(code=Code.GET, uri=srv.collection_uri(scheme="coap+tcp"))
    m.opt.add_option(qblock2_option(BlockOpt(0, True, 6)))
    r = await asyncio.wait_for(coap.request(m, handle_blockwise=False).response, 10)
    assert r.code == Code.CONTENT and r.payload == expected and not r.opt.get_option(Q2)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_message_layer_client_at_30_percent_loss_both_ways_gets_the_bulk_answer(qserver, seed):
    """Seeded 30 % loss of every datagram each way (requests, Continues, requests for missing
    blocks and the blocks themselves): the bulk answer still arrives whole and right."""
    import random

    from msgin5g.coap import wire as cw
    from msgin5g.coap.msglayer import MessageLayer, Params
    from msgin5g.coap.qblock_client import QBlockOffer
    from msgin5g.coap.udp import CoapEndpoint

    srv = qserver
    srv.store.import_docs(
        "msgin5g",
        [
            make_doc(
                ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": "99"}}],
                service_id="s-{snr}-" + "y" * 300,
            )
        ],
    )
    uris = [imei_urn(TAC, i) for i in range(30)]
    up, down = random.Random(seed), random.Random(seed + 1000)  # each direction its own stream

    class LossyEndpoint(CoapEndpoint):
        def sendto(self, data, addr=None):
            if up.random() >= 0.3:
                super().sendto(data, addr)

    layer = MessageLayer(Params(ack_timeout=0.2, max_retransmit=12), random.Random(seed))
    ep = LossyEndpoint.connect("127.0.0.1", srv.port, layer, demux=lambda data, addr: down.random() < 0.3)
    path = [(cw.OPT_URI_PATH, p.encode()) for p in COLLECTION]
    query = [(cw.OPT_URI_QUERY, q.encode()) for q in ["bulk-conf-flag=lossy", *(f"ue-uri={u}" for u in uris)]]
    offer = QBlockOffer(
        params=QBlockParams(non_receive_timeout=0.2, non_max_retransmit=8, non_partial_timeout=60),
        followup_options=(*path, (cw.OPT_URI_QUERY, b"bulk-conf-flag=lossy")),
    )
    try:
        answer = await ep.request(
            cw.CoapMessage(cw.CON, cw.GET, 0, b"", path + query), qblock=offer, timeout=60
        )
    finally:
        ep.close()
    entries = cbor2.loads(answer.payload)
    assert [e["valUeIds"]["uris"] for e in entries] == [[u] for u in uris]
    assert [json.loads(e["ueConfigs"][0]["configData"])["ueServiceId"] for e in entries] == [
        f"s-{i:06d}-" + "y" * 300 for i in range(30)
    ]


async def test_server_cli_sets_max_payloads(tmp_path):
    """``msgin5g server --qblock-max-payloads 2``: sets of two blocks, each ended by a Continue
    (NON_TIMEOUT set long so that the Continue, not the timer, moves the server on)."""
    from msgin5g.store import open_store

    from .procs import ServerProcess

    db = f"sqlite:///{tmp_path}/cli.db"
    store = open_store(db)
    store.import_docs(
        "msgin5g", [make_doc(uris=[imei_urn(TAC, i)], name=f"d{i}-" + "x" * 400) for i in range(8)]
    )
    store.close()
    proc = ServerProcess(db, "--qblock-max-payloads", "2", "--qblock-non-timeout", "30")
    try:
        t = await qblock2_get(proc.port, params=QBlockParams(max_payloads=2, non_receive_timeout=20))
    finally:
        proc.stop()
    total = -(-len(t.body) // 1024)
    assert total >= 4 and len(cbor2.loads(t.body)) == 8
    assert t.asks == [[BlockOpt(k, True, 6)] for k in range(2, total, 2)]
    assert sorted(n for _, n in t.received) == list(range(total))
