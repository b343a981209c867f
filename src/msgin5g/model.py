"""SU_UeConfig data model (TS 24.546 C.3.1.3) and UE identities (SPEC D3).

Documents are kept as plain dicts — exactly the CBOR map that travels on the wire — so that
unknown keys (the CDDL ``* tstr => any`` extension points) survive every round trip untouched.
This module only *checks* them: :func:`validate_doc` raises :class:`ModelError` naming the
offending field, which the shells turn into a 4.00 problem (TS 24.546 C.1.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Anchored with \A...\Z: ``$`` would also match before a trailing newline ("12345678\n").
TAC_RE = re.compile(r"\A[0-9]{8}\Z")  # TypeAllocationCode, Table C.3.1.3.3.1-1
SNR_RE = re.compile(r"\A[0-9]{1,6}\Z")  # SerialNumber, leading zeros may be dropped
IMEI_URN_RE = re.compile(r"\Aurn:gsma:imei:([0-9]{8})-([0-9]{6})-([0-9])\Z", re.IGNORECASE)  # RFC 7254
URI_RE = re.compile(r"\A[A-Za-z][A-Za-z0-9+.\-]*:[^\s\x00-\x1f\x7f]+\Z")  # RFC 3986 scheme ":" hier-part

CONFIG_TYPE_COMMON = "COMMON"
CONFIG_TYPE_ON_NETWORK = "ON_NETWORK"
DOC_ID_KEY = "ueConfigDocId"
DOC_ID_KEY_CDDL = "UeConfigDocId"  # the CDDL's spelling (digest §10.1): accepted on input
VENDOR_KEY = "ueVendor"  # extension key: documents restricted to one vendor (digest §10.5, SPEC D4)
PROBLEM_KEY = "problem"  # extension key of a bulk stub entry (SPEC D6)


class ModelError(ValueError):
    """A document, query value or identity that violates the data model.

    ``field`` is a JSON-pointer-like path ("valUeIds/imeiRanges/0/tac") and ``cause`` a
    machine-readable cause for the problem details ``cause`` member.
    """

    def __init__(self, field: str, detail: str, cause: str = "INVALID_DOCUMENT"):
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail
        self.cause = cause


def snr_value(snr: str, field: str = "ue-snr") -> int:
    """Numeric value of a SerialNumber; compared numerically (Table C.3.1.3.3.1-1)."""
    if not isinstance(snr, str) or not SNR_RE.fullmatch(snr):
        raise ModelError(field, f"serial number must be 1 to 6 digits, got {snr!r}", "INVALID_SNR")
    return int(snr)


def check_tac(tac: Any, field: str = "ue-type") -> str:
    if not isinstance(tac, str) or not TAC_RE.fullmatch(tac):
        raise ModelError(field, f"type allocation code must be 8 digits, got {tac!r}", "INVALID_TAC")
    return tac


def check_uri(uri: Any, field: str = "ue-uri") -> str:
    if not isinstance(uri, str) or not URI_RE.fullmatch(uri):
        raise ModelError(field, f"not a URI: {uri!r}", "INVALID_URI")
    return uri


@dataclass(frozen=True, slots=True)
class UeIdentity:
    """The UE a configuration is resolved for (TS 23.554 8.1.2: MSGin5G UE ID = VAL UE ID).

    ``tac``/``snr`` come from the query (ue-type/ue-snr) or, per SPEC D3, from an IMEI URN.
    ``snr`` is kept numeric.
    """

    uri: str | None = None
    tac: str | None = None
    snr: int | None = None
    vendor: str | None = None

    @classmethod
    def from_query(
        cls,
        uri: str | None = None,
        tac: str | None = None,
        snr: str | None = None,
        vendor: str | None = None,
    ) -> UeIdentity:
        """Build and validate an identity from query values (SPEC D3: IMEI URNs give TAC + SNR)."""
        if uri is not None:
            check_uri(uri)
        if tac is not None:
            check_tac(tac)
        snr_num = snr_value(snr) if snr is not None else None
        if uri is not None:
            m = IMEI_URN_RE.fullmatch(uri)
            if m:
                urn_tac, urn_snr = m.group(1), int(m.group(2))
                if tac is not None and tac != urn_tac:
                    raise ModelError("ue-type", f"{tac} contradicts the TAC of {uri}", "IDENTITY_MISMATCH")
                if snr_num is not None and snr_num != urn_snr:
                    raise ModelError("ue-snr", f"{snr} contradicts the SNR of {uri}", "IDENTITY_MISMATCH")
                tac, snr_num = urn_tac, urn_snr
        if vendor is not None and not vendor:
            raise ModelError("ue-vendor", "empty vendor", "INVALID_VENDOR")
        return cls(uri=uri, tac=tac, snr=snr_num, vendor=vendor)

    @property
    def snr_text(self) -> str | None:
        """The SNR as six digits, as it stands in an IMEI (for placeholder expansion, D5)."""
        return None if self.snr is None else f"{self.snr:06d}"


def imei_urn(tac: str, snr: int) -> str:
    """RFC 7254 IMEI URN with its Luhn check digit, e.g. urn:gsma:imei:35209900-176148-1."""
    digits = f"{tac}{snr:06d}"
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    check = (10 - total % 10) % 10
    return f"urn:gsma:imei:{tac}-{snr:06d}-{check}"


def _non_empty_list(value: Any, field: str) -> list:
    if not isinstance(value, list) or not value:
        raise ModelError(field, "must be a non-empty array ([+ ...] in the CDDL)")
    return value


def _map(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise ModelError(field, "must be a map")
    for k in value:
        if not isinstance(k, str):
            raise ModelError(field, f"map keys must be text strings, got {k!r}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ModelError(field, f"must be a text string, got {type(value).__name__}")
    return value


def validate_imei_range(rng: Any, field: str) -> None:
    _map(rng, field)
    if "tac" not in rng:
        raise ModelError(f"{field}/tac", "mandatory attribute missing")
    check_tac(rng["tac"], f"{field}/tac")
    if "snrs" in rng:
        for j, s in enumerate(_non_empty_list(rng["snrs"], f"{field}/snrs")):
            snr_value(s, f"{field}/snrs/{j}")
    if "snrRange" in rng:
        sr = _map(rng["snrRange"], f"{field}/snrRange")
        for k in ("low", "high"):
            if k not in sr:
                raise ModelError(f"{field}/snrRange/{k}", "mandatory attribute missing")
        low = snr_value(sr["low"], f"{field}/snrRange/low")
        high = snr_value(sr["high"], f"{field}/snrRange/high")
        if low > high:
            raise ModelError(f"{field}/snrRange", f"low {low} is above high {high}")


def validate_doc(doc: Any) -> dict:
    """Check a UeConfigDoc against Table C.3.1.3.2.1-1 and the CDDL of C.3.1.5.

    Unknown keys are accepted and kept. A ``UeConfigDocId`` (CDDL spelling) is folded into
    ``ueConfigDocId``. Returns the (same) dict.
    """
    doc = _map(doc, "")
    if DOC_ID_KEY_CDDL in doc and DOC_ID_KEY not in doc:
        doc[DOC_ID_KEY] = doc.pop(DOC_ID_KEY_CDDL)
    if "valServiceDomain" not in doc:
        raise ModelError("valServiceDomain", "mandatory attribute missing", "MISSING_VAL_SERVICE_DOMAIN")
    if not _text(doc["valServiceDomain"], "valServiceDomain"):
        raise ModelError("valServiceDomain", "must not be empty", "MISSING_VAL_SERVICE_DOMAIN")
    for key in (DOC_ID_KEY, "configName", "valServiceId", VENDOR_KEY):
        if key in doc:
            _text(doc[key], key)
    if "valUeIds" in doc:
        ids = _map(doc["valUeIds"], "valUeIds")
        if "uris" not in ids and "imeiRanges" not in ids:
            # present but naming no UE: it would apply to nobody, which is never what was meant
            # (absent valUeIds is how a document applies to the whole domain, C.3.1.3.2.1)
            raise ModelError(
                "valUeIds",
                "names no UE (give uris and/or imeiRanges, or omit valUeIds)",
                "EMPTY_VAL_UE_IDS",
            )
        if "uris" in ids:
            for i, u in enumerate(_non_empty_list(ids["uris"], "valUeIds/uris")):
                check_uri(u, f"valUeIds/uris/{i}")
        if "imeiRanges" in ids:
            for i, rng in enumerate(_non_empty_list(ids["imeiRanges"], "valUeIds/imeiRanges")):
                validate_imei_range(rng, f"valUeIds/imeiRanges/{i}")
    if "ueConfigs" in doc:
        seen: set[str] = set()
        for i, cfg in enumerate(_non_empty_list(doc["ueConfigs"], "ueConfigs")):
            _map(cfg, f"ueConfigs/{i}")
            for k in ("configType", "configData"):
                if k not in cfg:
                    raise ModelError(f"ueConfigs/{i}/{k}", "mandatory attribute missing")
                _text(cfg[k], f"ueConfigs/{i}/{k}")
            if cfg["configType"] in seen:
                raise ModelError(
                    f"ueConfigs/{i}/configType",
                    f"two entries with configType {cfg['configType']!r}",
                    "DUPLICATE_CONFIG_TYPE",
                )
            seen.add(cfg["configType"])
    return doc


def on_network_config(doc: dict) -> dict | None:
    """The ``ON_NETWORK`` UeConfig of a document, which carries the MSGin5G content (SPEC D2)."""
    for cfg in doc.get("ueConfigs", ()):
        if cfg.get("configType") == CONFIG_TYPE_ON_NETWORK:
            return cfg
    return None
