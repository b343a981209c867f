"""OSCORE for the project's own CoAP endpoints (RFC 8613 §8; TS 24.546 6.2.1.2; SPEC D12).

The constrained UE's small CoAP client (:mod:`msgin5g.ue.via_relay`, used through a relay and a
gateway) and the Gateway UE's MSGin5G-6 side handle datagrams themselves, so they protect and
verify with aiocoap's security-context primitives (``protect`` / ``unprotect``) directly.

Through a relay the request is addressed in the forward-proxy form OSCORE requires (RFC 8613
§4.1.3.3 / Appendix: ``Proxy-Uri`` is decomposed): ``Proxy-Scheme``, ``Uri-Host`` and ``Uri-Port``
travel outside, readable by the relay for routing (SPEC D8); path, query and every other option
and the payload are encrypted and integrity-protected end to end.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

import cbor2
from aiocoap import Message, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from ..authz import UNAUTHENTICATED, Identity
from ..coap import wire
from ..coap.actions import NotProtected, Protection, ProtectionFailed
from ..coap.wire import CoapMessage
from ..problem import CF_PROBLEM

DEFAULT_PORTS = {"coap": 5683, "coap+tcp": 5683}


class UnprotectedResponse(Exception):
    """The answer to a protected request was not protected (RFC 8613 §8.4): an error from the
    server that refused the request (4.01) or from a node on the path (e.g. a relay's 5.05).
    It is reported, never applied: nothing on the path can forge a 2.05, 4.03 or 4.04."""

    def __init__(self, response: Message):
        super().__init__(f"unprotected {response.code} answer")
        self.response = response


class VerificationFailed(Exception):
    """A protected answer that does not verify with the request's context (tampered, or not ours)."""


def forward_proxy_request(uri: str, code: Code = Code.GET) -> tuple[Message, tuple]:
    """A request for ``uri`` through a forward proxy, split for OSCORE: the plain request (path and
    query, to be protected) and the outer options (Proxy-Scheme, Uri-Host, Uri-Port) to add
    after protection."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"{uri!r} is not an absolute coap URI")
    plain = Message(code=code)
    plain.set_request_uri(uri, set_uri_host=False)
    plain.remote = None
    outer = [
        OptionNumber.PROXY_SCHEME.create_option(value=parts.scheme.lower()),
        OptionNumber.URI_HOST.create_option(value=parts.hostname.lower()),
    ]
    port = parts.port
    if port is not None and port != DEFAULT_PORTS.get(parts.scheme.lower()):
        outer.append(OptionNumber.URI_PORT.create_option(value=port))
    return plain, tuple(outer)


@dataclass
class ClientProtection:
    """One client's OSCORE context: protect requests, verify answers (RFC 8613 §8.1, §8.4).

    ``outer_options`` are added to every protected request after protection (the forward-proxy
    options of :func:`forward_proxy_request`; class U, RFC 8613 §4.1.3.3).
    """

    context: object
    outer_options: tuple = field(default_factory=tuple)

    def protect(self, plain: Message):
        """(outer message, request binding for its responses)."""
        outer, binding = self.context.protect(plain)
        for opt in self.outer_options:
            outer.opt.add_option(opt)
        return outer, binding

    def verify(self, response: Message, binding) -> Message:
        """The plain response (raises UnprotectedResponse / VerificationFailed)."""
        if response.opt.oscore is None:
            raise UnprotectedResponse(response)
        try:
            plain, _ = self.context.unprotect(response, binding)
        except (oscore.ProtectionInvalid, oscore.NotAProtectedMessage, ValueError) as e:
            raise VerificationFailed(str(e) or type(e).__name__) from None
        return plain


@dataclass(frozen=True)
class LayerProtection(Protection):
    """A :class:`ClientProtection` at the message layer's seam (:class:`msgin5g.coap.actions.
    Protection`; ``MessageLayer.request(..., protection=)``): each request the layer sends for an
    exchange is protected (RFC 8613 §8.1) and each response verified (§8.4) on its own, so the
    layer's RFC 7959 / RFC 9177 block-wise transfer runs on the plain messages — every Q-Block2
    block response verified separately. Messages cross into aiocoap at :mod:`msgin5g.coap.wire`'s
    boundary. The Gateway UE's SCM-C (Uu over UDP) uses it."""

    client: ClientProtection

    def protect(self, plain: CoapMessage) -> tuple[CoapMessage, object]:
        outer, binding = self.client.protect(wire.to_aiocoap(plain, incoming=False))
        return wire.from_aiocoap(outer), binding

    def verify(self, outer: CoapMessage, binding: object) -> CoapMessage:
        try:
            plain = self.client.verify(wire.to_aiocoap(outer), binding)
        except UnprotectedResponse:
            raise NotProtected from None
        except VerificationFailed as e:
            raise ProtectionFailed(str(e)) from None
        if plain.opt.observe is not None and not 0 <= plain.opt.observe < 1 << 24:
            # aiocoap puts the partial IV (or -1 for the request's own nonce) there as its
            # reordering marker of notifications: not an Observe value the wire can carry
            plain.opt.observe = None
        return wire.from_aiocoap(plain, outer.mtype, outer.mid)


@dataclass(frozen=True)
class NotingProtection(LayerProtection):
    """:class:`LayerProtection` for one request that notes the tokens of unprotected answers — the
    layer hands an unprotected error response up as the answer (the server's refusal), and the UE
    raises :class:`UnprotectedResponse` for it as its other OSCORE requests do — and why answers
    failed verification: the layer drops them as if lost (RFC 8613 §8.4), and a request that gets
    nothing else says so."""

    unprotected: set = field(default_factory=set)
    failed: list = field(default_factory=list)

    def verify(self, outer: wire.CoapMessage, binding: object) -> wire.CoapMessage:
        try:
            return super().verify(outer, binding)
        except NotProtected:
            self.unprotected.add(outer.token)
            raise
        except ProtectionFailed as e:
            self.failed.append(str(e))
            raise


def max_plaintext(context) -> int:
    """The most plaintext one message protected with ``context`` can carry: 2^(8L) − 1 for
    AES-CCM with L = 15 − nonce length (65,535 bytes for RFC 8613's mandatory AES-CCM-16-64-128;
    RFC 8152 §10.2); GCM and ChaCha20/Poly1305 allow far more than any message here."""
    alg = getattr(context, "alg_aead", None)
    if isinstance(alg, oscore.AES_CCM):
        return (1 << (8 * (15 - alg.iv_bytes))) - 1
    return (1 << 31) - 1


def is_echo_challenge(plain: Message) -> bool:
    """4.01 with Echo: the server lost its replay window and asks for proof of freshness
    (RFC 8613 Appendix B.1.2); the client repeats the request once with that Echo value."""
    return plain.code == Code.UNAUTHORIZED and plain.opt.echo is not None


# -- the server side of a raw datagram endpoint (the Gateway UE's MSGin5G-6 side) -----------------------


@dataclass(frozen=True)
class VerifiedRequest:
    """A request that verified: its plain (inner) form, the identity of the key that protected it
    (None: the key is no longer active), and the binding its answer is protected with."""

    plain: Message
    identity: Identity | None
    binding: bytes


@dataclass(frozen=True)
class Refused:
    """A request that did not verify, and what to answer: ``response`` is the protected Echo
    challenge (RFC 8613 Appendix B.1.2) or None for the uniform unprotected 4.01."""

    reason: str
    response: Message | None = None


def encode_binding(request_id) -> bytes:
    """What a stored request needs to have its answer protected, even after a restart: the
    requester's kid, the request's Partial IV and its outer code (RFC 8613 §7.2)."""
    return cbor2.dumps([request_id.kid, request_id.partial_iv, int(request_id.code_style.request)])


def decode_binding(binding: bytes):
    """The request identifiers of a binding, with a fresh nonce for the answer: the gateway may
    answer a stored request again after a restart, so it never reuses the request's nonce."""
    kid, piv, code = cbor2.loads(binding)
    return kid, oscore.RequestIdentifiers(kid, piv, can_reuse_nonce=False, request_code=Code(code))


def raw_options(message: Message) -> list[tuple[int, bytes]]:
    return [(int(o.number), o.encode()) for o in message.opt.option_list()]


class ServerProtection:
    """Verify requests and protect answers with the keys of a :class:`~.storekeys.StoreKeyring` (the
    Gateway UE's MSGin5G-6 side, its UEs' keys in its state database; standing in for PC5 unicast
    security, TS 33.503; SPEC D12). A request is accepted only after it decrypted and the key's
    replay window in the store took its sequence number (RFC 8613 §7.4): a revoked key is refused
    at its next request, and a restart starts from the stored window (no Echo round trip)."""

    def __init__(self, keyring):
        self.keyring = keyring

    def verify(self, data: bytes) -> VerifiedRequest | Refused:
        """One datagram holding a request. Every failure reads the same to the requester."""
        try:
            message = Message.decode(data)
            unprotected = oscore.verify_start(message)
        except oscore.NotAProtectedMessage:
            return Refused("unprotected")
        except Exception as e:  # malformed OSCORE option or message
            return Refused(f"malformed: {e}")
        if message.code not in (Code.POST, Code.FETCH):
            return Refused(f"outer code {message.code}")
        context = None
        if unprotected.get(oscore.COSE_KID_CONTEXT) is None:
            context = self.keyring.find(unprotected.get(oscore.COSE_KID))
        if context is None:
            return Refused("key unknown or revoked on this server")
        try:
            plain, request_id = context.unprotect(message)
        except oscore.ReplayErrorWithEcho as e:
            inner = Message(code=Code.UNAUTHORIZED, echo=e.echo, payload=UNAUTHENTICATED.encode())
            inner.opt.content_format = CF_PROBLEM
            challenge, _ = e.secctx.protect(inner, request_id=e.request_id)
            return Refused("replay window unknown: Echo challenge", challenge)
        except oscore.ReplayError:
            return Refused("replay")
        except (oscore.ProtectionInvalid, ValueError) as e:
            return Refused(f"{type(e).__name__}: {e}")
        verdict = self.keyring.claim_now(context, int.from_bytes(request_id.partial_iv, "big"))
        if verdict.value != "accepted":
            return Refused(verdict.value)
        return VerifiedRequest(plain, context.key_identity, encode_binding(request_id))

    def protect(
        self, binding: bytes, code: int, options: list[tuple[int, bytes]], payload: bytes
    ) -> tuple[int, list[tuple[int, bytes]], bytes] | None:
        """The protected (code, options, payload) of an answer to the request ``binding`` names;
        None when its key is gone (revoked since): such an answer cannot be sent."""
        kid, request_id = decode_binding(binding)
        context = self.keyring.find(kid)
        if context is None:
            return None
        plain = Message(code=Code(code), payload=payload)
        for number, value in options:
            plain.opt.add_option(OptionNumber(number).create_option(decode=value))
        outer, _ = context.protect(plain, request_id)
        return int(outer.code), raw_options(outer), outer.payload
