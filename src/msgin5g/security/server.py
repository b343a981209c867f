"""The server side of OSCORE: a key registry as aiocoap server credentials, and the site wrapper
(RFC 8613; TS 24.546 6.2.1.2; SPEC D12).

:class:`ServerKeyring` is what aiocoap's ``OscoreSiteWrapper`` asks for a request's security
context (``find_oscore``). It reads the registry lazily: a context directory is loaded on the
first request of its kid (at most ``max_open`` stay loaded, least recently used released first,
never one in use), and registry.json is re-read whenever it was rewritten — a revoked key is
refused from the next request on, without a restart.

:class:`SecuredSite` puts ``OscoreSiteWrapper`` in front of the SCM-S resource tree and makes its
error answers safe and uniform: an unprotected request, an unknown, revoked or undecryptable
context and a replay all get the same unprotected 4.01 with concise problem details (RFC 8613
§8.2 allows unprotected error responses; saying which check failed would tell a prober which
kids exist). The Echo challenge of RFC 8613 Appendix B.1.2, sent after a restart that lost the
replay window, is a protected 4.01 with the Echo option — and with problem details inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable

import aiocoap.pipe
import filelock
from aiocoap import Message, interfaces, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.transports.oscore import OSCOREAddress

from ..authz import ANONYMOUS, LAB_IDENTITY_OPTION, UNAUTHENTICATED, Identity
from ..problem import CF_PROBLEM, Problem, ProblemError
from .keys import RegistryError, RegistryState, claims_for, identity_from_claims
from .registry import Registry, release_context
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


class ServerKeyring:
    """A registry directory as server credentials (duck-typed for ``OscoreSiteWrapper``)."""

    def __init__(self, registry: Registry, *, max_open: int = 1024):
        self.registry = registry
        self.max_open = max(1, max_open)
        self.state = RegistryState()
        self.counters: Counter = Counter()
        self._stamp: tuple | None = None
        self._loaded: OrderedDict[bytes, object] = OrderedDict()
        self._pins: Counter = Counter()
        self._retiring: dict[bytes, object] = {}  # dropped while in use; released when unpinned
        self._lock: filelock.BaseFileLock | None = None
        self._listeners: list[Callable[[], None]] = []
        self._identities: dict[tuple, Identity | None] = {}  # claims → identity, per registry state

    # -- life cycle ----------------------------------------------------------------------------------
    def open(self) -> ServerKeyring:
        """Take the registry for this process and read it (raises RegistryError)."""
        self._lock = self.registry.lock_for_serving()
        try:
            self.state = self.registry.load()
        except RegistryError:
            self._lock.release()
            raise
        self._stamp = self.registry.stamp()
        return self

    def close(self) -> None:
        """Write back every loaded context's sequence number and replay window, release the registry."""
        for ctx in [*self._loaded.values(), *self._retiring.values()]:
            with contextlib.suppress(Exception):
                release_context(ctx)
        self._loaded.clear()
        self._retiring.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after the registry changed (e.g. to end revoked identities' observations)."""
        self._listeners.append(callback)

    # -- registry changes ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Re-read registry.json if it was rewritten; drop the contexts of keys no longer active."""
        stamp = self.registry.stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            state = self.registry.load()
        except RegistryError as e:
            log.error("key registry unreadable, keeping the keys read before: %s", e)
            return
        self.state = state
        self._identities.clear()
        for kid in [k for k in self._loaded if not self._active(k)]:
            self._drop(kid)
        self.counters["registry-reloads"] += 1
        log.info("key registry reloaded: %d active keys", sum(e.active for e in state.entries.values()))
        for cb in self._listeners:
            try:
                cb()
            except Exception:
                log.exception("registry change listener failed")

    def _active(self, kid: bytes) -> bool:
        entry = self.state.entries.get(kid)
        return entry is not None and entry.active

    def is_active(self, identity: Identity) -> bool:
        return bool(self.state.active_for(identity))

    # -- what OscoreSiteWrapper asks -------------------------------------------------------------------
    def find_oscore(self, unprotected: dict):
        """The security context for a request's kid (KeyError: unknown, revoked or unloadable)."""
        kid = unprotected.get(oscore.COSE_KID)
        if not isinstance(kid, bytes) or unprotected.get(oscore.COSE_KID_CONTEXT) is not None:
            raise KeyError(kid)
        if not self._active(kid):
            self.counters["unknown-or-revoked"] += 1
            raise KeyError(kid)
        ctx = self._loaded.get(kid)
        if ctx is not None:
            self._loaded.move_to_end(kid)
            return ctx
        ctx = self._retiring.pop(kid, None) or self._load(kid)
        self._loaded[kid] = ctx
        self._evict()
        return ctx

    def _load(self, kid: bytes):
        from aiocoap.oscore import FilesystemSecurityContext

        directory = self.registry.context_dir(kid)
        try:
            ctx = FilesystemSecurityContext(str(directory))
        except (filelock.Timeout, FilesystemSecurityContext.LoadError, OSError, ValueError) as e:
            log.error("OSCORE context %s cannot be loaded: %s", directory, e)
            self.counters["load-failures"] += 1
            raise KeyError(kid) from None
        ctx.authenticated_claims = claims_for(kid)
        self.counters["contexts-loaded"] += 1
        return ctx

    def _evict(self) -> None:
        while len(self._loaded) > self.max_open:
            victim = next((k for k in self._loaded if not self._pins[k]), None)
            if victim is None:
                return  # everything is in use: stay above the limit for now
            self._drop(victim)
            self.counters["contexts-released"] += 1

    def _drop(self, kid: bytes) -> None:
        ctx = self._loaded.pop(kid)
        if self._pins[kid]:
            self._retiring[kid] = ctx
        else:
            release_context(ctx)

    def pin(self, kid: bytes) -> None:
        """A request (or an observation) of ``kid`` is being served: its context stays loaded."""
        self._pins[kid] += 1

    def unpin(self, kid: bytes) -> None:
        self._pins[kid] -= 1
        if self._pins[kid] <= 0:
            del self._pins[kid]
            ctx = self._retiring.pop(kid, None)
            if ctx is not None:
                release_context(ctx)

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    # -- identity ----------------------------------------------------------------------------------
    def identity_for(self, claims) -> Identity | None:
        key = tuple(claims or ())
        try:
            return self._identities[key]
        except KeyError:
            identity = self._identities[key] = identity_from_claims(key, self.state.entries)
            return identity

    def identify(self, request: Message) -> Identity:
        """The authenticated identity of an (unprotected inner) request, for the SCM-S resources.
        The lab identity option is refused on a secured server."""
        if request.opt.get_option(LAB_IDENTITY_OPTION):
            raise ProblemError(LAB_IDENTITY_REFUSED)
        identity = self.identity_for(getattr(request.remote, "authenticated_claims", None))
        return identity if identity is not None else ANONYMOUS

    async def watch(self, interval: float = 1.0) -> None:
        """Re-read the registry periodically as well, so that revocation also ends observations
        of identities that send nothing new."""
        while True:
            await asyncio.sleep(interval)
            self.refresh()


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
            if not is_last:
                message.opt.observe = 0
            protected, _ = sc.protect(message, request_id)
            if message.opt.observe is not None:
                protected.opt.observe = sc.sender_sequence_number & 0xFFFFFFFF
            pipe.add_response(protected, is_last=is_last)
            if is_last:
                break
