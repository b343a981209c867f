"""The demo's oracle pinned to hand-written answers (SPEC §3.1, D3–D6, D12; TS 24.546 7.2.5).

Every expected value below is written down from the SPEC, not computed: the oracle is what the
demo judges the server with, so it must be right on its own.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from msgin5g.demo import oracle
from msgin5g.demo.oracle import Expectation, expected, outcome_for
from msgin5g.demo.plan import Path as UePath
from msgin5g.demo.plan import PlannedUe
from msgin5g.outcome import Outcome

C, F, N = Outcome.CONFIGURED, Outcome.FORBIDDEN, Outcome.NOT_FOUND
T, T2 = "35209900", "86000000"
ALICE, BOB = "sip:alice@operator.example", "sip:bob@operator.example"
# IMEI URNs written out (RFC 7254; the check digit is the Luhn digit of the 14 digits)
IMEI_T_7 = "urn:gsma:imei:35209900-000007-1"
IMEI_T_42 = "urn:gsma:imei:35209900-000042-8"
IMEI_T_99 = "urn:gsma:imei:35209900-000099-8"
IMEI_T_100 = "urn:gsma:imei:35209900-000100-4"
IMEI_T_150 = "urn:gsma:imei:35209900-000150-9"
IMEI_T_199 = "urn:gsma:imei:35209900-000199-6"
IMEI_T_200 = "urn:gsma:imei:35209900-000200-2"
IMEI_T2_5 = "urn:gsma:imei:86000000-000005-8"


def on_network(ue_service_id: str) -> list[dict]:
    data = json.dumps({"msgin5gServerAddress": "coap://m.example", "ueServiceId": ue_service_id})
    return [{"configType": "COMMON", "configData": "x"}, {"configType": "ON_NETWORK", "configData": data}]


def doc(name: str, ue_service_id: str, val_ue_ids: dict | None) -> dict:
    d = {"configName": name, "valServiceDomain": "d.example", "ueConfigs": on_network(ue_service_id)}
    if val_ue_ids is not None:
        d["valUeIds"] = val_ue_ids
    return d


URI_DOC = doc("uri", "by-uri", {"uris": [ALICE, IMEI_T_150]})
LISTED = doc("listed", "listed-{snr}", {"imeiRanges": [{"tac": T, "snrs": ["42", "0007"]}]})
RANGE = doc(
    "range", "range-{tac}-{snr}", {"imeiRanges": [{"tac": T, "snrRange": {"low": "000100", "high": "199"}}]}
)
TAC2 = doc("tac2", "tac2-{snr}", {"imeiRanges": [{"tac": T2}]})
TAC = doc("tac", "tac-{snr}", {"imeiRanges": [{"tac": T}]})
DOMAIN = doc("domain", "all-{ueUri}", None)
NARROW = [URI_DOC, LISTED, RANGE, TAC2]  # no TAC-only document for T, nothing domain-wide
WIDE = [DOMAIN, TAC, *NARROW]  # the wide documents first: order of the list must not matter


def cfg(sid: str) -> Expectation:
    return Expectation(C, sid)


@pytest.mark.parametrize(
    ("ue", "docs", "want"),
    [
        # URI listed (rank 1), also over a range covering the same UE
        (ALICE, NARROW, cfg("by-uri")),
        (IMEI_T_150, NARROW, cfg("by-uri")),
        (IMEI_T_150, WIDE, cfg("by-uri")),
        # serial number listed, leading zeros dropped in the list ("0007" is 7)
        (IMEI_T_42, NARROW, cfg("listed-000042")),
        (IMEI_T_7, NARROW, cfg("listed-000007")),
        # serial number range, both edges inclusive, the low edge written with leading zeros
        (IMEI_T_100, NARROW, cfg("range-35209900-000100")),
        (IMEI_T_199, NARROW, cfg("range-35209900-000199")),
        (IMEI_T_99, NARROW, Expectation(N)),
        (IMEI_T_200, NARROW, Expectation(N)),
        # TAC only
        (IMEI_T2_5, NARROW, cfg("tac2-000005")),
        (IMEI_T_200, WIDE, cfg("tac-000200")),
        (IMEI_T_100, WIDE, cfg("range-35209900-000100")),  # a serial number beats the TAC alone
        # domain-wide: every UE of the domain, the least specific
        (BOB, WIDE, cfg(f"all-{BOB}")),
        (ALICE, WIDE, cfg("by-uri")),
        # nothing applicable
        (BOB, NARROW, Expectation(N)),
    ],
)
def test_which_document(ue, docs, want):
    assert outcome_for(ue, docs, requester=ue) == want


def test_claims_narrow_never_widen():
    """SPEC D3 (revised): TAC and serial number only from the UE's own IMEI URN."""
    # a UE that is not an IMEI URN claiming a TAC and serial: no TAC or serial-number document
    assert outcome_for(BOB, NARROW, requester=BOB, ue_type=T2, ue_snr="5") == Expectation(N)
    assert outcome_for(BOB, NARROW, requester=BOB, ue_type=T, ue_snr="000042") == Expectation(N)
    assert outcome_for(BOB, WIDE, requester=BOB, ue_type=T) == cfg(f"all-{BOB}")
    # claims that agree with the URN change nothing (leading zeros or not)
    assert outcome_for(IMEI_T_42, NARROW, requester=IMEI_T_42, ue_type=T, ue_snr="42") == cfg("listed-000042")
    assert outcome_for(IMEI_T_42, NARROW, requester=IMEI_T_42, ue_snr="000042") == cfg("listed-000042")


