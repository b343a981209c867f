"""RFC 9177 Q-Block1 from the message layer's client to the real SCM-S and to a bare aiocoap
server (TS 24.546 clause 5; SPEC D7 d).

The loss is deterministic: the first transmission of chosen Q-Block1 blocks (on the way up) or
Q-Block2 blocks of the answer (on the way down) is dropped. Expected documents are written here.
"""

from __future__ import annotations

import random
import socket

import cbor2
import pytest

from msgin5g.coap import wire as cw
from msgin5g.coap.msglayer import MessageLayer, Params
from msgin5g.coap.qblock import QBlockParams
from msgin5g.coap.qblock1_client import QBlock1Offer
from msgin5g.coap.udp import CoapEndpoint
from msgin5g.model import imei_urn

from .conftest import make_doc

COLLECTION = ("su-uc", "v1", "val-services", "msgin5g", "ue-configurations")
TAC = "35209900"
#: the client's Q-Block timers: short, so that the tests are quick (RFC 9177 §7.2: configurable)
FAST = QBlockParams(non_timeout=0.3, non_receive_timeout=0.3, non_partial_timeout=30)


def big_doc(n=7, size=11_000) -> dict:
    """A document of about ``size`` bytes of CBOR: 11 blocks of 1,024 — more than MAX_PAYLOADS."""
    return make_doc(uris=[imei_urn(TAC, n)], name="big-" + "q" * size)


def post(doc: dict) -> cw.CoapMessage:
    opts = [(cw.OPT_URI_PATH, p.encode()) for p in COLLECTION] + [(cw.OPT_CONTENT_FORMAT, bytes([60]))]
    return cw.CoapMessage(cw.CON, 0x02, 0, b"", opts, cbor2.dumps(doc))


class Recording(CoapEndpoint):
    """Records the (kind, number) of every block datagram sent — ("q1", n) Q-Block1, ("b1", n)
    Block1 — and drops the first transmission of the Q-Block1 numbers in ``drop_up``."""

    drop_up: set[int] = set()

    def sendto(self, data, addr=None):
        m = cw.decode(data)
        for kind, opt in (("q1", cw.OPT_Q_BLOCK1), ("b1", cw.OPT_BLOCK1)):
            value = m.first(opt)
            if value is not None:
                num = cw.parse_block(value)[0]
                self.sent.append((kind, num, [cw.parse_block(v)[0] for v in m.values(cw.OPT_Q_BLOCK2)]))
                if kind == "q1" and num in self.drop_up:
                    self.drop_up = self.drop_up - {num}
                    return
        super().sendto(data, addr)


def endpoint(port, drop_up=(), drop_down=()) -> Recording:
    """A client endpoint; the first delivery of the answer's Q-Block2 blocks in ``drop_down`` is lost."""
    down = set(drop_down)

    def demux(data, addr) -> bool:
        m = cw.decode(data)
        value = m.first(cw.OPT_Q_BLOCK2)
        if value is not None and cw.parse_block(value)[0] in down:
            down.discard(cw.parse_block(value)[0])
            return True
        return False

    ep = Recording.connect("127.0.0.1", port, MessageLayer(Params(), random.Random(7)), demux=demux)
    ep.sent, ep.drop_up = [], set(drop_up)
    return ep


def stored_docs(srv) -> list[dict]:
    return [d.doc for d in srv.store.query_any("msgin5g")]


def created_as(answer, doc: dict) -> dict:
    created = cbor2.loads(answer.payload)
    assert answer.code == 0x41 and {k: created[k] for k in doc} == doc
    return created


async def test_a_large_post_goes_as_q_block1_sets_without_loss(qserver):
    """11 blocks: block 0 alone (CON), blocks 1-9 as the rest of the first set, block 10 after the
    server's 2.31 Continue: every block once. The 2.01 answer (the stored document, itself 11
    blocks of Q-Block2) is whole; its second set is asked for with a Continue that repeats the
    body's last block (same Request-Tag) with Q-Block2 NUM 10, M set (RFC 9177 §4.4)."""
    doc = big_doc()
    ep = endpoint(qserver.port)
    try:
        answer = await ep.request(post(doc), qblock1=QBlock1Offer(params=FAST), timeout=30)
    finally:
        ep.close()
    created = created_as(answer, doc)
    assert ep.sent == [("q1", n, []) for n in range(11)] + [("q1", 10, [10])]
    assert stored_docs(qserver) == [{**doc, "ueConfigDocId": created["ueConfigDocId"]}]


