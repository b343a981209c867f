"""Gateway UE bulk configuration end to end (TS 24.538 6.2.2.x, 6.2.2.2; SPEC D6, D7, D9, D10).

Real loopback sockets, a real SCM-S on SQLite, a real request store on SQLite: constrained UEs
(a :class:`~msgin5g.testing.swarm.UeSwarm`, or the ``get_config_via_gateway`` client) → Gateway
UE → SCM-S. No timing assertions: batching triggers are observed through the gateway's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cbor2
import pytest

from msgin5g.bulk import BulkItem, decode_answer, split
from msgin5g.gateway import wire
from msgin5g.gateway.policy import ServicePolicy
from msgin5g.gateway.sealc import SealCClient, SealCServer
from msgin5g.gateway.shell import GatewayConfig, GatewayUe
from msgin5g.gateway.upstream import UpstreamScmc
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.problem import CF_PROBLEM, decode_problem
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig
from msgin5g.testing.swarm import SwarmRequest, UeSwarm
from msgin5g.ue.via_gateway import get_config_via_gateway

from .conftest import DOMAIN, free_port, make_doc

TAC = "35209900"
N_PROVISIONED, N_UNPROVISIONED = 700, 150  # of 1,000: the rest (150) is outside the gateway's coverage


def ue(i: int) -> str:
    return imei_urn(TAC, i)


def special(i: int) -> bool:
    return i % 50 == 7 and i < N_PROVISIONED


def provision(srv, n_total: int = 1000) -> None:
    """UEs 0..699: one range document with placeholders (every 50th also a document of its own);
    700..849: no configuration (4.04); 850..: not covered by gateway gw1 (4.03)."""
    docs = [
        make_doc(
            ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": str(N_PROVISIONED - 1)}}],
            service_id="s-{snr}",
        )
    ]
    docs += [make_doc(uris=[ue(i)], service_id=f"special-{i}") for i in range(n_total) if special(i)]
    srv.store.import_docs("msgin5g", docs)
    last_covered = N_PROVISIONED + N_UNPROVISIONED - 1
    srv.store.set_gateway(
        "gw1", {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": str(last_covered)}}]}
    )


def expected_code(i: int) -> int:
    if i < N_PROVISIONED:
        return 0x45
    return 0x84 if i < N_PROVISIONED + N_UNPROVISIONED else 0x83


def check_answer(i: int, code: int, cf: int | None, payload: bytes) -> None:
    """The right code and this UE's own document (valUeIds = [this UE], its own UE Service ID)."""
    assert code == expected_code(i), (i, hex(code), payload[:200])
    if code == 0x45:
        assert cf == 60
        docs = cbor2.loads(payload)
        assert len(docs) >= 1
        doc = docs[0]
        assert doc["valUeIds"] == {"uris": [ue(i)]}
        data = json.loads(doc["ueConfigs"][0]["configData"])
        assert data["ueServiceId"] == (f"special-{i}" if special(i) else f"s-{i:06d}")
    else:
        assert cf == CF_PROBLEM
        assert decode_problem(payload).code == code


def check_results(results, indices=None) -> None:
    indices = list(range(len(results))) if indices is None else indices
    for i, r in zip(indices, results, strict=True):
        assert len(r.answers) == 1, (i, r)
        a = r.answers[0]
        check_answer(i, a.code, a.content_format, a.payload)


@contextlib.asynccontextmanager
async def running_gateway(srv_uri, tmp_path, *, cm_mode="collocated", policy=None, max_ues=None, **cfg):
    """A Gateway UE with its CM client collocated, or separate behind a SEAL-C server (D10)."""
    scm = UpstreamScmc(srv_uri, gateway_id="gw1", max_ues=max_ues)
    seal = None
    cm = scm
    if cm_mode == "separate":
        seal = await SealCServer(scm, port=0).start()
        cm = SealCClient(seal.uri)
    config = GatewayConfig(
        port=0, state_path=str(tmp_path / "gw.db"), policy=policy or ServicePolicy(), **cfg
    )
    gw = await GatewayUe(config, cm).start()
    try:
        yield gw, scm
    finally:
        await gw.close()
        if seal is not None:
            await seal.close()


