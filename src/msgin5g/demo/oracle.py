"""What each UE of the demo must get, written down from the SPEC alone (§3.1, D3–D6, D12).

The demo judges the wire with this oracle, so it must not ask the code under test: it imports
none of the server's applicability, authorization, configuration-data or bulk modules (nor the
model's matching helpers) and restates their rules in a few lines of its own:

* **Identity (D3).** A UE's TAC and serial number come only from its own IMEI URN
  (``urn:gsma:imei:TTTTTTTT-SSSSSS-C``, RFC 7254). ``ue-type`` / ``ue-snr`` in its query can
  narrow that, never widen it: a UE whose ID is not an IMEI URN never matches a TAC- or
  serial-number-scoped document, whatever it claims.
* **Authorization first (D12, TS 24.546 6.2.1.2).** Through a gateway, a UE outside the gateway's
  registry entry is withheld: 4.03, whether or not a configuration exists. A UE asking under its
  own identity for another UE's configuration: 4.03.
* **Which document (TS 24.546 7.2.5; D4).** Most specific first: the UE's URI listed, then its
  serial number listed or in a range (compared as numbers: leading zeros may be dropped) under its
  TAC, then its TAC alone, then a document without ``valUeIds`` (the whole domain). None: 4.04.
* **Its values (D2, D5).** The first document's ``ON_NETWORK`` configData, with ``{ueUri}``,
  ``{tac}`` and ``{snr}`` (six digits) filled in for the UE; a document whose placeholders this
  UE cannot fill is passed over.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..outcome import Outcome
from .plan import Path, PlannedUe

_IMEI_URN = re.compile(r"urn:gsma:imei:(\d{8})-(\d{6})-\d", re.IGNORECASE)
RANK_URI, RANK_SNR, RANK_TAC, RANK_DOMAIN = range(4)


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the provisioning implies for one UE: the outcome and, on 2.05, its UE Service ID."""

    outcome: Outcome
    ue_service_id: str | None = None

    @property
    def code(self) -> str:
        return {Outcome.CONFIGURED: "2.05", Outcome.FORBIDDEN: "4.03", Outcome.NOT_FOUND: "4.04"}.get(
            self.outcome, "-"
        )


def imei_of(ue_uri: str, ue_type: str | None = None, ue_snr: str | None = None) -> tuple[str, int] | None:
    """(TAC, serial number) of a UE from its own IMEI URN, narrowed by its claims (SPEC D3);
    None when the UE has none (not an IMEI URN, or a claim that contradicts it)."""
    m = _IMEI_URN.fullmatch(ue_uri)
    if m is None:
        return None  # claims never widen: no TAC, no serial number
    tac, snr = m.group(1), int(m.group(2))
    if (ue_type is not None and ue_type != tac) or (ue_snr is not None and int(ue_snr) != snr):
        return None
    return tac, snr


def _imei_rank(ranges: list[dict], imei: tuple[str, int] | None) -> int | None:
    """How an ``imeiRanges`` list matches the UE's IMEI (TS 24.546 7.2.5), or None."""
    best = None
    for r in ranges if imei else ():
        if r.get("tac") != imei[0]:
            continue
        low_high = (int(r["snrRange"]["low"]), int(r["snrRange"]["high"])) if "snrRange" in r else None
        if "snrs" not in r and low_high is None:
            rank = RANK_TAC
        elif imei[1] in {int(s) for s in r.get("snrs", ())} or (
            low_high and low_high[0] <= imei[1] <= low_high[1]
        ):
            rank = RANK_SNR
        else:
            continue
        best = rank if best is None else min(best, rank)
    return best


def rank(doc: dict, ue_uri: str, imei: tuple[str, int] | None) -> int | None:
    """How specifically ``doc`` applies to the UE (lower: more specific; SPEC D4), or None."""
    ids = doc.get("valUeIds")
    if ids is None:
        return RANK_DOMAIN
    if ue_uri in ids.get("uris", ()):
        return RANK_URI
    return _imei_rank(ids.get("imeiRanges", []), imei)


def covers(coverage: dict | None, ue_uri: str, imei: tuple[str, int] | None) -> bool:
    """Whether a gateway's registry entry covers the UE (SPEC D12): all, its URI, or its IMEI."""
    coverage = coverage or {}
    return (
        coverage.get("all") is True
        or ue_uri in coverage.get("uris", ())
        or _imei_rank(coverage.get("imeiRanges", []), imei) is not None
    )


def ue_service_id(doc: dict, ue_uri: str, imei: tuple[str, int] | None) -> str | None:
    """The UE Service ID ``doc`` gives the UE (SPEC D2, D5); None if a placeholder cannot be filled."""
    cfg = next((c for c in doc.get("ueConfigs", ()) if c["configType"] == "ON_NETWORK"), None)
    if cfg is None:
        raise ValueError(f"{doc.get('configName', 'a document')} has no ON_NETWORK configuration (SPEC D2)")
    data = cfg["configData"]
    value = (json.loads(data) if isinstance(data, str) else data)["ueServiceId"]
    fill = {"{ueUri}": ue_uri, "{tac}": imei and imei[0], "{snr}": imei and f"{imei[1]:06d}"}
    for placeholder, text in fill.items():
        if placeholder in value:
            if text is None:
                return None
            value = value.replace(placeholder, text)
    return value


def outcome_for(
    ue_uri: str,
    documents: list[dict],
    *,
    requester: str | None = None,
    gateway_coverage: dict | None = None,
    via_gateway: bool = False,
    ue_type: str | None = None,
    ue_snr: str | None = None,
) -> Expectation:
    """The answer to a §3.1 GET for ``ue_uri``: asked by the UE ``requester`` (its MSGin5G UE ID;
    None: no identity of a UE, e.g. the lab administrator), or by a gateway with ``gateway_coverage``
    (``via_gateway``)."""
    imei = imei_of(ue_uri, ue_type, ue_snr)
    if via_gateway and not covers(gateway_coverage, ue_uri, imei):
        return Expectation(Outcome.FORBIDDEN)
    if not via_gateway and requester is not None and requester != ue_uri:
        return Expectation(Outcome.FORBIDDEN)
    ranked = sorted(
        ((r, i) for i, doc in enumerate(documents) if (r := rank(doc, ue_uri, imei)) is not None),
    )
    for _, i in ranked:
        sid = ue_service_id(documents[i], ue_uri, imei)
        if sid is not None:
            return Expectation(Outcome.CONFIGURED, sid)
    return Expectation(Outcome.NOT_FOUND)


def expected(ue: PlannedUe, documents: list[dict], gateway_coverage: dict | None) -> Expectation:
    """The outcome a UE of the demo's fleet must get: through the gateway under the gateway's
    identity, otherwise under its own (``ue:<MSGin5G UE ID>``) or, in the plan, none."""
    requester = ue.identity.removeprefix("ue:") if ue.identity else None
    return outcome_for(
        ue.asks_for,
        documents,
        requester=requester,
        gateway_coverage=gateway_coverage,
        via_gateway=ue.path is Path.GATEWAY,
    )
