"""Constrained UE → Relay UE → SCM-S over real loopback UDP (TS 24.538 6.2.2.1, 6.2.2.2; SPEC §3.2, §3.3, D8).

Every test runs the real SCM-S (``scm_server``), a real relay on a random free port and real UDP
clients. Where a condition must be observed on the relay (a drop, a discard) the test polls the
relay's counters on its admin resource, within a bounded number of tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import sys

import aiocoap
import aiocoap.resource as resource
import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption

from msgin5g import pc5
from msgin5g.api import collection_uri, config_query_uri
from msgin5g.authz import LAB_IDENTITY_OPTION
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.pc5 import Pc5Cause, Pc5Message, Pc5Type
from msgin5g.relay.shell import RelaySettings, start_relay
from msgin5g.ue.constrained import ConstrainedUe, LinkRejected, get_request
from msgin5g.ue.outcome import result_from_response
from msgin5g.ue.via_relay import get_config_via_relay

from .conftest import make_doc

UE1 = imei_urn("35209900", 1)
UE2 = imei_urn("35209900", 2)
UNKNOWN = imei_urn("35209900", 999)


@pytest.fixture
async def relays():
    started = []

    async def start(server_uri: str, **kw):
        kw.setdefault("listen_port", 0)
        kw.setdefault("admin_port", 0)
        relay = await start_relay(RelaySettings(server_uri=server_uri, **kw))
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.close()


def server_uri(srv) -> str:
    return f"coap://127.0.0.1:{srv.port}"


async def counters(coap, relay) -> dict:
    """The relay's counters, read from its admin resource."""
    r = await asyncio.wait_for(coap.request(Message(code=Code.GET, uri=relay.admin_uri)).response, 5)
    assert r.code == Code.CONTENT
    return cbor2.loads(r.payload)


async def until(coap, relay, check, tries: int = 100) -> dict:
    for _ in range(tries):
        c = await counters(coap, relay)
        if check(c):
            return c
        await asyncio.sleep(0.02)
    raise AssertionError(f"relay counters never satisfied the check: {c}")


class RawUe:
    """A bare UDP endpoint on the PC5 side, for exact on-the-wire behaviour."""

    def __init__(self, relay):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setblocking(False)
        self.s.bind(("127.0.0.1", 0))
        self.addr = relay.pc5_address

    def send_raw(self, data: bytes) -> None:
        self.s.sendto(data, self.addr)

    def encode(self, m: Message, mtype=Type.CON, mid=1, token=b"") -> bytes:
        m.mtype, m.mid, m.token = mtype, mid, token
        return m.encode()

    async def recv(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(self.s, 65536), timeout)

    async def link(self, l2id: int = 0x1234) -> None:
        self.l2id = l2id
        self.send_raw(
            pc5.encode(Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 1, l2id=l2id, user_info="raw"))
        )
        assert pc5.decode(await self.recv()).type == Pc5Type.LINK_ESTABLISHMENT_ACCEPT

    def release_datagram(self) -> bytes:
        return pc5.encode(Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 2, l2id=self.l2id, cause=2))

    def close(self) -> None:
        self.s.close()


# ---- the three outcomes of §3.1 through the relay ---------------------------------------------------


async def test_2_05_through_the_relay(scm_server, relays, coap):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1], service_id="ue1@msgin5g.example"))
    relay = await relays(server_uri(srv))
    result = await get_config_via_relay(*relay.pc5_address, srv.base_uri(), ue_uri=UE1, timeout=10)
    assert result.outcome is Outcome.CONFIGURED, result.detail
    assert result.code == int(Code.CONTENT) and result.config.ue_service_id == "ue1@msgin5g.example"
    c = await until(coap, relay, lambda c: c["links_released"].get("requested") == 1)
    assert c["relayed_up"] == 1 and c["relayed_down"] == 1 and c["links_established"] == 1


async def test_4_04_through_the_relay(scm_server, relays):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1]))
    relay = await relays(server_uri(srv))
    result = await get_config_via_relay(*relay.pc5_address, srv.base_uri(), ue_uri=UNKNOWN, timeout=10)
    assert result.outcome is Outcome.NOT_FOUND and result.code == int(Code.NOT_FOUND)
    assert result.problem is not None and result.problem.code == 0x84