def requests_for(indices, **kw):
    return [SwarmRequest(ue(i), **kw) for i in indices]


# -- 1,000 constrained UEs -------------------------------------------------------------------------
@pytest.mark.parametrize("cm_mode", ["collocated", "separate"])
@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_thousand_constrained_ues(scm_server, tmp_path, scheme, cm_mode):
    """Each of 1,000 UEs gets exactly one answer, with the right code and its own document.
    UDP: many bulk GETs, each one datagram, answers fetched block-wise; TCP: one bulk GET."""
    provision(scm_server)
    policy = ServicePolicy(max_batch=1000, max_wait=600)  # one bulk operation: the batch is full
    async with running_gateway(scm_server.base_uri(scheme), tmp_path, cm_mode=cm_mode, policy=policy) as (
        gw,
        scm,
    ):
        indices = list(range(1000))
        random.Random(7).shuffle(indices)
        async with UeSwarm("127.0.0.1", gw.port, sockets=20, seed=1) as swarm:
            results = await swarm.run(requests_for(indices), timeout=60)
            await gw.wait_idle(10)
            await swarm.settle(0.2)
        check_results(results, indices)
        assert gw.stats["bulk-operations"] == 1 and gw.stats["single-forwards"] == 0
        assert gw.stats["delivered"] == 1000 and gw.queue.count() == 0
        if scheme == "coap":
            assert scm.stats["bulk-gets"] >= 1000 // 30  # one datagram each: several bulk GETs
            # each answer spans several blocks, all of them come as a Q-Block2 burst (RFC 9177): no
            # RFC 7959 follow-up request on a lossless link
            assert scm.stats["qblock-bodies"] == scm.stats["bulk-gets"]
            assert scm.stats["block2-followups"] == 0 and scm.stats["qblock-fallback"] == 0
        else:
            assert scm.stats["bulk-gets"] == 1 and scm.stats["block2-followups"] == 0
    counters = scm_server.service.counters
    assert counters["bulk-ok"] == N_PROVISIONED
    assert counters["bulk-not-found"] == N_UNPROVISIONED
    assert counters["bulk-forbidden"] == 1000 - N_PROVISIONED - N_UNPROVISIONED


async def test_answers_follow_request_order_within_a_batch(scm_server, tmp_path):
    """Each bulk GET's answers go out together, in the order the requests came (SPEC D6: entries in
    request order); a bulk GET's UEs are answered as soon as it is in, without waiting for the
    batch's other bulk GETs (SPEC D13), so the GETs' groups may go out in any order."""
    provision(scm_server)
    policy = ServicePolicy(max_batch=60, max_wait=30)
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=policy, record_answers=True) as (
        gw,
        scm,
    ):
        indices = [*range(0, 30), *range(860, 870), *range(700, 720)]  # 2.05, 4.03, 4.04 mixed
        random.Random(3).shuffle(indices)
        async with UeSwarm("127.0.0.1", gw.port, sockets=1, window=1, seed=2) as swarm:
            results = await swarm.run(requests_for(indices), timeout=30)
        check_results(results, indices)
        # request ids are given in arrival order: each answered once, and the log is made of runs of
        # consecutive ids (one per bulk GET at most)
        log = gw.answer_log
        assert sorted(log) == list(range(1, len(indices) + 1))
        runs = 1 + sum(1 for a, b in itertools.pairwise(log) if b != a + 1)
        assert runs <= scm.stats["bulk-gets"]


