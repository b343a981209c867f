"""SCM-C: the configuration management client of an MSGin5G UE and of administrators.

TS 24.538 6.2.1.2 / TS 24.546 6.2.3.3 (SPEC §3.1): GET the UE Configurations collection with
``ue-uri`` = the MSGin5G UE ID and, when known, ``ue-vendor`` / ``ue-type`` / ``ue-snr``; apply the
first (most specific, SPEC D4) document on 2.05; on 4.03 / 4.04 fall back to pre-configured values
(TS 23.554 8.1.1 NOTE 2); anything else is an error for the caller. A UE may then observe its
document (RFC 7641) and re-apply on every notification.

The same client carries the administrator operations (POST/PUT/DELETE, listing) used by
``msgin5g config``. A request body larger than one block to a ``coap://`` SCM-S without OSCORE goes
over the project's message layer with RFC 9177 Q-Block1 (TS 24.546 clause 5: the SCM-S supports
RFC 9177; a server without it is fallen back from with RFC 7959 Block1, RFC 9177 §4.1); everything
else over aiocoap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import aiocoap
from aiocoap import Message, oscore
from aiocoap.numbers.codes import Code

from .authz import LAB_IDENTITY_OPTION
from .codec import CF_CBOR, decode, encode

if TYPE_CHECKING:
    from .coap.actions import Params
    from .coap.qblock import QBlockParams
from .outcome import ConfigResult, Msgin5gConfig, Outcome, result_from_docs, result_from_problem
from .problem import CF_PROBLEM, Problem, code_text, decode_problem
from .security.credentials import KeyCredentials as ClientCredentials
from .security.credentials import SingleContext


class ScmClientError(Exception):
    """A request that did not succeed; carries the code and the server's problem details."""

    def __init__(self, code: int, problem: Problem | None, detail: str = ""):
        self.code = code
        self.problem = problem
        super().__init__(detail or (str(problem) if problem else f"CoAP {code >> 5}.{code & 31:02d}"))


class UnprotectedAnswer(ScmClientError):
    """The answer to an OSCORE-protected request came back unprotected (RFC 8613 §8.4): the
    server refused the credentials (4.01: unknown, revoked, replayed) or something on the path
    answered. Never applied as a configuration, and not taken for the server's 4.03/4.04."""

    def __init__(self, code: int, problem: Problem | None, credentials=None):
        super().__init__(code, problem)
        what = problem or code_text(code)
        if code == 0x81 and credentials is not None:  # the SCM-S's uniform 4.01 (SPEC D12)
            self.args = (
                f"4.01: the SCM-S does not accept key {credentials.kid.hex()} of {credentials.identity} "
                "— unknown or revoked on this server (or the request was a replay)",
            )
        else:
            self.args = (f"unprotected answer, not from the SCM-S's security context: {what}",)


class CredentialsMissing(UnprotectedAnswer):
    """4.01 to an unprotected request: the SCM-S is secured and no credentials were given."""

    def __init__(self, code: int, problem: Problem | None):
        super().__init__(code, problem)
        self.args = (
            "4.01: the SCM-S is secured; pass --credentials FILE (a key made with 'msgin5g keys add')",
        )


def problem_of(response: Message) -> Problem | None:
    """Problem details of an error response, when it carries any (Content-Format 257)."""
    if response.opt.content_format is not None and int(response.opt.content_format) == CF_PROBLEM:
        try:
            return decode_problem(response.payload, int(response.code))
        except Exception:
            return Problem(int(response.code), "unparseable problem details", "BAD_PROBLEM_DETAILS")
    return None


def doc_or_problem(m: Message) -> tuple[int, dict | Problem]:
    """An answer to a document GET or an Observe notification: (code, document), or (code, Problem)
    for an error (RFC 9290 problem details, or its diagnostic payload as the title)."""
    if m.code.is_successful():
        return int(m.code), decode(m.payload, int(m.opt.content_format or CF_CBOR))
    return int(m.code), problem_of(m) or Problem(int(m.code), m.payload.decode("utf-8", "replace"))


def no_response(api_root: str, error: BaseException) -> str:
    """The one line a client says when the SCM-S did not answer."""
    return (
        f"no response from {api_root} — is `msgin5g server` running there? ({error or type(error).__name__})"
    )


