"""The SCM-S operations on parsed requests (TS 24.546 C.3.1.2, 6.2.3.4; SPEC D1-D7, D12).

No sockets and no aiocoap here: each operation takes an authenticated :class:`Identity` and
plain request values, consults the store and the pure modules (applicability, configdata,
authz, bulk), and returns a :class:`Reply` — a code, an encoded payload and the options the
shell must set. Errors are Replies built from a :class:`Problem`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import cbor2

from .. import authz, bulk
from ..applicability import applicable
from ..authz import Identity, Op, Role
from ..codec import CF_JSON, CodecError, decode, encode
from ..configdata import ExpansionError, expand_doc, validate_doc_config_data
from ..model import DOC_ID_KEY, ModelError, UeIdentity, validate_doc
from ..problem import CF_PROBLEM, Problem, ProblemError
from ..store import DocNotFound, Store, StoredDoc, VersionMismatch
from .requests import CollectionQuery, body_format, doc_path, response_format

CONTENT, CREATED, DELETED, VALID, CHANGED = 0x45, 0x41, 0x42, 0x43, 0x44


@dataclass
class Reply:
    code: int
    payload: bytes = b""
    content_format: int | None = None
    etag: bytes | None = None
    max_age: int | None = None
    location_path: tuple[str, ...] | None = None
    size1: int | None = None
    problem: Problem | None = None

    @classmethod
    def from_problem(cls, problem: Problem, max_age: int | None = None) -> Reply:
        size1 = problem.extra.get("size1")
        return cls(problem.code, problem.encode(), CF_PROBLEM, size1=size1, problem=problem, max_age=max_age)


@dataclass
class ServiceConfig:
    service_ids: tuple[str, ...] = ("msgin5g",)
    api_prefix: tuple[str, ...] = ()
    max_age: int = 300  # s; UE-scoped, bulk and individual answers (configurations change rarely)
    admin_max_age: int = 0  # s; admin listings are always revalidated
    max_body: int = 64 * 1024  # bytes of a POST/PUT body (4.13 + Size1 above)
    bulk_max_ues: int = 10_000  # per bulk GET (per-policy maximum, SPEC D7)
    bulk_cache_seconds: float = 120.0  # how long a rendered bulk answer is kept (SPEC D6)
    bulk_cache_entries: int = 256
    seal_cf: int | None = None  # Content-Format number configured for the SEAL media type
    seal_profile_cf: int | None = None  # the same for the user-profile media type (su-up, SPEC D16)
    service_domains: dict[str, str] = field(default_factory=dict)  # valServiceId → valServiceDomain


def etag_of(*parts: bytes | str) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.digest()


def doc_etag(stored: StoredDoc, ue: UeIdentity | None = None) -> bytes:
    """Entity tag of an individual document's state (independent of the Content-Format, so that
    If-Match works whichever format the client read)."""
    return etag_of(stored.service_id, stored.doc_id, str(stored.version), ue.uri if ue and ue.uri else "")


def resolve_for_ue(doc: dict, ue: UeIdentity) -> dict:
    """The document as served to one UE: placeholders expanded, valUeIds narrowed to that UE
    (SPEC D5, D6) so that no other UE's identity leaks through a shared document."""
    out = expand_doc(doc, ue)
    if ue.uri is not None:
        out = dict(out)
        out["valUeIds"] = {"uris": [ue.uri]}
    return out