# -- batching triggers -----------------------------------------------------------------------------
async def test_flush_when_batch_is_full(scm_server, tmp_path):
    provision(scm_server)
    policy = ServicePolicy(max_batch=25, max_wait=600)  # the timer would never fire in this test
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=policy) as (gw, _):
        async with UeSwarm("127.0.0.1", gw.port, sockets=5, seed=3) as swarm:
            results = await swarm.run(requests_for(range(100)), timeout=30)
        check_results(results)
        assert gw.stats["flush-full"] == 4 and gw.stats["flush-timer"] == 0


async def test_flush_when_oldest_request_waited_max_wait(scm_server, tmp_path):
    provision(scm_server)
    policy = ServicePolicy(max_batch=10_000, max_wait=0.2)
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=policy) as (gw, _):
        async with UeSwarm("127.0.0.1", gw.port, sockets=2, seed=4) as swarm:
            results = await swarm.run(requests_for(range(10)), timeout=30)
        check_results(results)
        assert gw.stats["flush-timer"] >= 1 and gw.stats["flush-full"] == 0


async def test_urgent_request_flushes_at_once(scm_server, tmp_path):
    provision(scm_server)
    policy = ServicePolicy(max_batch=10_000, max_wait=600)
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=policy) as (gw, _):
        async with UeSwarm("127.0.0.1", gw.port, sockets=2, seed=5) as swarm:
            waiting = asyncio.ensure_future(swarm.run(requests_for(range(10)), timeout=30))
            while gw.policy.waiting < 10:
                await asyncio.sleep(0.01)
            assert gw.stats["bulk-operations"] == 0
            urgent = await get_config_via_gateway(
                "127.0.0.1", gw.port, ue_uri=ue(10), urgent=True, timeout=20
            )
            results = await waiting
        assert urgent.outcome is Outcome.CONFIGURED and urgent.config.ue_service_id == "s-000010"
        check_results(results)
        assert gw.stats["flush-urgent"] == 1 and gw.stats["bulk-operations"] == 1


# -- duplicates and the cache -------------------------------------------------------------------------
async def test_duplicate_requests_are_merged_and_repeats_come_from_the_cache(scm_server, tmp_path):
    """Requests that ask for the same configuration in different words (an IMEI URN with or without
    the TAC and serial it implies) are merged: fetched once, each answered. (The same query again
    is a repeat of that UE and supersedes its request instead, SPEC D13 — test_gateway_core.)"""
    provision(scm_server)
    policy = ServicePolicy(max_batch=10_000, max_wait=0.3)
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=policy) as (gw, scm):
        indices = [1, 2, 3, 1, 1, 2, 860, 860, 710, 710]
        wording = [{}, {}, {}, {"ue_type": TAC}, {"ue_snr": "000001"}, {"ue_type": TAC}, {}, {"ue_type": TAC}]
        wording += [{}, {"ue_type": TAC}]
        reqs = [SwarmRequest(ue(i), **w) for i, w in zip(indices, wording, strict=True)]
        async with UeSwarm("127.0.0.1", gw.port, sockets=4, seed=6) as swarm:
            results = await swarm.run(reqs, timeout=30)
        check_results(results, indices)
        assert gw.stats["superseded"] == 0
        assert gw.stats["merged"] == 5
        assert scm_server.service.counters["bulk-ok"] == 3  # UE 1 asked three times, fetched once
        # a repeat within Max-Age: answered from the cache at once, no upstream request
        gets_before = scm.stats["bulk-gets"]
        async with UeSwarm("127.0.0.1", gw.port, sockets=1, seed=7) as swarm:
            again = await swarm.run(requests_for([1, 860, 710]), timeout=30)
        check_results(again, [1, 860, 710])
        assert gw.stats["cache-hits"] == 3 and scm.stats["bulk-gets"] == gets_before
        assert all(r.answers[0].max_age is not None for r in again)