def query_options(ue_uri=None, ue_type=None, ue_snr=None, ue_vendor=None) -> list[str]:
    """Uri-Query values of a UE configuration request (Table C.3.1.2.2.3.1-1)."""
    q = []
    for name, value in (
        ("ue-uri", ue_uri),
        ("ue-vendor", ue_vendor),
        ("ue-type", ue_type),
        ("ue-snr", ue_snr),
    ):
        if value is not None:
            q.append(f"{name}={value}")
    return q


def interpret(response: Message) -> ConfigResult:
    """Turn a response to the UE configuration request into an outcome (SPEC §3.1)."""
    code = int(response.code)
    if response.code == Code.CONTENT:
        try:
            docs = decode(response.payload, int(response.opt.content_format or CF_CBOR))
        except ValueError as e:
            return ConfigResult(Outcome.ERROR, code, detail=f"undecodable 2.05 body: {e}")
        if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
            return ConfigResult(Outcome.ERROR, code, detail="2.05 body is not an array of UeConfigDoc")
        return result_from_docs(code, docs)
    return result_from_problem(code, problem_of(response))


def apply_fallback(result: ConfigResult, preconfigured: Msgin5gConfig | None) -> ConfigResult:
    """On 4.03/4.04 use the pre-configuration, reported as such (TS 23.554 8.1.1 NOTE 2)."""
    if preconfigured is not None and result.outcome in (Outcome.FORBIDDEN, Outcome.NOT_FOUND):
        result.config = preconfigured
        result.preconfigured = True
    return result