async def test_dropped_blocks_are_sent_again_only_when_the_server_lists_them(qserver):
    """Block 3 and the last block (10) are lost once on the way up. Silence after the last set:
    the last block goes again; the server's 4.08 lists block 3; only block 3 goes again."""
    doc = big_doc()
    ep = endpoint(qserver.port, drop_up={3, 10})
    try:
        answer = await ep.request(post(doc), qblock1=QBlock1Offer(params=FAST), timeout=30)
    finally:
        ep.close()
    created_as(answer, doc)
    assert ep.sent == [("q1", n, []) for n in [*range(11), 10, 3]] + [("q1", 10, [10])]
    assert len(stored_docs(qserver)) == 1


async def test_lost_answer_blocks_are_asked_for_with_the_last_block_and_the_body_is_processed_once(qserver):
    """Blocks 1 and 2 of the Q-Block2 answer are lost once: the client repeats the body's last
    block (same Request-Tag) naming them; the server answers from the answer it kept — one
    document stored, not two."""
    doc = big_doc()
    ep = endpoint(qserver.port, drop_down={1, 2})
    try:
        answer = await ep.request(post(doc), qblock1=QBlock1Offer(params=FAST), timeout=30)
    finally:
        ep.close()
    created_as(answer, doc)
    assert ep.sent[-1] == ("q1", 10, [1, 2])
    assert len(stored_docs(qserver)) == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_at_30_percent_loss_both_ways_the_document_is_stored_once(qserver, seed):
    """Seeded 30 % loss of every datagram each way: the POST ends with the 2.01 and the document
    is stored exactly once."""
    up, down = random.Random(seed), random.Random(seed + 1000)

    class Lossy(CoapEndpoint):
        def sendto(self, data, addr=None):
            if up.random() >= 0.3:
                super().sendto(data, addr)

    doc = big_doc()
    layer = MessageLayer(Params(ack_timeout=0.2, max_retransmit=12), random.Random(seed))
    ep = Lossy.connect("127.0.0.1", qserver.port, layer, demux=lambda d, a: down.random() < 0.3)
    params = QBlockParams(
        non_timeout=0.2, non_receive_timeout=0.2, non_max_retransmit=8, non_partial_timeout=60
    )
    try:
        answer = await ep.request(post(doc), qblock1=QBlock1Offer(params=params), timeout=60)
    finally:
        ep.close()
    created_as(answer, doc)
    assert len(stored_docs(qserver)) == 1


async def sink_server(strict: bool):
    """An aiocoap server whose resource ``sink`` records POST bodies. ``strict``: options it does
    not know that are critical get 4.02 (RFC 7252 §5.4.1) — aiocoap's resources check none."""
    import aiocoap
    import aiocoap.resource as resource
    from aiocoap import Message
    from aiocoap.numbers.optionnumbers import OptionNumber

    known = {OptionNumber.URI_PATH, OptionNumber.BLOCK1, OptionNumber.SIZE1, OptionNumber.BLOCK2}

    class Sink(resource.Resource):
        seen: list[bytes] = []

        async def render_post(self, request):
            if strict and any(
                o.number.is_critical() and o.number not in known for o in request.opt.option_list()
            ):
                return Message(code=aiocoap.BAD_OPTION)
            self.seen.append(request.payload)
            return Message(code=aiocoap.CHANGED, payload=b"%d" % len(request.payload))

    site, sink = resource.Site(), Sink()
    sink.seen = []
    site.add_resource(["sink"], sink)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    return ctx, port, sink.seen


BODY = bytes(range(256)) * 13  # 3,328 bytes: four blocks


def post_sink() -> cw.CoapMessage:
    return cw.CoapMessage(cw.CON, 0x02, 0, b"", [(cw.OPT_URI_PATH, b"sink")], BODY)


