"""Constrained UEs through the Relay UE offering RFC 9177 Q-Block2, at 30 % loss (SPEC D8, D13).

Real sockets on loopback: the SCM-S (serving Q-Block2 bursts), the relay in both modes, seeded
lossy legs on PC5 and Uu (:class:`~tests.integration.test_relay_lossy.LossyLeg`), and constrained
UEs (:class:`msgin5g.ue.constrained.ConstrainedUe`) that offer Q-Block2 and ask again with a new
exchange when one is lost (:mod:`msgin5g.ue.reask`). Each configured UE's answer is about 2.5 KB,
three blocks: the SCM-S sends them as a burst of NON responses on the UE's token, the relay relays
every one down on the UE's flow, and the UE's requests for missing blocks (NON, new tokens) go up.
No timing assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from msgin5g.coap import wire
from msgin5g.coap.qblock import QBlockParams
from msgin5g.coap.qblock_client import QBlockOffer
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.relay.shell import RelaySettings, start_relay
from msgin5g.security.endpoint import ClientProtection, forward_proxy_request
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig
from msgin5g.ue.constrained import ReaskPolicy
from msgin5g.ue.via_relay import CoapError, ConstrainedUe, config_query_uri, get_request, result_from_response

from .conftest import DOMAIN, make_doc
from .keyhelp import store_keys
from .test_relay_lossy import LOSS, SEED, LossyLeg

UES = 16
TAC = "35209900"
NO_DOCUMENT = {5, 11}  # these UEs have no document: 4.04 (TS 24.546 C.3.1.2.2.3.1)
DOCS_PER_UE = 4  # four applicable documents of ~600 bytes each: an answer of three 1,024-byte blocks
#: the UEs' timers, short so that the test takes seconds (RFC 7252 §4.8 and RFC 9177 §7.2 allow
#: configuring them); the SCM-S pauses 0.2 s between sets
REASK = ReaskPolicy(ack_timeout=0.5, give_up_wait=0.75)
OFFER = QBlockOffer(params=QBlockParams(non_receive_timeout=0.5, non_partial_timeout=60.0))


class CountingLeg(LossyLeg):
    """A lossy leg that also counts the Q-Block2 responses and requests crossing it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.qblock2 = {"up": 0, "down": 0}

    def _drops(self, direction: str, data: bytes) -> bool:
        with contextlib.suppress(wire.WireError):
            if wire.decode(data).first(wire.OPT_Q_BLOCK2) is not None:
                self.qblock2[direction] += 1
        return super()._drops(direction, data)


async def configure(pc5_addr, api_uri: str, i: int, security=None) -> tuple[list, int, int]:
    """One constrained UE: link, one GET offering Q-Block2 (asked again when lost), release; with
    ``security`` (its OSCORE context) the GET is protected end to end. Returns (the answers it got
    as (outcome, ueServiceId), exchanges, strays ignored)."""
    uri = config_query_uri(api_uri, "msgin5g", imei_urn(TAC, i))
    protection = None
    if security is not None:
        plain, outer = forward_proxy_request(uri)
        protection = ClientProtection(security, outer)
    ue = ConstrainedUe(
        *pc5_addr,
        l2_id=i + 1,
        user_info=f"ue{i}",
        rng=random.Random(SEED + i),
        reask=REASK,
        qblock=OFFER,
        protection=protection,
    )
    await ue.open()
    answers = []
    try:
        while not ue.linked:
            with contextlib.suppress(TimeoutError):
                await ue.establish_link(timeout=4.0)
        while not answers:
            request = plain.copy() if security is not None else get_request(uri, via_proxy=True)
            try:
                response = await ue.fetch(request, timeout=120.0)
            except CoapError:
                continue  # only a broken Q-Block2 transfer gets here: the UE asks again
            result = result_from_response(response)
            answers.append((result.outcome, result.config.ue_service_id if result.config else None))
        return answers, ue.exchanges, ue.ignored
    finally:
        with contextlib.suppress(TimeoutError, CoapError):
            await ue.release_link(timeout=2.0)
        await ue.close(release=False)


