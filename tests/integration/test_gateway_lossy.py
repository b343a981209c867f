"""The Gateway UE on lossy links (SPEC D13; issue "lossy radio links"): 30 % loss each way.

Real loopback sockets, a real SCM-S and a real request store; between the UEs and the gateway
(MSGin5G-6) and between the gateway and the SCM-S (Uu over UDP, unsecured and OSCORE) sits the
demo's lossy forwarder
(:class:`msgin5g.demo.lossy.UdpLeg`) with a seeded loss pattern. Each constrained UE runs the
ordinary procedure (:func:`msgin5g.ue.via_gateway.get_config_via_gateway`: RFC 7252 CON with
retransmissions) and, like a device, starts it again after its own time-out — a new port, a new
message ID and token, which the gateway must treat as a repeat that supersedes (D13).

What each UE must get is written down from the provisioning below, not computed by server code:
UE 0..13 a document of their own range with ``ueServiceId`` ``s-<serial>`` (UE 5 a document of
its own, ``special-5``), UE 14..16 nothing (4.04), UE 17..19 are outside the gateway's registry
(4.03). Zero duplicate answers: no exchange is answered twice (the gateway's answer log).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from msgin5g.demo.lossy import UdpLeg
from msgin5g.gateway.policy import ServicePolicy
from msgin5g.gateway.shell import GatewayConfig, GatewayUe
from msgin5g.gateway.upstream import UpstreamScmc
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig
from msgin5g.ue.via_gateway import get_config_via_gateway

from .conftest import DOMAIN, make_doc
from .keyhelp import store_keys

TAC = "35209900"
N_UES = 20
LOSS = 0.3
ATTEMPT_TIMEOUT = 30.0  # s a UE waits for its answer before it asks again
DEADLINE = 240.0  # s a UE keeps trying

#: The expected outcome of each UE, from the provisioning in :func:`provision`.
EXPECTED: dict[int, tuple[Outcome, str | None]] = {
    **{i: (Outcome.CONFIGURED, f"s-{i:06d}") for i in range(14)},
    5: (Outcome.CONFIGURED, "special-5"),
    **{i: (Outcome.NOT_FOUND, None) for i in (14, 15, 16)},
    **{i: (Outcome.FORBIDDEN, None) for i in (17, 18, 19)},
}


def ue(i: int) -> str:
    return imei_urn(TAC, i)


def provision(srv) -> None:
    docs = [
        make_doc(ranges=[{"tac": TAC, "snrRange": {"low": "0", "high": "13"}}], service_id="s-{snr}"),
        make_doc(uris=[ue(5)], service_id="special-5"),
    ]
    srv.store.import_docs("msgin5g", docs)
    srv.store.set_gateway("gw1", {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "16"}}]})


async def configure(addr: tuple[str, int], i: int) -> tuple[Outcome, str | None, int]:
    """One constrained UE's procedure, started again after each time-out (a device's retry)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    attempts = 0
    while True:
        attempts += 1
        r = await get_config_via_gateway(addr[0], addr[1], ue_uri=ue(i), timeout=ATTEMPT_TIMEOUT)
        if r.outcome is not Outcome.ERROR or loop.time() > deadline:
            sid = r.config.ue_service_id if r.config else None
            return r.outcome, sid, attempts
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def lossy_leg(name: str, target: tuple[str, int], seed: int):
    leg = UdpLeg(name, target, LOSS, seed)
    try:
        yield leg
    finally:
        leg.close()


@pytest.mark.parametrize(
    ("bulk", "scheme"),
    [(True, "coap"), (True, "coap+tcp"), (False, "coap"), (False, "coap+tcp")],
    ids=["bulk-udp", "bulk-tcp", "per-ue-udp", "per-ue-tcp"],
)
async def test_every_ue_gets_exactly_its_outcome_at_30_percent_loss(scm_server, tmp_path, bulk, scheme):
    await run_fleet(scm_server, tmp_path, bulk, scheme)


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk-udp", "per-ue-udp"])
async def test_secured_uu_at_30_percent_loss_every_ue_gets_exactly_its_outcome(tmp_path, bulk):
    """The gateway authenticates to the SCM-S with OSCORE (SPEC D12) over the lossy UDP Uu leg:
    every request and every block response (Q-Block2 burst, missing blocks) protected on its own."""
    gw_key = store_keys(tmp_path / "scm.db", {"gw1": "gateway:gw1"}, tmp_path)["gw1"]
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
        )
    )
    try:
        await run_fleet(srv, tmp_path, bulk, "coap", credentials=gw_key)
    finally:
        await srv.close()


async def run_fleet(scm_server, tmp_path, bulk: bool, scheme: str, credentials=None) -> None:
    provision(scm_server)
    async with contextlib.AsyncExitStack() as stack:
        if scheme == "coap":  # Uu over UDP through a lossy leg (TCP is reliable: no loss to model)
            uu = await stack.enter_async_context(lossy_leg("uu", (scm_server.host, scm_server.port), 11))
            server = f"coap://{uu.address[0]}:{uu.address[1]}"
        else:
            server = scm_server.base_uri(scheme)
        config = GatewayConfig(
            port=0,
            state_path=str(tmp_path / "gw.db"),
            policy=ServicePolicy(bulk=bulk, max_wait=0.2),
            record_answers=True,
        )
        gw = await GatewayUe(config, UpstreamScmc(server, gateway_id="gw1", credentials=credentials)).start()
        stack.push_async_callback(gw.close)
        m6 = await stack.enter_async_context(lossy_leg("msgin5g-6", ("127.0.0.1", gw.port), 22))
        results = await asyncio.gather(*(configure(m6.address, i) for i in range(N_UES)))
        got = {i: (outcome, sid) for i, (outcome, sid, _) in enumerate(results)}
        assert got == EXPECTED
        # no exchange answered twice; repeats superseded what they repeated (SPEC D13)
        answered = Counter(gw.answer_log)
        assert all(n == 1 for n in answered.values()), answered.most_common(3)
        attempts = sum(a for _, _, a in results)
        assert gw.stats["stored"] <= attempts
        assert m6.counters.up.lost > 0 and m6.counters.down.lost > 0  # the loss did happen
        if scheme == "coap":  # a bulk burst is a handful of datagrams up: the loss may spare them
            assert uu.counters.up.lost + uu.counters.down.lost > 0
        # nothing lost: every request still stored has had its answer sent (the rest await an ACK
        # that a departed UE will not send, until MAX_TRANSMIT_WAIT)
        await asyncio.sleep(0.1)
        assert gw.queue.count("stored") == 0 and gw.core.policy.unanswered == 0