# -- without a bulk policy ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_no_bulk_policy_forwards_each_request(scm_server, tmp_path, scheme):
    provision(scm_server)
    async with running_gateway(scm_server.base_uri(scheme), tmp_path, policy=ServicePolicy(bulk=False)) as (
        gw,
        scm,
    ):
        indices = [*range(0, 40), *range(700, 710), *range(900, 910)]
        async with UeSwarm("127.0.0.1", gw.port, sockets=4, seed=8) as swarm:
            results = await swarm.run(requests_for(indices), timeout=60)
        check_results(results, indices)
        assert scm.stats["single-gets"] == len(indices) and scm.stats["bulk-gets"] == 0


# -- the constrained UE's own client (SPEC §3.3) -------------------------------------------------------
async def test_get_config_via_gateway_outcomes_and_blockwise_answer(scm_server, tmp_path):
    provision(scm_server)
    big = make_doc(uris=[ue(5000)], service_id="big", configName="x" * 1500)  # > one 1,024-byte block
    scm_server.store.import_docs("msgin5g", [big])
    scm_server.store.set_gateway("gw1", {"all": True})
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=ServicePolicy(max_wait=0.05)) as (
        gw,
        _,
    ):
        ok = await get_config_via_gateway("127.0.0.1", gw.port, ue_uri=ue(3), ue_type=TAC, timeout=20)
        assert ok.outcome is Outcome.CONFIGURED and ok.config.ue_service_id == "s-000003"
        missing = await get_config_via_gateway("127.0.0.1", gw.port, ue_uri=ue(720), timeout=20)
        assert missing.outcome is Outcome.NOT_FOUND and missing.problem.code == 0x84
        bad = await get_config_via_gateway("127.0.0.1", gw.port, ue_uri=ue(3), ue_type="11111111", timeout=20)
        assert bad.outcome is Outcome.ERROR and bad.code == 0x80
        large = await get_config_via_gateway("127.0.0.1", gw.port, ue_uri=ue(5000), timeout=20)
        assert large.outcome is Outcome.CONFIGURED and large.doc["configName"] == "x" * 1500
        assert gw.stats["cache-hits"] >= 1  # Block2 follow-ups are served from the cached answer


async def test_forbidden_ue_through_get_config_via_gateway(scm_server, tmp_path):
    provision(scm_server)
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=ServicePolicy(max_wait=0.05)) as (
        gw,
        _,
    ):
        r = await get_config_via_gateway("127.0.0.1", gw.port, ue_uri=ue(990), timeout=20)
        assert r.outcome is Outcome.FORBIDDEN and r.problem.code == 0x83


# -- garbage -------------------------------------------------------------------------------------------
async def test_garbage_from_constrained_ues_never_crashes_the_gateway(scm_server, tmp_path):
    provision(scm_server)
    async with running_gateway(scm_server.base_uri(), tmp_path, policy=ServicePolicy(max_wait=0.05)) as (
        gw,
        _,
    ):
        loop = asyncio.get_running_loop()
        replies: list[bytes] = []

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                replies.append(data)

        transport, _ = await loop.create_datagram_endpoint(Sink, remote_addr=("127.0.0.1", gw.port))
        rnd = random.Random(11)
        path = [(wire.OPT_URI_PATH, p.encode()) for p in (*wire.API_PATH, "msgin5g", wire.COLLECTION)]
        samples = [
            b"",
            b"\xff" * 40,
            b"\x40\x01\x12\x34",  # CON GET without anything
            b"\x4f\x01\x00\x01",  # token length 15
            wire.encode(wire.CoapMessage(wire.CON, 0x02, 2, b"t", path)),  # POST
            wire.encode(wire.CoapMessage(wire.CON, wire.GET, 3, b"t", [(wire.OPT_URI_PATH, b"x")])),
            wire.encode(
                wire.CoapMessage(wire.CON, wire.GET, 4, b"t", [*path, (wire.OPT_URI_QUERY, b"ue-uri=%%")])
            ),
            wire.encode(wire.CoapMessage(wire.CON, wire.GET, 5, b"t", [*path, (9, b"x")])),
            wire.encode(wire.CoapMessage(wire.CON, 0x45, 6, b"t", [], b"a response?")),
            wire.encode(wire.CoapMessage(wire.CON, 0x00, 7)),  # ping
            wire.encode(wire.CoapMessage(wire.ACK, 0x00, 8)),  # stray ACK
        ]
        samples += [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 80))) for _ in range(300)]
        for s in samples:
            transport.sendto(s)
        async with UeSwarm("127.0.0.1", gw.port, sockets=1, seed=12) as swarm:
            results = await swarm.run(requests_for([1, 2, 800, 950]), timeout=30)
        check_results(results, [1, 2, 800, 950])
        transport.close()
        codes = Counter(wire.decode(r).code for r in replies if len(r) >= 4)
        assert codes[0x85] >= 1 and codes[0x84] >= 1 and codes[0x80] >= 1 and codes[0x82] >= 1
        assert gw.stats["garbage"] > 0 and gw.stats["internal-errors"] == 0