async def test_a_server_without_q_block1_gets_rfc7959_block1():
    """A server without RFC 9177 answers the critical Q-Block1 option with 4.02 (RFC 7252
    §5.4.1; RFC 9177 §4.1): the body goes again with Block1 (RFC 7959 §2.5) and arrives whole."""
    ctx, port, seen = await sink_server(strict=True)
    ep = endpoint(port)
    try:
        answer = await ep.request(post_sink(), qblock1=QBlock1Offer(params=FAST), timeout=30)
    finally:
        ep.close()
        await ctx.shutdown()
    assert (answer.code, answer.payload) == (0x44, b"3328")
    assert seen == [BODY]
    assert ep.sent == [("q1", 0, []), ("b1", 0, []), ("b1", 1, []), ("b1", 2, []), ("b1", 3, [])]


async def test_a_server_that_ignores_q_block1_is_no_success():
    """A bare aiocoap resource ignores the critical Q-Block1 option and takes block 0 for the
    body: the client reports the failure instead of a success for a body the server never had."""
    from msgin5g.coap.udp import CoapError

    ctx, port, seen = await sink_server(strict=False)
    ep = endpoint(port)
    try:
        with pytest.raises(CoapError, match="ignored Q-Block1"):
            await ep.request(post_sink(), qblock1=QBlock1Offer(params=FAST), timeout=30)
    finally:
        ep.close()
        await ctx.shutdown()
    assert seen == [BODY[:1024]]


async def test_blockwise_without_the_offer_sends_rfc7959_block1():
    """``blockwise`` without a Q-Block1 offer: RFC 7959 Block1 from the first block on."""
    ctx, port, seen = await sink_server(strict=True)
    ep = endpoint(port)
    try:
        answer = await ep.request(post_sink(), blockwise=True, timeout=30)
    finally:
        ep.close()
        await ctx.shutdown()
    assert (answer.code, answer.payload, seen) == (0x44, b"3328", [BODY])
    assert [k for k, _, _ in ep.sent] == ["b1"] * 4


async def test_the_admin_client_sends_large_documents_as_q_block1(qserver):
    """``msgin5g config import/apply/update`` (ScmClient) over coap:// without OSCORE: a POST and a
    PUT of a document of 11 blocks go as Q-Block1 and both are stored as sent."""
    from msgin5g.scmc import ScmClient

    doc = big_doc()
    async with ScmClient(f"coap://127.0.0.1:{qserver.port}") as client:
        created = await client.create(doc)
        doc_id = created["ueConfigDocId"]
        changed = {**doc, "configName": "big-" + "r" * 11_000, "ueConfigDocId": doc_id}
        replaced = await client.replace(doc_id, changed)
        small = await client.create(make_doc(uris=[imei_urn(TAC, 8)]))
    # per large document: its 11 blocks, and the Continue for the second set of the 11-block answer
    # (the body's last block again, RFC 9177 §4.4); the small one went as one message
    assert qserver.site.qblock.counters["qblock1-blocks"] == 2 * (11 + 1)
    assert replaced["configName"] == changed["configName"]
    stored = {d.doc["ueConfigDocId"]: d.doc for d in qserver.store.query_any("msgin5g")}
    assert stored[doc_id] == changed and small["ueConfigDocId"] in stored


async def test_rfc7959_block1_to_the_scm_s_gets_the_large_answer_with_block2_follow_ups(qserver):
    """Block1 (no Q-Block1 offer) to the SCM-S: 11 blocks, each answered 2.31; the 2.01 answer is
    itself 11 blocks of Block2, fetched with follow-ups that carry neither Block1 nor a payload
    (RFC 7959 §3.3) — the document is stored once."""
    doc = big_doc()
    ep = endpoint(qserver.port)
    try:
        answer = await ep.request(post(doc), blockwise=True, timeout=30)
    finally:
        ep.close()
    created_as(answer, doc)
    assert [(k, n) for k, n, _ in ep.sent] == [("b1", n) for n in range(11)]
    assert len(stored_docs(qserver)) == 1


