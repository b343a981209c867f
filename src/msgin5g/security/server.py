"""The server side of OSCORE: the site wrapper of the SCM-S (RFC 8613; TS 24.546 6.2.1.2; SPEC D12).

The keys and their shared state are in the store (:class:`~.storekeys.StoreKeyring`).
:class:`SecuredSite` puts ``OscoreSiteWrapper`` in front of the SCM-S resource tree and makes its
error answers safe and uniform: an unprotected request, an unknown, revoked or undecryptable
context and a replay all get the same unprotected 4.01 with concise problem details (RFC 8613
§8.2 allows unprotected error responses; saying which check failed would tell a prober which
kids exist). The Echo challenge of RFC 8613 Appendix B.1.2, sent after a restart that lost the
replay window, is a protected 4.01 with the Echo option — and with problem details inside.
"""

from __future__ import annotations

import logging
from collections import Counter

import aiocoap.pipe
from aiocoap import Message, interfaces, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.transports.oscore import OSCOREAddress

from ..authz import UNAUTHENTICATED
from ..problem import CF_PROBLEM, Problem
from .storekeys import Verdict

log = logging.getLogger("msgin5g.security")

#: Every unverifiable request gets exactly this (RFC 8613 §8.2; no hint which check failed).
UNAUTHENTICATED_PAYLOAD = UNAUTHENTICATED.encode()
LAB_IDENTITY_REFUSED = Problem(
    0x80,
    "a secured server takes the identity from the OSCORE context; the lab identity option is refused",
    "LAB_IDENTITY_REFUSED",
)


def unauthenticated_message() -> Message:
    m = Message(code=Code.UNAUTHORIZED, payload=UNAUTHENTICATED_PAYLOAD)
    m.opt.content_format = CF_PROBLEM
    m.opt.max_age = 0
    return m


def suppressed(response: Message) -> bool:
    """Whether the response's No-Response value (RFC 7967 §2.1: 2 suppresses 2.xx, 8 4.xx, 16
    5.xx) suppresses its own class, so that nothing but an empty ACK goes out for it. Inside
    OSCORE the outer message is the one aiocoap looks at: the inner value is read here."""
    value = response.opt.no_response or 0
    return bool(value & (1 << (response.code.class_ - 1))) if response.code.is_response() else False