@pytest.mark.parametrize("mode", ["l3", "l2", "l3-oscore"])
async def test_q_block2_through_the_relay_at_30_percent_loss_every_ue_gets_its_outcome(tmp_path, mode):
    """``l3-oscore``: every UE's request protected end to end (SPEC D12), sent NON, each block
    response verified on its own; the relay sees only outer options."""
    secured = mode.endswith("-oscore")
    keys = {}
    if secured:
        names = {f"ue{i}": f"ue:{imei_urn(TAC, i)}" for i in range(UES)}
        keys = store_keys(tmp_path / "scm.db", names, tmp_path)
    srv = await start_server(
        ServerConfig(
            port=0,
            db_url=f"sqlite:///{tmp_path}/scm.db",
            insecure=not secured,
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
            qblock=QBlockParams(non_timeout=0.2),
        )
    )
    docs = [
        make_doc(uris=[imei_urn(TAC, i)], service_id=f"ue{i}@qblock", name=f"ue{i}-{k}-" + "x" * 400)
        for i in range(UES)
        if i not in NO_DOCUMENT
        for k in range(DOCS_PER_UE)
    ]
    srv.store.import_docs("msgin5g", docs)
    uu = CountingLeg("uu", ("127.0.0.1", srv.port), LOSS, SEED)
    relay = await start_relay(
        RelaySettings(
            server_uri=f"coap://127.0.0.1:{uu.address[1]}",
            listen_port=0,
            admin_host=None,
            mode=mode.split("-")[0],
            max_links=UES,
        )
    )
    pc5_leg = CountingLeg("pc5", relay.pc5_address, LOSS, SEED)
    try:
        api = f"coap://127.0.0.1:{uu.address[1]}"
        security = [keys[f"ue{i}"].security_context() if secured else None for i in range(UES)]
        runs = await asyncio.wait_for(
            asyncio.gather(*(configure(pc5_leg.address, api, i, security[i]) for i in range(UES))), 300
        )
        counters = relay.core.counters
    finally:
        await relay.close()
        pc5_leg.close()
        uu.close()
        await srv.close()
    # written from the provisioning: ue<i>@qblock for a UE with documents, 4.04 for the others;
    # each UE got exactly one answer
    expected = [
        [(Outcome.NOT_FOUND, None)] if i in NO_DOCUMENT else [(Outcome.CONFIGURED, f"ue{i}@qblock")]
        for i in range(UES)
    ]
    assert [answers for answers, _, _ in runs] == expected
    assert counters.errors.get("core", 0) == 0
    if secured:  # the block options are inner (RFC 8613 §4.1.3.4): no leg can count them
        assert pc5_leg.lost["down"] > 0 and uu.lost["down"] > 0 and uu.qblock2 == {"up": 0, "down": 0}
        return
    # the answers came as Q-Block2 bursts through the relay, blocks were lost and asked for again
    assert uu.qblock2["down"] > (UES - len(NO_DOCUMENT)) * 3 * (1 - LOSS)
    assert pc5_leg.qblock2["down"] > 0 and pc5_leg.lost["down"] > 0 and uu.lost["down"] > 0
    assert uu.qblock2["up"] > UES  # first requests offering Q-Block2, and requests for missing blocks
    print(
        f"\n[{mode}] {UES} UEs at {LOSS:.0%}: exchanges {sum(e for _, e, _ in runs)}, strays "
        f"{sum(s for _, _, s in runs)}; Q-Block2 up/down on Uu {uu.qblock2}, on PC5 {pc5_leg.qblock2}; "
        f"relay {counters.relayed_up} up, {counters.retransmitted_up} retransmitted, "
        f"{counters.relayed_down} down, ended {dict(counters.exchanges_ended)}"
    )