class BulkAnswerCache:
    """Rendered bulk answers by (requester, bulk-conf-flag), kept for a short time so that Block2
    follow-ups, RFC 9177 recoveries and retransmissions see one stable representation (SPEC D6, D7 b).

    Kept in the store (:mod:`msgin5g.store.shared`) so that whichever SCM-S process or node a
    follow-up reaches can serve it (SPEC D14), with a small in-process front for the common case
    of follow-ups reaching the process that rendered the answer. Times are wall-clock seconds
    because several nodes compare them.
    """

    def __init__(self, store: Store, ttl: float, max_entries: int, clock=time.time):
        self.store, self.ttl, self.max_entries, self.clock = store, ttl, max_entries, clock
        self._entries: OrderedDict[tuple, tuple[float, bytes, Reply]] = OrderedDict()

    @staticmethod
    def _row_key(key: tuple) -> tuple[str, str]:
        *requester, flag = key
        return cbor2.dumps(requester).hex(), flag

    def get(self, key: tuple) -> tuple[bytes, Reply] | None:
        now = self.clock()
        item = self._entries.get(key)
        if item is not None and item[0] >= now:
            return item[1], item[2]
        self._entries.pop(key, None)
        row = self.store.get_bulk_answer(*self._row_key(key), now)
        if row is None:
            return None
        code, payload, cf, etag, max_age = cbor2.loads(row[1])
        return row[0], Reply(code, payload, cf, etag, max_age)

    def put(self, key: tuple, qhash: bytes, reply: Reply) -> None:
        expires = self.clock() + self.ttl
        blob = cbor2.dumps([reply.code, reply.payload, reply.content_format, reply.etag, reply.max_age])
        self.store.put_bulk_answer(*self._row_key(key), qhash, blob, expires)
        self._entries[key] = (expires, qhash, reply)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class ScmService:
    """SU_UeConfig operations over one store."""

    def __init__(self, store: Store, config: ServiceConfig | None = None):
        self.store = store
        self.config = config or ServiceConfig()
        self.bulk_cache = BulkAnswerCache(
            store, self.config.bulk_cache_seconds, self.config.bulk_cache_entries
        )
        self.counters: dict[str, int] = {}

    # -- helpers ------------------------------------------------------------------------------------
    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def check_service(self, service_id: str) -> None:
        if service_id not in self.config.service_ids:
            raise ProblemError(Problem(0x84, f"unknown valServiceId {service_id!r}", "UNKNOWN_SERVICE"))

    def _encode(self, value, cf: int) -> bytes:
        return encode(value, CF_JSON if cf == CF_JSON else 60)

    def _content(self, value, accept: int | None, etag: bytes | None, max_age: int, if_etags=()) -> Reply:
        cf = response_format(accept, self.config.seal_cf)
        payload = self._encode(value, cf)
        # collections: a hash of the payload; documents: of their state and the format
        etag = etag_of(payload) if etag is None else etag_of(etag, str(cf))
        if etag in if_etags:
            return Reply(VALID, etag=etag, max_age=max_age)
        return Reply(CONTENT, payload, cf, etag=etag, max_age=max_age)

    def _coverage(self, identity: Identity) -> dict | None:
        return self.store.get_gateway(identity.name) if identity.role is Role.GATEWAY else None

    def decode_doc(self, body: bytes, content_format: int | None) -> dict:
        """Body → validated UeConfigDoc (4.13 / 4.15 / 4.00 as problems)."""
        if len(body) > self.config.max_body:
            raise ProblemError(
                Problem(
                    0x8D,
                    f"body of {len(body)} bytes exceeds the limit of {self.config.max_body}",
                    "BODY_TOO_LARGE",
                    extra={"size1": self.config.max_body},
                )
            )
        fmt = body_format(content_format, self.config.seal_cf)
        try:
            doc = decode(body, fmt, model=True)
        except CodecError as e:
            raise ProblemError(Problem(0x80, str(e), "MALFORMED_BODY")) from None
        try:
            validate_doc(doc)
            validate_doc_config_data(doc)
        except ModelError as e:
            raise ProblemError(Problem(0x80, str(e), e.cause)) from None
        return doc

    # -- collection ---------------------------------------------------------------------------------
    def collection_get(
        self,
        identity: Identity,
        service_id: str,
        query: CollectionQuery,
        accept: int | None = None,
        if_etags: tuple[bytes, ...] = (),
    ) -> Reply:
        """GET on UE Configurations (C.3.1.2.2.3.1): UE-scoped (D4) or admin any-match."""
        try:
            self.check_service(service_id)
            if query.is_bulk:
                raise ProblemError(Problem(0x80, "bulk GET must go through bulk_get", "INTERNAL"))
            if query.is_scoped:
                return self._scoped_get(identity, service_id, query, accept, if_etags)
            problem = authz.authorize(identity, Op.QUERY_UNSCOPED)
            if problem:
                return Reply.from_problem(problem)
            try:
                probe = UeIdentity.from_query(tac=query.tac, snr=query.snr, vendor=query.vendor)
            except ModelError as e:
                raise ProblemError(Problem(0x80, str(e), e.cause)) from None
            docs = self.store.query_any(service_id, tac=probe.tac, snr=probe.snr, vendor=probe.vendor)
            self._count("admin-queries")
            return self._content([d.doc for d in docs], accept, None, self.config.admin_max_age, if_etags)
        except ProblemError as e:
            return Reply.from_problem(e.problem)

    def _scoped_get(self, identity, service_id, query, accept, if_etags) -> Reply:
        try:
            ue = authz.requested_ue(identity, query.uris[0], query.tac, query.snr, query.vendor)
        except ModelError as e:
            return Reply.from_problem(Problem(0x80, str(e), e.cause))
        problem = authz.authorize(identity, Op.QUERY_SCOPED, ue=ue, coverage=self._coverage(identity))
        if problem:
            self._count("scoped-forbidden")
            return Reply.from_problem(problem)
        docs = self.resolve(service_id, ue, self.store.candidates(service_id, ue))
        if not docs:
            self._count("scoped-not-found")
            return Reply.from_problem(Problem(0x84, "no configuration for this UE", "NO_CONFIGURATION"))
        self._count("scoped-ok")
        return self._content(docs, accept, None, self.config.max_age, if_etags)

    def resolve(self, service_id: str, ue: UeIdentity, candidates: list[StoredDoc]) -> list[dict]:
        """Applicable documents for one UE, most specific first, resolved for it (D4, D5).
        A document whose placeholders cannot be filled for this UE is skipped."""
        out = []
        for stored in applicable(candidates, ue, key=lambda s: s.doc):
            try:
                out.append(resolve_for_ue(stored.doc, ue))
            except ExpansionError:
                self._count("expansion-skipped")
        return out

    def bulk_get(
        self,
        identity: Identity,
        requester_key: tuple,
        service_id: str,
        query: CollectionQuery,
        accept: int | None = None,
    ) -> Reply:
        """Bulk GET (TS 24.538 6.2.2.x; SPEC D6, D7): one entry per requested UE, in order.

        The full rendered answer is returned; the shell slices Block2 blocks from it. A follow-up
        naming only the flag is served from the cache (4.08 when it expired)."""
        try:
            self.check_service(service_id)
            key = (requester_key, service_id, query.bulk_flag)
            qhash = etag_of(*query.raw)
            cached = self.bulk_cache.get(key)
            if query.is_bulk_followup:
                if cached is None:
                    return Reply.from_problem(
                        Problem(0x88, "no bulk answer is kept for this bulk-conf-flag", "BULK_ANSWER_EXPIRED")
                    )
                return cached[1]
            if cached is not None and cached[0] == qhash:
                self._count("bulk-replayed")
                return cached[1]
            reply = self._render_bulk(identity, service_id, query, accept)
            if reply.code == CONTENT:
                self.bulk_cache.put(key, qhash, reply)
            return reply
        except ProblemError as e:
            return Reply.from_problem(e.problem)

    def _render_bulk(self, identity, service_id, query, accept) -> Reply:
        if not query.uris:
            raise ProblemError(Problem(0x80, "a bulk GET needs at least one ue-uri", "NO_UE"))
        if len(query.uris) > self.config.bulk_max_ues:
            raise ProblemError(
                Problem(
                    0x8D,
                    f"{len(query.uris)} UEs in one bulk GET; "
                    f"this server's policy allows {self.config.bulk_max_ues}",
                    "BULK_TOO_LARGE",
                )
            )
        problem = authz.authorize(identity, Op.BULK)
        if problem:
            return Reply.from_problem(problem)
        ues = []
        for i, uri in enumerate(query.uris):
            try:
                ues.append(authz.requested_ue(identity, uri, query.tac, None, query.vendor))
            except ModelError as e:
                raise ProblemError(Problem(0x80, f"ue-uri #{i}: {e}", e.cause)) from None
        coverage = self._coverage(identity)
        allowed = [identity.role is Role.ADMIN or authz.gateway_covers(coverage, ue) for ue in ues]
        lookups = self.store.candidates_many(
            service_id, [ue for ue, ok in zip(ues, allowed, strict=True) if ok]
        )
        it = iter(lookups)
        domain = self._default_domain(service_id)
        entries = []
        counts = {"ok": 0, "forbidden": 0, "not-found": 0}
        for ue, ok in zip(ues, allowed, strict=True):
            if not ok:
                entries.append(bulk.stub_entry(domain, ue.uri, authz.forbidden_ue_problem()))
                counts["forbidden"] += 1
                continue
            docs = self.resolve(service_id, ue, next(it))
            if docs:
                entries.append(docs[0])
                counts["ok"] += 1
            else:
                entries.append(
                    bulk.stub_entry(
                        domain, ue.uri, Problem(0x84, "no configuration for this UE", "NO_CONFIGURATION")
                    )
                )
                counts["not-found"] += 1
        self._count("bulk-requests")
        for k, v in counts.items():
            self._count(f"bulk-{k}", v)
        return self._content(entries, accept, None, self.config.max_age)

    def _default_domain(self, service_id: str) -> str:
        """valServiceDomain of a stub entry (SPEC D6): the configured domain of the service."""
        return self.config.service_domains.get(service_id, service_id)

    def collection_post(
        self, identity: Identity, service_id: str, body: bytes, content_format: int | None, accept: int | None
    ) -> tuple[Reply, StoredDoc | None]:
        """POST (C.3.1.2.2.3.2): create → 2.01 with Location-Path and the stored document."""
        try:
            self.check_service(service_id)
            problem = authz.authorize(identity, Op.CREATE)
            if problem:
                return Reply.from_problem(problem), None
            doc = self.decode_doc(body, content_format)
            named = doc.get(DOC_ID_KEY)
            if named is not None and self.store.get(service_id, named) is not None:
                raise ProblemError(
                    Problem(
                        0x80,
                        f"ueConfigDocId {named!r} already exists; the SCM-S sets the id of a new "
                        "document (C.3.1.3.2.1) — to replace that one, PUT it",
                        "DOCUMENT_ID_EXISTS",
                    )
                )
            cf = response_format(accept, self.config.seal_cf)
            stored = self.store.create(service_id, doc)
            self._count("created")
            return (
                Reply(
                    CREATED,
                    self._encode(stored.doc, cf),
                    cf,
                    etag=etag_of(doc_etag(stored), str(cf)),
                    location_path=doc_path(self.config.api_prefix, service_id, stored.doc_id),
                ),
                stored,
            )
        except ProblemError as e:
            return Reply.from_problem(e.problem), None

    # -- individual document ------------------------------------------------------------------------
    def _existing(self, service_id: str, doc_id: str) -> StoredDoc:
        self.check_service(service_id)
        stored = self.store.get(service_id, doc_id)
        if stored is None:
            raise ProblemError(Problem(0x84, f"no UE configuration document {doc_id!r}", "NO_SUCH_DOCUMENT"))
        return stored

    def _readable(self, identity: Identity, service_id: str, doc_id: str) -> StoredDoc:
        """The document an individual GET / Observe names, if ``identity`` may read it (SPEC D12:
        a non-administrator cannot tell a missing document from another UE's)."""
        self.check_service(service_id)
        stored = self.store.get(service_id, doc_id)
        missing = Problem(0x84, f"no UE configuration document {doc_id!r}", "NO_SUCH_DOCUMENT")
        problem = authz.authorize_doc(identity, stored.doc if stored else None, missing)
        if problem is not None:
            raise ProblemError(problem)
        assert stored is not None
        return stored

    def may_observe(self, identity: Identity, service_id: str, doc_id: str) -> bool:
        try:
            self._readable(identity, service_id, doc_id)
        except ProblemError:
            return False
        return True

    def doc_get(
        self, identity: Identity, service_id: str, doc_id: str, accept: int | None, if_etags=()
    ) -> Reply:
        """GET on an individual document (C.3.1.2.3.3.1); a UE gets it resolved for itself."""
        try:
            stored = self._readable(identity, service_id, doc_id)
            if identity.role is Role.UE:
                ue = identity.ue
                try:
                    doc = resolve_for_ue(stored.doc, ue)
                except ExpansionError as e:
                    return Reply.from_problem(Problem(0x84, str(e), "NO_CONFIGURATION"))
                return self._content(doc, accept, doc_etag(stored, ue), self.config.max_age, if_etags)
            return self._content(stored.doc, accept, doc_etag(stored), self.config.max_age, if_etags)
        except ProblemError as e:
            return Reply.from_problem(e.problem)

    def _check_if_match(self, stored: StoredDoc, if_match: tuple[bytes, ...]) -> None:
        """If-Match (RFC 7252 §5.10.8.1): an empty value matches any existing representation."""
        if not if_match:
            return
        formats = {60, CF_JSON} | ({self.config.seal_cf} if self.config.seal_cf else set())
        current = {b""} | {etag_of(doc_etag(stored), str(cf)) for cf in formats}
        if not any(m in current for m in if_match):
            raise ProblemError(
                Problem(0x8C, "If-Match does not match the current document", "PRECONDITION_FAILED")
            )

    def doc_put(
        self,
        identity: Identity,
        service_id: str,
        doc_id: str,
        body: bytes,
        content_format: int | None,
        accept: int | None,
        if_match: tuple[bytes, ...] = (),
        if_none_match: bool = False,
    ) -> tuple[Reply, StoredDoc | None]:
        """PUT (C.3.1.2.3.3.2): replace → 2.04 with the stored document; If-None-Match on the
        existing document → 4.12 (RFC 7252 §5.10.8.2)."""
        try:
            problem = authz.authorize(identity, Op.UPDATE)
            if problem:
                return Reply.from_problem(problem), None
            stored = self._existing(service_id, doc_id)
            if if_none_match:
                raise ProblemError(Problem(0x8C, "If-None-Match: the document exists", "PRECONDITION_FAILED"))
            doc = self.decode_doc(body, content_format)
            named = doc.get(DOC_ID_KEY)
            if named is not None and named != doc_id:
                raise ProblemError(
                    Problem(
                        0x80,
                        f"the body's ueConfigDocId {named!r} is not the document addressed ({doc_id!r})",
                        "DOCUMENT_ID_MISMATCH",
                    )
                )
            self._check_if_match(stored, if_match)
            cf = response_format(accept, self.config.seal_cf)
            try:
                new = self.store.replace(service_id, doc_id, doc, expected_version=stored.version)
            except VersionMismatch:
                raise ProblemError(
                    Problem(0x8C, "the document changed while it was being replaced", "PRECONDITION_FAILED")
                ) from None
            except DocNotFound:
                raise ProblemError(
                    Problem(0x84, f"no UE configuration document {doc_id!r}", "NO_SUCH_DOCUMENT")
                ) from None
            self._count("replaced")
            return Reply(CHANGED, self._encode(new.doc, cf), cf, etag=etag_of(doc_etag(new), str(cf))), new
        except ProblemError as e:
            return Reply.from_problem(e.problem), None

    def doc_delete(
        self, identity: Identity, service_id: str, doc_id: str, if_match: tuple[bytes, ...] = ()
    ) -> tuple[Reply, StoredDoc | None]:
        """DELETE (C.3.1.2.3.3.3) → 2.02."""
        try:
            problem = authz.authorize(identity, Op.DELETE)
            if problem:
                return Reply.from_problem(problem), None
            stored = self._existing(service_id, doc_id)
            self._check_if_match(stored, if_match)
            try:
                gone = self.store.delete(service_id, doc_id, expected_version=stored.version)
            except (DocNotFound, VersionMismatch):
                raise ProblemError(
                    Problem(0x8C, "the document changed while it was being deleted", "PRECONDITION_FAILED")
                ) from None
            self._count("deleted")
            return Reply(DELETED), gone
        except ProblemError as e:
            return Reply.from_problem(e.problem), None
