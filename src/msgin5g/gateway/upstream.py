"""The Gateway UE's SCM-C towards the SCM-S (TS 24.538 6.2.2.x a), c); TS 24.546 6.2.3.3; SPEC D6,
D7, D10, D13).

:class:`UpstreamScmc` issues the bulk GETs (and, without a bulk policy, the UE-scoped single GETs)
to the SCM-S over CoAP/UDP or CoAP over TCP (RFC 8323) and hands back the answers *unsplit* —
splitting is the Gateway Client's job (6.2.2.x, last paragraph). It is not :class:`msgin5g.scmc.
ScmClient` (one UE asking for its own configuration): it packs many UEs into bulk GETs with
:func:`msgin5g.bulk.pack` and decides with the pure rules of :mod:`.upstream_rules`.

Collocated (D10), the Gateway Client calls it in-process; separate, ``msgin5g cm-client`` runs it
behind :class:`~.sealc.SealCServer`. Both implement :class:`CmClient`.

Uu transport (aiocoap 0.4.17):

* **UDP and NSTART.** RFC 7252 §4.7 bounds the exchanges a client keeps outstanding with one
  server (NSTART, default 1; more where the client knows the server copes). aiocoap implements
  NSTART=1 per client context and queues further requests behind the outstanding one, so one lost
  datagram used to stall every exchange queued on that endpoint for 2–3 s, then 4–6 s, ... (SPEC
  D13; docs/gateway.md "Lossy links"). Here the gateway's NSTART (``nstart``, ``--nstart``) is a
  pool of that many endpoints, each carrying *one* exchange at a time: an exchange takes an idle
  endpoint and gives it back when it ends, so a loss delays only its own exchange. Each endpoint
  has its own message-ID space; one that has sent ~60,000 CONs within EXCHANGE_LIFETIME (247 s)
  is replaced before its 16-bit IDs could wrap.
* **Block2 of a bulk answer.** aiocoap's automatic block-wise would repeat every request option
  (hundreds of ``ue-uri``) in each follow-up; the bulk GET is sent with ``handle_blockwise=False``
  and the follow-ups name only ``bulk-conf-flag`` (+ Block2), served from the answer the SCM-S
  keeps for that flag (D7 b). Once block 0 has told the size (Size2), the other blocks are
  independent requests and are fetched side by side within the NSTART pool.
* **TCP.** One connection, no message IDs, no NSTART; a bulk GET may be as large as the SCM-S's
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
import time
from collections.abc import Callable, Sequence

import aiocoap
from aiocoap import optiontypes, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from .. import api
from ..bulk import UDP_BULK_BUDGET, BulkGet, BulkItem, followup_query, pack, request_options
from ..security.credentials import KeyCredentials as ClientCredentials
from ..security.credentials import SingleContext
from ..security.endpoint import max_plaintext
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

#: CONs one UDP endpoint may send within EXCHANGE_LIFETIME before it is replaced (16-bit MIDs).
MID_BUDGET = 60_000
EXCHANGE_LIFETIME = 247.0
#: RFC 7252 §4.8.2: how long a CON may be retransmitted and still be answered; one exchange's limit.
MAX_TRANSMIT_WAIT = 93.0
#: Exchanges outstanding towards the SCM-S at once (RFC 7252 §4.7 NSTART), by default.
DEFAULT_NSTART = 8
#: s after which an unanswered bulk GET or follow-up is asked again on another endpoint (after its
#: first two transmissions, RFC 7252 §4.2: ACK_TIMEOUT × [1, 1.5] + twice that), then again later.
HEDGE_AFTER = (7.5, 15.0)
#: RFC 8323 default Max-Message-Size, used until the SCM-S's CSM says otherwise.
TCP_DEFAULT_MMS = 1152
#: What OSCORE adds to a request (RFC 8613 §6): the OSCORE option (flags, Partial IV ≤ 5 bytes,
#: kid ≤ 7), the inner code byte, the payload marker and the 8-byte AEAD tag, with room to spare.
OSCORE_OVERHEAD = 32

OnOutcome = Callable[[UpstreamOutcome], None]


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


class _Endpoint:
    """One upstream UDP endpoint: an aiocoap client context and its message-ID budget."""

    __slots__ = ("ctx", "sent", "window_start")

    def __init__(self, ctx: aiocoap.Context):
        self.ctx = ctx
        self.window_start = time.monotonic()
        self.sent = 0


class UpstreamScmc(CmClient):
    """The Gateway UE's SCM-C (TS 24.546 6.2.3.3), with the bulk GET of TS 24.538 6.2.2.x."""

    def __init__(
        self,
        server: str,
        *,
        gateway_id: str | None = "gw1",
        nstart: int = DEFAULT_NSTART,
        max_ues: int | None = None,
        timeout: float = MAX_TRANSMIT_WAIT + 5.0,
        credentials: ClientCredentials | None = None,
    ):
        self.server = server
        self.root = api.parse_api_root(server)
        self.transport = "tcp" if self.root.scheme == "coap+tcp" else "udp"
        # TS 33.501 Annex Y; SPEC D12: with credentials the gateway authenticates to the SCM-S as
        # itself (OSCORE, one context shared by every upstream endpoint) and claims nothing
        self.credentials = credentials
        self.gateway_id = None if credentials is not None else gateway_id
        self.nstart = max(1, nstart)
        # per bulk GET: over TCP bounded by the answer size (≈ 1 MiB messages, ~400 B per UE)
        self.max_ues = max_ues or (2000 if self.transport == "tcp" else 10_000)
        self.timeout = timeout
        self._idle: asyncio.Queue[_Endpoint | None] | None = None
        self._made = 0
        self._all: list[_Endpoint] = []
        self._tcp: aiocoap.Context | None = None
        self._tcp_sem = asyncio.Semaphore(4 * self.nstart)
        self._tcp_mms: int | None = None
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task] = set()
        self.stats = {
            "bulk-gets": 0,
            "block2-followups": 0,
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

    def _message(self, service_id: str, query: list[str]) -> aiocoap.Message:
        msg = aiocoap.Message(code=Code.GET, uri=self.root.collection_uri(service_id))
        msg.opt.uri_query = query
        for number, value in self._extra_options():
            msg.opt.add_option(optiontypes.OpaqueOption(OptionNumber(number), value))
        return msg

    async def _new_context(self, transport: str) -> aiocoap.Context:
        if self.credentials is None:
            return await aiocoap.Context.create_client_context(transports=[transport])
        security = self.credentials.security_context()
        ctx = await aiocoap.Context.create_client_context(transports=["oscore", transport])
        ctx.client_credentials = SingleContext(security)
        return ctx

    async def _take(self) -> _Endpoint:
        """An idle UDP endpoint (at most ``nstart`` exist; RFC 7252 §4.7)."""
        if self._idle is None:
            self._idle = asyncio.Queue()
        async with self._lock:
            if self._idle.empty() and self._made < self.nstart:
                self._made += 1
                ep = _Endpoint(await self._new_context("udp6"))
                self._all.append(ep)
                return ep
        ep = await self._idle.get()
        if ep is None:  # in place of a retired endpoint
            ep = _Endpoint(await self._new_context("udp6"))
            self._all.append(ep)
            return ep
        now = time.monotonic()
        if now - ep.window_start > EXCHANGE_LIFETIME:
            ep.window_start, ep.sent = now, 0
        elif ep.sent >= MID_BUDGET:
            # about to wrap the 16-bit MID space within EXCHANGE_LIFETIME: a new endpoint
            old = ep
            ep = _Endpoint(await self._new_context("udp6"))
            self._all[self._all.index(old)] = ep
            task = asyncio.create_task(self._retire(old.ctx))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        return ep

    @staticmethod
    async def _retire(ctx: aiocoap.Context) -> None:
        await asyncio.sleep(2 * MAX_TRANSMIT_WAIT)  # its exchanges are over by then
        await ctx.shutdown()

    async def _exchange(self, msg: aiocoap.Message, blockwise: bool) -> aiocoap.Message:
        """One request/response exchange on an endpoint of its own (UDP) or the connection (TCP)."""
        if self.transport == "tcp":
            async with self._tcp_sem:
                if self._tcp is None:
                    async with self._lock:
                        if self._tcp is None:
                            self._tcp = await self._new_context("tcpclient")
                return await self._request(self._tcp, msg, blockwise)
        t0 = time.monotonic()
        ep = await self._take()
        t1 = time.monotonic()
        reusable = False
        try:
            ep.sent += 1
            resp = await self._request(ep.ctx, msg, blockwise)
            reusable = True
            log.debug("exchange: %.2f s waiting, %.2f s to its answer", t1 - t0, time.monotonic() - t1)
            return resp
        except asyncio.CancelledError:
            raise
        except Exception:
            reusable = True  # aiocoap ended the exchange (time-out, RST): the endpoint is free
            raise
        finally:
            self._give_back(ep, reusable)

    def _give_back(self, ep: _Endpoint, reusable: bool) -> None:
        """Back to the pool — or, when its exchange was abandoned (aiocoap would go on
        retransmitting it and queue the next request behind it), retired and replaced."""
        assert self._idle is not None
        if ep not in self._all:
            return
        if reusable:
            self._idle.put_nowait(ep)
            return
        self._all.remove(ep)
        self._idle.put_nowait(None)  # the next taker makes a fresh endpoint in its place
        task = asyncio.ensure_future(self._retire(ep.ctx))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _idempotent(self, make: Callable[[], aiocoap.Message]) -> aiocoap.Message:
        """A bulk GET or one of its follow-ups, asked again on another endpoint when its exchange
        has gone unanswered for :data:`HEDGE_AFTER` (two transmissions lost), the first answer
        taken and the other exchanges ended (SPEC D13).

        Each exchange keeps RFC 7252's timers; but an exchange whose datagrams were lost a few
        times waits 2 + 4 + 8 + ... s, and a bulk operation waits for its slowest block — at 30 %
        loss each way one exchange in seven needs more than 17 s, one in thirty gives up after
        93 s. These requests are safe to repeat: the SCM-S answers them from the answer it keeps
        for the bulk configuration id (SPEC D6, D7 b). Over TCP nothing is lost: one exchange."""
        if self.transport == "tcp":
            return await self._exchange(make(), False)
        waits = list(HEDGE_AFTER)
        tasks = [asyncio.ensure_future(self._exchange(make(), False))]
        try:
            while True:
                done, _ = await asyncio.wait(
                    tasks, timeout=waits[0] if waits else None, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # unanswered so far: the same request once more, elsewhere
                    waits.pop(0)
                    self.stats["hedged"] += 1
                    tasks.append(asyncio.ensure_future(self._exchange(make(), False)))
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

    async def _request(self, ctx: aiocoap.Context, msg: aiocoap.Message, blockwise: bool) -> aiocoap.Message:
        req = ctx.request(msg, handle_blockwise=blockwise)
        try:
            return await asyncio.wait_for(req.response, self.timeout)
        except oscore.NotAProtectedMessage as e:
            # the SCM-S refused our credentials (an unprotected 4.01): a definite answer, passed on
            # as such rather than retried (RFC 8613 §8.4)
            return e.plain_message

    async def _learn_mms(self) -> int:
        """The SCM-S's Max-Message-Size from its CSM (RFC 8323 §5.3.1); a cheap probe request
        opens the connection when none has been made yet."""
        if self._tcp_mms is None:
            probe = aiocoap.Message(code=Code.GET, uri=f"{self.root.origin}/.well-known/core")
            try:
                resp = await self._exchange(probe, True)
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
        """One bulk GET and its Block2 follow-ups naming only the flag (SPEC D7 b)."""
        try:

            def first() -> aiocoap.Message:
                msg = self._message(service_id, get.uri_query())
                if self.transport == "udp":
                    msg.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(0, False, 6)
                return msg

            self.stats["bulk-gets"] += 1
            resp = await self._idempotent(first)
            block2 = resp.opt.block2
            if resp.code != Code.CONTENT or block2 is None or not block2.more:
                return bulk_outcome(
                    get, int(resp.code), resp.payload, resp.opt.content_format, resp.opt.max_age
                )
            payload = resp.payload
            szx, etag = block2.size_exponent, resp.opt.etag
            size = block_size(szx)
            numbers = remaining_blocks(resp.opt.size2, len(payload), szx)
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
                    more = part.code == Code.CONTENT and part.opt.block2 is not None and part.opt.block2.more
            for part in parts:
                if part.code != Code.CONTENT:  # e.g. 4.08: the kept answer expired meanwhile
                    return bulk_outcome(
                        get, int(part.code), part.payload, part.opt.content_format, part.opt.max_age
                    )
                if part.opt.etag != etag:
                    return no_answer(get, "bulk answer changed between blocks (ETag)")
                payload += part.payload
            return bulk_outcome(get, int(resp.code), payload, resp.opt.content_format, resp.opt.max_age)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # unreachable, timeout, connection lost: retry later
            self.stats["no-answer"] += 1
            return no_answer(get, f"no answer from the SCM-S: {type(e).__name__}: {e}")

    async def _followup(self, service_id: str, get: BulkGet, num: int, szx: int) -> aiocoap.Message:
        def follow() -> aiocoap.Message:
            msg = self._message(service_id, followup_query(get.flag))
            msg.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(num, False, szx)
            return msg

        self.stats["block2-followups"] += 1
        return await self._idempotent(follow)

    # -- single ------------------------------------------------------------------------------------
    async def single_configure(self, service_id: str, query: UeQuery) -> UpstreamOutcome:
        """The UE-scoped GET of TS 24.546 6.2.3.3 on one UE's behalf (no bulk policy, D9)."""
        try:
            msg = self._message(service_id, query.uri_query())
            self.stats["single-gets"] += 1
            resp = await self._exchange(msg, True)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.stats["no-answer"] += 1
            detail = f"no answer from the SCM-S: {type(e).__name__}: {e}"
            return UpstreamOutcome((query.ue_uri,), False, None, detail=detail)
        return UpstreamOutcome(
            (query.ue_uri,), False, int(resp.code), resp.payload, resp.opt.content_format, resp.opt.max_age
        )

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        for ep in self._all:
            with contextlib.suppress(Exception):
                await ep.ctx.shutdown()
        self._all = []
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await self._tcp.shutdown()
            self._tcp = None
