"""Which documents apply to a UE, most specific first (TS 24.546 7.2.5; SPEC D3, D4).

Pure functions over plain documents. The store narrows candidates through its indexes; this
module makes the exact decision and the ordering:

    rank 0  the UE's URI is in valUeIds.uris
    rank 1  an ImeiRange with the UE's TAC lists its SNR (snrs) or covers it (snrRange)
    rank 2  an ImeiRange with the UE's TAC and neither snrs nor snrRange (every UE of the TAC)
    rank 3  no valUeIds at all: every UE of the domain

A document restricted to a vendor (extension key ``ueVendor``) applies only to UEs that state
exactly that vendor. Ties keep a stable order by document id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from .model import VENDOR_KEY, UeIdentity

RANK_URI, RANK_SNR, RANK_TAC, RANK_DOMAIN = 0, 1, 2, 3
RANK_NAMES = {RANK_URI: "uri", RANK_SNR: "snr", RANK_TAC: "tac", RANK_DOMAIN: "domain"}


def _range_rank(rng: dict, ue: UeIdentity) -> int | None:
    if ue.tac is None or rng.get("tac") != ue.tac:
        return None
    snrs = rng.get("snrs")
    snr_range = rng.get("snrRange")
    if snrs is None and snr_range is None:
        return RANK_TAC
    if ue.snr is None:
        return None
    if snrs is not None and any(int(s) == ue.snr for s in snrs):
        return RANK_SNR
    if snr_range is not None and int(snr_range["low"]) <= ue.snr <= int(snr_range["high"]):
        return RANK_SNR
    return None


def specificity(doc: dict, ue: UeIdentity) -> int | None:
    """The rank by which ``doc`` applies to ``ue`` (lower = more specific), or None."""
    vendor = doc.get(VENDOR_KEY)
    if vendor is not None and vendor != ue.vendor:
        return None
    ids = doc.get("valUeIds")
    if ids is None:
        return RANK_DOMAIN
    best: int | None = None
    if ue.uri is not None and ue.uri in ids.get("uris", ()):
        return RANK_URI
    for rng in ids.get("imeiRanges", ()):
        r = _range_rank(rng, ue)
        if r is not None and (best is None or r < best):
            best = r
    return best


T = TypeVar("T")


def applicable(docs: Iterable[T], ue: UeIdentity, key=lambda d: d) -> list[T]:
    """The applicable subset of ``docs`` ordered most specific first (SPEC D4).

    ``key`` maps an item to its document dict (items may be StoredDoc or plain dicts).
    """
    ranked = []
    for item in docs:
        doc = key(item)
        r = specificity(doc, ue)
        if r is not None:
            ranked.append((r, doc.get("ueConfigDocId", ""), item))
    ranked.sort(key=lambda t: (t[0], t[1]))
    return [item for _, _, item in ranked]


def matches_any(
    doc: dict,
    *,
    uri: str | None = None,
    tac: str | None = None,
    snr: int | None = None,
    vendor: str | None = None,
) -> bool:
    """Admin query semantics, Table C.3.1.2.2.3.1-2 literally: match ANY given parameter; none → all."""
    if uri is None and tac is None and snr is None and vendor is None:
        return True
    ids = doc.get("valUeIds") or {}
    if uri is not None and uri in ids.get("uris", ()):
        return True
    if vendor is not None and doc.get(VENDOR_KEY) == vendor:
        return True
    for rng in ids.get("imeiRanges", ()):
        if tac is not None and rng.get("tac") == tac:
            return True
        if snr is not None:
            if any(int(s) == snr for s in rng.get("snrs", ())):
                return True
            sr = rng.get("snrRange")
            if sr is not None and int(sr["low"]) <= snr <= int(sr["high"]):
                return True
    return False
