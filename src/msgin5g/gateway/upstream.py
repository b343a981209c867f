"""The Gateway UE's SCM-C towards the SCM-S (TS 24.538 6.2.2.x a), c); TS 24.546 6.2.3.3; SPEC D6,
D7, D10, D13).

:class:`UpstreamScmc` issues the bulk GETs (and, without a bulk policy, the UE-scoped single GETs)
to the SCM-S over CoAP/UDP or CoAP over TCP (RFC 8323) and hands back the answers *unsplit* —
splitting is the Gateway Client's job (6.2.2.x, last paragraph). It is not :class:`msgin5g.scmc.
ScmClient` (one UE asking for its own configuration): it packs many UEs into bulk GETs with
:func:`msgin5g.bulk.pack` and decides with the pure rules of :mod:`.upstream_rules`.

Collocated (D10), the Gateway Client calls it in-process; separate, ``msgin5g cm-client`` runs it
behind :class:`~.sealc.SealCServer`. Both implement :class:`CmClient`.

Uu transport:

* **UDP on the project's message layer** (:class:`msgin5g.coap.udp.CoapEndpoint`, one socket
  connected to the SCM-S): RFC 7252 timers, message IDs never reused within EXCHANGE_LIFETIME, and
  NSTART (``nstart``, ``--nstart``; RFC 7252 §4.7) exchanges outstanding at once, the rest queued —
  one lost datagram delays only its own exchange. An ICMP port unreachable ends the exchanges at
  once (a SCM-S that is down is noticed immediately, not after MAX_TRANSMIT_WAIT).
* **Bulk answers as RFC 9177 Q-Block2** (TS 24.546 clause 5; SPEC D7 d): the bulk GET offers
  Q-Block2, the SCM-S sends the blocks as a burst, the layer asks only for the missing ones in
  requests that name only ``bulk-conf-flag`` (D7 b), served from the answer kept for that flag.
  The gateway's receiver asks after :data:`UU_QBLOCK`'s NON_RECEIVE_TIMEOUT (1 s instead of the
  RFC's 4 s default, §7.2 lets a client configure it; the Uu RTT is far below it). A server
  without RFC 9177 (4.02, or Block2 to an ignored Q-Block2) gets RFC 7959: block 0 tells the size
  (Size2), the other blocks are independent follow-ups naming only the flag, fetched side by side
  within NSTART. A Q-Block2 exchange that gives up (NON_MAX_RETRANSMIT rounds lost) is fetched
  again the RFC 7959 way.
* **OSCORE** (SPEC D12): the gateway's one security context protects every request the layer
  sends (:class:`~msgin5g.security.endpoint.LayerProtection`) and verifies every response on its
  own; block-wise runs on the plain messages (inner Q-Block2/Block2). A Q-Block2 request over
  OSCORE goes as NON (docs/qblock.md): the outer block responses are then NON too.
* **Unanswered for a while, asked again**: a bulk GET or follow-up unanswered after
  :data:`HEDGE_AFTER` is sent once more as a new exchange, the first answer taken (SPEC D13).
* **TCP** (RFC 8323, a reliable transport RFC 9177 does not target) stays on aiocoap's client: one
  connection, no message IDs, no NSTART; a bulk GET may be as large as the SCM-S's
  Max-Message-Size (learned from its CSM) and carry thousands of UEs (D7 c).
* **Outcomes as they come.** ``bulk_configure`` reports each bulk GET's outcome through
  ``on_outcome`` as soon as it is complete, so the UEs of a fast GET are not held back by a slow
  one of the same operation (D13).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiocoap
from aiocoap import optiontypes, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from .. import api
from ..bulk import UDP_BULK_BUDGET, BulkGet, BulkItem, followup_query, pack, request_options
from ..coap import wire
from ..coap.actions import BLOCKWISE, Params
from ..coap.msglayer import MessageLayer
from ..coap.qblock import QBlockParams
from ..coap.qblock_client import QBlockOffer
from ..coap.udp import CoapEndpoint, CoapError
from ..security.credentials import KeyCredentials as ClientCredentials
from ..security.credentials import SingleContext
from ..security.endpoint import ClientProtection, LayerProtection, max_plaintext
from .upstream_rules import (
    Done,
    Restart,
    Split,
    UpstreamOutcome,
    after_bulk_answer,
    block_size,
    bulk_outcome,
    new_flag,
    no_answer,
    remaining_blocks,
)
from .wire import UeQuery

log = logging.getLogger("msgin5g.gateway.upstream")

#: RFC 7252 §4.8.2: how long a CON may be retransmitted and still be answered; one exchange's limit.
MAX_TRANSMIT_WAIT = 93.0
#: Exchanges outstanding towards the SCM-S at once (RFC 7252 §4.7 NSTART), by default.
DEFAULT_NSTART = 8
#: s after which an unanswered bulk GET or follow-up is asked again as a new exchange (after its
#: first two transmissions, RFC 7252 §4.2: ACK_TIMEOUT × [1, 1.5] + twice that), then again later.
HEDGE_AFTER = (7.5, 15.0)
#: RFC 9177 §7.2 parameters of the gateway's Q-Block2 client: NON_RECEIVE_TIMEOUT 1 s (RFC default
#: 4 s) — the missing blocks of a burst are asked for after 1, 2, 4, 8 s of silence instead of
#: 4, 8, 16, 32 s; the rest at the RFC's defaults.
UU_QBLOCK = QBlockParams(non_receive_timeout=1.0)
#: RFC 8323 default Max-Message-Size, used until the SCM-S's CSM says otherwise.
TCP_DEFAULT_MMS = 1152
#: What OSCORE adds to a request (RFC 8613 §6): the OSCORE option (flags, Partial IV ≤ 5 bytes,
#: kid ≤ 7), the inner code byte, the payload marker and the 8-byte AEAD tag, with room to spare.
OSCORE_OVERHEAD = 32

OnOutcome = Callable[[UpstreamOutcome], None]


@dataclass(frozen=True, slots=True)
class Answer:
    """One response from the SCM-S as the SCM-C reads it, whichever client carried it."""

    code: int
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None
    etag: bytes | None = None
    block2: tuple[int, bool, int] | None = None  # (num, more, szx), RFC 7959 §2.2
    size2: int | None = None

    @classmethod
    def of_wire(cls, m: wire.CoapMessage) -> Answer:
        b2 = m.first(wire.OPT_BLOCK2)
        return cls(
            m.code,
            m.payload,
            m.uint(wire.OPT_CONTENT_FORMAT),
            m.uint(wire.OPT_MAX_AGE),
            m.first(wire.OPT_ETAG),
            None if b2 is None else wire.parse_block(b2),
            m.uint(wire.OPT_SIZE2),
        )

    @classmethod
    def of_aiocoap(cls, m: aiocoap.Message) -> Answer:
        b2, cf = m.opt.block2, m.opt.content_format
        return cls(
            int(m.code),
            m.payload,
            None if cf is None else int(cf),
            m.opt.max_age,
            m.opt.etag,
            None if b2 is None else (b2.block_number, bool(b2.more), b2.size_exponent),
            m.opt.size2,
        )

    def outcome(self, get: BulkGet, payload: bytes | None = None) -> UpstreamOutcome:
        return bulk_outcome(
            get, self.code, self.payload if payload is None else payload, self.content_format, self.max_age
        )


class CmClient(abc.ABC):
    """What the Gateway Client needs from the configuration management client (D10)."""

    @abc.abstractmethod
    async def bulk_configure(
        self, service_id: str, items: Sequence[BulkItem], on_outcome: OnOutcome | None = None
    ) -> list[UpstreamOutcome]:
        """Fetch the configurations of ``items`` with bulk GETs; one outcome per bulk GET sent,
        together covering every item. Each outcome is also passed to ``on_outcome`` as soon as
        it is known."""

    @abc.abstractmethod
    async def single_configure(self, service_id: str, query: UeQuery) -> UpstreamOutcome:
        """Forward one UE's request on its own (no bulk policy)."""

    async def close(self) -> None:  # noqa: B027 — optional hook
        pass


