"""The document store interface shared by the SQLite and PostgreSQL back ends.

A store keeps UeConfigDocs per VAL service id, plus the gateway registry (which Gateway UE may
bulk-configure which UEs; SPEC D6/D12). It never decides applicability: :meth:`Store.candidates`
returns a *superset* found through indexes (by URI, by TAC + SNR interval, domain-wide) and
:mod:`msgin5g.applicability` makes the exact decision and ordering (SPEC D4).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..model import DOC_ID_KEY, UeIdentity
from .shared import DocChange

SNR_MAX = 999_999


class StoreError(Exception):
    """Base of store failures the shells map to CoAP codes."""


class DocNotFound(StoreError):
    pass


class VersionMismatch(StoreError):
    """Compare-and-set failed: the document changed since the caller read it (→ 4.12)."""


@dataclass(frozen=True, slots=True)
class StoredDoc:
    service_id: str
    doc_id: str
    version: int  # starts at 1, +1 on every replace
    doc: dict  # the UeConfigDoc, with ueConfigDocId set


def new_doc_id() -> str:
    """ueConfigDocId assigned by the SCM-S (C.3.1.3.2.1: "set by the SCM-S")."""
    return uuid.uuid4().hex[:16]


def index_rows(doc: dict) -> list[tuple[str, str, int, int]]:
    """Index entries (kind, key, lo, hi) for one document — one per way it can apply (TS 24.546 7.2.5).

    kind "uri": key = URI; kind "tac": key = TAC, [lo, hi] = SNR interval (a whole TAC is
    [0, 999999]); kind "all": a document without valUeIds (domain-wide).
    """
    ids = doc.get("valUeIds")
    if ids is None:
        return [("all", "", 0, SNR_MAX)]
    rows: list[tuple[str, str, int, int]] = [("uri", u, 0, 0) for u in ids.get("uris", ())]
    for rng in ids.get("imeiRanges", ()):
        tac = rng["tac"]
        if "snrs" not in rng and "snrRange" not in rng:
            rows.append(("tac", tac, 0, SNR_MAX))
            continue
        rows.extend(("tac", tac, int(s), int(s)) for s in rng.get("snrs", ()))
        if "snrRange" in rng:
            rows.append(("tac", tac, int(rng["snrRange"]["low"]), int(rng["snrRange"]["high"])))
    return rows


def with_id(doc: dict, doc_id: str) -> dict:
    d = dict(doc)
    d.pop("UeConfigDocId", None)
    d[DOC_ID_KEY] = doc_id
    return d


class Store(ABC):
    """Synchronous store API; each call is one short transaction."""

    #: True when calls cross a network (the SCM-S then runs them on a thread pool, SPEC D14)
    networked: bool = False
    #: A database URL on which changes are announced with LISTEN/NOTIFY (PostgreSQL), else None
    listen_url: str | None = None

    # -- documents -------------------------------------------------------------------------------
    @abstractmethod
    def create(self, service_id: str, doc: dict) -> StoredDoc:
        """Insert a validated document under a fresh id (any id in ``doc`` is replaced)."""

    @abstractmethod
    def get(self, service_id: str, doc_id: str) -> StoredDoc | None: ...

    @abstractmethod
    def replace(
        self, service_id: str, doc_id: str, doc: dict, expected_version: int | None = None
    ) -> StoredDoc:
        """Replace a document; raises DocNotFound, or VersionMismatch when expected_version differs."""

    @abstractmethod
    def delete(self, service_id: str, doc_id: str, expected_version: int | None = None) -> StoredDoc:
        """Delete and return the deleted document; raises DocNotFound / VersionMismatch."""

    @abstractmethod
    def candidates(self, service_id: str, ue: UeIdentity) -> list[StoredDoc]:
        """Documents that may apply to ``ue``, found by index: URI match, TAC match whose SNR
        interval contains ue.snr (any interval when ue.snr is None), domain-wide. Each at most once."""

    def candidates_many(self, service_id: str, ues: list[UeIdentity]) -> list[list[StoredDoc]]:
        """:meth:`candidates` for many UEs at once (bulk GET, SPEC D6); back ends may batch."""
        return [self.candidates(service_id, ue) for ue in ues]

    @abstractmethod
    def query_any(
        self,
        service_id: str,
        *,
        uri: str | None = None,
        tac: str | None = None,
        snr: int | None = None,
        vendor: str | None = None,
    ) -> list[StoredDoc]:
        """Admin query, Table C.3.1.2.2.3.1-2 literally: documents matching ANY given parameter
        (uri in valUeIds.uris; tac equal to an imeiRanges tac; snr inside an snrs list/snrRange;
        vendor equal to the ueVendor extension key); no parameter → every document."""

    @abstractmethod
    def iter_all(self, service_id: str) -> Iterator[StoredDoc]: ...

    @abstractmethod
    def count(self, service_id: str) -> int: ...

    @abstractmethod
    def import_docs(self, service_id: str, docs: Iterable[dict]) -> list[str]:
        """Insert many validated documents in ONE transaction (all or nothing); returns their ids."""

    # -- gateway registry (SPEC D6, D12) ------------------------------------------------------------
    @abstractmethod
    def set_gateway(self, gateway_id: str, coverage: dict) -> None:
        """Register/replace a gateway's coverage: {"all": true} or a ValUeIds-shaped map
        {"uris": [...], "imeiRanges": [...]}."""

    @abstractmethod
    def get_gateway(self, gateway_id: str) -> dict | None: ...

    @abstractmethod
    def list_gateways(self) -> dict[str, dict]: ...

    @abstractmethod
    def delete_gateway(self, gateway_id: str) -> bool: ...

    # -- state shared by every SCM-S process and node (SPEC D14; :mod:`.shared`) ----------------------
    @abstractmethod
    def change_cursor(self) -> int:
        """The ``seq`` of the newest committed change (0 when none): where a new watcher starts."""

    @abstractmethod
    def changes_since(self, cursor: int, limit: int = 1000) -> list[DocChange]:
        """Committed replaces and deletes after ``cursor``, oldest first (at most ``limit``)."""

    @abstractmethod
    def prune_changes(self, upto: int) -> None:
        """Forget change rows up to and including ``upto``."""

    @abstractmethod
    def put_bulk_answer(self, requester: str, flag: str, qhash: bytes, reply: bytes, expires: float) -> None:
        """Keep a rendered bulk answer for (requester, bulk-conf-flag) until ``expires`` (epoch s)."""

    @abstractmethod
    def get_bulk_answer(self, requester: str, flag: str, now: float) -> tuple[bytes, bytes] | None:
        """(qhash, reply) kept for (requester, flag) and not expired at ``now``, else None."""

    # -- VAL user profiles (TS 24.546 C.2; SPEC D16): implemented once, for both back ends, by
    # msgin5g.store.profiles.ProfileStoreMixin ------------------------------------------------------
    def create_profile(self, service_id: str, doc: dict) -> StoredDoc:
        raise NotImplementedError

    def get_profile(self, service_id: str, doc_id: str) -> StoredDoc | None:
        raise NotImplementedError

    def replace_profile(
        self, service_id: str, doc_id: str, doc: dict, expected_version: int | None = None
    ) -> StoredDoc:
        raise NotImplementedError

    def delete_profile(self, service_id: str, doc_id: str, expected_version: int | None = None) -> StoredDoc:
        raise NotImplementedError

    def profiles_for(self, service_id: str, ident: str, kind: str | None = None) -> list[StoredDoc]:
        raise NotImplementedError

    def count_profiles(self, service_id: str) -> int:
        raise NotImplementedError

    def iter_profiles(self, service_id: str) -> Iterator[StoredDoc]:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
