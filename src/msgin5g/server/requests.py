"""Parsing of SU_UeConfig requests into plain values (TS 24.546 C.3.1.2; SPEC D1, D6).

Pure: takes option values (strings, ints) and returns typed values or raises ProblemError with
the right code (4.00 wrong parameters, 4.06 Accept, 4.15 Content-Format).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import api
from ..api import SU_UC
from ..bulk import BULK_FLAG_PARAM
from ..codec import CF_CBOR, CF_JSON
from ..problem import Problem, ProblemError

API_NAME, API_VERSION = SU_UC, api.API_VERSION
QUERY_PARAMS = api.QUERY_PARAMS  # Table C.3.1.2.2.3.1-1


@dataclass(frozen=True)
class CollectionQuery:
    """The query of a collection GET. ``uris`` has one entry for a UE-scoped query and one per
    constrained UE for a bulk GET (``bulk_flag`` set)."""

    uris: tuple[str, ...] = ()
    vendor: str | None = None
    tac: str | None = None
    snr: str | None = None
    bulk_flag: str | None = None
    raw: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_bulk(self) -> bool:
        return self.bulk_flag is not None

    @property
    def is_scoped(self) -> bool:
        return not self.is_bulk and bool(self.uris)

    @property
    def is_bulk_followup(self) -> bool:
        """A Block2 follow-up naming only the bulk configuration identifier (SPEC D7 b)."""
        return (
            self.is_bulk and not self.uris and self.vendor is None and self.tac is None and self.snr is None
        )


def _bad(detail: str, cause: str = "INVALID_QUERY") -> ProblemError:
    return ProblemError(Problem(0x80, detail, cause))


def parse_collection_query(uri_query: tuple[str, ...] | list[str]) -> CollectionQuery:
    """Uri-Query options → CollectionQuery. Each parameter is 0..1, except ``ue-uri`` which
    repeats in a bulk GET (after one ``bulk-conf-flag``, SPEC D6)."""
    values: dict[str, list[str]] = {}
    for item in uri_query:
        name, sep, value = item.partition("=")
        if not sep:
            raise _bad(f"query option {item!r} is not name=value")
        if name == api.Q_BULK_FLAG_SEED:  # the seed's spelling of the flag (SPEC D6)
            name = BULK_FLAG_PARAM
        if name not in QUERY_PARAMS and name != BULK_FLAG_PARAM:
            raise _bad(f"unknown query parameter {name!r}", "UNKNOWN_QUERY_PARAMETER")
        if not value:
            raise _bad(f"query parameter {name!r} is empty")
        values.setdefault(name, []).append(value)
    for name, vals in values.items():
        if len(vals) > 1 and name != "ue-uri":
            raise _bad(f"query parameter {name!r} given {len(vals)} times (cardinality 0..1)")
    bulk_flag = values.get(BULK_FLAG_PARAM, [None])[0]
    uris = tuple(values.get("ue-uri", ()))
    if bulk_flag is None and len(uris) > 1:
        raise _bad(f"ue-uri given {len(uris)} times without {BULK_FLAG_PARAM} (cardinality 0..1)")
    if bulk_flag is not None and "ue-snr" in values:
        raise _bad("ue-snr is per UE and cannot be given in a bulk GET")
    return CollectionQuery(
        uris=uris,
        vendor=values.get("ue-vendor", [None])[0],
        tac=values.get("ue-type", [None])[0],
        snr=values.get("ue-snr", [None])[0],
        bulk_flag=bulk_flag,
        raw=tuple(uri_query),
    )


def response_format(accept: int | None, seal_cf: int | None = None) -> int:
    """Content-Format label of a representation for an Accept option (SPEC D1): CBOR (60) unless
    JSON (50) or the configured SEAL media type number (CBOR-encoded) is asked for."""
    if accept is None:
        return CF_CBOR
    if accept in (CF_CBOR, CF_JSON) or (seal_cf is not None and accept == seal_cf):
        return accept
    raise ProblemError(
        Problem(0x86, f"cannot produce Content-Format {accept}; use 60 (CBOR) or 50 (JSON)", "NOT_ACCEPTABLE")
    )


def body_format(content_format: int | None, seal_cf: int | None = None) -> int:
    """How to decode a request body (SPEC D1); a missing Content-Format is read as CBOR."""
    if content_format is None or content_format == CF_CBOR:
        return CF_CBOR
    if seal_cf is not None and content_format == seal_cf:
        return CF_CBOR
    if content_format == CF_JSON:
        return CF_JSON
    raise ProblemError(
        Problem(
            0x8F,
            f"Content-Format {content_format} is not supported; send 60 (CBOR) or 50 (JSON)",
            "UNSUPPORTED_CONTENT_FORMAT",
        )
    )


@dataclass(frozen=True)
class Target:
    """What a request path names below ``{apiRoot}/su-uc/v1``."""

    service_id: str
    doc_id: str | None = None  # None → the collection


def parse_path(path: tuple[str, ...], prefix: tuple[str, ...]) -> Target | None:
    """``{prefix}/su-uc/v1/val-services/{valServiceId}/ue-configurations[/{ueConfigDocId}]``;
    None when the path names nothing of ours (→ 4.04)."""
    n = len(prefix)
    if tuple(path[:n]) != tuple(prefix):
        return None
    rest = tuple(path[n:])
    if len(rest) not in (5, 6) or rest[:3] != (API_NAME, API_VERSION, "val-services"):
        return None
    if rest[4] != "ue-configurations" or not rest[3]:
        return None
    if len(rest) == 6:
        return Target(rest[3], rest[5]) if rest[5] else None
    return Target(rest[3])


def doc_path(prefix: tuple[str, ...], service_id: str, doc_id: str) -> tuple[str, ...]:
    """The absolute path segments of an individual document (for Location-Path, RFC 7252 §5.10.7)."""
    return (*prefix, API_NAME, API_VERSION, "val-services", service_id, "ue-configurations", doc_id)