class UpstreamScmc(CmClient):
    """The Gateway UE's SCM-C (TS 24.546 6.2.3.3), with the bulk GET of TS 24.538 6.2.2.x.

    ``qblock``: offer RFC 9177 Q-Block2 in UDP bulk GETs (``qblock_params``: its §7.2 parameters);
    False fetches every bulk answer the RFC 7959 way."""

    def __init__(
        self,
        server: str,
        *,
        gateway_id: str | None = "gw1",
        nstart: int = DEFAULT_NSTART,
        max_ues: int | None = None,
        timeout: float = MAX_TRANSMIT_WAIT + 5.0,
        credentials: ClientCredentials | None = None,
        qblock: bool = True,
        qblock_params: QBlockParams = UU_QBLOCK,
    ):
        self.server = server
        self.root = api.parse_api_root(server)
        self.transport = "tcp" if self.root.scheme == "coap+tcp" else "udp"
        # TS 33.501 Annex Y; SPEC D12: with credentials the gateway authenticates to the SCM-S as
        # itself (OSCORE, the process's one context) and claims nothing
        self.credentials = credentials
        self.gateway_id = None if credentials is not None else gateway_id
        self.nstart = max(1, nstart)
        # per bulk GET: over TCP bounded by the answer size (≈ 1 MiB messages, ~400 B per UE)
        self.max_ues = max_ues or (2000 if self.transport == "tcp" else 10_000)
        self.timeout = timeout
        self.qblock = qblock
        self.qblock_params = qblock_params
        self._udp_ep: CoapEndpoint | None = None
        self._protection: LayerProtection | None = None
        self._tcp: aiocoap.Context | None = None
        self._tcp_sem = asyncio.Semaphore(4 * self.nstart)
        self._tcp_mms: int | None = None
        self._lock = asyncio.Lock()
        self._uris: dict[str, str] = {}  # service id → collection URI (percent-encoded once)
        self.stats = {
            "bulk-gets": 0,
            "block2-followups": 0,
            "qblock-bodies": 0,  # bulk answers fetched offering Q-Block2
            "qblock-fallback": 0,
            "single-gets": 0,
            "no-answer": 0,
            "split-413": 0,
            "restart-408": 0,
            "hedged": 0,
        }

    # -- plumbing ----------------------------------------------------------------------------------
    def _path(self, service_id: str) -> tuple[str, ...]:
        return self.root.collection_path(service_id)

    def _extra_options(self) -> list[tuple[int, bytes]]:
        if not self.gateway_id:
            return []
        return [(api.OPT_LAB_IDENTITY, f"gateway:{self.gateway_id}".encode())]

    def _options(self, service_id: str, query: Sequence[str]) -> list[tuple[int, bytes]]:
        opts = request_options(self._path(service_id), self.root.host, self._extra_options())
        return opts + [(wire.OPT_URI_QUERY, q.encode()) for q in query]

    def _udp_endpoint(self) -> CoapEndpoint:
        """The one UDP endpoint towards the SCM-S: a connected socket, so that ICMP errors reach it."""
        if self._udp_ep is None:
            if self.credentials is not None:
                self._protection = LayerProtection(ClientProtection(self.credentials.security_context()))
            layer = MessageLayer(Params(nstart=self.nstart, adaptive_rto=True))  # the SCM-S's RTO (coap.rto)
            self._udp_ep = CoapEndpoint.connect(self.root.host.strip("[]"), self.root.port, layer)
        return self._udp_ep

    async def _udp(
        self, opts: list[tuple[int, bytes]], *, qblock: QBlockOffer | None = None, blockwise: bool = False
    ) -> wire.CoapMessage:
        """One GET over the message layer (OSCORE-protected with credentials); a 4.01 Echo
        challenge (the SCM-S lost its replay window) is answered once (RFC 8613 Appendix B.1.2)."""
        ep = self._udp_endpoint()
        for attempt in (1, 2):
            msg = wire.CoapMessage(wire.CON, wire.GET, 0, b"", list(opts))
            resp = await ep.request(
                msg,
                timeout=self.timeout,
                # over OSCORE a Q-Block2 request goes as NON: the block responses follow its type
                confirmable=qblock is None or self._protection is None,
                blockwise=blockwise,
                qblock=qblock,
                protection=self._protection,
            )
            echo = resp.first(wire.OPT_ECHO) if self._protection is not None else None
            if attempt == 1 and resp.code == int(Code.UNAUTHORIZED) and echo is not None:
                opts = [*opts, (wire.OPT_ECHO, echo)]
                continue
            return resp
        raise AssertionError("unreachable")

    async def _tcp_request(self, msg: aiocoap.Message, blockwise: bool) -> aiocoap.Message:
        async with self._tcp_sem:
            if self._tcp is None:
                async with self._lock:
                    if self._tcp is None:
                        self._tcp = await self._tcp_context()
            req = self._tcp.request(msg, handle_blockwise=blockwise)
            try:
                return await asyncio.wait_for(req.response, self.timeout)
            except oscore.NotAProtectedMessage as e:
                # the SCM-S refused our credentials (an unprotected 4.01): a definite answer, passed
                # on as such rather than retried (RFC 8613 §8.4)
                return e.plain_message

    async def _tcp_context(self) -> aiocoap.Context:
        if self.credentials is None:
            return await aiocoap.Context.create_client_context(transports=["tcpclient"])
        ctx = await aiocoap.Context.create_client_context(transports=["oscore", "tcpclient"])
        ctx.client_credentials = SingleContext(self.credentials.security_context())
        return ctx

    def _tcp_message(self, service_id: str, query: Sequence[str], block2=None) -> aiocoap.Message:
        uri = self._uris.get(service_id)
        if uri is None:
            uri = self._uris[service_id] = self.root.collection_uri(service_id)
        msg = aiocoap.Message(code=Code.GET, uri=uri)
        msg.opt.uri_query = list(query)
        for number, value in self._extra_options():
            msg.opt.add_option(optiontypes.OpaqueOption(OptionNumber(number), value))
        if block2 is not None:
            msg.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(*block2)
        return msg

    async def _get(
        self,
        service_id: str,
        query: Sequence[str],
        *,
        block2: tuple[int, bool, int] | None = None,
        qblock: QBlockOffer | None = None,
        blockwise: bool = False,
    ) -> Answer:
        """One GET of the collection with ``query`` (and a Block2 option), on either transport."""
        if self.transport == "tcp":
            return Answer.of_aiocoap(
                await self._tcp_request(self._tcp_message(service_id, query, block2), blockwise)
            )
        opts = self._options(service_id, query)
        if block2 is not None:
            opts.append((wire.OPT_BLOCK2, wire.block_option(*block2)))
        return Answer.of_wire(await self._udp(opts, qblock=qblock, blockwise=blockwise))

    async def _idempotent(self, make: Callable[[], Awaitable[Answer]]) -> Answer:
        """A GET (a bulk GET, one of its follow-ups, a UE-scoped GET), asked again as a new
        exchange when it has gone unanswered for :data:`HEDGE_AFTER` (two transmissions lost),
        the first answer taken and the other exchanges ended (SPEC D13).

        Each exchange keeps RFC 7252's timers; but an exchange whose datagrams were lost a few
        times waits 2 + 4 + 8 + ... s, and a bulk operation waits for its slowest block — at 30 %
        loss each way one exchange in seven needs more than 17 s, one in thirty gives up after
        93 s. These requests are safe to repeat: the SCM-S answers them from the answer it keeps
        for the bulk configuration id (SPEC D6, D7 b). Over TCP nothing is lost: one exchange."""
        if self.transport == "tcp":
            return await make()
        waits = list(HEDGE_AFTER)
        tasks = [asyncio.ensure_future(make())]
        try:
            while True:
                done, _ = await asyncio.wait(
                    tasks, timeout=waits[0] if waits else None, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # unanswered so far: the same request once more
                    waits.pop(0)
                    self.stats["hedged"] += 1
                    tasks.append(asyncio.ensure_future(make()))
                    continue
                error: BaseException | None = None
                for t in done:
                    tasks.remove(t)
                    if t.exception() is None:
                        return t.result()
                    error = t.exception()
                if not tasks:
                    assert error is not None
                    raise error
        finally:
            for t in tasks:
                t.cancel()

    async def _learn_mms(self) -> int:
        """The SCM-S's Max-Message-Size from its CSM (RFC 8323 §5.3.1); a cheap probe request
        opens the connection when none has been made yet."""
        if self._tcp_mms is None:
            probe = aiocoap.Message(code=Code.GET, uri=f"{self.root.origin}/.well-known/core")
            try:
                resp = await self._tcp_request(probe, True)
                remote = getattr(resp.remote, "underlying_address", None) or resp.remote  # OSCORE
                settings = getattr(remote, "_remote_settings", None) or {}
                self._tcp_mms = int(settings.get("max-message-size", TCP_DEFAULT_MMS))
            except Exception as e:  # no connection yet: pack conservatively, learn next time
                log.debug("Max-Message-Size probe failed: %s", e)
                return TCP_DEFAULT_MMS
        return self._tcp_mms

    # -- bulk ----------------------------------------------------------------------------------------
    async def bulk_configure(
        self, service_id: str, items: Sequence[BulkItem], on_outcome: OnOutcome | None = None
    ) -> list[UpstreamOutcome]:
        """Pack ``items`` for the transport and fetch every bulk GET (TS 24.538 6.2.2.x c))."""
        if not items:
            return []
        if self.transport == "tcp":
            mms = await self._learn_mms()
            budget = mms - 64  # room for the largest RFC 8323 length field and a future option
        else:
            budget = UDP_BULK_BUDGET
        if self.credentials is not None:
            budget = min(budget, max_plaintext(self.credentials.security_context())) - OSCORE_OVERHEAD
        gets = pack(
            items,
            new_flag=new_flag,
            max_message=budget,
            fixed_options=request_options(self._path(service_id), self.root.host, self._extra_options()),
            transport=self.transport,
            max_ues=self.max_ues,
        )
        results = await asyncio.gather(*(self._bulk_adaptive(service_id, g, on_outcome) for g in gets))
        return [o for group in results for o in group]

    async def _bulk_adaptive(
        self, service_id: str, get: BulkGet, on_outcome: OnOutcome | None, restarted: bool = False
    ) -> list[UpstreamOutcome]:
        outcome = await self._fetch_bulk(service_id, get)
        step, self.max_ues = after_bulk_answer(get, outcome.code, self.max_ues, restarted)
        if isinstance(step, Split):
            self.stats["split-413"] += 1
            results = await asyncio.gather(
                *(self._bulk_adaptive(service_id, g, on_outcome) for g in step.gets)
            )
            return [o for group in results for o in group]
        if isinstance(step, Restart):
            self.stats["restart-408"] += 1
            return await self._bulk_adaptive(service_id, step.get, on_outcome, True)
        assert isinstance(step, Done)
        if on_outcome is not None:
            on_outcome(outcome)
        return [outcome]

    async def _fetch_bulk(self, service_id: str, get: BulkGet) -> UpstreamOutcome:
        """One bulk GET: its answer as a Q-Block2 burst (UDP), or block 0 and RFC 7959 follow-ups
        naming only the flag (SPEC D7 b)."""
        self.stats["bulk-gets"] += 1
        try:
            if self.transport == "udp" and self.qblock:
                try:
                    first = await self._idempotent(lambda: self._qblock_get(service_id, get))
                except CoapError as e:
                    if e.cause != BLOCKWISE:
                        raise
                    # the burst's blocks went on missing (NON_MAX_RETRANSMIT rounds): this bulk GET
                    # once more the RFC 7959 way
                    log.debug("Q-Block2 gave up (%s): RFC 7959 for flag %s", e, get.flag)
                    self.stats["qblock-fallback"] += 1
                    first = await self._idempotent(
                        lambda: self._get(service_id, get.uri_query(), block2=(0, False, 6))
                    )
            else:
                block0 = (0, False, 6) if self.transport == "udp" else None
                first = await self._idempotent(lambda: self._get(service_id, get.uri_query(), block2=block0))
            return await self._rest_of_blocks(service_id, get, first)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # unreachable, timeout, connection lost: retry later
            self.stats["no-answer"] += 1
            return no_answer(get, f"no answer from the SCM-S: {type(e).__name__}: {e}")

    async def _qblock_get(self, service_id: str, get: BulkGet) -> Answer:
        """The bulk GET offering Q-Block2 (RFC 9177 §4.4): the whole answer once the layer has
        every block — or block 0 of an RFC 7959 answer when the SCM-S ignores the offer."""
        offer = QBlockOffer(
            params=self.qblock_params,
            followup_options=tuple(self._options(service_id, followup_query(get.flag))),
        )
        # blockwise: a server that ignores the offer and answers with Block2 gets RFC 7959
        # follow-ups repeating the request's options (§2.4; such a server knows no flag)
        answer = await self._get(service_id, get.uri_query(), qblock=offer, blockwise=True)
        self.stats["qblock-bodies"] += 1
        return answer

    async def _rest_of_blocks(self, service_id: str, get: BulkGet, resp: Answer) -> UpstreamOutcome:
        """The blocks after ``resp`` (block 0) of an RFC 7959 answer, side by side once Size2 is known."""
        block2 = resp.block2
        if resp.code != int(Code.CONTENT) or block2 is None or not block2[1]:
            return resp.outcome(get)
        payload = resp.payload
        szx = block2[2]
        size = block_size(szx)
        numbers = remaining_blocks(resp.size2, len(payload), szx)
        if numbers is not None:
            parts = await asyncio.gather(*(self._followup(service_id, get, n, szx) for n in numbers))
        else:  # no Size2: one block after the other (RFC 7959 §2.4)
            parts, more = [], True
            while more:
                if len(payload) + sum(len(p.payload) for p in parts) > 16 * 1024 * 1024:
                    return no_answer(get, "bulk answer larger than 16 MiB")
                num = (len(payload) + sum(len(p.payload) for p in parts)) // size
                part = await self._followup(service_id, get, num, szx)
                parts.append(part)
                more = part.code == int(Code.CONTENT) and part.block2 is not None and part.block2[1]
        for part in parts:
            if part.code != int(Code.CONTENT):  # e.g. 4.08: the kept answer expired meanwhile
                return part.outcome(get)
            if part.etag != resp.etag:
                return no_answer(get, "bulk answer changed between blocks (ETag)")
            payload += part.payload
        return resp.outcome(get, payload)

    async def _followup(self, service_id: str, get: BulkGet, num: int, szx: int) -> Answer:
        self.stats["block2-followups"] += 1
        return await self._idempotent(
            lambda: self._get(service_id, followup_query(get.flag), block2=(num, False, szx))
        )

    # -- single ------------------------------------------------------------------------------------
    async def single_configure(self, service_id: str, query: UeQuery) -> UpstreamOutcome:
        """The UE-scoped GET of TS 24.546 6.2.3.3 on one UE's behalf (no bulk policy, D9)."""
        try:
            self.stats["single-gets"] += 1
            if self.transport == "tcp":  # one exchange, nothing to hedge over TCP (RFC 8323)
                m = await self._tcp_request(self._tcp_message(service_id, query.uri_query()), True)
                cf = m.opt.content_format
                answer = (int(m.code), m.payload, None if cf is None else int(cf), m.opt.max_age)
            else:  # a GET, safe to repeat: asked again like a bulk GET when it goes unanswered (D13)
                r = await self._idempotent(lambda: self._get(service_id, query.uri_query(), blockwise=True))
                answer = (r.code, r.payload, r.content_format, r.max_age)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.stats["no-answer"] += 1
            detail = f"no answer from the SCM-S: {type(e).__name__}: {e}"
            return UpstreamOutcome((query.ue_uri,), False, None, detail=detail)
        return UpstreamOutcome((query.ue_uri,), False, *answer)

    async def close(self) -> None:
        if self._udp_ep is not None:
            self._udp_ep.close()
            self._udp_ep = None
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await self._tcp.shutdown()
            self._tcp = None
