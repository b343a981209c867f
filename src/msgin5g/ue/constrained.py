"""The constrained UE's CoAP endpoint: PC5 link signalling and CoAP on one UDP socket (SPEC §3.3, D8).

The relay knows its clients by the UDP endpoint they established the PC5 link from, so link
signalling (:mod:`msgin5g.pc5`, modelled on TS 24.554 direct link establishment, keep-alive and
release) and CoAP share one socket. CoAP runs on the project's message layer
(:mod:`msgin5g.coap.msglayer` under the :class:`~msgin5g.coap.udp.CoapEndpoint` shell: message IDs,
duplicate detection, CON retransmission, separate responses, RFC 7641 observations); PC5
datagrams are claimed before the message layer sees them.

The public interface works on aiocoap ``Message`` objects, because OSCORE (RFC 8613;
:mod:`msgin5g.security.endpoint`) protects and verifies those: each datagram is decoded once by
:mod:`msgin5g.coap.wire` and converted at that boundary. Block-wise transfer (RFC 7959) runs on
the plain messages, above the protection (inner Block2, RFC 8613 §4.1.3.4), with the message
layer's :class:`~msgin5g.coap.blockwise.BlockwiseTransfer`. A UE made with ``qblock`` offers
RFC 9177 Q-Block2 in its requests, protected ones included: over OSCORE the message layer protects
each request of the exchange and verifies each block response on its own
(:class:`~msgin5g.security.endpoint.LayerProtection`, as the Gateway UE's SCM-C does), the first
request going as NON.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from aiocoap.message import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from .. import pc5
from ..coap import wire
from ..coap.blockwise import MAX_BODY, BlockError, BlockwiseTransfer
from ..coap.msglayer import ACK_TIMEOUT, MAX_RETRANSMIT, MessageLayer, Params
from ..coap.qblock_client import QBlockOffer
from ..coap.udp import CoapEndpoint, CoapError
from ..pc5 import Pc5Message, Pc5Type
from ..security.endpoint import (
    ClientProtection,
    NotingProtection,
    UnprotectedResponse,
    VerificationFailed,
    is_echo_challenge,
)
from .reask import PROXY_TIMEOUT, ReaskPolicy, ask_again, exchange_timeout, proxy_timed_out

DEFAULT_TIMEOUT = 30.0

__all__ = [
    "ACK_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_BODY",
    "MAX_RETRANSMIT",
    "CoapError",
    "ConstrainedUe",
    "LinkRejected",
    "Observation",
    "ReaskPolicy",
    "get_request",
]


class LinkRejected(CoapError):
    def __init__(self, cause: int | None):
        name = pc5.Pc5Cause(cause).name if cause in pc5.Pc5Cause._value2member_map_ else str(cause)
        super().__init__(f"PC5 link rejected by the relay: {name}")
        self.cause = cause


def get_request(uri: str, via_proxy: bool) -> Message:
    """A GET for ``uri``: the whole URI in ``Proxy-Uri`` (via a relay, RFC 7252 §5.7.2; SPEC D8), or
    decomposed (direct, or to a gateway)."""
    msg = Message(code=Code.GET)
    if via_proxy:
        msg.opt.proxy_uri = uri
    else:
        msg.set_request_uri(uri)
        msg.opt.uri_host = None  # the server is addressed by IP; virtual hosting is not used
    return msg


class Observation:
    """Notifications of one observed resource (RFC 7641), as an async iterator of responses."""

    def __init__(self, ue: ConstrainedUe, request: Message):
        self._ue = ue
        self.handle: int | None = None
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
        if self.handle is not None and self._ue.endpoint is not None:
            self._ue.endpoint.cancel(self.handle)
        self.handle = None


class ConstrainedUe:
    """A constrained UE's MSGin5G Client on one UDP endpoint (TS 24.538 6.2.2.2; SPEC §3.3).

    ``peer`` is the relay's PC5 address (or a Gateway UE, or for a direct comparison the SCM-S).
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
        reask: ReaskPolicy | None = None,
        qblock: QBlockOffer | None = None,
    ):
        self.peer = (peer_host, peer_port)
        #: SPEC D13: ask again with a new exchange when one is lost (:mod:`.reask`); None: one
        #: exchange per request, its failure raised
        self.reask = reask
        #: RFC 9177: offer Q-Block2 (the SCM-S, through the relay, sends a large answer as a burst;
        #: a server without it is fallen back from, RFC 9177 §4.1); over OSCORE see :meth:`fetch`
        self.qblock = qblock
        self.exchanges = 0  # exchanges started (a request asked again counts once more)
        #: OSCORE (RFC 8613; SPEC D12): when set, every request is protected end to end and every
        #: answer verified; an unprotected answer raises UnprotectedResponse
        self.protection = protection
        self._rng = rng or random.Random()
        self.l2_id = l2_id if l2_id is not None else self._rng.randrange(1, 0x800000)
        self.user_info = user_info
        if reask is not None:
            self.params = Params(
                ack_timeout=reask.ack_timeout,
                ack_random_factor=reask.ack_random_factor,
                max_retransmit=reask.max_retransmit,
                give_up_wait=reask.give_up_wait,
                separate_wait=reask.separate_wait,
                adaptive_rto=True,
            )
        else:
            self.params = Params(ack_timeout=ack_timeout, max_retransmit=max_retransmit, adaptive_rto=True)
        self.endpoint: CoapEndpoint | None = None
        self.linked = False
        self.keepalive: int | None = None
        self.ignored = 0  # responses not addressed to this UE (SPEC §3.3)
        self._seq = self._rng.randrange(0x10000)
        self._pc5_waiters: dict[int, asyncio.Future] = {}
        self._keepalive_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    # ---- socket -------------------------------------------------------------------------------

    async def open(self) -> ConstrainedUe:
        layer = MessageLayer(self.params, self._rng)
        self.endpoint = CoapEndpoint.connect(
            *self.peer, layer, demux=self._demux, on_unmatched=self._on_stray
        )
        return self

    def _on_stray(self, msg: wire.CoapMessage, addr) -> None:
        self.ignored += 1  # not an answer to anything this UE asked (SPEC §3.3)

    @property
    def local_address(self) -> tuple:
        return self.endpoint.local_address if self.endpoint is not None else ("", 0)

    async def close(self, release: bool = True) -> None:
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if release and self.linked:
            with contextlib.suppress(CoapError, asyncio.TimeoutError, OSError):
                await self.release_link(timeout=2.0)
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    async def __aenter__(self) -> ConstrainedUe:
        if self.endpoint is None:
            await self.open()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _send(self, data: bytes) -> None:
        if self.endpoint is not None:
            self.endpoint.sendto(data)

    def _endpoint(self) -> CoapEndpoint:
        if self.endpoint is None:
            raise CoapError("the UE's endpoint is not open")
        return self.endpoint

    # ---- PC5 link (SPEC D8) -------------------------------------------------------------------

    def _demux(self, data: bytes, addr) -> bool:
        """Claim PC5 signalling before the CoAP message layer sees it."""
        if not pc5.is_pc5(data):
            return False
        try:
            msg = pc5.decode(data)
        except pc5.Pc5Error:
            return True
        if msg.type == Pc5Type.LINK_RELEASE_REQUEST:  # the relay released us (e.g. keep-alive timeout)
            self.linked = False
            self._send(pc5.encode(msg.reply(Pc5Type.LINK_RELEASE_ACCEPT)))
            return True
        fut = self._pc5_waiters.get(msg.seq)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        return True

    async def _pc5_exchange(self, msg: Pc5Message, timeout: float) -> Pc5Message:
        """Send PC5 signalling and wait for the answer with the same sequence number (3 tries)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pc5_waiters[msg.seq] = fut
        data = pc5.encode(msg)
        try:
            deadline = loop.time() + timeout
            wait = min(1.0, self.params.ack_timeout, timeout / 3)
            sent_once = True
            while True:
                sent_at = loop.time()
                self._send(data)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({fut}, timeout=min(wait, remaining))
                if done:
                    rto = self.endpoint.layer.rto if self.endpoint is not None else None
                    if sent_once and rto is not None:  # the relay's round trip (Karn: one copy)
                        rto.sample(self.endpoint.peer, loop.time() - sent_at, loop.time())
                    return fut.result()
                wait *= 2
                sent_once = False
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

    def new_token(self) -> bytes:
        return self._rng.getrandbits(64).to_bytes(8, "big")

    async def exchange(
        self,
        msg: Message,
        *,
        token: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        confirmable: bool = True,
        observation: Observation | None = None,
    ) -> Message:
        """Send one message as it is and return the response to it (RFC 7252 §4.2, §5.2); with
        ``observation`` its notifications go to that observation's queue (RFC 7641). An
        unprotected request without Block2 offers Q-Block2 when the UE is made with ``qblock`` (a
        protected one does in :meth:`fetch`)."""
        notify = None if observation is None else (lambda m: self._on_notification(observation, m))
        qblock = None
        if observation is None and self.protection is None and msg.opt.block2 is None:
            qblock = self.qblock
        self.exchanges += 1
        fut = self._endpoint().request(
            wire.from_aiocoap(msg),
            timeout=timeout,
            confirmable=confirmable,
            token=token,
            on_notification=notify,
            qblock=qblock,
            blockwise=qblock is not None,  # a server that ignores Q-Block2: RFC 7959 in the layer
        )
        if observation is not None:
            observation.handle = fut.handle
        response = await fut
        if self.reask is not None and proxy_timed_out(
            response.code, response.first(wire.OPT_OSCORE) is not None
        ):
            raise CoapError("the relay got no answer from the SCM-S in time (5.04)", PROXY_TIMEOUT)
        return wire.to_aiocoap(response)

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
        is returned (:meth:`secure_exchange`). With :attr:`reask` a lost exchange is followed at
        once by a new one (new message ID and token, newly protected) until ``timeout``
        (:mod:`.reask`; SPEC D13)."""
        if self.reask is None:
            return await self._request_once(msg, token=token, timeout=timeout, confirmable=confirmable)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = exchange_timeout(self.reask, deadline - loop.time())
            if wait is None:
                raise CoapError("no answer before the deadline", "deadline")
            try:
                return await self._request_once(
                    msg.copy(), token=token, timeout=wait, confirmable=confirmable
                )
            except CoapError as e:
                if not ask_again(e.cause, deadline - loop.time()):
                    raise
            token = None  # a new exchange: a new token (RFC 7252 §5.3.1)

    async def _request_once(
        self, msg: Message, *, token: bytes | None, timeout: float, confirmable: bool
    ) -> Message:
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
        observation: Observation | None = None,
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
            if observation is not None:
                observation.binding = binding
            response = await self.exchange(
                outer,
                token=token,
                timeout=max(0.01, deadline - loop.time()),
                confirmable=confirmable,
                observation=observation,
            )
            try:
                plain = self.protection.verify(response, binding)
            except VerificationFailed as e:
                raise CoapError(f"the answer failed OSCORE verification: {e}") from None
            if attempt == 1 and is_echo_challenge(plain):
                plain_req = msg.copy(echo=plain.opt.echo)
                if observation is not None:
                    observation.cancel()
                token = None
                continue
            return plain, binding
        raise AssertionError("unreachable")

    async def fetch(self, msg: Message, *, timeout: float = DEFAULT_TIMEOUT) -> Message:
        """A request with RFC 7959 Block2 reassembly: the returned response carries the whole body.
        A protected request of a UE made with ``qblock`` offers Q-Block2 (:meth:`_secure_qblock`)."""
        if self.protection is not None and self.qblock is not None and msg.opt.block2 is None:
            return await self._secure_qblock(msg, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        template = msg.copy()
        response = await self.request(msg, timeout=timeout)
        return await self._complete_blocks(template, response, deadline - loop.time())

    async def _secure_qblock(self, msg: Message, timeout: float) -> Message:
        """An OSCORE-protected request offering Q-Block2 (RFC 9177; RFC 8613 §8.1, §8.4): the
        message layer protects the first request — NON, so that the SCM-S's outer block responses
        are NON too (it picks their type after the request's) — and each request for missing
        blocks, and verifies each block response on its own before the Q-Block2 receiver sees it.
        A lost exchange is asked again (SPEC D13); a 4.01 Echo challenge is answered once (RFC 8613
        Appendix B.1.2); an unprotected answer raises :class:`UnprotectedResponse`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        plain = wire.from_aiocoap(msg)
        echoed = False
        while True:
            remaining = deadline - loop.time()
            wait = exchange_timeout(self.reask, remaining) if self.reask is not None else remaining
            if wait is None or wait <= 0:
                raise CoapError("no answer before the deadline", "deadline")
            prot = NotingProtection(self.protection)
            self.exchanges += 1
            try:
                resp = await self._endpoint().request(
                    plain,
                    timeout=wait,
                    confirmable=False,
                    qblock=self.qblock,
                    blockwise=True,
                    protection=prot,
                )
            except CoapError as e:
                if prot.failed:  # answers came, and none verified: an error, never asked again
                    raise CoapError(f"the answer failed OSCORE verification: {prot.failed[-1]}") from None
                if self.reask is None or not ask_again(e.cause, deadline - loop.time()):
                    raise
                continue
            if resp.token in prot.unprotected:
                raise UnprotectedResponse(wire.to_aiocoap(resp))
            echo = resp.first(wire.OPT_ECHO)
            if not echoed and resp.code == int(Code.UNAUTHORIZED) and echo is not None:
                echoed = True
                opts = [*plain.without(wire.OPT_ECHO), (wire.OPT_ECHO, echo)]
                plain = wire.CoapMessage(plain.mtype, plain.code, 0, b"", opts, plain.payload)
                continue
            return wire.to_aiocoap(resp)

    async def _complete_blocks(self, template: Message, response: Message, timeout: float) -> Message:
        """The rest of a Block2 body, one follow-up request per block (RFC 7959 §2.4)."""
        block = response.opt.block2
        if block is None or not block.more or not Code(response.code).is_successful():
            return response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        transfer = BlockwiseTransfer(MAX_BODY)
        part = response
        while True:
            try:
                transfer.add(
                    block.block_number,
                    block.more,
                    block.size_exponent,
                    part.payload,
                    part.opt.etag,
                    part.opt.size2,
                )
            except BlockError as e:
                raise CoapError(str(e)) from None
            nxt = transfer.next_block()
            if nxt is None:
                break
            req = template.copy()
            req.opt.observe = None
            req.opt.block2 = BlockOption.BlockwiseTuple(nxt, False, transfer.szx)
            part = await self.request(req, timeout=max(0.01, deadline - loop.time()))
            if not Code(part.code).is_successful():
                return part
            block = part.opt.block2
            if block is None:
                raise CoapError("a block-wise answer without Block2")
        full = Message(code=response.code, payload=transfer.body())
        full.opt = response.opt
        full.opt.block2 = None
        return full

    async def observe(
        self, msg: Message, *, timeout: float = DEFAULT_TIMEOUT, token: bytes | None = None
    ) -> tuple[Message, Observation]:
        """Register an observation (RFC 7641): the first response, and an iterator of the
        notifications. ``token``: a re-registration with the token of the earlier one (§3.3.1)."""
        msg.opt.observe = 0
        template = msg.copy()
        obs = Observation(self, template)
        if self.protection is None:
            first = await self.exchange(msg, timeout=timeout, token=token, observation=obs)
        else:
            first, _ = await self.secure_exchange(msg, timeout=timeout, token=token, observation=obs)
        first = await self._complete_blocks(template, first, timeout)
        if first.opt.observe is None:
            obs.cancel()
        return first, obs

    def _on_notification(self, obs: Observation, msg: wire.CoapMessage) -> None:
        task = asyncio.ensure_future(self._deliver_notification(obs, wire.to_aiocoap(msg)))
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
