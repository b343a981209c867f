"""The Gateway UE's Uu leg over UDP on the shared message layer (TS 24.546 clause 5, 6.2.3.3;
RFC 9177; SPEC D7, D12, D13).

Real SCM-S (or a bare aiocoap server), real sockets on loopback; between the gateway's SCM-C and
the server sits a forwarder that drops the first delivery of chosen answers, so what is lost is
known and what the SCM-C must ask for again is written down here. The expected configurations
come from the provisioning below (``ueServiceId`` ``s-<serial>-yyy…``), not from server code.
"""

from __future__ import annotations

import asyncio
import json
import socket

import aiocoap
import aiocoap.resource as resource
import cbor2
import pytest

from msgin5g.bulk import BulkItem
from msgin5g.coap import wire
from msgin5g.gateway.upstream import UpstreamScmc
from msgin5g.gateway.wire import UeQuery
from msgin5g.model import imei_urn
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig

from .conftest import DOMAIN, make_doc
from .keyhelp import store_keys

TAC = "35209900"
N = 20  # one bulk GET (one datagram) carries them all
PAD = "y" * 600  # 20 UEs × ~750 bytes: a bulk answer of about 15 blocks of 1,024 bytes


def provision(srv) -> None:
    srv.store.import_docs(
        "msgin5g",
        [
            make_doc(
                ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": "99"}}], service_id="s-{snr}-" + PAD
            )
        ],
    )
    srv.store.set_gateway("gw1", {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "99"}}]})


def expected_ids() -> list[str]:
    return [f"s-{i:06d}-" + PAD for i in range(N)]


def service_ids(payload: bytes) -> list[str]:
    entries = cbor2.loads(payload)
    assert [e["valUeIds"]["uris"] for e in entries] == [[imei_urn(TAC, i)] for i in range(N)]
    return [json.loads(e["ueConfigs"][0]["configData"])["ueServiceId"] for e in entries]


class Forwarder(asyncio.DatagramProtocol):
    """client ⇄ 127.0.0.1:port ⇄ target; the first delivery of each downstream datagram chosen by
    ``drop(index, message)`` (index counts downstream datagrams from 0) is lost."""

    def __init__(self, target, drop):
        self.target, self.drop = target, drop
        self.up: list[wire.CoapMessage] = []
        self.down = 0
        self.dropped: list[wire.CoapMessage] = []
        self.client = None

    async def start(self) -> Forwarder:
        loop = asyncio.get_running_loop()
        self.listen, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        fwd = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                msg = wire.decode(data)
                index, fwd.down = fwd.down, fwd.down + 1
                if fwd.drop(index, msg):
                    fwd.dropped.append(msg)
                    return
                fwd.listen.sendto(data, fwd.client)

        self.upstream, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=self.target)
        return self

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.listen.get_extra_info('sockname')[1]}"

    def datagram_received(self, data, addr):
        self.client = addr
        self.up.append(wire.decode(data))
        self.upstream.sendto(data)

    def close(self):
        self.listen.close()
        self.upstream.close()


def q2(msg: wire.CoapMessage) -> list[tuple[int, bool, int]]:
    return [wire.parse_block(v) for v in msg.values(wire.OPT_Q_BLOCK2)]


def queries(msg: wire.CoapMessage) -> list[str]:
    return [v.decode() for v in msg.values(wire.OPT_URI_QUERY)]


async def test_bulk_get_offers_q_block2_and_asks_only_for_the_missing_blocks(scm_server):
    provision(scm_server)
    lost = {1, 4, 5}
    seen: set[int] = set()

    def drop(index, msg):
        blocks = q2(msg)
        if blocks and blocks[0][0] in lost and blocks[0][0] not in seen:
            seen.add(blocks[0][0])
            return True
        return False

    fwd = await Forwarder((scm_server.host, scm_server.port), drop).start()
    scm = UpstreamScmc(fwd.uri, gateway_id="gw1")
    try:
        (outcome,) = await scm.bulk_configure("msgin5g", [BulkItem(imei_urn(TAC, i)) for i in range(N)])
    finally:
        await scm.close()
        fwd.close()
    assert outcome.code == 0x45 and service_ids(outcome.payload) == expected_ids()
    assert sorted(seen) == sorted(lost)
    first, *asks = fwd.up
    assert q2(first) == [(0, True, 6)] and len(queries(first)) == N + 1  # flag + every ue-uri
    flag = queries(first)[0]
    assert flag.startswith("bulk-conf-flag=")
    # one request for the missing blocks, naming only the flag (SPEC D7 b) and exactly those blocks;
    assert all(queries(a) == [flag] for a in asks)
    # then, the first set being complete, a Continue for the second (unless the server's pause
    # between sets, NON_TIMEOUT, ended first)
    assert q2(asks[0]) == [(n, False, 6) for n in sorted(lost)]
    assert [q2(a) for a in asks[1:]] in ([], [[(10, True, 6)]])
    assert all(a.mtype == wire.NON for a in asks)
    assert scm.stats["qblock-bodies"] == 1 and scm.stats["block2-followups"] == 0