async def test_4_03_through_the_relay(scm_server, relays):
    """A UE asking for another UE's configuration (lab identity, SPEC D12) gets 4.03, relayed unchanged."""
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1]))
    relay = await relays(server_uri(srv))
    async with ConstrainedUe(*relay.pc5_address, l2_id=5) as ue:
        await ue.establish_link()
        req = get_request(config_query_uri(srv.base_uri(), "msgin5g", UE1), via_proxy=True)
        req.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, f"ue:{UE2}".encode()))
        resp = await ue.fetch(req, timeout=10)
    result = result_from_response(resp)
    assert result.outcome is Outcome.FORBIDDEN and result.code == int(Code.FORBIDDEN)
    assert result.problem.cause == "NOT_AUTHORIZED"


async def test_non_cm_recipient_gets_5_05(scm_server, relays):
    srv = scm_server
    relay = await relays(server_uri(srv))
    other = f"coap://127.0.0.1:{srv.port + 1 if srv.port < 65535 else srv.port - 1}/su-uc/v1"
    result = await get_config_via_relay(*relay.pc5_address, other, ue_uri=UE1, timeout=10)
    assert result.outcome is Outcome.ERROR and result.code == int(Code.PROXYING_NOT_SUPPORTED)
    assert result.problem.cause == "RECIPIENT_NOT_CM_SERVER"


async def test_malformed_proxy_uri_gets_4_00_with_problem_details(scm_server, relays):
    relay = await relays(server_uri(scm_server))
    async with ConstrainedUe(*relay.pc5_address) as ue:
        await ue.establish_link()
        req = Message(code=Code.GET)
        req.opt.proxy_uri = "coap://127.0.0.1:notaport/x"
        resp = await ue.request(req, timeout=5)
    assert resp.code == Code.BAD_REQUEST and resp.opt.content_format == 257
    assert cbor2.loads(resp.payload)["cause"] == "INVALID_PROXY_URI"


# ---- PC5 links (SPEC D8) -----------------------------------------------------------------------------


async def test_datagram_without_link_is_dropped(scm_server, relays, coap):
    srv = scm_server
    relay = await relays(server_uri(srv))
    raw = RawUe(relay)
    try:
        req = get_request(config_query_uri(srv.base_uri(), "msgin5g", UE1), via_proxy=True)
        raw.send_raw(raw.encode(req, mid=1, token=b"x"))
        c = await until(coap, relay, lambda c: c["dropped_no_link"] == 1)
        assert c["relayed_up"] == 0
    finally:
        raw.close()


async def test_link_released_before_the_response_discards_it(scm_server, relays, coap):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1]))
    relay = await relays(server_uri(srv))
    raw = RawUe(relay)
    try:
        await raw.link()
        req = get_request(config_query_uri(srv.base_uri(), "msgin5g", UE1), via_proxy=True)
        # both datagrams leave before the relay runs again: the request goes up, then the link goes
        raw.send_raw(raw.encode(req, mid=1, token=b"x"))
        raw.send_raw(raw.release_datagram())
        # (released within the relay's 0.1 s before its empty ACK: nothing else comes first)
        assert pc5.decode(await raw.recv()).type == Pc5Type.LINK_RELEASE_ACCEPT
        c = await until(coap, relay, lambda c: c["discarded"].get("link-released") == 1)
        assert c["relayed_up"] == 1 and c["relayed_down"] == 0
    finally:
        raw.close()