class UpTap:
    """A forwarder towards the SCM-S that records every datagram going up (decoded, outer form)
    and drops the first transmission of those whose index (0, 1, … going up) is in ``drop``:
    over OSCORE it cannot read which block a datagram carries."""

    def __init__(self, port: int, drop=()):
        from .test_relay_lossy import LossyLeg

        tap = self

        class Leg(LossyLeg):
            def _drops(self, direction, data):
                self.sent[direction] += 1
                if direction != "up":
                    return False
                tap.up.append(cw.decode(data))
                return len(tap.up) - 1 in tap.drop

        self.up: list[cw.CoapMessage] = []
        self.drop = set(drop)
        self.leg = Leg("tap", ("127.0.0.1", port), 0.0, 0)
        self.port = self.leg.address[1]

    def close(self) -> None:
        self.leg.close()


@pytest.fixture
async def secured(tmp_path):
    """A secured SCM-S (OSCORE, SPEC D12) and an administrator's key for it."""
    from .conftest import start_secured_qserver

    srv, keys = await start_secured_qserver(tmp_path, {"admin": "admin:ops"})
    yield srv, keys["admin"]
    await srv.close()


def spy_blocks(monkeypatch) -> list[tuple[int, list[int]]]:
    """(Q-Block1 number, Q-Block2 numbers) of every plain request the admin client protects."""
    from msgin5g.security import endpoint as sec

    seen, protect = [], sec.NotingProtection.protect

    def spy(self, plain):
        q1 = plain.first(cw.OPT_Q_BLOCK1)
        if q1 is not None:
            seen.append(
                (cw.parse_block(q1)[0], [cw.parse_block(v)[0] for v in plain.values(cw.OPT_Q_BLOCK2)])
            )
        return protect(self, plain)

    monkeypatch.setattr(sec.NotingProtection, "protect", spy)
    return seen


def assert_protected_on_their_own(datagrams: list[cw.CoapMessage]) -> None:
    """RFC 8613 §4.1.3.4 / §8.1: every block is an OSCORE request of its own — the OSCORE option
    with a Partial IV used once, outer code POST or FETCH — and the block options are inner."""
    pivs = []
    for m in datagrams:
        option = m.first(cw.OPT_OSCORE)
        assert option is not None and m.code in (0x02, 0x05)
        for number in (cw.OPT_Q_BLOCK1, cw.OPT_Q_BLOCK2, cw.OPT_REQUEST_TAG, cw.OPT_SIZE1, cw.OPT_BLOCK1):
            assert m.first(number) is None
        n = option[0] & 0x07  # the Partial IV's length (RFC 8613 §6.1)
        pivs.append(option[1 : 1 + n])
    assert len(set(pivs)) == len(pivs)


async def test_the_admin_client_sends_large_documents_as_q_block1_over_oscore(secured, monkeypatch):
    """``msgin5g config import/apply/update`` with credentials (SPEC D12): a POST and a PUT of a
    document of 11 blocks go as Q-Block1 (RFC 9177 §4.3), every block an OSCORE request of its own;
    both are stored as sent, by the administrator's authority."""
    from msgin5g.scmc import ScmClient

    srv, admin = secured
    tap = UpTap(srv.port)
    seen = spy_blocks(monkeypatch)
    doc = big_doc()
    try:
        async with ScmClient(f"coap://127.0.0.1:{tap.port}", credentials=admin) as client:
            created = await client.create(doc)
            doc_id = created["ueConfigDocId"]
            changed = {**doc, "configName": "big-" + "r" * 11_000, "ueConfigDocId": doc_id}
            replaced = await client.replace(doc_id, changed)
    finally:
        tap.close()
    # per document: blocks 0-10, then the body's last block naming Q-Block2 block 10 (the Continue
    # for the second set of the 11-block answer, RFC 9177 §4.4) — as without OSCORE
    per_doc = [(n, []) for n in range(11)] + [(10, [10])]
    assert seen == per_doc + per_doc
    assert srv.site.qblock.counters["qblock1-blocks"] == 2 * 12
    assert len(tap.up) == 2 * 12
    assert_protected_on_their_own(tap.up)
    assert replaced["configName"] == changed["configName"]
    assert [d.doc for d in srv.store.query_any("msgin5g")] == [changed]