# -- nothing lost ----------------------------------------------------------------------------------------
async def test_server_down_then_up(tmp_path):
    """The SCM-S is down: the gateway keeps every stored request and retries with back-off;
    once the server is up, every request is answered."""
    port = free_port()
    policy = ServicePolicy(max_batch=100, max_wait=0.05, retry_initial=0.2, retry_max=0.5)
    async with running_gateway(f"coap://127.0.0.1:{port}", tmp_path, policy=policy) as (gw, _):
        async with UeSwarm("127.0.0.1", gw.port, sockets=4, seed=13) as swarm:
            run = asyncio.ensure_future(swarm.run(requests_for(range(50)), timeout=60))
            while gw.stats["upstream-failures"] < 2:
                await asyncio.sleep(0.05)
            assert gw.queue.count() == 50
            srv = await start_server(
                ServerConfig(
                    port=port,
                    db_url=f"sqlite:///{tmp_path}/scm.db",
                    insecure=True,
                    service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
                )
            )
            try:
                provision(srv)
                results = await run
            finally:
                await srv.close()
        check_results(results)
        assert all(r.acked for r in results)


async def test_server_answering_5xx_is_retried(tmp_path):
    """A server answering 5.03 is retried like an unreachable one (nothing given up early)."""
    import aiocoap
    import aiocoap.resource

    calls = {"n": 0}
    srv = None

    class Flaky(aiocoap.resource.Resource):
        async def render_get(self, request):
            calls["n"] += 1
            return aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, payload=b"")

    site = aiocoap.resource.Site()
    site.add_resource(("su-uc", "v1", "val-services", "msgin5g", "ue-configurations"), Flaky())
    port = free_port()
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port), transports=["udp6"])
    policy = ServicePolicy(max_batch=100, max_wait=0.05, retry_initial=0.1, retry_max=0.2)
    try:
        async with (
            running_gateway(f"coap://127.0.0.1:{port}", tmp_path, policy=policy) as (gw, _),
            UeSwarm("127.0.0.1", gw.port, sockets=2, seed=14) as swarm,
        ):
            run = asyncio.ensure_future(swarm.run(requests_for(range(20)), timeout=60))
            while calls["n"] < 3:
                await asyncio.sleep(0.05)
            assert gw.queue.count() == 20 and not any(r.answers for r in swarm._results)
            await ctx.shutdown()
            ctx = None
            srv = await start_server(
                ServerConfig(
                    port=port,
                    db_url=f"sqlite:///{tmp_path}/scm.db",
                    insecure=True,
                    service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
                )
            )
            provision(srv)
            results = await run
        check_results(results)
    finally:
        if ctx is not None:
            await ctx.shutdown()
        if srv is not None:
            await srv.close()


