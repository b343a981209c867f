"""The SU_UserProfile operations on parsed requests (TS 24.546 C.2.1.2; SPEC D1, D12, D16).

No sockets and no aiocoap, like :mod:`msgin5g.server.service`: each operation takes an
authenticated :class:`~msgin5g.authz.Identity` and plain request values, consults the store and
the pure rules of :mod:`msgin5g.profiles`, and returns a :class:`~msgin5g.server.service.Reply`.
Errors are Replies built from a :class:`~msgin5g.problem.Problem` with a ``cause``; nothing is
written unless every check passed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import api, profiles
from ..authz import Identity
from ..codec import CF_CBOR, CF_JSON, CodecError, decode, encode
from ..model import ModelError
from ..problem import Problem, ProblemError
from ..store import DocNotFound, Store, StoredDoc, VersionMismatch
from .requests import body_format, response_format
from .service import CHANGED, CONTENT, CREATED, DELETED, VALID, Reply, ServiceConfig, etag_of


@dataclass(frozen=True)
class ProfileRequest:
    """The plain values of one su-up request that the operations need."""

    accept: int | None = None
    content_format: int | None = None
    etags: tuple[bytes, ...] = ()  # ETag options of a GET (2.03 Valid when one matches)
    if_match: tuple[bytes, ...] = ()
    if_none_match: bool = False
    payload: bytes = b""


def profile_etag(stored: StoredDoc) -> bytes:
    """Entity tag of a profile's state, independent of the Content-Format (so that If-Match works
    whichever format the client read) and distinct from any UE configuration's."""
    return etag_of(api.SU_UP, stored.service_id, stored.doc_id, str(stored.version))


def _missing(doc_id: str) -> Problem:
    return Problem(0x84, f"no user profile {doc_id!r}", "NO_SUCH_PROFILE")


