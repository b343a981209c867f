"""aiocoap shell of the SCM-S: converts CoAP messages to plain values and back (TS 24.546 C.3).

One root resource serves the whole tree so that *every* error — unknown path, unsupported method,
bad option, an exception — is answered with concise problem details (C.1.3; SPEC §2), which
aiocoap's stock ``Site`` would answer with plain text. Decisions live in
:class:`~msgin5g.server.service.ScmService`; this module only parses, dispatches and encodes.

Block-wise: ordinary requests use aiocoap's Block1/Block2 machinery; a bulk GET does its own
Block2 slicing because its follow-ups name only ``bulk-conf-flag`` (SPEC D7 b) and aiocoap's
cache would answer those with 4.08 (their options differ from the first request's).
Observe: individual documents are observable (C.3.1.2.3.3.1); PUT notifies every observer,
DELETE ends observations with a 4.04 notification (RFC 7641 §3.2).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from aiocoap import Message
from aiocoap import error as coap_error
from aiocoap.blockwise import Block1Spool, Block2Cache, IncompleteException
from aiocoap.interfaces import ObservableResource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.resource import PathCapable

from ..api import SU_UC
from ..authz import ADMIN, LAB_IDENTITY_OPTION, Identity, parse_identity
from ..coap.aiocoap_tweaks.hardening import arrival_time
from ..coap.qblock import QBlockParams
from ..model import ModelError
from ..problem import Problem, ProblemError
from ..security.endpoint import max_plaintext
from .admission import Admission
from .observers import ObserverTable
from .qblock_site import QBlockServer, has_qblock
from .requests import parse_collection_query, parse_path
from .service import Reply, ScmService

log = logging.getLogger("msgin5g.server")

#: Options the SCM-S understands; any other *critical* option gets 4.02 (RFC 7252 §5.4.1).
#: Q-Block1/Q-Block2 (RFC 9177, TS 24.546 clause 5) are served by :mod:`.qblock_site`.
KNOWN_OPTIONS = {
    OptionNumber.IF_MATCH,
    OptionNumber.URI_HOST,
    OptionNumber.ETAG,
    OptionNumber.IF_NONE_MATCH,
    OptionNumber.OBSERVE,
    OptionNumber.URI_PORT,
    OptionNumber.OSCORE,
    OptionNumber.URI_PATH,
    OptionNumber.CONTENT_FORMAT,
    OptionNumber.MAX_AGE,
    OptionNumber.URI_QUERY,
    OptionNumber.ACCEPT,
    OptionNumber.BLOCK2,
    OptionNumber.BLOCK1,
    OptionNumber.SIZE2,
    OptionNumber.SIZE1,
    OptionNumber.NO_RESPONSE,
    OptionNumber.ECHO,
    OptionNumber.REQUEST_TAG,
    OptionNumber.Q_BLOCK1,
    OptionNumber.Q_BLOCK2,
    LAB_IDENTITY_OPTION,
}
PROXY_OPTIONS = {OptionNumber.PROXY_URI, OptionNumber.PROXY_SCHEME}


def to_message(reply: Reply) -> Message:
    m = Message(code=Code(reply.code), payload=reply.payload)
    if reply.content_format is not None:
        m.opt.content_format = reply.content_format
    if reply.etag is not None:
        m.opt.etag = reply.etag
    if reply.max_age is not None:
        m.opt.max_age = reply.max_age
    if reply.location_path:
        m.opt.location_path = reply.location_path
    if reply.size1 is not None:
        m.opt.size1 = reply.size1
    return m


def _no_cancellation() -> None:
    """Cancellation callback of a declined observation (nothing was registered)."""


def observation_accepted(serverobservation) -> bool:
    """Whether a resource accepted ``serverobservation`` (aiocoap's ServerObservation keeps it in
    ``_accepted``; tests/unit/test_aiocoap_hardening.py guards that)."""
    return bool(getattr(serverobservation, "_accepted", False))


def decline_observation(serverobservation) -> None:
    """Decline an Observe registration: accept, then deregister early, so that aiocoap sends the
    first answer as a plain response and can end the (never started) observation cleanly."""
    serverobservation.accept(_no_cancellation)
    serverobservation.deregister()


async def _ready(message: Message) -> Message:
    return message


def problem_message(problem: Problem) -> Message:
    return to_message(Reply.from_problem(problem))


#: What OSCORE (RFC 8613 §6) adds around an inner payload: the OSCORE option, the AEAD tag and the
#: inner code and options, with room to spare.
OSCORE_MARGIN = 64


def payload_limits(remote) -> tuple[int, int]:
    """(largest payload, largest Block2 size exponent) of an answer to ``remote``.

    An OSCORE-protected request travels inside the transport it came on, and aiocoap gives its
    address a fixed 1024-byte limit. Over UDP that is right (a 1024-byte block and OSCORE's few
    dozen bytes still fit a datagram); over TCP the connection's own (BERT-sized, RFC 8323) limit
    applies, less OSCORE's margin and within what one message protected with that context can
    hold (:func:`~msgin5g.security.endpoint.max_plaintext`) — otherwise a bulk answer would be cut
    into 1 KiB blocks."""
    size, szx = remote.maximum_payload_size, remote.maximum_block_size_exp
    under = getattr(remote, "underlying_address", None)
    if under is not None and under.maximum_payload_size - OSCORE_MARGIN > size:
        limit = max_plaintext(remote.security_context)
        size = min(under.maximum_payload_size, limit) - OSCORE_MARGIN
        szx = under.maximum_block_size_exp
    return size, szx


class ScmBlock1Spool(Block1Spool):
    """aiocoap's Block1 reassembly, with a gap or overlap in the blocks answered 4.08 Request
    Entity Incomplete (RFC 7959 §2.9.2) — aiocoap raises a bare ValueError for it (a 5.00)."""

    def feed_and_take(self, req: Message) -> Message:
        try:
            return super().feed_and_take(req)
        except ValueError:  # a block that does not continue the assembled body
            raise IncompleteException("a Block1 block is missing or overlaps (RFC 7959 §2.9.2)") from None


#: Causes of the problem details made from aiocoap's own error answers, by response code.
AIOCOAP_CAUSES = {
    0x80: "BAD_REQUEST",
    0x88: "REQUEST_ENTITY_INCOMPLETE",
    0x8D: "REQUEST_TOO_LARGE",
    0x85: "METHOD_NOT_ALLOWED",
    0x84: "NO_SUCH_RESOURCE",
}


def slice_block2(full: Message, request: Message) -> Message:
    """Serve one Block2 block of a complete response (RFC 7959 §2.4), with Size2 on block 0."""
    if not full.code.is_successful() or request.opt.get_option(OptionNumber.Q_BLOCK2):
        return full  # errors are small and never block-wise; Q-Block2 slices the whole (qblock_site)
    b2 = request.opt.block2
    max_payload, max_szx = payload_limits(request.remote)
    if b2 is None and len(full.payload) <= max_payload:
        return full
    if b2 is not None and b2.block_number == 0 and len(full.payload) <= min(max_payload, b2.size):
        return full
    num = b2.block_number if b2 else 0
    szx = min(b2.size_exponent, max_szx) if b2 else max_szx
    block = full._extract_block(num, szx, max_payload)
    if num == 0:
        block.opt.size2 = len(full.payload)
    return block


class ScmSite(ObservableResource, PathCapable):
    """The SCM-S resource tree under ``{apiRoot}/su-uc/v1``:
    ``/val-services/{valServiceId}/ue-configurations[/{ueConfigDocId}]``."""

    def __init__(
        self,
        service: ScmService,
        *,
        identify: Callable[[Message], Identity] | None = None,
        qblock: QBlockParams | None = None,
        admission: Admission | None = None,
    ):
        super().__init__()
        self.qblock = QBlockServer(self.render, payload_limits, service.config.max_body, qblock)
        self.service = service
        self.identify = identify
        self.admission = admission or Admission()
        self.prefix = tuple(service.config.api_prefix)
        self._block1 = ScmBlock1Spool()
        self._block2 = Block2Cache()
        self.observers = ObserverTable()
        # Store calls run here when set, so the event loop never waits on the database (SPEC D14)
        self.executor: Executor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.feed = None  # the ChangeWatcher told about this process's own changes
        self.apis: list = []  # further APIs under the same apiRoot: su-up (server.profiles, SPEC D16)

    @property
    def insecure(self) -> bool:
        return self.identify is None

    # -- identity (TS 24.546 6.2.1.2; SPEC D12) -----------------------------------------------------
    def identity_of(self, request: Message) -> Identity:
        """The requester's identity: on a secured server, what ``identify`` derives from the OSCORE
        context that verified the request (:mod:`msgin5g.security`); in insecure lab mode, the
        claimed identity of the lab option, administrator without one."""
        if self.identify is not None:
            return self.identify(request)
        claimed = request.opt.get_option(LAB_IDENTITY_OPTION)
        if not claimed:
            return ADMIN
        try:
            return parse_identity(claimed[0].value.decode("utf-8"))
        except (UnicodeDecodeError, ModelError) as e:
            raise ProblemError(Problem(0x80, f"bad lab identity option: {e}", "BAD_IDENTITY")) from None

    # -- aiocoap resource interface -----------------------------------------------------------------
    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return not self._is_bulk(request)

    def _is_bulk(self, request: Message) -> bool:
        return request.code == Code.GET and any(
            q.startswith(("bulk-conf-flag=", "bulkConfFlag=")) for q in request.opt.uri_query
        )

    def admit(self, request: Message) -> Message | None:
        """None to serve ``request``, or the 5.03 / 4.29 (+ Max-Age) to answer it with instead
        (:mod:`msgin5g.server.admission`). Called by whichever site receives the request first."""
        remote = request.remote
        client = getattr(remote, "underlying_address", None) or remote
        loop = asyncio.get_running_loop()
        now = loop.time()
        arrived = arrival_time(request)
        verdict = self.admission.admit(client, now, None if arrived is None else now - arrived)
        if verdict is None:
            return None
        problem, max_age = verdict
        return to_message(Reply.from_problem(problem, max_age=max_age))

    async def render_to_pipe(self, pipe) -> None:
        """Like aiocoap's, but every failure — also in its block-wise layers — becomes problem details."""
        if self.insecure:
            refused = self.admit(pipe.request)
            if refused is not None:
                pipe.add_response(refused, is_last=True)
                return
        too_large = self._too_large(pipe.request)
        if too_large is not None:
            pipe.add_response(too_large, is_last=True)
            return
        try:
            request = pipe.request
            if has_qblock(request):  # RFC 9177 (TS 24.546 clause 5)
                await self.qblock.render_to_pipe(pipe)
            elif request.opt.block1 is None and request.opt.block2 is None and request.opt.observe is None:
                # Fast path for the common single-message exchange: render at once and only pay for
                # aiocoap's Block2 cache key when the answer turns out to need blocks (its own
                # _render_to_pipe computes that key for every request).
                response = await self.render(request)
                if len(response.payload) > payload_limits(request.remote)[0] and not self._is_bulk(request):
                    response = await self._block2.extract_or_insert(request, lambda: _ready(response))
                pipe.add_response(response, is_last=True)
            else:
                await ObservableResource._render_to_pipe(self, pipe)
        except ProblemError as e:
            pipe.add_response(problem_message(e.problem), is_last=True)
        except coap_error.RenderableError as e:
            pipe.add_response(self._problem_from_aiocoap(e), is_last=True)
        except Exception:  # never let a request crash the server; report it
            log.exception("unexpected failure rendering %r", pipe.request)
            pipe.add_response(
                problem_message(Problem(0xA0, "internal server error", "INTERNAL")), is_last=True
            )

    def _too_large(self, request: Message) -> Message | None:
        """Refuse an oversize body as soon as Size1 or a Block1 offset shows it (4.13 + Size1),
        before aiocoap spools it in memory."""
        limit = self.service.config.max_body
        b1 = request.opt.block1
        size = max(request.opt.size1 or 0, (b1.start if b1 else 0) + len(request.payload))
        if size <= limit:
            return None
        return problem_message(
            Problem(
                0x8D, f"body exceeds the limit of {limit} bytes", "BODY_TOO_LARGE", extra={"size1": limit}
            )
        )

    @staticmethod
    def _problem_from_aiocoap(e: coap_error.RenderableError) -> Message:
        m = e.to_message()
        if m.code.is_successful():  # e.g. 2.31 Continue of a Block1 transfer: not an error
            return m
        detail = m.payload.decode("utf-8", "replace") or type(e).__name__
        cause = AIOCOAP_CAUSES.get(int(m.code), type(e).__name__.upper())
        return problem_message(Problem(int(m.code), detail, cause))

    async def add_observation(self, request: Message, serverobservation) -> None:
        """Accept Observe on an individual document the requester may read (RFC 7641).

        Anything else (a collection, a foreign or missing document, a bad identity — also on a
        sub-API such as su-up) is declined the way aiocoap's interface provides for: accept, then
        deregister before the first response, which then goes out as an ordinary answer without
        Observe (RFC 7641 §4.1) — never left unaccepted, which aiocoap cannot finish cleanly."""
        for sub in self.apis:
            if sub.handles(request.opt.uri_path):
                await sub.add_observation(request, serverobservation, self.identity_of)
                if not observation_accepted(serverobservation):
                    decline_observation(serverobservation)
                return
        target = parse_path(request.opt.uri_path, self.prefix)
        identity = None
        if request.code == Code.GET and target is not None and target.doc_id is not None:
            try:
                identity = self.identity_of(request)
            except ProblemError:
                identity = None
        if identity is None or not await self._offload(
            self.service.may_observe, identity, target.service_id, target.doc_id
        ):
            decline_observation(serverobservation)
            return
        self.observers.add((target.service_id, target.doc_id), serverobservation, identity)

    def observer_count(self, service_id: str, doc_id: str) -> int:
        return self.observers.count((service_id, doc_id))

    def observed(self) -> set[tuple[str, str, str]]:
        """The documents this process has observers for, as (API, service, document) — for the
        change feed (SPEC D14)."""
        keys = {(SU_UC, *key) for key in self.observers.documents()}
        for sub in self.apis:
            keys.update((sub.api, *key) for key in sub.observed())
        return keys

    def changed(self, api: str, service_id: str, doc_id: str, version: int, deleted: bool) -> None:
        """A change committed through this process: notify its observers at once, and tell the
        change feed so that it does not notify them again (other processes learn of the change
        from the feed). Safe to call from the store thread pool."""
        if self.loop is not None and not self._on_loop():
            self.loop.call_soon_threadsafe(self.changed, api, service_id, doc_id, version, deleted)
            return
        key = (api, service_id, doc_id)
        if self.feed is None or self.feed.local_change(key, version, deleted):
            self.feed_change(key, deleted)

    def feed_change(self, key: tuple[str, str, str], deleted: bool) -> None:
        """Notify the observers of one changed document (RFC 7641 §4.2); a deleted one ends them
        with 4.04 (RFC 7641 §3.2)."""
        api, service_id, doc_id = key
        if api != SU_UC:
            for sub in self.apis:
                if sub.api == api:
                    sub.feed_change(service_id, doc_id, deleted)
            return
        gone = Problem(0x84, "the document was deleted", "DOCUMENT_DELETED")
        self.notify(service_id, doc_id, final=problem_message(gone) if deleted else None)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    async def _offload(self, fn, *args):
        if self.executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def notify(self, service_id: str, doc_id: str, final: Message | None = None) -> None:
        self.observers.notify((service_id, doc_id), final)

    def recheck_observers(self, still_authenticated: Callable[[Identity], bool]) -> int:
        """Re-render the observations of identities that lost their key (SPEC D12: a revoked
        identity gets 4.01 from then on — also on an observation, which that answer ends)."""
        n = self.observers.recheck(still_authenticated)
        return n + sum(sub.recheck_observers(still_authenticated) for sub in self.apis)

    async def render(self, request: Message) -> Message:
        return await self._offload(self._render_now, request)

    def _render_now(self, request: Message) -> Message:
        try:
            return self._dispatch(request)
        except ProblemError as e:
            return problem_message(e.problem)

    # -- dispatch ------------------------------------------------------------------------------------
    def _check_options(self, request: Message) -> None:
        for opt in request.opt.option_list():
            if opt.number in PROXY_OPTIONS:
                raise ProblemError(
                    Problem(0xA5, "this server is not a forward proxy", "PROXYING_NOT_SUPPORTED")
                )
            if opt.number.is_critical() and opt.number not in KNOWN_OPTIONS:
                raise ProblemError(
                    Problem(0x82, f"unsupported critical option {int(opt.number)}", "BAD_OPTION")
                )

    def _dispatch(self, request: Message) -> Message:
        self._check_options(request)
        path = request.opt.uri_path
        if path == (".well-known", "core"):
            return self._well_known_core(request)
        for sub in self.apis:
            if sub.handles(path):
                return sub.dispatch(request, self.identity_of(request))
        target = parse_path(path, self.prefix)
        if target is None:
            raise ProblemError(Problem(0x84, f"no resource at /{'/'.join(path)}", "NO_SUCH_RESOURCE"))
        identity = self.identity_of(request)
        svc = self.service
        accept = request.opt.accept
        accept = int(accept) if accept is not None else None
        cf = request.opt.content_format
        cf = int(cf) if cf is not None else None
        etags = tuple(request.opt.etags)
        code = request.code
        if target.doc_id is None:
            if code == Code.GET:
                query = parse_collection_query(request.opt.uri_query)
                if query.is_bulk:
                    requester = (str(identity), request.remote.hostinfo.rsplit(":", 1)[0])
                    reply = svc.bulk_get(identity, requester, target.service_id, query, accept)
                    return slice_block2(to_message(reply), request)
                return to_message(svc.collection_get(identity, target.service_id, query, accept, etags))
            if code == Code.POST:
                reply, _ = svc.collection_post(identity, target.service_id, request.payload, cf, accept)
                return to_message(reply)
            raise self._not_allowed(code, "GET, POST")
        if code == Code.GET:
            return to_message(svc.doc_get(identity, target.service_id, target.doc_id, accept, etags))
        if_match = tuple(request.opt.if_match)
        if code == Code.PUT:
            inm = bool(request.opt.if_none_match)  # RFC 7252 §5.10.8.2
            reply, new = svc.doc_put(
                identity, target.service_id, target.doc_id, request.payload, cf, accept, if_match, inm
            )
            if new is not None:
                self.changed(SU_UC, target.service_id, target.doc_id, new.version, False)
            return to_message(reply)
        if code == Code.DELETE:
            reply, gone = svc.doc_delete(identity, target.service_id, target.doc_id, if_match)
            if gone is not None:
                self.changed(SU_UC, target.service_id, target.doc_id, gone.version, True)
            return to_message(reply)
        raise self._not_allowed(code, "GET, PUT, DELETE")

    @staticmethod
    def _not_allowed(code, allowed: str) -> ProblemError:
        return ProblemError(
            Problem(0x85, f"{code} is not allowed here; allowed: {allowed}", "METHOD_NOT_ALLOWED")
        )

    def _well_known_core(self, request: Message) -> Message:
        """RFC 6690 discovery of the collections this server serves."""
        if request.code != Code.GET:
            raise self._not_allowed(request.code, "GET")
        base = "/".join((*self.prefix, "su-uc", "v1", "val-services"))
        links = ",".join(
            f'</{base}/{sid}/ue-configurations>;rt="3gpp.seal.su-uc.ue-configurations";ct="60 50"'
            for sid in self.service.config.service_ids
        )
        m = Message(code=Code.CONTENT, payload=links.encode())
        m.opt.content_format = 40
        return m
