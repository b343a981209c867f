"""The datagram shell of the CoAP message layer on real loopback sockets (RFC 7252, RFC 7959)."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code

from msgin5g.coap import wire
from msgin5g.coap.msglayer import MessageLayer, Params
from msgin5g.coap.udp import CoapEndpoint, CoapError
from msgin5g.coap.wire import CON, GET, OPT_URI_PATH, CoapMessage

CONTENT = 0x45
BIG = bytes(range(256)) * 12  # 3072 bytes: three 1024-byte blocks


def request(path: str) -> CoapMessage:
    return CoapMessage(CON, GET, 0, b"", [(OPT_URI_PATH, path.encode())])


@pytest.fixture
async def server():
    """A CoAP server on the message layer: /now piggybacked, /slow separate, /big block-wise."""
    holder: dict = {}

    def on_request(incoming):
        ep = holder["ep"]
        path = incoming.message.first(OPT_URI_PATH)
        if path == b"slow":
            ep.accept(incoming)
            answer = CoapMessage(CON, CONTENT, 0, b"", [], b"later")
            asyncio.get_running_loop().call_later(0.05, ep.respond, incoming, answer)
        elif path == b"big":
            ep.respond(incoming, CoapMessage(CON, CONTENT, 0, b"", [], BIG))
        elif path == b"never":
            ep.accept(incoming)
        else:
            ep.respond(incoming, CoapMessage(CON, CONTENT, 0, b"", [], b"now:" + (path or b"")))

    ep = CoapEndpoint.bind("127.0.0.1", 0, on_request=on_request)
    holder["ep"] = ep
    yield ep
    ep.close()


async def test_piggybacked_separate_and_blockwise_answers(server):
    client = CoapEndpoint.connect(*server.local_address, MessageLayer(Params(nstart=4), random.Random(1)))
    try:
        now, slow, big = await asyncio.gather(
            client.request(request("now"), timeout=5),
            client.request(request("slow"), timeout=5),
            client.request(request("big"), timeout=5, blockwise=True),
        )
        assert (now.mtype, now.code, now.payload) == (wire.ACK, CONTENT, b"now:now")
        assert (slow.mtype, slow.payload) == (CON, b"later")  # separate response (RFC 7252 §5.2.2)
        assert big.payload == BIG and big.first(wire.OPT_BLOCK2) is None
        assert server.layer.counters.duplicates == 0
    finally:
        client.close()


async def test_a_request_without_answer_fails_at_its_deadline(server):
    client = CoapEndpoint.connect(*server.local_address)
    try:
        with pytest.raises(CoapError, match="deadline"):
            await client.request(request("never"), timeout=0.3)
        assert client.layer.pending() == 0
    finally:
        client.close()


async def test_aiocoap_client_talks_to_the_endpoint(server):
    """Interoperability: aiocoap's client gets the piggybacked and the block-wise answers."""
    ctx = await Context.create_client_context()
    try:
        host, port = server.local_address
        r = await asyncio.wait_for(
            ctx.request(Message(code=Code.GET, uri=f"coap://{host}:{port}/x")).response, 5
        )
        assert r.code == Code.CONTENT and r.payload == b"now:x"
        big = await asyncio.wait_for(
            ctx.request(Message(code=Code.GET, uri=f"coap://{host}:{port}/big")).response, 5
        )
        assert big.payload == BIG
    finally:
        await ctx.shutdown()


async def test_constrained_ue_reassembles_blocks_and_refuses_a_changed_representation():
    """The UE's Block2 above the message layer (RFC 7959 §2.4): whole body; an ETag that changes
    between blocks ends the transfer with an error instead of a body spliced from two versions."""
    from msgin5g.ue.constrained import ConstrainedUe, get_request

    version = {"etag": b"v1"}

    def on_request(incoming):
        ep = holder["ep"]
        answer = CoapMessage(CON, CONTENT, 0, b"", [(wire.OPT_ETAG, version["etag"])], BIG)
        ep.respond(incoming, answer)
        if incoming.message.first(OPT_URI_PATH) == b"changing":
            version["etag"] += b"+"

    holder: dict = {}
    ep = holder["ep"] = CoapEndpoint.bind("127.0.0.1", 0, on_request=on_request)
    try:
        host, port = ep.local_address
        async with ConstrainedUe(host, port) as ue:
            whole = await ue.fetch(get_request(f"coap://{host}:{port}/stable", via_proxy=False), timeout=5)
            assert whole.payload == BIG and whole.opt.block2 is None and whole.opt.etag == b"v1"
            with pytest.raises(CoapError, match="ETag"):
                await ue.fetch(get_request(f"coap://{host}:{port}/changing", via_proxy=False), timeout=5)
    finally:
        ep.close()
