"""The SCM-S against the demo's oracle, UE by UE, beyond what the demo's own fleet asks.

A real ``msgin5g server`` (insecure lab mode: identities claimed with the lab option, so one
process can ask as any UE and as a gateway) holds the hand-written documents of the oracle's unit
tests; every UE asks for its configuration as itself, with and without UE information claims,
for another UE, and through a gateway's registry entry. What the server answers must be what
:mod:`msgin5g.demo.oracle` — written from the SPEC alone — says.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from msgin5g.demo.oracle import outcome_for
from msgin5g.scmc import ScmClient

from ..unit.test_demo_oracle import (
    ALICE,
    BOB,
    IMEI_T2_5,
    IMEI_T_7,
    IMEI_T_42,
    IMEI_T_99,
    IMEI_T_100,
    IMEI_T_150,
    IMEI_T_199,
    IMEI_T_200,
    NARROW,
    T2,
    WIDE,
    T,
)
from .procs import MSGIN5G, ServerProcess

GATEWAY = "gw-oracle"
COVERAGE = {"imeiRanges": [{"tac": T, "snrRange": {"low": "0", "high": "149"}}], "uris": [ALICE]}
DOCS = {"narrow": NARROW, "wide": WIDE}
UES = [ALICE, BOB, IMEI_T_7, IMEI_T_42, IMEI_T_99, IMEI_T_100, IMEI_T_150, IMEI_T_199, IMEI_T_200, IMEI_T2_5]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('oracle') / 'scm.db'}"
    srv = ServerProcess(db, "--service-id", "narrow", "--service-id", "wide")
    gw = ["config", "gateway", "set", GATEWAY, "--tac", f"{T}:0-149", "--uri", ALICE, "--db", db]
    assert subprocess.run([MSGIN5G, *gw], capture_output=True, timeout=60).returncode == 0

    async def provision():
        for service, docs in DOCS.items():
            async with ScmClient(srv.api_root, service) as admin:
                for doc in docs:
                    await admin.create(doc)

    asyncio.run(provision())
    yield srv
    srv.stop()


async def ask(server, service, ue_uri, identity, **claims):
    async with ScmClient(server.api_root, service, identity=identity, timeout=10) as client:
        result = await client.get_config(ue_uri, **claims)
    return result.outcome, result.config.ue_service_id if result.config else None


def want(service, ue_uri, **kw):
    e = outcome_for(ue_uri, DOCS[service], **kw)
    return e.outcome, e.ue_service_id


@pytest.mark.parametrize("service", sorted(DOCS))
async def test_every_ue_asking_for_itself(server, service):
    for ue in UES:
        assert await ask(server, service, ue, f"ue:{ue}") == want(service, ue, requester=ue), ue


@pytest.mark.parametrize("service", sorted(DOCS))
async def test_every_ue_through_the_gateway(server, service):
    for ue in UES:
        got = await ask(server, service, ue, f"gateway:{GATEWAY}")
        assert got == want(service, ue, gateway_coverage=COVERAGE, via_gateway=True), ue


async def test_asking_for_another_ue(server):
    for asker, target in [(BOB, ALICE), (IMEI_T_7, IMEI_T_42), (IMEI_T_42, IMEI_T_200)]:
        got = await ask(server, "narrow", target, f"ue:{asker}")
        assert got == want("narrow", target, requester=asker), (asker, target)


async def test_claims_that_agree_with_the_imei(server):
    got = await ask(server, "narrow", IMEI_T_42, f"ue:{IMEI_T_42}", ue_type=T, ue_snr="000042")
    assert got == want("narrow", IMEI_T_42, requester=IMEI_T_42, ue_type=T, ue_snr="000042")


async def test_a_non_imei_ue_claiming_a_tac_gets_no_tac_document(server):
    got = await ask(server, "narrow", BOB, f"ue:{BOB}", ue_type=T2, ue_snr="5")
    assert got == want("narrow", BOB, requester=BOB, ue_type=T2, ue_snr="5")


async def test_a_gateway_cannot_widen_its_coverage_with_a_claim(server):
    got = await ask(server, "narrow", BOB, f"gateway:{GATEWAY}", ue_type=T, ue_snr="42")
    assert got == want("narrow", BOB, gateway_coverage=COVERAGE, via_gateway=True, ue_type=T, ue_snr="42")