async def test_port_unreachable_on_an_uplink_is_counted_and_the_relay_goes_on(relays, coap):
    """A SCM-S that is down: the kernel reports ICMP port unreachable on the link's connected
    upstream socket (RFC 1122 §4.1.3.3). The relay counts it and keeps going: it goes on
    retransmitting the request itself, and answers the UE's retransmission with its empty ACK
    again (hop-by-hop, SPEC D8)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        down = probe.getsockname()[1]  # nothing listens here once the probe is closed
    relay = await relays(f"coap://127.0.0.1:{down}")
    raw = RawUe(relay)
    try:
        await raw.link()
        req = get_request(config_query_uri(f"coap://127.0.0.1:{down}", "msgin5g", UE1), via_proxy=True)
        raw.send_raw(raw.encode(req, mid=1, token=b"x"))
        await until(coap, relay, lambda c: c["errors"].get("uplink-ConnectionRefusedError", 0) >= 1)
        raw.send_raw(raw.encode(req, mid=1, token=b"x"))  # the UE retransmits (RFC 7252 §4.2)
        c = await until(
            coap, relay, lambda c: c["retransmitted_up"] >= 1 and c["duplicates_absorbed"] == 1, tries=400
        )
        assert c["relayed_up"] == 1 and c["errors"].get("core", 0) == 0
    finally:
        raw.close()


async def test_link_table_full_rejects(scm_server, relays):
    srv = scm_server
    relay = await relays(server_uri(srv), max_links=2)
    ues = [await ConstrainedUe(*relay.pc5_address, l2_id=i + 1).open() for i in range(3)]
    try:
        await ues[0].establish_link()
        await ues[1].establish_link()
        with pytest.raises(LinkRejected) as e:
            await ues[2].establish_link()
        assert e.value.cause == Pc5Cause.LACK_OF_RESOURCES
        result = await get_config_via_relay(*relay.pc5_address, srv.base_uri(), ue_uri=UE1, timeout=10)
        assert result.outcome is Outcome.ERROR and "LACK_OF_RESOURCES" in result.detail
    finally:
        for ue in ues:
            await ue.close()


# ---- layer 2 / layer 3 as the server sees them --------------------------------------------------------


@pytest.fixture
async def probe_server():
    """A CoAP server that records the source endpoint of every request it answers."""
    seen: list[str] = []

    class Collection(resource.Resource):
        async def render_get(self, request):
            seen.append(request.remote.hostinfo)
            body = cbor2.dumps([make_doc(uris=[UE1])])
            return aiocoap.Message(payload=body, content_format=60)

    site = resource.Site()
    site.add_resource(["su-uc", "v1", "val-services", "msgin5g", "ue-configurations"], Collection())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    yield f"coap://127.0.0.1:{port}", seen
    await ctx.shutdown()


@pytest.mark.parametrize(
    ("mode", "hosts"),
    [
        ("l3", {"127.0.0.1"}),  # a NAT: the relay's address, a port of its own per remote UE
        ("l2", {"127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"}),  # an address per remote UE
    ],
)
async def test_layer2_and_layer3_as_seen_from_the_server(probe_server, relays, mode, hosts):
    """SPEC D8: every remote UE reaches the SCM-S from an upstream endpoint of its own."""
    uri, seen = probe_server
    relay = await relays(uri, mode=mode)
    results = await asyncio.gather(
        *(
            get_config_via_relay(*relay.pc5_address, uri, ue_uri=UE1, l2_id=i + 1, timeout=10)
            for i in range(4)
        )
    )
    assert all(r.outcome is Outcome.CONFIGURED for r in results), [r.detail for r in results]
    assert len(seen) == 4 and len(set(seen)) == 4  # four separate CoAP endpoints
    assert {hostinfo.rsplit(":", 1)[0] for hostinfo in seen} == hosts


# ---- CoAP semantics end to end -------------------------------------------------------------------------


async def test_two_ues_with_equal_tokens_get_their_own_answers(scm_server, relays):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1], service_id="one@x"))
    srv.store.create("msgin5g", make_doc(uris=[UE2], service_id="two@x"))
    relay = await relays(server_uri(srv))
    async with (
        ConstrainedUe(*relay.pc5_address, l2_id=1) as a,
        ConstrainedUe(*relay.pc5_address, l2_id=2) as b,
    ):
        await a.establish_link()
        await b.establish_link()
        ra, rb = await asyncio.gather(
            a.request(get_request(config_query_uri(srv.base_uri(), "msgin5g", UE1), True), token=b"same"),
            b.request(get_request(config_query_uri(srv.base_uri(), "msgin5g", UE2), True), token=b"same"),
        )
    assert result_from_response(ra).config.ue_service_id == "one@x"
    assert result_from_response(rb).config.ue_service_id == "two@x"
    assert a.ignored == 0 and b.ignored == 0


@pytest.mark.parametrize("reliability", ["hop", "end-to-end"])
@pytest.mark.parametrize("mode", ["l3", "l2"])
async def test_ue_retransmission_reaches_the_server_as_a_duplicate(
    probe_server, relays, coap, mode, reliability
):
    """Three copies of one CON request (same MID), the SCM-S handles the request once and every copy
    gets the same answer (RFC 7252 §4.5; SPEC D8). Hop by hop (the default) the relay answers the
    copies itself with the reply it gave the first (here the piggybacked answer: back within its
    0.1 s) and nothing more goes up; end to end it relays each copy as the same datagram on the
    UE's own flow and the SCM-S answers the duplicates from its exchange state."""
    uri, seen = probe_server
    relay = await relays(uri, mode=mode, reliability=reliability)
    raw = RawUe(relay)
    try:
        await raw.link()
        req = get_request(config_query_uri(uri, "msgin5g", UE1), via_proxy=True)
        datagram = raw.encode(req, mid=42, token=b"tk")
        answers = []
        for _ in range(3):  # the first transmission and two retransmissions (same MID)
            raw.send_raw(datagram)
            answers.append(Message.decode(await raw.recv()))
        assert [(a.mtype, a.mid, a.token, a.code) for a in answers] == [
            (Type.ACK, 42, b"tk", Code.CONTENT)
        ] * 3
        assert answers[0].payload == answers[1].payload == answers[2].payload
        assert len(seen) == 1  # the SCM-S handled the request once
        c = await counters(coap, relay)
        if reliability == "hop":
            assert (c["relayed_up"], c["retransmitted_up"], c["duplicates_absorbed"]) == (1, 0, 2)
        else:
            assert c["relayed_up"] + c["retransmitted_up"] == 3 and c["relayed_down"] == 3
    finally:
        raw.close()


