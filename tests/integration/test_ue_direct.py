"""``msgin5g ue get-config`` over CoAP/UDP on the message layer (TS 24.538 6.2.1.2; SPEC D13).

The real command (its own process) against the real SCM-S, with a forwarder between them that
drops the first copy of chosen Q-Block2 blocks on their way down; an in-process client against a
bare aiocoap resource that knows nothing of RFC 9177 (fall-back to RFC 7959); and the command's
``--observe`` on the message layer (RFC 7641). Expected values come from the provisioning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys

from aiocoap import Message

from msgin5g.coap import wire
from msgin5g.codec import CF_CBOR, decode, encode
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.scmc import ScmClient
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig
from msgin5g.ue.direct import DirectClient, uses_message_layer

from .conftest import make_doc
from .test_relay_lossy import LossyLeg

TAC = "35209900"
UE = imei_urn(TAC, 7)
CLI = [sys.executable, "-m", "msgin5g.cli"]


class BlockDropper(LossyLeg):
    """Drops the first copy of each Q-Block2 block in ``drop`` going down, nothing else; counts
    the requests that ask for particular blocks (Q-Block2 with M unset) going up."""

    def __init__(self, target, drop: set[int]):
        super().__init__("drop", target, 0.0, 0)
        self.drop = set(drop)
        self.blocks_down: list[int] = []
        self.asked: list[list[int]] = []

    def _drops(self, direction: str, data: bytes) -> bool:
        self.sent[direction] += 1
        with contextlib.suppress(wire.WireError):
            m = wire.decode(data)
            opts = [wire.parse_block(v) for n, v in m.options if n == wire.OPT_Q_BLOCK2]
            if direction == "down" and opts:
                num = opts[0][0]
                self.blocks_down.append(num)
                if num in self.drop:
                    self.drop.discard(num)
                    self.lost["down"] += 1
                    return True
            if direction == "up" and opts and not opts[0][1]:
                self.asked.append([o[0] for o in opts])
        return False


def provision_large(srv) -> None:
    """Four documents for UE 7 (about 2.5 KB of answer: three 1,024-byte blocks)."""
    docs = [make_doc(uris=[UE], service_id="seven@direct", name=f"seven-{k}-" + "x" * 400) for k in range(4)]
    srv.store.import_docs("msgin5g", docs)


async def cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def test_only_coap_over_udp_goes_over_the_message_layer():
    assert uses_message_layer("coap://127.0.0.1:5683")
    assert uses_message_layer("COAP://h/prefix")
    assert not uses_message_layer("coap+tcp://127.0.0.1:5683")
    assert not uses_message_layer("coaps+ws://h")


async def test_ue_get_config_offers_q_block2_and_asks_only_for_the_dropped_blocks(qserver):
    srv = qserver
    provision_large(srv)
    leg = BlockDropper(("127.0.0.1", srv.port), drop={1, 2})
    try:
        code, out, err = await cli(
            "ue", "get-config", "--server", f"coap://127.0.0.1:{leg.address[1]}", "--ue-uri", UE, "--json"
        )
    finally:
        leg.close()
    assert code == 0, err
    result = json.loads(out)
    assert result["outcome"] == "configured" and result["config"]["ueServiceId"] == "seven@direct"
    # the answer came as a Q-Block2 burst (blocks 0, 1, 2; 1 and 2 lost the first time), and the
    # UE asked for exactly the two lost blocks, in one request (RFC 9177 §4.4)
    assert sorted(set(leg.blocks_down)) == [0, 1, 2]
    assert leg.asked == [[1, 2]]
    assert "Traceback" not in err


async def test_client_falls_back_to_rfc7959_against_a_bare_aiocoap_resource():
    """A server without RFC 9177 ignores the (critical) Q-Block2 option and answers with Block2:
    the UE's client continues with RFC 7959 follow-ups and gets the whole answer."""
    import aiocoap
    import aiocoap.resource as resource

    docs = [make_doc(uris=[UE], service_id="bare@x", name=f"bare-{k}-" + "y" * 400) for k in range(4)]
    for i, d in enumerate(docs):
        d["ueConfigDocId"] = f"doc{i}"
    body = encode(docs)
    assert len(body) > 2048  # three blocks or more
    asked = []

    class Collection(resource.Resource):
        async def render_get(self, request):
            asked.append(request.opt.block2)
            return Message(payload=body, content_format=CF_CBOR)

    site = resource.Site()
    site.add_resource(["su-uc", "v1", "val-services", "msgin5g", "ue-configurations"], Collection())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    try:
        async with DirectClient(f"coap://127.0.0.1:{port}", timeout=30) as client:
            result = await client.get_config(UE)
    finally:
        await ctx.shutdown()
    assert result.outcome is Outcome.CONFIGURED and result.config.ue_service_id == "bare@x"
    assert len(asked) >= 1


