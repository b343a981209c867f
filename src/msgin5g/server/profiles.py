"""The SU_UserProfile resources of the SCM-S: ``{apiRoot}/su-up/v1/val-services/{valServiceId}/
user-profiles[/{profileDocId}]`` (TS 24.546 C.2.1.2; SPEC D16).

A thin shell under :class:`~msgin5g.server.resources.ScmSite`, which hands it every request whose
path lies under ``{prefix}/su-up`` together with the requester's authenticated identity; the site
keeps doing what is common to both APIs (critical options, body limits, Block1/Block2, problem
details for aiocoap's own errors, OSCORE in front). This module converts between aiocoap messages
and :class:`~msgin5g.server.profile_service.ProfileService` values and performs what the service
decides: answers, Observe registration (individual profiles are observable, C.2.1.2.3.3.1), a
notification on every PUT and a final 4.04 notification when a profile is deleted (RFC 7641 §3.2).
"""

from __future__ import annotations

from collections.abc import Callable

from aiocoap import Message
from aiocoap.numbers.codes import Code

from ..api import SU_UP
from ..authz import Identity
from ..problem import Problem, ProblemError
from ..profiles import is_profile_path, parse_profile_path
from .observers import ObserverTable
from .profile_service import ProfileRequest, ProfileService
from .resources import problem_message, to_message


def profile_request(request: Message) -> ProfileRequest:
    """The plain values of an aiocoap request that the su-up operations use."""
    accept, cf = request.opt.accept, request.opt.content_format
    return ProfileRequest(
        accept=int(accept) if accept is not None else None,
        content_format=int(cf) if cf is not None else None,
        etags=tuple(request.opt.etags),
        if_match=tuple(request.opt.if_match),
        if_none_match=bool(request.opt.if_none_match),
        payload=request.payload,
    )


def _not_allowed(code, allowed: str) -> ProblemError:
    return ProblemError(
        Problem(0x85, f"{code} is not allowed here; allowed: {allowed}", "METHOD_NOT_ALLOWED")
    )


class ProfileSite:
    """Requests under ``{prefix}/su-up`` → :class:`ProfileService` → aiocoap messages."""

    api = SU_UP

    def __init__(self, service: ProfileService, prefix: tuple[str, ...] = ()):
        self.service = service
        self.prefix = tuple(prefix)
        #: how a committed change is announced: (api, service, doc, version, deleted); the enclosing
        #: site routes it to this process's observers and the change feed (SPEC D14)
        self.changed: Callable[[str, str, str, int, bool], None] = self._changed_here
        self.observers = ObserverTable()

    def _changed_here(self, api: str, service_id: str, doc_id: str, version: int, deleted: bool) -> None:
        self.feed_change(service_id, doc_id, deleted)

    def handles(self, path: tuple[str, ...]) -> bool:
        return is_profile_path(tuple(path), self.prefix)

    # -- requests -----------------------------------------------------------------------------------
    def dispatch(self, request: Message, identity: Identity) -> Message:
        """One request under ``su-up`` (methods and codes of C.2.1.2.2.3 and C.2.1.2.3.3)."""
        target = parse_profile_path(tuple(request.opt.uri_path), self.prefix)
        if target is None:
            path = "/".join(request.opt.uri_path)
            raise ProblemError(Problem(0x84, f"no resource at /{path}", "NO_SUCH_RESOURCE"))
        svc, code, req = self.service, request.code, profile_request(request)
        sid, doc_id = target.service_id, target.doc_id
        if doc_id is None:
            if code == Code.GET:
                return to_message(svc.collection_get(identity, sid, tuple(request.opt.uri_query), req))
            if code == Code.POST:
                return to_message(svc.collection_post(identity, sid, req)[0])
            raise _not_allowed(code, "GET, POST")
        if code == Code.GET:
            return to_message(svc.doc_get(identity, sid, doc_id, req))
        if code == Code.PUT:
            reply, new = svc.doc_put(identity, sid, doc_id, req)
            if new is not None:
                self.changed(SU_UP, sid, doc_id, new.version, False)
            return to_message(reply)
        if code == Code.DELETE:
            reply, gone = svc.doc_delete(identity, sid, doc_id, req)
            if gone is not None:
                self.changed(SU_UP, sid, doc_id, gone.version, True)
            return to_message(reply)
        raise _not_allowed(code, "GET, PUT, DELETE")

    # -- Observe (RFC 7641) ---------------------------------------------------------------------------
    async def add_observation(
        self, request: Message, serverobservation, identify: Callable[[Message], Identity]
    ) -> None:
        """Accept Observe on an individual profile the requester may read; anything else is
        answered as a plain GET (the site renders it)."""
        target = parse_profile_path(tuple(request.opt.uri_path), self.prefix)
        if request.code != Code.GET or target is None or target.doc_id is None:
            return
        try:
            identity = identify(request)
        except ProblemError:
            return
        if not self.service.may_observe(identity, target.service_id, target.doc_id):
            return
        self.observers.add((target.service_id, target.doc_id), serverobservation, identity)

    def observed(self) -> set[tuple[str, str]]:
        return self.observers.documents()

    def feed_change(self, service_id: str, doc_id: str, deleted: bool) -> None:
        """Notify the observers of a changed profile; a deleted one ends them with 4.04 (RFC 7641)."""
        gone = Problem(0x84, "the user profile was deleted", "PROFILE_DELETED")
        self.notify(service_id, doc_id, problem_message(gone) if deleted else None)

    def observer_count(self, service_id: str, doc_id: str) -> int:
        return self.observers.count((service_id, doc_id))

    def notify(self, service_id: str, doc_id: str, final: Message | None = None) -> None:
        self.observers.notify((service_id, doc_id), final)

    def recheck_observers(self, still_authenticated: Callable[[Identity], bool]) -> int:
        """Re-render the observations of identities that lost their key (they then get 4.01,
        which ends the observation; SPEC D12)."""
        return self.observers.recheck(still_authenticated)