async def test_observe_through_the_relay_while_the_link_lives(scm_server, relays, coap):
    srv = scm_server
    doc = srv.store.create("msgin5g", make_doc(uris=[UE1], name="v1"))
    doc_id = doc.doc_id
    doc_uri = f"{collection_uri(srv.base_uri(), 'msgin5g')}/{doc_id}"
    relay = await relays(server_uri(srv))
    ue = await ConstrainedUe(*relay.pc5_address, l2_id=9).open()
    try:
        await ue.establish_link()
        first, notes = await ue.observe(get_request(doc_uri, via_proxy=True), timeout=10)
        assert first.code == Code.CONTENT and first.opt.observe is not None
        assert cbor2.loads(first.payload)["configName"] == "v1"

        async def put(name):
            m = Message(
                code=Code.PUT,
                uri=doc_uri,
                payload=cbor2.dumps(make_doc(uris=[UE1], name=name)),
                content_format=60,
            )
            assert (await asyncio.wait_for(coap.request(m).response, 5)).code == Code.CHANGED

        await put("v2")
        note = await notes.next(timeout=5)
        assert cbor2.loads(note.payload)["configName"] == "v2"

        await ue.release_link()
        await put("v3")
        await until(coap, relay, lambda c: c["discarded"].get("link-released", 0) >= 1)
        for _ in range(100):  # the relay's RST cancelled the observation at the server (RFC 7641 §3.6)
            if srv.site.observer_count("msgin5g", doc_id) == 0:
                break
            await asyncio.sleep(0.02)
        assert srv.site.observer_count("msgin5g", doc_id) == 0
        assert notes.queue.empty()
    finally:
        await ue.close()


async def test_large_document_as_a_q_block2_burst_through_the_relay(scm_server, relays, coap):
    """The UE offers Q-Block2 (RFC 9177): one request goes up, the SCM-S's blocks (6,000 bytes of
    padding: at least six of 1,024 bytes) all come down on the UE's token, each relayed."""
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1], padding="p" * 6000))
    relay = await relays(server_uri(srv))
    result = await get_config_via_relay(*relay.pc5_address, srv.base_uri(), ue_uri=UE1, timeout=10)
    assert result.outcome is Outcome.CONFIGURED, result.detail
    assert result.doc["padding"] == "p" * 6000
    c = await counters(coap, relay)
    assert c["relayed_up"] == 1 and c["relayed_down"] >= 6  # one request, a burst of blocks