async def test_observe_over_the_message_layer_sees_a_change_and_the_delete(qserver):
    srv = qserver
    doc_id = srv.store.create("msgin5g", make_doc(uris=[UE], service_id="before@obs")).doc_id
    api_root = f"coap://127.0.0.1:{srv.port}"
    proc = await asyncio.create_subprocess_exec(
        *CLI, "ue", "get-config", "--server", api_root, "--ue-uri", UE, "--observe", "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["config"]["ueServiceId"] == "before@obs"
        await asyncio.sleep(0.5)  # the observation is registered right after the answer
        async with ScmClient(api_root) as admin:
            await admin.replace(doc_id, make_doc(uris=[UE], service_id="after@obs"))
            note = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert note["outcome"] == "configured" and note["config"]["ueServiceId"] == "after@obs"
            await admin.delete(doc_id)
            gone = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            assert gone["outcome"] == "not-found"
        await asyncio.wait_for(proc.wait(), 30)  # the server ended the observation: so does the UE
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class DownDropper(LossyLeg):
    """Drops the datagrams going down whose index (0, 1, … of that direction) is in ``drop``: over
    OSCORE the forwarder cannot read which block a response carries."""

    def __init__(self, target, drop: set[int]):
        super().__init__("drop", target, 0.0, 0)
        self.drop, self.index = set(drop), -1

    def _drops(self, direction: str, data: bytes) -> bool:
        self.sent[direction] += 1
        if direction != "down":
            return False
        self.index += 1
        if self.index in self.drop:
            self.lost["down"] += 1
            return True
        return False


async def observing(port: int):
    """``msgin5g ue get-config --observe --json`` for :data:`UE` against ``coap://127.0.0.1:PORT``."""
    return await asyncio.create_subprocess_exec(
        *CLI, "ue", "get-config", "--server", f"coap://127.0.0.1:{port}", "--ue-uri", UE,
        "--observe", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_observe_applies_a_change_whose_notification_comes_before_the_registrations_answer(qserver):
    """The registration's answer is lost on the way down and the document changes before the UE
    asks again: the notification of the change is the first answer the UE gets (RFC 7641 §3.2,
    §4.4). It carries a newer document than the one just applied, so it is applied and printed —
    not skipped as "the registration answer repeating what was applied"."""
    srv = qserver
    doc_id = srv.store.create("msgin5g", make_doc(uris=[UE], service_id="before@obs")).doc_id
    leg = DownDropper(("127.0.0.1", srv.port), drop={1})  # 0: the get-config answer; 1: the registration's
    proc = await observing(leg.address[1])
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["config"]["ueServiceId"] == "before@obs"
        for _ in range(200):  # the registration went up and its answer was dropped
            if leg.lost["down"] == 1:
                break
            await asyncio.sleep(0.01)
        assert leg.lost["down"] == 1
        async with ScmClient(f"coap://127.0.0.1:{srv.port}") as admin:
            await admin.replace(doc_id, make_doc(uris=[UE], service_id="after@obs"))
        note = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert note["outcome"] == "configured" and note["config"]["ueServiceId"] == "after@obs"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        leg.close()


async def test_secured_ue_get_config_offers_q_block2_and_asks_only_for_the_dropped_blocks(
    tmp_path, monkeypatch
):
    """Over OSCORE (SPEC D12) the UE's client offers Q-Block2 too (RFC 9177; the first request NON):
    every block response is protected and verified on its own. Block responses 1 and 2 of three
    are lost on the way down: the UE asks for exactly those two, in one protected request, and the
    answer is the four documents written here."""
    from msgin5g.security import endpoint

    from .conftest import start_secured_qserver

    srv, keys = await start_secured_qserver(tmp_path, {"ue": f"ue:{UE}"})
    ue_key = keys["ue"]
    docs = [make_doc(uris=[UE], service_id="seven@direct", name=f"seven-{k}-" + "x" * 400) for k in range(4)]
    srv.store.import_docs("msgin5g", docs)
    requests, blocks = [], []
    protect, verify = endpoint.NotingProtection.protect, endpoint.NotingProtection.verify

    def spy_protect(self, plain):
        requests.append((plain.mtype, [wire.parse_block(v) for v in plain.values(wire.OPT_Q_BLOCK2)]))
        return protect(self, plain)

    def spy_verify(self, outer, binding):
        plain = verify(self, outer, binding)
        blocks.extend(wire.parse_block(v)[0] for v in plain.values(wire.OPT_Q_BLOCK2))
        return plain

    monkeypatch.setattr(endpoint.NotingProtection, "protect", spy_protect)
    monkeypatch.setattr(endpoint.NotingProtection, "verify", spy_verify)
    leg = DownDropper(("127.0.0.1", srv.port), drop={1, 2})
    try:
        async with DirectClient(
            f"coap://127.0.0.1:{leg.address[1]}", credentials=ue_key, timeout=30
        ) as client:
            request = client._get(client.collection_uri, [f"ue-uri={UE}"])
            answer = await client.ue.fetch(request, timeout=30)
            result = await client.get_config(UE)
    finally:
        leg.close()
        await srv.close()
    assert answer.code.dotted == "2.05"
    got = sorted(
        ({k: v for k, v in d.items() if k != "ueConfigDocId"} for d in decode(answer.payload)), key=str
    )
    assert got == sorted(docs, key=str)
    # the first fetch: the offer (NON), blocks 0, 1, 2 of which 1 and 2 were lost, one request for both
    assert requests[:2] == [(wire.NON, [(0, True, 6)]), (wire.NON, [(1, False, 6), (2, False, 6)])]
    assert blocks[:3] == [0, 1, 2] and leg.lost["down"] == 2
    assert result.outcome is Outcome.CONFIGURED and result.config.ue_service_id == "seven@direct"


async def test_observe_registers_again_after_max_age_and_sees_a_change_made_while_the_scm_s_was_down(
    tmp_path,
):
    """RFC 7641 §3.3.1: the SCM-S restarts (every observation it had is gone, without a word) and
    the document changes meanwhile. Max-Age (here 1 s) passes without a notification, so the UE
    registers again, and the new registration's answer — the changed document — is printed (a
    re-registration that meets the SCM-S down is tried again). A registration whose answer is what
    the UE already has prints nothing, and replaces the UE's entry at the SCM-S."""
    from .conftest import DOMAIN

    def config() -> ServerConfig:
        return ServerConfig(
            port=port,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            insecure=True,
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}, max_age=1),
        )

    port = 0
    srv = await start_server(config())
    port = srv.port
    doc_id = srv.store.create("msgin5g", make_doc(uris=[UE], service_id="before@restart")).doc_id
    proc = await observing(port)
    try:
        first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert first["config"]["ueServiceId"] == "before@restart"
        await asyncio.sleep(4.0)  # re-registrations after Max-Age with nothing new: nothing printed
        # each with the same token (RFC 7641 §3.3.1): it replaces the UE's entry, never adds one
        assert srv.site.observer_count("msgin5g", doc_id) == 1
        await srv.close()
        srv = await start_server(config())  # the same store, no observers
        async with ScmClient(f"coap://127.0.0.1:{port}") as admin:
            await admin.replace(doc_id, make_doc(uris=[UE], service_id="after@restart"))
        note = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert note["outcome"] == "configured" and note["config"]["ueServiceId"] == "after@restart"
        assert srv.site.observer_count("msgin5g", doc_id) == 1  # registered again
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await srv.close()