class ScmClient:
    """CoAP client of one SCM-S. ``api_root`` is ``coap://HOST:PORT[/prefix]`` (or coap+tcp/coap+ws)."""

    def __init__(
        self,
        api_root: str,
        service_id: str = "msgin5g",
        *,
        identity: str | None = None,
        credentials: ClientCredentials | None = None,
        context: aiocoap.Context | None = None,
        timeout: float = 30.0,
        qblock: QBlockParams | None = None,
        layer: Params | None = None,
    ):
        """``qblock`` and ``layer``: the RFC 9177 §7.2 and RFC 7252 §4.8 transmission parameters of
        the message layer that sends large bodies as Q-Block1 (the RFCs' defaults when None)."""
        if identity is not None and credentials is not None:
            raise ValueError("a lab identity and OSCORE credentials exclude each other")
        self.api_root = api_root.rstrip("/")
        self.service_id = service_id
        self.identity = identity
        self.credentials = credentials
        self.timeout = timeout
        self._ctx = context
        self._own_ctx = context is None
        self._udp = None  # the message layer's endpoint for Q-Block1 bodies (RFC 9177 §4.3)
        self.qblock, self.layer = qblock, layer

    async def __aenter__(self) -> ScmClient:
        if self._ctx is None and self._coaps_psk() is not None:
            # coaps (DTLS 1.2, PSK; TS 24.546 C.1.1): the PSK identity names the identity
            self._ctx = await aiocoap.Context.create_client_context(transports=["tinydtls"])
            self._ctx.client_credentials = self._coaps_psk().credentials_map()
        if self._ctx is None:
            # with credentials every request is OSCORE-protected end to end (TS 24.546 6.2.1.2;
            # SPEC D12); aiocoap's OSCORE transport also answers a restarted server's Echo challenge
            security = self.credentials.security_context() if self.credentials else None
            self._ctx = await aiocoap.Context.create_client_context()
            if security is not None:
                self._ctx.client_credentials = SingleContext(security)
        return self

    def _coaps_psk(self):
        return coaps_psk(self.api_root, self.credentials)

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._own_ctx and self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None

    @property
    def collection_uri(self) -> str:
        return f"{self.api_root}/su-uc/v1/val-services/{quote(self.service_id, safe='')}/ue-configurations"

    def doc_uri(self, doc_id: str) -> str:
        return f"{self.collection_uri}/{quote(doc_id, safe='')}"

    def _message(self, code: Code, uri: str, query: list[str] | None = None, **kw) -> Message:
        m = Message(code=code, uri=uri, **kw)
        if query:
            m.opt.uri_query = tuple(query)
        if self.identity is not None:
            from aiocoap.optiontypes import OpaqueOption

            m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, self.identity.encode()))
        return m

    def sends_qblock1(self, message: Message) -> bool:
        """A body of several blocks to a ``coap://`` SCM-S: Q-Block1 (RFC 9177 §4.3), over OSCORE too
        (TCP and WebSockets are reliable, which RFC 9177 does not target; coaps stays RFC 7959)."""
        return urlsplit(self.api_root).scheme == "coap" and len(message.payload) > 1024

    async def _qblock1_request(self, message: Message) -> Message:
        """``message`` over the message layer, its body as Q-Block1 blocks (RFC 9177 §4.3), a Q-Block2
        answer reassembled; a transfer that fails is one line, as aiocoap's errors are.

        With credentials every block is an OSCORE request of its own (RFC 8613 §8.1; Q-Block1,
        Request-Tag and Size1 are inner options, §4.1.3.4): the layer protects each block it sends
        and verifies each response (2.31, 4.08, every Q-Block2 block of the answer) on its own,
        with this process's one security context — the one aiocoap's context uses, so sequence
        numbers are never reused. A 4.01 Echo challenge (the SCM-S lost its replay window) is
        answered once (RFC 8613 Appendix B.1.2); an unprotected answer is the server's refusal."""
        from .coap import wire
        from .coap.actions import BLOCKWISE, UNREACHABLE
        from .coap.msglayer import MessageLayer
        from .coap.qblock1_client import QBlock1Offer
        from .coap.udp import CoapEndpoint, CoapError
        from .security.endpoint import ClientProtection, NotingProtection

        if self._udp is None:
            parts = urlsplit(self.api_root)
            layer = MessageLayer(self.layer) if self.layer is not None else None
            self._udp = CoapEndpoint.connect(parts.hostname, parts.port or 5683, layer)
        offer = QBlock1Offer(self.qblock) if self.qblock is not None else QBlock1Offer()
        m = message.copy()
        m.opt.uri_host, m.opt.uri_port = None, None  # the SCM-S is addressed by IP
        plain = wire.from_aiocoap(m)
        for attempt in (1, 2):
            prot = None
            if self.credentials is not None:
                prot = NotingProtection(ClientProtection(self.credentials.security_context()))
            try:
                answer = await self._udp.request(
                    plain, qblock1=offer, blockwise=True, timeout=self.timeout, protection=prot
                )
            except CoapError as e:
                if prot is not None and prot.failed:
                    raise ScmClientError(
                        0, None, f"the answer failed OSCORE verification: {prot.failed[-1]}"
                    ) from None
                if e.cause == BLOCKWISE:  # e.g. a server that ignored Q-Block1 (RFC 7252 §5.4.1)
                    raise ScmClientError(0, None, f"the body did not get through: {e}") from None
                raise (ConnectionError if e.cause == UNREACHABLE else TimeoutError)(str(e)) from None
            if prot is None:
                return wire.to_aiocoap(answer)
            if answer.token in prot.unprotected:
                raise oscore.NotAProtectedMessage("unprotected answer", wire.to_aiocoap(answer))
            echo = answer.first(wire.OPT_ECHO)
            if attempt == 1 and answer.code == int(Code.UNAUTHORIZED) and echo is not None:
                plain = wire.CoapMessage(
                    plain.mtype, plain.code, 0, b"", [*plain.options, (wire.OPT_ECHO, echo)], plain.payload
                )
                continue
            return wire.to_aiocoap(answer)
        raise AssertionError("unreachable")

    async def request(self, message: Message) -> Message:
        assert self._ctx is not None, "use 'async with ScmClient(...)'"
        try:
            if self.sends_qblock1(message):
                response = await self._qblock1_request(message)
            else:
                response = await asyncio.wait_for(self._ctx.request(message).response, self.timeout)
        except oscore.NotAProtectedMessage as e:
            plain = e.plain_message
            raise UnprotectedAnswer(int(plain.code), problem_of(plain), self.credentials) from None
        if response.code == Code.UNAUTHORIZED and self.credentials is None and self.identity is None:
            raise CredentialsMissing(int(response.code), problem_of(response))
        return response

    # -- UE procedure (SPEC §3.1) --------------------------------------------------------------------
    async def get_config(
        self,
        ue_uri: str,
        ue_type: str | None = None,
        ue_snr: str | None = None,
        ue_vendor: str | None = None,
        preconfigured: Msgin5gConfig | None = None,
    ) -> ConfigResult:
        q = query_options(ue_uri, ue_type, ue_snr, ue_vendor)
        try:
            response = await self.request(self._message(Code.GET, self.collection_uri, q))
        except UnprotectedAnswer as e:
            return ConfigResult(Outcome.ERROR, e.code, problem=e.problem, detail=str(e))
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            detail = no_response(self.api_root, e)
            if self.api_root.startswith("coaps://"):  # a refused PSK ends the DTLS handshake silently
                detail += " (coaps: is the PSK file's key active on this server?)"
            return apply_fallback(ConfigResult(Outcome.ERROR, detail=detail), None)
        return apply_fallback(interpret(response), preconfigured)

    async def observe_doc(self, doc_id: str) -> AsyncIterator[tuple[int, dict | Problem]]:
        """Observe an individual document: yields (code, document) per notification, and a final
        (code, Problem) when the server ends the observation (e.g. 4.04 after DELETE)."""
        assert self._ctx is not None
        m = self._message(Code.GET, self.doc_uri(doc_id), observe=0)
        req = self._ctx.request(m)
        try:
            first = await asyncio.wait_for(req.response, self.timeout)
            yield doc_or_problem(first)
            if not first.code.is_successful() or first.opt.observe is None:
                return
            async for note in req.observation:
                yield doc_or_problem(note)
        except aiocoap.error.ResponseWrappingError as e:
            yield doc_or_problem(e.coapmessage)
        except oscore.NotAProtectedMessage as e:
            raise UnprotectedAnswer(int(e.plain_message.code), problem_of(e.plain_message)) from None
        finally:
            if not req.observation.cancelled:
                req.observation.cancel()

    # -- administrator operations --------------------------------------------------------------------
    def _ok(self, response: Message, *codes: Code) -> Message:
        if response.code not in codes:
            who = self.credentials.identity if self.credentials is not None else None
            if response.code == Code.FORBIDDEN and who is not None and who.role.value != "admin":
                raise ScmClientError(
                    int(response.code),
                    problem_of(response),
                    f"4.03: {self.credentials.path} holds the key of {who}, not of an administrator "
                    "— use an admin key (msgin5g keys add admin:<label>)",
                )
            raise ScmClientError(int(response.code), problem_of(response))
        return response

    async def create(self, doc: dict) -> dict:
        r = await self.request(
            self._message(Code.POST, self.collection_uri, payload=encode(doc), content_format=CF_CBOR)
        )
        self._ok(r, Code.CREATED)
        created = decode(r.payload) if r.payload else {}
        if "ueConfigDocId" not in created and r.opt.location_path:
            created["ueConfigDocId"] = r.opt.location_path[-1]
        return created

    async def get_doc(self, doc_id: str) -> dict:
        r = self._ok(await self.request(self._message(Code.GET, self.doc_uri(doc_id))), Code.CONTENT)
        return decode(r.payload, int(r.opt.content_format or CF_CBOR))

    async def replace(self, doc_id: str, doc: dict, if_match: bytes | None = None) -> dict:
        m = self._message(Code.PUT, self.doc_uri(doc_id), payload=encode(doc), content_format=CF_CBOR)
        if if_match is not None:
            m.opt.if_match = [if_match]
        r = self._ok(await self.request(m), Code.CHANGED)
        return decode(r.payload) if r.payload else doc

    async def delete(self, doc_id: str) -> None:
        self._ok(await self.request(self._message(Code.DELETE, self.doc_uri(doc_id))), Code.DELETED)

    async def list_docs(self, query: list[str] | None = None) -> list[dict]:
        """Admin query (no ue-uri: literal any-match; no parameter: every document). Large answers
        arrive block-wise (RFC 7959); aiocoap reassembles them."""
        r = self._ok(await self.request(self._message(Code.GET, self.collection_uri, query)), Code.CONTENT)
        return decode(r.payload, int(r.opt.content_format or CF_CBOR))


def coaps_psk(api_root: str, credentials):
    """The PSK credentials for a coaps:// apiRoot (None: not coaps); a mismatch of scheme and
    credentials is one :class:`CredentialsError` line (TS 24.546 C.1.1; SPEC D12)."""
    from .security.credentials import CredentialsError
    from .security.dtls import PskCredentials

    psk = isinstance(credentials, PskCredentials)
    if not api_root.startswith("coaps://"):
        if psk:
            raise CredentialsError(
                f"{credentials.path or 'the credentials'} is a coaps PSK file: give a coaps:// --server"
            )
        return None
    if not psk:
        raise CredentialsError(
            "a coaps:// server takes a PSK file as --credentials (msgin5g keys add IDENTITY --psk)"
        )
    return credentials