async def test_request_past_give_up_time_gets_5_04(tmp_path):
    port = free_port()  # nobody there
    policy = ServicePolicy(max_batch=100, max_wait=0.05, retry_initial=0.1, retry_max=0.2, give_up=1.0)
    async with running_gateway(f"coap://127.0.0.1:{port}", tmp_path, policy=policy) as (gw, _):
        async with UeSwarm("127.0.0.1", gw.port, sockets=2, seed=15) as swarm:
            results = await swarm.run(requests_for(range(5)), timeout=30)
        for r in results:
            assert len(r.answers) == 1 and r.answers[0].code == 0xA4
            problem = decode_problem(r.answers[0].payload)
            assert problem.code == 0xA4 and problem.cause == "GAVE_UP"
        await gw.wait_idle(10)
        assert gw.queue.count() == 0


def _gateway_cmd(server_uri: str, port: int, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "msgin5g.cli",
        "gateway",
        "--listen",
        f"127.0.0.1:{port}",
        "--server",
        server_uri,
        "--state",
        str(state),
        *extra,
    ]


def _start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    line = proc.stdout.readline()
    assert "listening" in line, line + (proc.stdout.read() if proc.poll() is not None else "")
    return proc


async def test_gateway_kill_9_with_stored_requests(scm_server, tmp_path):
    """Requests stored but not yet answered survive ``kill -9``: after the restart every one of
    them is answered, to its token and endpoint (SPEC D9, nothing lost)."""
    provision(scm_server)
    port, state = free_port(), tmp_path / "gw-state.db"
    loop = asyncio.get_running_loop()
    # a policy that would hold the requests for ten minutes: they are stored, acknowledged, waiting
    proc = await loop.run_in_executor(
        None,
        _start,
        _gateway_cmd(scm_server.base_uri(), port, state, "--max-batch", "100000", "--max-wait-ms", "600000"),
    )
    try:
        async with UeSwarm("127.0.0.1", port, sockets=8, seed=16) as swarm:
            indices = list(range(0, 1000, 5))
            run = asyncio.ensure_future(swarm.run(requests_for(indices), timeout=60))
            while not all(r.acked for r in swarm._results) or len(swarm._results) < len(indices):
                await asyncio.sleep(0.02)
            assert not any(r.answers for r in swarm._results)
            os.kill(proc.pid, signal.SIGKILL)
            await loop.run_in_executor(None, proc.wait)
            proc = await loop.run_in_executor(
                None, _start, _gateway_cmd(scm_server.base_uri(), port, state, "--max-wait-ms", "50")
            )
            results = await run
            await swarm.settle(0.3)
        check_results(results, indices)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = await loop.run_in_executor(None, proc.communicate)
    assert f"{len(indices)} stored requests restored" in out or "restored" in out


async def test_separate_cm_client_process(scm_server, tmp_path):
    """``msgin5g cm-client`` as its own process; the gateway reaches it over SEAL-C (SPEC D10)."""
    provision(scm_server)
    loop = asyncio.get_running_loop()
    seal_port = free_port()
    cm = await loop.run_in_executor(
        None,
        _start,
        [
            sys.executable,
            "-m",
            "msgin5g.cli",
            "cm-client",
            "--listen",
            f"127.0.0.1:{seal_port}",
            "--server",
            scm_server.base_uri("coap+tcp"),
        ],
    )
    try:
        config = GatewayConfig(port=0, state_path=str(tmp_path / "gw.db"), policy=ServicePolicy(max_wait=0.1))
        gw = await GatewayUe(config, SealCClient(f"coap+tcp://127.0.0.1:{seal_port}")).start()
        try:
            indices = [*range(0, 100), *range(700, 720), *range(900, 920)]
            async with UeSwarm("127.0.0.1", gw.port, sockets=4, seed=17) as swarm:
                results = await swarm.run(requests_for(indices), timeout=60)
            check_results(results, indices)
        finally:
            await gw.close()
    finally:
        cm.send_signal(signal.SIGTERM)
        out, _ = await loop.run_in_executor(None, cm.communicate)
    assert '"bulk-gets": 1' in out


