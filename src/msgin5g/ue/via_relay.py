"""Constrained UE with MSGin5G Client, configured through a Relay UE (TS 24.538 6.2.2.2; SPEC §3.3, D8).

The constrained UE

1. establishes its PC5 one-to-one link with the relay (:mod:`msgin5g.pc5`, modelled on the
   TS 24.554 direct link establishment) from the UDP endpoint it will use for CoAP — the relay
   knows its clients by that endpoint;
2. sends the §3.1 GET (TS 24.538 6.2.1.2) with the recipient, the configuration management server
   functionality, in ``Proxy-Uri`` (RFC 7252 §5.7.2; SPEC D8) — or, with its OSCORE credentials,
   protected end to end with the recipient in ``Proxy-Scheme`` + ``Uri-Host`` + ``Uri-Port``
   (RFC 8613 decomposes ``Proxy-Uri``; :mod:`msgin5g.security.endpoint`; SPEC D12);
3. handles 2.05 / 4.03 / 4.04 addressed to itself as §3.1 does — with OSCORE only an answer that
   verifies, repeating a request once for a restarted server's Echo challenge (RFC 8613
   Appendix B.1.2) — and ignores any response that is not (a token it did not send; SPEC §3.3);
4. releases its link when done.

Link signalling and CoAP share one socket, so this module carries its own small CoAP-over-UDP
client (RFC 7252 message layer with CON retransmission, separate responses, RFC 7959 Block2
and RFC 7641 Observe): a general client library would bind its own socket, on which the PC5
exchange could not run. The same client, without a link and without ``Proxy-Uri``, talks to an
SCM-S directly — the benchmark uses that to compare relayed with direct configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import urllib.parse
from collections import deque
from typing import Any

from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from .. import codec, pc5
from ..outcome import ConfigResult, Outcome, result_from_docs, result_from_problem
from ..pc5 import Pc5Message, Pc5Type
from ..problem import CF_PROBLEM, Problem, decode_problem
from ..security.endpoint import (
    ClientProtection,
    UnprotectedResponse,
    VerificationFailed,
    forward_proxy_request,
    is_echo_challenge,
)

ACK_TIMEOUT = 2.0  # RFC 7252 §4.8
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
DEFAULT_TIMEOUT = 30.0
MAX_BODY = 1 << 20  # largest block-wise body the UE reassembles
API_SUFFIX = "/su-uc/v1"


class CoapError(Exception):
    """A request ended without a response (timeout, RST, link lost)."""


class LinkRejected(CoapError):
    def __init__(self, cause: int | None):
        name = pc5.Pc5Cause(cause).name if cause in pc5.Pc5Cause._value2member_map_ else str(cause)
        super().__init__(f"PC5 link rejected by the relay: {name}")
        self.cause = cause


def collection_uri(server_uri: str, service_id: str) -> str:
    """``{apiRoot}/su-uc/v1/val-services/{valServiceId}/ue-configurations`` (TS 24.546 C.3.1).

    ``server_uri`` may be the apiRoot or the API base ending in ``/su-uc/v1``.
    """
    base = server_uri.rstrip("/")
    if not base.endswith(API_SUFFIX):
        base += API_SUFFIX
    return f"{base}/val-services/{urllib.parse.quote(service_id, safe='')}/ue-configurations"


def _query_item(key: str, value: str) -> str:
    # RFC 7252 §6.5: '&' (and anything outside the URI alphabet) percent-encoded inside an item
    return urllib.parse.quote(f"{key}={value}", safe="=:@/?!$'()*+,;-._~")


def config_query_uri(
    server_uri: str,
    service_id: str,
    ue_uri: str,
    ue_type: str | None = None,
    ue_snr: str | None = None,
    ue_vendor: str | None = None,
) -> str:
    """The §3.1 GET as one URI: ``ue-uri`` = MSGin5G UE ID, plus the MSGin5G UE information (SPEC §3.1)."""
    items = [_query_item("ue-uri", ue_uri)]
    for key, value in (("ue-vendor", ue_vendor), ("ue-type", ue_type), ("ue-snr", ue_snr)):
        if value is not None:
            items.append(_query_item(key, value))
    return f"{collection_uri(server_uri, service_id)}?{'&'.join(items)}"


def get_request(uri: str, via_proxy: bool) -> Message:
    """A GET for ``uri``: the whole URI in ``Proxy-Uri`` (via a relay), or decomposed (direct)."""
    msg = Message(code=Code.GET)
    if via_proxy:
        msg.opt.proxy_uri = uri
    else:
        msg.set_request_uri(uri)
        msg.opt.uri_host = None  # the server is addressed by IP; virtual hosting is not used
    return msg


class _Pending:
    """One request in flight (one message ID and token)."""

    __slots__ = ("acked", "con", "future", "mid", "token", "wire")

    def __init__(self, mid: int, token: bytes, wire: bytes, con: bool, future: asyncio.Future):
        self.mid = mid
        self.token = token
        self.wire = wire
        self.con = con
        self.acked = False
        self.future = future


class Observation:
    """Notifications of one observed resource (RFC 7641), as an async iterator of responses."""

    def __init__(self, ue: ConstrainedUe, token: bytes, request: Message):
        self._ue = ue
        self.token = token
        self.request = request
        self.binding = None  # OSCORE: the registration's request binding, to verify notifications
        self.queue: asyncio.Queue[Message] = asyncio.Queue()

    def __aiter__(self) -> Observation:
        return self

    async def __anext__(self) -> Message:
        return await self.queue.get()

    async def next(self, timeout: float) -> Message:
        return await asyncio.wait_for(self.queue.get(), timeout)

    def cancel(self) -> None:
        """Forget the observation; the next notification is rejected with RST (RFC 7641 §3.6)."""
        self._ue._observations.pop(self.token, None)


class ConstrainedUe(asyncio.DatagramProtocol):
    """A constrained UE's MSGin5G Client on one UDP endpoint (TS 24.538 6.2.2.2; SPEC §3.3).

    ``peer`` is the relay's PC5 address (or, for a direct comparison, the SCM-S itself).
    """

    def __init__(
        self,
        peer_host: str,
        peer_port: int,
        *,
        l2_id: int | None = None,
        user_info: str = "",
        ack_timeout: float = ACK_TIMEOUT,
        max_retransmit: int = MAX_RETRANSMIT,
        rng: random.Random | None = None,
        protection: ClientProtection | None = None,
    ):
        self.peer = (peer_host, peer_port)
        #: OSCORE (RFC 8613; SPEC D12): when set, every request is protected end to end and every
        #: answer verified; an unprotected answer raises UnprotectedResponse
        self.protection = protection
        self._rng = rng or random.Random()
        self.l2_id = l2_id if l2_id is not None else self._rng.randrange(1, 0x800000)
        self.user_info = user_info
        self.ack_timeout = ack_timeout
        self.max_retransmit = max_retransmit
        self.transport: asyncio.DatagramTransport | None = None
        self.linked = False
        self.keepalive: int | None = None
        self.ignored = 0  # responses not addressed to this UE (SPEC §3.3)
        self._mid = self._rng.randrange(0x10000)
        self._seq = self._rng.randrange(0x10000)
        self._by_mid: dict[int, _Pending] = {}
        self._by_token: dict[bytes, _Pending] = {}
        self._observations: dict[bytes, Observation] = {}
        self._pc5_waiters: dict[int, asyncio.Future] = {}
        self._seen: dict[int, bytes | None] = {}  # MIDs of the peer's CON/NON, with our ACK if any
        self._seen_order: deque[int] = deque()
        self._keepalive_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- socket -------------------------------------------------------------------------------

    async def open(self) -> ConstrainedUe:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, remote_addr=self.peer)
        return self

    def connection_made(self, transport) -> None:
        self.transport = transport

    def error_received(self, exc) -> None:  # ICMP errors: the peer is gone; retransmissions go on
        pass

    @property
    def local_address(self) -> tuple:
        return self.transport.get_extra_info("sockname")[:2] if self.transport else ("", 0)

    async def close(self, release: bool = True) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if release and self.linked:
            with contextlib.suppress(CoapError, asyncio.TimeoutError, OSError):
                await self.release_link(timeout=2.0)
        for p in list(self._by_mid.values()):
            if not p.future.done():
                p.future.set_exception(CoapError("closed"))
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def __aenter__(self) -> ConstrainedUe:
        if self.transport is None:
            await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.sendto(data)

    # ---- PC5 link (SPEC D8) -------------------------------------------------------------------

    async def _pc5_exchange(self, msg: Pc5Message, timeout: float) -> Pc5Message:
        """Send PC5 signalling and wait for the answer with the same sequence number (3 tries)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pc5_waiters[msg.seq] = fut
        wire = pc5.encode(msg)
        try:
            deadline = loop.time() + timeout
            wait = min(1.0, timeout / 3)
            while True:
                self._send(wire)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({fut}, timeout=min(wait, remaining))
                if done:
                    return fut.result()
                wait *= 2
        finally:
            self._pc5_waiters.pop(msg.seq, None)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq

    async def establish_link(self, timeout: float = 5.0) -> None:
        """PC5 direct link establishment (modelled on TS 24.554 7.2.2); raises LinkRejected."""
        req = Pc5Message(
            Pc5Type.LINK_ESTABLISHMENT_REQUEST, self._next_seq(), l2id=self.l2_id, user_info=self.user_info
        )
        answer = await self._pc5_exchange(req, timeout)
        if answer.type != Pc5Type.LINK_ESTABLISHMENT_ACCEPT:
            raise LinkRejected(answer.cause)
        self.linked = True
        self.keepalive = answer.keepalive
        if self.keepalive:
            self._keepalive_task = asyncio.create_task(self._keepalive_loop(self.keepalive))

    async def _keepalive_loop(self, interval: float) -> None:
        counter = 0
        while self.linked:
            await asyncio.sleep(interval)
            counter += 1
            msg = Pc5Message(
                Pc5Type.LINK_KEEPALIVE_REQUEST, self._next_seq(), l2id=self.l2_id, counter=counter
            )
            try:
                await self._pc5_exchange(msg, timeout=min(interval, 5.0))
            except TimeoutError:
                self.linked = False  # the relay is gone: the link is lost

    async def release_link(self, timeout: float = 5.0) -> None:
        """PC5 direct link release (modelled on TS 24.554 7.2.4)."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        self.linked = False
        req = Pc5Message(
            Pc5Type.LINK_RELEASE_REQUEST,
            self._next_seq(),
            l2id=self.l2_id,
            cause=pc5.Pc5Cause.NO_LONGER_NEEDED,
        )
        await self._pc5_exchange(req, timeout)

    # ---- CoAP ---------------------------------------------------------------------------------

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def new_token(self) -> bytes:
        return self._rng.getrandbits(64).to_bytes(8, "big")

    async def request(
        self,
        msg: Message,
        *,
        token: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        confirmable: bool = True,
    ) -> Message:
        """Send one request and return its response (RFC 7252 §4.2, §5.2); no block-wise handling.

        With OSCORE ``msg`` is the plain request: it is protected, and the verified plain answer
        is returned (:meth:`secure_exchange`)."""
        if self.protection is None:
            return await self.exchange(msg, token=token, timeout=timeout, confirmable=confirmable)
        plain, _ = await self.secure_exchange(msg, token=token, timeout=timeout, confirmable=confirmable)
        return plain

    async def secure_exchange(
        self,
        msg: Message,
        *,
        token: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        confirmable: bool = True,
    ) -> tuple[Message, object]:
        """One OSCORE-protected request (RFC 8613 §8.1, §8.4): (verified plain answer, request
        binding). A 4.01 Echo challenge from a server that lost its replay window is answered
        once with a new request carrying that Echo (RFC 8613 Appendix B.1.2)."""
        assert self.protection is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        plain_req = msg
        for attempt in (1, 2):
            outer, binding = self.protection.protect(plain_req)
            response = await self.exchange(
                outer, token=token, timeout=max(0.01, deadline - loop.time()), confirmable=confirmable
            )
            try:
                plain = self.protection.verify(response, binding)
            except VerificationFailed as e:
                raise CoapError(f"the answer failed OSCORE verification: {e}") from None
            if attempt == 1 and is_echo_challenge(plain):
                plain_req = msg.copy(echo=plain.opt.echo)
                if token is not None and token in self._observations:
                    obs = self._observations.pop(token)
                    token = obs.token = self.new_token()
                    self._observations[token] = obs
                continue
            return plain, binding
        raise AssertionError("unreachable")

    async def exchange(
        self,
        msg: Message,
        *,
        token: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        confirmable: bool = True,
    ) -> Message:
        """Send one message as it is and return the response to it (RFC 7252 §4.2, §5.2)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        token = self.new_token() if token is None else token
        mid = self._next_mid()
        msg.mtype = Type.CON if confirmable else Type.NON
        msg.mid = mid
        msg.token = token
        fut = loop.create_future()
        pending = _Pending(mid, token, msg.encode(), confirmable, fut)
        self._by_mid[mid] = pending
        self._by_token[token] = pending
        try:
            wait = self.ack_timeout * self._rng.uniform(1.0, ACK_RANDOM_FACTOR)
            attempts = 0
            self._send(pending.wire)
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CoapError(f"no response within {timeout:g} s")
                if pending.acked or not confirmable or attempts >= self.max_retransmit:
                    step = remaining
                else:
                    step = min(wait, remaining)
                done, _ = await asyncio.wait({fut}, timeout=step)
                if done:
                    return fut.result()
                if confirmable and not pending.acked and attempts < self.max_retransmit:
                    attempts += 1
                    wait *= 2
                    self._send(pending.wire)  # retransmission: same MID (RFC 7252 §4.2)
        finally:
            self._by_mid.pop(mid, None)
            if self._by_token.get(token) is pending:
                del self._by_token[token]

    async def fetch(self, msg: Message, *, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """A request with RFC 7959 Block2 reassembly: the returned response carries the whole body."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        template = msg.copy()
        response = await self.request(msg, timeout=timeout)
        return await self._complete_blocks(template, response, deadline - loop.time())

    async def _complete_blocks(self, template: Message, response: Message, timeout: float) -> Message:
        block = response.opt.block2
        if block is None or not block.more or not Code(response.code).is_successful():
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        body = bytearray(response.payload)
        etag = response.opt.etag
        while block.more:
            if len(body) > MAX_BODY:
                raise CoapError(f"body larger than {MAX_BODY} bytes")
            nxt = template.copy()
            nxt.opt.observe = None
            nxt.opt.block2 = BlockOption.BlockwiseTuple(block.block_number + 1, False, block.size_exponent)
            part = await self.request(nxt, timeout=max(0.01, deadline - loop.time()))
            if not Code(part.code).is_successful():
                return part
            block = part.opt.block2
            if block is None or (etag is not None and part.opt.etag != etag):
                raise CoapError("the representation changed during block-wise transfer")
            body += part.payload
        full = Message(code=response.code, payload=bytes(body))
        full.opt = response.opt
        full.opt.block2 = None
        return full

    async def observe(self, msg: Message, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[Message, Observation]:
        """Register an observation (RFC 7641): the first response, and an iterator of the notifications."""
        token = self.new_token()
        msg.opt.observe = 0
        template = msg.copy()
        obs = Observation(self, token, template)
        self._observations[token] = obs
        if self.protection is None:
            first = await self.request(msg, token=token, timeout=timeout)
        else:
            first, obs.binding = await self.secure_exchange(msg, token=token, timeout=timeout)
        first = await self._complete_blocks(template, first, timeout)
        if first.opt.observe is None:
            obs.cancel()
        return first, obs

    # ---- input --------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr) -> None:
        if pc5.is_pc5(data):
            self._on_pc5(data)
            return
        try:
            msg = Message.decode(data)
        except Exception:  # garbage on the socket: ignored
            return
        try:
            self._on_coap(msg)
        except Exception:  # a response that cannot be handled is ignored, never fatal
            self.ignored += 1

    def _on_pc5(self, data: bytes) -> None:
        try:
            msg = pc5.decode(data)
        except pc5.Pc5Error:
            return
        if msg.type == Pc5Type.LINK_RELEASE_REQUEST:  # the relay released us (e.g. keep-alive timeout)
            self.linked = False
            self._send(pc5.encode(msg.reply(Pc5Type.LINK_RELEASE_ACCEPT)))
            return
        fut = self._pc5_waiters.get(msg.seq)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _duplicate(self, msg: Message) -> bool:
        """Remember the peer's CON/NON MIDs; a repeated CON gets the same ACK again (RFC 7252 §4.5)."""
        if msg.mid in self._seen:
            ack = self._seen[msg.mid]
            if ack is not None:
                self._send(ack)
            return True
        ack = None
        if msg.mtype == Type.CON:  # a separate response or notification: acknowledge it (RFC 7252 §5.2.2)
            a = Message(code=Code.EMPTY)
            a.mtype, a.mid = Type.ACK, msg.mid
            ack = a.encode()
            self._send(ack)
        self._seen[msg.mid] = ack
        self._seen_order.append(msg.mid)
        if len(self._seen_order) > 256:
            self._seen.pop(self._seen_order.popleft(), None)
        return False

    def _reject(self, mid: int) -> None:
        rst = Message(code=Code.EMPTY)
        rst.mtype, rst.mid = Type.RST, mid
        self._send(rst.encode())

    def _on_coap(self, msg: Message) -> None:
        code = Code(msg.code)
        if code == Code.EMPTY:
            p = self._by_mid.get(msg.mid)
            if p is None:
                return
            if msg.mtype == Type.ACK:
                p.acked = True  # separate response follows
            elif msg.mtype == Type.RST and not p.future.done():
                p.future.set_exception(CoapError("request rejected with RST"))
            return
        if not code.is_response():
            if msg.mtype == Type.CON:
                self._reject(msg.mid)
            return
        if msg.mtype == Type.ACK:
            p = self._by_mid.get(msg.mid)
            if p is None or p.token != msg.token:
                self.ignored += 1  # not an answer to anything this UE asked (SPEC §3.3)
                return
            if not p.future.done():
                p.future.set_result(msg)
            return
        if msg.mtype not in (Type.CON, Type.NON):
            return
        pending = self._by_token.get(msg.token)
        obs = self._observations.get(msg.token)
        if pending is None and obs is None:
            self.ignored += 1  # addressed to someone else (SPEC §3.3): ignored, CON rejected at message layer
            if msg.mtype == Type.CON:
                self._reject(msg.mid)
            return
        if self._duplicate(msg):
            return
        if pending is not None and not pending.future.done():
            pending.future.set_result(msg)
        elif obs is not None:
            task = asyncio.ensure_future(self._deliver_notification(obs, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver_notification(self, obs: Observation, msg: Message) -> None:
        if self.protection is not None:
            try:
                msg = self.protection.verify(msg, obs.binding)
            except (UnprotectedResponse, VerificationFailed):
                self.ignored += 1  # not from the server we observe: dropped (RFC 8613 §8.4)
                return
        try:
            full = await self._complete_blocks(obs.request, msg, DEFAULT_TIMEOUT)
        except CoapError:
            return
        await obs.queue.put(full)


# --------------------------------------------------------------------------------------------
# The configuration procedure


def result_from_unprotected(e: UnprotectedResponse, extra: dict | None = None) -> ConfigResult:
    """An unprotected answer to a protected request: an error, never the server's 2.05/4.03/4.04
    (so it cannot trigger the pre-configuration fall-back; RFC 8613 §8.4; SPEC D12)."""
    r = result_from_response(e.response)
    return ConfigResult(
        Outcome.ERROR,
        r.code,
        problem=r.problem,
        detail=f"unprotected answer, not from the server's security context: {r.problem or r.detail}",
        extra=dict(extra or {}),
    )


def result_from_response(response: Message) -> ConfigResult:
    """Handle a response addressed to this UE as §3.1 does (TS 24.538 6.2.1.2 / 6.2.2.2)."""
    code = int(response.code)
    if code == int(Code.CONTENT):
        cf = response.opt.content_format
        cf = codec.CF_CBOR if cf is None else cf
        try:
            docs = codec.decode(response.payload, cf)
        except codec.CodecError as e:
            return ConfigResult(Outcome.ERROR, code, detail=f"unreadable 2.05 body: {e}")
        if not isinstance(docs, list) or not all(isinstance(d, dict) for d in docs):
            return ConfigResult(Outcome.ERROR, code, detail="2.05 body is not an array of UeConfigDoc")
        return result_from_docs(code, docs)
    problem: Problem | None = None
    if response.payload and response.opt.content_format == CF_PROBLEM:
        with contextlib.suppress(Exception):
            problem = decode_problem(response.payload, code)
    if problem is None:
        problem = Problem(code, response.payload.decode("utf-8", "replace")[:200])
    return result_from_problem(code, problem)


async def get_config_via_relay(
    relay_host: str,
    relay_port: int,
    server_uri: str,
    service_id: str = "msgin5g",
    ue_uri: str | None = None,
    ue_type: str | None = None,
    ue_snr: str | None = None,
    ue_vendor: str | None = None,
    l2_id: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    security: object | None = None,
) -> ConfigResult:
    """MSGin5G UE configuration of a constrained UE through a Relay UE (TS 24.538 6.2.2.2; SPEC §3.3).

    Establishes the PC5 link (Layer-2 ID ``l2_id``, random when ``None``), sends the §3.1 GET with
    the recipient ``server_uri`` (apiRoot, or the API base ending in ``/su-uc/v1``) in Proxy-Uri,
    handles the answer addressed to itself, and releases the link. Never raises for protocol
    outcomes: a rejected link, a timeout or an unreadable answer is an ``Outcome.ERROR`` result.

    With ``security`` (the UE's OSCORE context with the SCM-S) the request is protected end to
    end and the recipient travels as Proxy-Scheme + Uri-Host + Uri-Port (RFC 8613 decomposes
    Proxy-Uri); the relay routes on those and can neither read nor alter the rest (SPEC D8, D12).
    """
    if not ue_uri:
        raise ValueError("ue_uri (the MSGin5G UE ID) is mandatory")
    uri = config_query_uri(server_uri, service_id, ue_uri, ue_type, ue_snr, ue_vendor)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    protection = None
    if security is not None:
        plain_request, outer = forward_proxy_request(uri)
        protection = ClientProtection(security, outer)
    ue = ConstrainedUe(relay_host, relay_port, l2_id=l2_id, user_info=ue_uri, protection=protection)
    extra: dict[str, Any] = {"via": f"{relay_host}:{relay_port}", "l2id": f"{ue.l2_id:06x}"}
    try:
        await ue.open()
    except OSError as e:
        return ConfigResult(
            Outcome.ERROR, detail=f"cannot reach the relay {relay_host}:{relay_port}: {e}", extra=extra
        )
    try:
        try:
            await ue.establish_link(timeout=min(5.0, timeout))
        except LinkRejected as e:
            return ConfigResult(Outcome.ERROR, detail=str(e), extra=extra)
        except TimeoutError:
            return ConfigResult(
                Outcome.ERROR,
                detail=f"no PC5 link establishment answer from {relay_host}:{relay_port}",
                extra=extra,
            )
        request = plain_request if protection is not None else get_request(uri, via_proxy=True)
        try:
            response = await ue.fetch(request, timeout=max(0.1, deadline - loop.time()))
        except UnprotectedResponse as e:
            return result_from_unprotected(e, extra)
        except CoapError as e:
            return ConfigResult(
                Outcome.ERROR, detail=f"no configuration answer through the relay: {e}", extra=extra
            )
        result = result_from_response(response)
        result.extra.update(extra)
        return result
    finally:
        await ue.close(release=True)