def test_placeholders_the_ue_cannot_fill_pass_the_document_over():
    per_snr = doc("per-snr", "x-{snr}", None)
    assert outcome_for(BOB, [per_snr], requester=BOB) == Expectation(N)
    assert outcome_for(BOB, [per_snr, doc("plain", "plain", None)], requester=BOB) == cfg("plain")
    assert outcome_for(IMEI_T_7, [per_snr], requester=IMEI_T_7) == cfg("x-000007")


COVERAGE = {"imeiRanges": [{"tac": T, "snrRange": {"low": "0", "high": "149"}}], "uris": [ALICE]}


@pytest.mark.parametrize(
    ("ue", "coverage", "want"),
    [
        (IMEI_T_42, COVERAGE, cfg("listed-000042")),
        (ALICE, COVERAGE, cfg("by-uri")),
        (IMEI_T_99, COVERAGE, Expectation(N)),  # covered, nothing provisioned
        (IMEI_T_150, COVERAGE, Expectation(F)),  # configured, but not the gateway's: withheld
        (IMEI_T_200, COVERAGE, Expectation(F)),  # neither: 4.03 reveals nothing
        (BOB, COVERAGE, Expectation(F)),
        (IMEI_T2_5, {"imeiRanges": [{"tac": T2}]}, cfg("tac2-000005")),
        (IMEI_T_150, {"all": True}, cfg("by-uri")),
        (IMEI_T_42, None, Expectation(F)),  # a gateway without a registry entry
        (IMEI_T_42, {"imeiRanges": [{"tac": T, "snrs": ["0042"]}]}, cfg("listed-000042")),
    ],
)
def test_gateway_coverage_comes_first(ue, coverage, want):
    assert outcome_for(ue, NARROW, gateway_coverage=coverage, via_gateway=True) == want


def test_gateway_coverage_by_tac_does_not_cover_a_non_imei_ue():
    """A gateway covering a TAC does not read, for a UE that is not an IMEI URN, what a ue-type
    claim would suggest (SPEC D3, D12)."""
    tac_only = {"imeiRanges": [{"tac": T}]}
    assert outcome_for(BOB, WIDE, gateway_coverage=tac_only, via_gateway=True, ue_type=T) == Expectation(F)


def test_a_ue_reads_only_its_own_configuration():
    assert outcome_for(ALICE, NARROW, requester=BOB) == Expectation(F)
    assert outcome_for(IMEI_T_200, NARROW, requester=IMEI_T_42) == Expectation(F)  # even without config
    assert outcome_for(ALICE, NARROW, requester=None) == cfg("by-uri")  # no UE identity (lab admin)


def test_expected_for_planned_ues():
    """The demo's own UEs: relay and direct UEs under their identity, gateway UEs under the gateway's."""
    mine = PlannedUe(IMEI_T_42, UePath.RELAY, "sensor", IMEI_T_42, f"ue:{IMEI_T_42}")
    impostor = PlannedUe(IMEI_T_7, UePath.RELAY, "impostor", IMEI_T_42, f"ue:{IMEI_T_7}")
    behind_gw = PlannedUe(IMEI_T_150, UePath.GATEWAY, "outside-gateway", IMEI_T_150)
    phone = PlannedUe(ALICE, UePath.DIRECT, "phone", ALICE, f"ue:{ALICE}")
    assert expected(mine, NARROW, COVERAGE) == cfg("listed-000042")
    assert expected(impostor, NARROW, COVERAGE) == Expectation(F)
    assert expected(behind_gw, NARROW, COVERAGE) == Expectation(F)
    assert expected(behind_gw, NARROW, {"all": True}) == cfg("by-uri")
    assert expected(phone, NARROW, COVERAGE) == cfg("by-uri")
    assert [e.code for e in (cfg("x"), Expectation(F), Expectation(N))] == ["2.05", "4.03", "4.04"]


def test_oracle_imports_none_of_the_code_it_judges():
    tree = ast.parse(Path(oracle.__file__).read_text())
    imported = {
        (node.module or "") + "." + alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    forbidden = ("applicability", "authz", "configdata", "bulk", "model", "store", "server")
    assert not [name for name in imported if any(part in forbidden for part in name.split("."))], imported