# -- the SCM-C and SEAL-C on their own ---------------------------------------------------------------
async def test_tcp_bulk_answer_larger_than_max_message_size(scm_server):
    """An answer above the Max-Message-Size (1 MiB) comes in BERT blocks; the SCM-C's follow-ups
    name only the bulk-conf-flag (SPEC D7 b) and the reassembled answer splits cleanly."""
    scm_server.store.import_docs("msgin5g", [make_doc(ranges=[{"tac": TAC}], service_id="s-{snr}")])
    scm_server.store.set_gateway("gw1", {"all": True})
    scm = UpstreamScmc(scm_server.base_uri("coap+tcp"), max_ues=6000)
    try:
        uris = [ue(i) for i in range(6000)]
        (o,) = await scm.bulk_configure("msgin5g", [BulkItem(u) for u in uris])
    finally:
        await scm.close()
    assert o.code == 0x45 and len(o.payload) > 1024 * 1024
    assert scm.stats["bulk-gets"] == 1 and scm.stats["block2-followups"] >= 1
    out = split(o.ue_uris, decode_answer(o.payload), o.max_age)
    assert len(out) == 6000
    for i, r in enumerate(out):
        assert r.code == 0x45
        (doc,) = cbor2.loads(r.payload)
        assert doc["valUeIds"] == {"uris": [ue(i)]}
        assert json.loads(doc["ueConfigs"][0]["configData"])["ueServiceId"] == f"s-{i:06d}"


async def test_bulk_get_above_server_maximum_is_split(tmp_path):
    """4.13 from the SCM-S (more UEs than its policy allows per bulk GET, SPEC D7): the SCM-C
    halves the bulk GET until it fits, and no UE is lost."""
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            insecure=True,
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}, bulk_max_ues=100),
        )
    )
    try:
        provision(srv)
        scm = UpstreamScmc(srv.base_uri("coap+tcp"), max_ues=1000)
        try:
            outcomes = await scm.bulk_configure("msgin5g", [BulkItem(ue(i)) for i in range(1000)])
        finally:
            await scm.close()
    finally:
        await srv.close()
    assert scm.stats["split-413"] >= 1 and all(o.code == 0x45 for o in outcomes)
    assert sorted(u for o in outcomes for u in o.ue_uris) == sorted(ue(i) for i in range(1000))
    for o in outcomes:
        for u, r in zip(o.ue_uris, split(o.ue_uris, decode_answer(o.payload)), strict=True):
            check_answer(int(u.split("-")[1]), r.code, r.content_format, r.payload)


async def test_seal_c_rejects_malformed_requests_and_reports_unreachable_cm_client(scm_server, coap):
    import aiocoap
    from aiocoap.numbers.codes import Code

    seal = await SealCServer(UpstreamScmc(scm_server.base_uri()), port=0).start()
    try:
        for payload, cf in ((b"\xff\x00", 60), (cbor2.dumps({"ueRequests": "x"}), 60), (b"{}", 50)):
            msg = aiocoap.Message(
                code=Code.FETCH,
                uri=f"{seal.uri}/seal-c/v1/bulk-configurations",
                payload=payload,
                content_format=cf,
            )
            resp = await asyncio.wait_for(coap.request(msg).response, 10)
            assert resp.code in (Code.BAD_REQUEST, Code.UNSUPPORTED_CONTENT_FORMAT)
            assert decode_problem(resp.payload).code == int(resp.code)
    finally:
        await seal.close()
    dead = SealCClient(f"coap+tcp://127.0.0.1:{free_port()}", timeout=5)
    try:
        outcomes = await dead.bulk_configure("msgin5g", [BulkItem(ue(1)), BulkItem(ue(2))])
        single = await dead.single_configure("msgin5g", wire.UeQuery(ue(1)))
    finally:
        await dead.close()
    assert [o.retryable for o in outcomes] == [True] and outcomes[0].ue_uris == (ue(1), ue(2))
    assert single.retryable and single.code is None