class SecuredSite(interfaces.Resource):
    """The SCM-S site behind OSCORE (RFC 8613 §8.2, §8.3), keys from the store (:class:`~.storekeys.
    StoreKeyring`), with problem details on every refusal.

    The steps of aiocoap's ``OscoreSiteWrapper`` with one more between verification and rendering:
    a request that decrypted is accepted only once the shared replay window in the store took its
    sequence number (:meth:`StoreKeyring.claim`) — at most once across every process serving the
    key set, decided only after successful decryption."""

    def __init__(self, site, keyring):
        self.site = site
        self.keyring = keyring
        self.counters: Counter = Counter()

    async def render(self, request):
        raise RuntimeError("SecuredSite is used through render_to_pipe")

    async def needs_blockwise_assembly(self, request):
        raise RuntimeError("SecuredSite is used through render_to_pipe")

    def _refuse(self, pipe, reason: str) -> None:
        self.counters["refused"] += 1
        log.info("refused %r: %s", pipe.request, reason)
        if pipe.request.mtype is Type.NON:
            return  # like OscoreSiteWrapper: no answer to an unverifiable NON
        pipe.add_response(unauthenticated_message(), is_last=True)

    async def render_to_pipe(self, pipe) -> None:
        request = pipe.request
        refused = self.site.admit(request)  # overload / client rate before any cryptography
        if refused is not None:
            pipe.add_response(refused, is_last=True)
            return
        try:
            bag = oscore.verify_start(request)
        except oscore.NotAProtectedMessage:
            self.counters["unprotected"] += 1
            pipe.add_response(unauthenticated_message(), is_last=True)
            return
        except oscore.ProtectionInvalid as e:
            self._refuse(pipe, f"malformed OSCORE option: {e}")
            return
        if request.code not in (Code.POST, Code.FETCH):
            self.counters["refused"] += 1
            m = Message(
                code=Code.METHOD_NOT_ALLOWED,
                payload=Problem(
                    0x85, "an OSCORE request travels as POST or FETCH (RFC 8613 §4.2)", "OSCORE_OUTER_CODE"
                ).encode(),
            )
            m.opt.content_format = CF_PROBLEM
            pipe.add_response(m, is_last=True)
            return
        kid = bag.get(oscore.COSE_KID)
        sc = None if bag.get(oscore.COSE_KID_CONTEXT) is not None else await self.keyring.find_async(kid)
        if sc is None:
            self._refuse(pipe, "key unknown or revoked on this server")
            return
        try:
            inner, request_id = sc.unprotect(request)
        except oscore.ReplayErrorWithEcho as e:
            # RFC 8613 B.1.2 (a context without a known replay window): a fresh Echo, protected
            self.counters["echo-challenges"] += 1
            m = Message(code=Code.UNAUTHORIZED, echo=e.echo, payload=UNAUTHENTICATED_PAYLOAD)
            m.opt.content_format = CF_PROBLEM
            outer, _ = e.secctx.protect(m, request_id=e.request_id)
            pipe.add_response(outer, is_last=True)
            return
        except oscore.ReplayError:
            self.counters["replays"] += 1
            self._refuse(pipe, "replay")
            return
        except (oscore.ProtectionInvalid, ValueError) as e:
            self._refuse(pipe, f"cannot be verified: {e}")
            return
        verdict = await self.keyring.claim(sc, int.from_bytes(request_id.partial_iv, "big"))
        if verdict is not Verdict.ACCEPTED:
            self.counters["replays" if verdict is Verdict.REPLAY else "revoked"] += 1
            self._refuse(pipe, verdict.value)
            return
        inner.remote = OSCOREAddress(sc, request.remote)
        try:
            await self._render_inner(pipe, inner, sc.context_for_response(), request_id)
        except Exception:  # never a plain-text 5.00 from aiocoap: problem details, like every error
            log.exception("failure serving the protected request %r", request)
            m = Message(
                code=Code.INTERNAL_SERVER_ERROR,
                payload=Problem(0xA0, "internal server error", "INTERNAL").encode(),
            )
            m.opt.content_format = CF_PROBLEM
            pipe.add_response(m, is_last=True)

    async def _render_inner(self, pipe, inner: Message, sc, request_id) -> None:
        """Render the verified inner request and protect every response (as OscoreSiteWrapper)."""
        inner_pipe = aiocoap.pipe.IterablePipe(inner)
        errors_as_messages = aiocoap.pipe.error_to_message(inner_pipe, log)
        aiocoap.pipe.run_driving_pipe(
            errors_as_messages, self.site.render_to_pipe(inner_pipe), name="OSCORE inner request"
        )
        async for event in inner_pipe:
            if event.exception is not None:
                log.warning("error from the resource turned into a protected 5.00: %r", event.exception)
                message = Message(code=Code.INTERNAL_SERVER_ERROR)
                is_last = True
            else:
                message, is_last = event.message, event.is_last
            if suppressed(message):
                # the resource wants no answer (RFC 7967: a Q-Block1 block inside a set, a Q-Block2
                # Continue): nothing is protected and nothing but a CON's empty ACK goes out — a
                # protected 2.31 would read as the answer to the whole request
                pipe.add_response(
                    Message(code=message.code, no_response=message.opt.no_response), is_last=is_last
                )
                if is_last:
                    break
                continue
            message.opt.no_response = None  # a marker for this server's stack, never sent
            if not is_last:
                message.opt.observe = 0
            protected, _ = sc.protect(message, request_id)
            if message.opt.observe is not None:
                protected.opt.observe = sc.sender_sequence_number & 0xFFFFFFFF
            pipe.add_response(protected, is_last=is_last)
            if is_last:
                break


class ChannelSecuredSite(interfaces.Resource):
    """The SCM-S site behind a secured channel — mutual TLS (coaps+tcp, coaps+ws) or DTLS with a
    PSK (coaps) (TS 24.546 C.1.1; SPEC D12): admission first (4.29 / 5.03, inside the channel), then
    :meth:`authenticated` decides whether the channel's identity is still one of the store's; a
    request that is not gets the uniform 4.01 with problem details, the others the site."""

    def __init__(self, site, store):
        self.site = site
        self.store = store
        self.counters: Counter = Counter()

    async def authenticated(self, request) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    async def render(self, request):
        raise RuntimeError(f"{type(self).__name__} is used through render_to_pipe")

    async def needs_blockwise_assembly(self, request):
        raise RuntimeError(f"{type(self).__name__} is used through render_to_pipe")

    def get_resources_as_linkheader(self):  # pragma: no cover - aiocoap's /.well-known/core
        return self.site.get_resources_as_linkheader()

    async def render_to_pipe(self, pipe) -> None:
        refused = self.site.admit(pipe.request)  # overload / client rate first, as SecuredSite does
        if refused is not None:
            pipe.add_response(refused, is_last=True)
            return
        if not await self.authenticated(pipe.request):
            self.counters["refused"] += 1
            pipe.add_response(unauthenticated_message(), is_last=True)
            return
        await self.site.render_to_pipe(pipe)