async def test_over_oscore_lost_blocks_are_listed_by_the_scm_s_and_sent_again(secured, monkeypatch):
    """Blocks 3 and 10 of the body are lost once on the way up: after silence the last block goes
    again, the SCM-S's protected 4.08 lists block 3, only block 3 goes again — each a newly
    protected request (its own Partial IV) — and the document is stored once."""
    from msgin5g.scmc import ScmClient

    srv, admin = secured
    tap = UpTap(srv.port, drop={3, 10})
    seen = spy_blocks(monkeypatch)
    doc = big_doc()
    try:
        async with ScmClient(f"coap://127.0.0.1:{tap.port}", credentials=admin) as client:
            created = await client.create(doc)
    finally:
        tap.close()
    assert seen == [(n, []) for n in [*range(11), 10, 3]] + [(10, [10])]
    assert_protected_on_their_own(tap.up)
    assert [d.doc for d in srv.store.query_any("msgin5g")] == [
        {**doc, "ueConfigDocId": created["ueConfigDocId"]}
    ]


class SeededLoss:
    """A forwarder towards the SCM-S that loses each datagram with probability ``loss``, drawn in
    order from one seeded generator per direction (the bytes of OSCORE datagrams differ from run to
    run, so the draw cannot depend on them)."""

    def __init__(self, port: int, loss: float, seed: int):
        from .test_relay_lossy import LossyLeg

        draws = {"up": random.Random(seed), "down": random.Random(seed + 1000)}

        class Leg(LossyLeg):
            def _drops(self, direction, data):
                self.sent[direction] += 1
                if draws[direction].random() < loss:
                    self.lost[direction] += 1
                    return True
                return False

        self.leg = Leg("seeded", ("127.0.0.1", port), loss, seed)
        self.port = self.leg.address[1]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_over_oscore_at_30_percent_loss_both_ways_the_document_is_stored_once(secured, seed):
    """Seeded 30 % loss each way between the admin client and the SCM-S: the OSCORE-protected
    Q-Block1 POST ends with the created document, stored exactly once. (Timers short and
    NON_MAX_RETRANSMIT 8, as RFC 9177 §7.2 allows: at the defaults four silent rounds of 0.51 each
    end a transfer once in 15.)"""
    from msgin5g.scmc import ScmClient

    srv, admin = secured
    tap = SeededLoss(srv.port, 0.3, seed)
    doc = big_doc()
    params = QBlockParams(
        non_timeout=0.2, non_receive_timeout=0.2, non_max_retransmit=8, non_partial_timeout=60
    )
    try:
        async with ScmClient(
            f"coap://127.0.0.1:{tap.port}",
            credentials=admin,
            timeout=60,
            qblock=params,
            layer=Params(ack_timeout=0.2, max_retransmit=12),
        ) as client:
            created = await client.create(doc)
    finally:
        tap.leg.close()
    assert tap.leg.lost["up"] and tap.leg.lost["down"]
    assert [d.doc for d in srv.store.query_any("msgin5g")] == [
        {**doc, "ueConfigDocId": created["ueConfigDocId"]}
    ]


async def test_config_import_with_credentials_sends_a_large_document_as_q_block1(secured, tmp_path):
    """The command line: ``msgin5g config import BIG.json --credentials admin.json`` against a
    secured SCM-S stores the 11-block document as written, its blocks having come as Q-Block1
    inside OSCORE (the SCM-S counts each block after verification)."""
    import asyncio
    import json

    from .procs import MSGIN5G

    srv, admin = secured
    doc = big_doc()
    path = tmp_path / "big.json"
    path.write_text(json.dumps([doc]))
    proc = await asyncio.create_subprocess_exec(
        MSGIN5G, "config", "import", str(path), "--json",
        "--server", f"coap://127.0.0.1:{srv.port}", "--credentials", str(admin.path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    (doc_id,) = json.loads(out)
    assert [d.doc for d in srv.store.query_any("msgin5g")] == [{**doc, "ueConfigDocId": doc_id}]
    assert srv.site.qblock.counters["qblock1-blocks"] >= 11