async def test_over_oscore_each_block_is_verified_and_the_lost_ones_asked_for(tmp_path):
    """Secured (SPEC D12): the Q-Block2 request goes as NON, every block response is a protected
    message of its own; the forwarder cannot read which block is which, so it drops the 2nd and
    4th downstream datagram — the SCM-C asks for what is missing and gets the whole answer."""
    gw_key = store_keys(tmp_path / "scm.db", {"gw1": "gateway:gw1"}, tmp_path)["gw1"]
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
        )
    )
    fwd = await Forwarder((srv.host, srv.port), lambda index, msg: index in (1, 3)).start()
    scm = UpstreamScmc(fwd.uri, credentials=gw_key)
    try:
        provision(srv)
        (outcome,) = await scm.bulk_configure("msgin5g", [BulkItem(imei_urn(TAC, i)) for i in range(N)])
    finally:
        await scm.close()
        fwd.close()
        await srv.close()
    assert outcome.code == 0x45 and service_ids(outcome.payload) == expected_ids()
    assert len(fwd.dropped) == 2 and all(m.first(wire.OPT_OSCORE) is not None for m in fwd.dropped)
    first, *asks = fwd.up
    assert first.mtype == wire.NON and first.first(wire.OPT_OSCORE) is not None
    assert not first.values(wire.OPT_URI_QUERY) and not q2(first)  # inside the protection
    assert len(asks) >= 1 and all(a.mtype == wire.NON for a in asks)
    assert scm.stats["qblock-bodies"] == 1 and scm.stats["block2-followups"] == 0


async def test_falls_back_to_rfc7959_against_a_server_without_q_block():
    """A bare aiocoap resource ignores the Q-Block2 offer and answers with Block2 (RFC 7959): the
    SCM-C takes block 0, learns the size (Size2) and fetches the other blocks with follow-ups."""
    body = bytes(range(256)) * 17  # 4,352 bytes: five blocks

    class Collection(resource.Resource):
        async def render_get(self, request):
            return aiocoap.Message(payload=body)

    site = resource.Site()
    site.add_resource(["su-uc", "v1", "val-services", "msgin5g", "ue-configurations"], Collection())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    fwd = await Forwarder(("127.0.0.1", port), lambda index, msg: False).start()
    scm = UpstreamScmc(fwd.uri, gateway_id="gw1")
    try:
        (outcome,) = await scm.bulk_configure("msgin5g", [BulkItem(imei_urn(TAC, i)) for i in range(3)])
    finally:
        await scm.close()
        fwd.close()
        await ctx.shutdown()
    assert outcome.code == 0x45 and outcome.payload == body
    first, *followups = fwd.up
    assert q2(first) == [(0, True, 6)]
    # RFC 7959 §2.4: each follow-up repeats the request's options (the ignored Q-Block2 included;
    # aiocoap answers 4.08 to a follow-up whose options differ), Block2 1, 2, 3, 4
    assert [wire.parse_block(f.first(wire.OPT_BLOCK2))[0] for f in followups] == [1, 2, 3, 4]
    assert all(queries(f) == queries(first) and f.mtype == wire.CON for f in followups)


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-ue"])
async def test_a_scm_s_that_is_down_is_noticed_at_once(bulk):
    """ICMP port unreachable (nothing listens): the exchange ends with that reason instead of
    being retransmitted until MAX_TRANSMIT_WAIT (93 s) — what aiocoap's client did too."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    scm = UpstreamScmc(f"coap://127.0.0.1:{port}", gateway_id="gw1")
    try:
        if bulk:
            (outcome,) = await scm.bulk_configure("msgin5g", [BulkItem(imei_urn(TAC, 1))])
        else:
            outcome = await scm.single_configure("msgin5g", UeQuery(imei_urn(TAC, 1)))
    finally:
        await scm.close()
    assert outcome.code is None and "unreachable" in outcome.detail