class ProfileService:
    """SU_UserProfile operations over one store; configured like the SU_UeConfig service (the same
    service ids, prefix, Max-Age and body limit). ``seal_cf`` is the Content-Format number of
    ``application/vnd.3gpp.seal-user-profile-info+cbor`` when one is configured (digest §10.7)."""

    def __init__(self, store: Store, config: ServiceConfig, seal_cf: int | None = None):
        self.store = store
        self.config = config
        self.seal_cf = seal_cf
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- helpers ------------------------------------------------------------------------------------
    def check_service(self, service_id: str) -> None:
        if service_id not in self.config.service_ids:
            raise ProblemError(Problem(0x84, f"unknown valServiceId {service_id!r}", "UNKNOWN_SERVICE"))

    def _format(self, accept: int | None) -> int:
        return response_format(accept, self.seal_cf)

    def _etag(self, stored: StoredDoc, cf: int) -> bytes:
        return etag_of(profile_etag(stored), str(cf))

    def _representation(self, code: int, stored: StoredDoc, accept: int | None, **kw) -> Reply:
        cf = self._format(accept)
        payload = encode(stored.doc, CF_JSON if cf == CF_JSON else CF_CBOR)
        return Reply(code, payload, cf, etag=self._etag(stored, cf), **kw)

    def decode_profile(self, body: bytes, content_format: int | None) -> dict:
        """Body → validated ProfileDoc (4.13 / 4.15 / 4.00 as problems)."""
        if len(body) > self.config.max_body:
            raise ProblemError(
                Problem(
                    0x8D,
                    f"body of {len(body)} bytes exceeds the limit of {self.config.max_body}",
                    "BODY_TOO_LARGE",
                    extra={"size1": self.config.max_body},
                )
            )
        fmt = body_format(content_format, self.seal_cf)
        try:
            doc = decode(body, fmt)
        except (CodecError, RecursionError) as e:
            raise ProblemError(Problem(0x80, f"malformed body: {e}", "MALFORMED_BODY")) from None
        try:
            return profiles.validate_profile_doc(doc)
        except ModelError as e:
            raise ProblemError(Problem(0x80, str(e), e.cause)) from None

    def _existing(self, service_id: str, doc_id: str) -> StoredDoc:
        self.check_service(service_id)
        stored = self.store.get_profile(service_id, doc_id)
        if stored is None:
            raise ProblemError(_missing(doc_id))
        return stored

    def _check_preconditions(self, stored: StoredDoc, req: ProfileRequest) -> None:
        """If-None-Match on an existing profile (RFC 7252 §5.10.8.2) and If-Match that names no
        current representation (§5.10.8.1; an empty value matches any) → 4.12."""
        if req.if_none_match:
            raise ProblemError(Problem(0x8C, "If-None-Match: the user profile exists", "PRECONDITION_FAILED"))
        if not req.if_match:
            return
        formats = {CF_CBOR, CF_JSON} | ({self.seal_cf} if self.seal_cf is not None else set())
        current = {b""} | {self._etag(stored, cf) for cf in formats}
        if not any(m in current for m in req.if_match):
            raise ProblemError(
                Problem(0x8C, "If-Match does not match the current user profile", "PRECONDITION_FAILED")
            )

    # -- User Profiles (C.2.1.2.2) --------------------------------------------------------------------
    def collection_get(
        self, identity: Identity, service_id: str, uri_query: tuple[str, ...], req: ProfileRequest
    ) -> Reply:
        """GET (C.2.1.2.2.3.1): the profiles of the VAL user or UE named by ``val-tgt-ue`` → 2.05
        ``array(ProfileDoc)`` (0..N entries)."""
        try:
            self.check_service(service_id)
            target = profiles.parse_profile_query(uri_query)
            problem = profiles.authorize_query(identity, target)
            if problem is not None:
                self._count("query-forbidden")
                return Reply.from_problem(problem)
            found = self.store.profiles_for(service_id, target.ident, target.kind)
            cf = self._format(req.accept)
            payload = encode([s.doc for s in found], CF_JSON if cf == CF_JSON else CF_CBOR)
            etag = etag_of(payload, str(cf))
            self._count("queries")
            if etag in req.etags:
                return Reply(VALID, etag=etag, max_age=self.config.max_age)
            return Reply(CONTENT, payload, cf, etag=etag, max_age=self.config.max_age)
        except ProblemError as e:
            return Reply.from_problem(e.problem)

    def collection_post(
        self, identity: Identity, service_id: str, req: ProfileRequest
    ) -> tuple[Reply, StoredDoc | None]:
        """POST (C.2.1.2.2.3.2): create → 2.01 with the full path in Location-Path options (RFC 7252
        §5.10.7) and the stored profile, ``profileDocId`` set. The SCM-S assigns the id: a body that
        names one is refused (4.00), so that a copy of another profile is never taken for it."""
        try:
            self.check_service(service_id)
            problem = profiles.authorize_write(identity)
            if problem is not None:
                return Reply.from_problem(problem), None
            self._format(req.accept)
            doc = self.decode_profile(req.payload, req.content_format)
            if profiles.PROFILE_DOC_ID_KEY in doc:
                raise ProblemError(
                    Problem(
                        0x80,
                        "profileDocId is assigned by the SCM-S; a POST body must not carry one",
                        "PROFILE_DOC_ID_NOT_ALLOWED",
                    )
                )
            stored = self.store.create_profile(service_id, doc)
            self._count("created")
            location = api.doc_path(service_id, stored.doc_id, self.config.api_prefix, api=api.SU_UP)
            return self._representation(CREATED, stored, req.accept, location_path=location), stored
        except ProblemError as e:
            return Reply.from_problem(e.problem), None

    # -- Individual User Profile (C.2.1.2.3) ----------------------------------------------------------
    def readable(self, identity: Identity, service_id: str, doc_id: str) -> StoredDoc:
        """The profile an individual GET / Observe names, if ``identity`` may read it."""
        self.check_service(service_id)
        stored = self.store.get_profile(service_id, doc_id)
        problem = profiles.authorize_read(identity, stored.doc if stored else None, _missing(doc_id))
        if problem is not None:
            raise ProblemError(problem)
        assert stored is not None
        return stored

    def may_observe(self, identity: Identity, service_id: str, doc_id: str) -> bool:
        try:
            self.readable(identity, service_id, doc_id)
        except ProblemError:
            return False
        return True

    def doc_get(self, identity: Identity, service_id: str, doc_id: str, req: ProfileRequest) -> Reply:
        """GET (C.2.1.2.3.3.1) → 2.05 ProfileDoc; 2.03 Valid for a matching ETag."""
        try:
            stored = self.readable(identity, service_id, doc_id)
            reply = self._representation(CONTENT, stored, req.accept, max_age=self.config.max_age)
            if reply.etag in req.etags:
                return Reply(VALID, etag=reply.etag, max_age=self.config.max_age)
            return reply
        except ProblemError as e:
            return Reply.from_problem(e.problem)

    def doc_put(
        self, identity: Identity, service_id: str, doc_id: str, req: ProfileRequest
    ) -> tuple[Reply, StoredDoc | None]:
        """PUT (C.2.1.2.3.3.2): replace the whole profile → 2.04 with the stored profile. A body
        naming another ``profileDocId`` is refused (4.00); preconditions give 4.12."""
        try:
            problem = profiles.authorize_write(identity)
            if problem is not None:
                return Reply.from_problem(problem), None
            stored = self._existing(service_id, doc_id)
            self._format(req.accept)
            doc = self.decode_profile(req.payload, req.content_format)
            named = doc.get(profiles.PROFILE_DOC_ID_KEY, doc_id)
            if named != doc_id:
                raise ProblemError(
                    Problem(
                        0x80,
                        f"the body names profileDocId {named!r}, the URI {doc_id!r}",
                        "PROFILE_DOC_ID_MISMATCH",
                    )
                )
            self._check_preconditions(stored, req)
            try:
                new = self.store.replace_profile(service_id, doc_id, doc, expected_version=stored.version)
            except VersionMismatch:
                raise ProblemError(
                    Problem(
                        0x8C, "the user profile changed while it was being replaced", "PRECONDITION_FAILED"
                    )
                ) from None
            except DocNotFound:
                raise ProblemError(_missing(doc_id)) from None
            self._count("replaced")
            return self._representation(CHANGED, new, req.accept), new
        except ProblemError as e:
            return Reply.from_problem(e.problem), None

    def doc_delete(
        self, identity: Identity, service_id: str, doc_id: str, req: ProfileRequest
    ) -> tuple[Reply, StoredDoc | None]:
        """DELETE (C.2.1.2.3.3.3) → 2.02 without a body."""
        try:
            problem = profiles.authorize_write(identity)
            if problem is not None:
                return Reply.from_problem(problem), None
            stored = self._existing(service_id, doc_id)
            self._check_preconditions(stored, ProfileRequest(if_match=req.if_match))
            try:
                gone = self.store.delete_profile(service_id, doc_id, expected_version=stored.version)
            except (DocNotFound, VersionMismatch):
                raise ProblemError(
                    Problem(
                        0x8C, "the user profile changed while it was being deleted", "PRECONDITION_FAILED"
                    )
                ) from None
            self._count("deleted")
            return Reply(DELETED), gone
        except ProblemError as e:
            return Reply.from_problem(e.problem), None