async def test_large_document_block_wise_through_the_relay(scm_server, relays, coap):
    """A UE that does not offer Q-Block2 gets RFC 7959: one relayed exchange per block."""
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1], padding="p" * 6000))
    relay = await relays(server_uri(srv))
    async with ConstrainedUe(*relay.pc5_address) as ue:
        await ue.establish_link()
        uri = config_query_uri(srv.base_uri(), "msgin5g", UE1)
        result = result_from_response(await ue.fetch(get_request(uri, via_proxy=True), timeout=10))
    assert result.outcome is Outcome.CONFIGURED, result.detail
    assert result.doc["padding"] == "p" * 6000
    c = await counters(coap, relay)
    assert c["relayed_up"] >= 6 and c["relayed_up"] == c["relayed_down"]  # one exchange per block


async def test_garbage_and_truncated_datagrams_do_not_hurt(scm_server, relays, coap):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1]))
    relay = await relays(server_uri(srv))
    raw = RawUe(relay)
    rng = random.Random(7)
    try:
        await raw.link()
        good = raw.encode(
            get_request(config_query_uri(srv.base_uri(), "msgin5g", UE1), True), mid=3, token=b"g"
        )
        link_req = pc5.encode(Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 9, l2id=77, user_info="u"))
        junk = [b"", b"\x00", b"\xff" * 3, b"\x40\x01", os.urandom(1200), b"\x05", b"\x05\x01\x00"]
        junk += [good[:n] for n in range(1, len(good), 7)]  # truncated CoAP
        junk += [link_req[:n] for n in range(1, len(link_req))]  # truncated PC5 signalling
        junk += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 80))) for _ in range(200)]
        for data in junk:
            raw.send_raw(data)
        c = await until(coap, relay, lambda c: c["dropped_malformed"] >= 20)
        assert c["errors"].get("core", 0) == 0
        result = await get_config_via_relay(*relay.pc5_address, srv.base_uri(), ue_uri=UE1, timeout=10)
        assert result.outcome is Outcome.CONFIGURED
    finally:
        raw.close()


# ---- interoperability: a standard CoAP client through `msgin5g relay --auto-link` -----------------------


@pytest.mark.skipif(
    shutil.which("coap-client-notls") is None, reason="libcoap's coap-client-notls not installed"
)
async def test_libcoap_client_with_proxy_uri_through_the_relay_cli(scm_server):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[UE1], service_id="interop@x", padding="q" * 2000))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        pc5_port = s.getsockname()[1]
    relay = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "msgin5g.cli",
        "relay",
        "--listen",
        f"127.0.0.1:{pc5_port}",
        "--server",
        server_uri(srv),
        "--auto-link",
        "--admin",
        "none",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        banner = await asyncio.wait_for(relay.stdout.readline(), 20)
        assert b"listening on" in banner, banner
        target = config_query_uri(srv.base_uri(), "msgin5g", UE1)
        client = await asyncio.create_subprocess_exec(
            "coap-client-notls",
            "-m",
            "get",
            "-B",
            "10",
            "-P",
            f"coap://127.0.0.1:{pc5_port}",
            target,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(client.communicate(), 20)
        assert client.returncode == 0, err
        docs = cbor2.loads(out)
        assert docs[0]["padding"] == "q" * 2000 and "interop@x" in docs[0]["ueConfigs"][0]["configData"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            relay.send_signal(signal.SIGINT)
        tail, _ = await asyncio.wait_for(relay.communicate(), 20)
    assert b"relay counters at shutdown" in tail and b'"relayed_up"' in tail


async def test_the_ue_measures_its_relay_with_the_link_establishment(scm_server, relays):
    """The PC5 link establishment answered at its first transmission is the UE's first round-trip
    sample (RFC 6298; coap/rto.py): on loopback the UE's RTO towards its relay is MIN_RTO, 1 s,
    instead of RFC 7252's ACK_TIMEOUT of 2 s for a path not measured yet."""
    relay = await relays(server_uri(scm_server))
    async with ConstrainedUe(*relay.pc5_address, l2_id=9) as ue:
        peer = ue.endpoint.peer
        assert ue.endpoint.layer.rto.rto(peer, asyncio.get_running_loop().time()) == 2.0
        await ue.establish_link()
        assert ue.endpoint.layer.rto.known(peer)
        assert ue.endpoint.layer.rto.rto(peer, asyncio.get_running_loop().time()) == 1.0
