"""Configuration management client functionality of the Gateway UE (TS 24.538 6.2.2.x a), c);
TS 24.546 6.2.3.3; SPEC D6, D7, D10).

:class:`ScmClient` is the SCM-C: it issues the bulk GETs (and, without a bulk policy, the
UE-scoped single GETs) to the SCM-S over CoAP/UDP or CoAP over TCP (RFC 8323) and hands back the
answers *unsplit* — splitting is the Gateway Client's job (6.2.2.x, last paragraph).

Collocated (D10), the Gateway Client calls it in-process. Separate, ``msgin5g cm-client`` runs
it behind :class:`SealCServer` and the Gateway Client talks to it through :class:`SealCClient`
over the SEAL-C interface (local CoAP, ``docs/seal-c.md``). Both implement :class:`CmClient`,
so the Gateway Client cannot tell them apart.

Upstream transport notes (aiocoap 0.4.17):

* **UDP.** aiocoap keeps one outstanding confirmable request per peer and client context
  (NSTART=1), and draws message IDs from one 16-bit counter per context; the SCM-S's duplicate
  detection treats an ID reused within EXCHANGE_LIFETIME (247 s) as a retransmission, so one
  context must not send more than ~65,000 CONs in 247 s (≈ 265/s). The client therefore uses a
  pool of contexts (each its own UDP endpoint, ``udp_endpoints``), spreads requests over them,
  and replaces a context (new port, fresh MID space) before it can wrap within the window.
* **Block2 of a bulk answer.** aiocoap's automatic blockwise would repeat every request option
  (hundreds of ``ue-uri``) in each follow-up; the bulk GET is therefore sent with
  ``handle_blockwise=False`` and the follow-ups are built here with only ``bulk-conf-flag``
  (+ Block2), which the SCM-S serves from the answer it keeps for that flag (D7 b).
* **TCP.** One connection, no message IDs, no NSTART; a bulk GET may be as large as the
  SCM-S's Max-Message-Size (learned from its CSM) and carry thousands of UEs (D7 c).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap import optiontypes, oscore
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from ..bulk import (
    UDP_BULK_BUDGET,
    BulkGet,
    BulkItem,
    followup_query,
    pack,
    request_options,
)
from ..codec import CodecError, decode
from ..problem import CF_PROBLEM, Problem
from ..security.endpoint import max_plaintext
from ..security.registry import ClientCredentials, SingleContext
from .wire import OPT_LAB_IDENTITY, UeQuery

log = logging.getLogger("msgin5g.gateway.cmclient")

CONTENT = 0x45
API = ("su-uc", "v1")
#: CONs one UDP context may send within EXCHANGE_LIFETIME before it is replaced (16-bit MIDs).
MID_BUDGET = 60_000
EXCHANGE_LIFETIME = 247.0
#: RFC 7252 §4.8.2: how long a CON may be retransmitted. A request's time limit covers this plus
#: the time it may wait behind others for its endpoint's NSTART slot; a shorter limit abandons
#: exchanges that lossy links would still complete, and the bulk GET is then repeated from scratch.
MAX_TRANSMIT_WAIT = 93.0
#: RFC 8323 default Max-Message-Size, used until the SCM-S's CSM says otherwise.
TCP_DEFAULT_MMS = 1152
#: What OSCORE adds to a request (RFC 8613 §6): the OSCORE option (flags, Partial IV ≤ 5 bytes,
#: kid ≤ 7), the inner code byte, the payload marker and the 8-byte AEAD tag, with room to spare.
OSCORE_OVERHEAD = 32


@dataclass
class UpstreamOutcome:
    """One upstream GET's result as handed to the Gateway Client (SEAL-C payload, D10).

    ``code`` None means no answer at all (unreachable, timeout, broken connection). For a bulk
    GET, ``payload`` is the SCM-S's answer array exactly as received (CBOR), to be split by the
    Gateway Client; for a single GET it is the answer for that UE.
    """

    ue_uris: tuple[str, ...]
    bulk: bool
    code: int | None
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None
    ue_vendor: str | None = None
    ue_type: str | None = None
    detail: str = ""

    @property
    def retryable(self) -> bool:
        """No answer, 5.xx, 4.29, or a bulk answer that expired between blocks (4.08)."""
        return self.code is None or self.code >= 0xA0 or self.code in (0x9D, 0x88)

    def items(self) -> list[BulkItem]:
        return [BulkItem(u, self.ue_vendor, self.ue_type) for u in self.ue_uris]

    def to_map(self) -> dict:
        m: dict[str, Any] = {"ueUris": list(self.ue_uris), "bulk": self.bulk, "code": self.code}
        for k, v in (
            ("payload", self.payload),
            ("contentFormat", self.content_format),
            ("maxAge", self.max_age),
            ("ueVendor", self.ue_vendor),
            ("ueType", self.ue_type),
            ("detail", self.detail),
        ):
            if v:
                m[k] = v
        return m

    @classmethod
    def from_map(cls, m: Any) -> UpstreamOutcome:
        if not isinstance(m, dict) or not isinstance(m.get("ueUris"), list):
            raise ValueError("an outcome must be a map with ueUris")
        code = m.get("code")
        if code is not None and (not isinstance(code, int) or not 0 <= code <= 255):
            raise ValueError(f"bad code {code!r}")
        payload = m.get("payload", b"")
        if not isinstance(payload, bytes):
            raise ValueError("payload must be a byte string")
        uris = m["ueUris"]
        if not all(isinstance(u, str) for u in uris):
            raise ValueError("ueUris must be text strings")
        return cls(
            tuple(uris),
            bool(m.get("bulk")),
            code,
            payload,
            _opt_int(m.get("contentFormat")),
            _opt_int(m.get("maxAge")),
            _opt_str(m.get("ueVendor")),
            _opt_str(m.get("ueType")),
            str(m.get("detail", "")),
        )


def _opt_int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def no_answer(get: BulkGet | None, query: UeQuery | None, detail: str) -> UpstreamOutcome:
    if get is not None:
        return UpstreamOutcome(
            get.ue_uris, True, None, ue_vendor=get.ue_vendor, ue_type=get.ue_type, detail=detail
        )
    assert query is not None
    return UpstreamOutcome((query.ue_uri,), False, None, detail=detail)


class CmClient(abc.ABC):
    """What the Gateway Client needs from the configuration management client (D10)."""

    @abc.abstractmethod
    async def bulk_configure(self, service_id: str, items: Sequence[BulkItem]) -> list[UpstreamOutcome]:
        """Fetch the configurations of ``items`` with bulk GETs; one outcome per bulk GET sent,
        together covering every item."""

    @abc.abstractmethod
    async def single_configure(self, service_id: str, query: UeQuery) -> UpstreamOutcome:
        """Forward one UE's request on its own (no bulk policy)."""

    async def close(self) -> None:  # noqa: B027 — optional hook
        pass


def parse_server_uri(uri: str) -> tuple[str, str, int | None, tuple[str, ...]]:
    """``coap[+tcp]://host[:port][/prefix][/su-uc/v1]`` → (scheme, host, port, prefix segments)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("coap", "coap+tcp"):
        raise ValueError(f"unsupported scheme {parts.scheme!r}: use coap:// or coap+tcp://")
    if not parts.hostname:
        raise ValueError(f"no host in {uri!r}")
    segs = tuple(s for s in parts.path.split("/") if s)
    if segs[-2:] == API:
        segs = segs[:-2]
    return parts.scheme, parts.hostname, parts.port, segs


@dataclass
class _UdpSlot:
    """One upstream UDP endpoint: an aiocoap client context and its message-ID budget."""

    ctx: aiocoap.Context
    window_start: float = field(default_factory=time.monotonic)
    sent: int = 0


class ScmClient(CmClient):
    """The SCM-C proper (TS 24.546 6.2.3.3), with the bulk GET of TS 24.538 6.2.2.x."""

    def __init__(
        self,
        server: str,
        *,
        gateway_id: str | None = "gw1",
        udp_endpoints: int = 4,
        max_ues: int | None = None,
        timeout: float = 2 * MAX_TRANSMIT_WAIT,
        concurrency: int = 16,
        credentials: ClientCredentials | None = None,
    ):
        self.server = server
        self.scheme, self.host, self.port, self.prefix = parse_server_uri(server)
        self.transport = "tcp" if self.scheme == "coap+tcp" else "udp"
        # TS 33.501 Annex Y; SPEC D12: with credentials the gateway authenticates to the SCM-S as
        # itself (OSCORE, one context shared by every upstream endpoint) and claims nothing
        self.credentials = credentials
        self.gateway_id = None if credentials is not None else gateway_id
        self.udp_endpoints = max(1, udp_endpoints)
        # per bulk GET: over TCP bounded by the answer size (≈ 1 MiB messages, ~400 B per UE)
        self.max_ues = max_ues or (2000 if self.transport == "tcp" else 10_000)
        self.timeout = timeout
        self._sem = asyncio.Semaphore(concurrency)
        self._slots: list[_UdpSlot] = []
        self._rr = itertools.count()
        self._tcp: aiocoap.Context | None = None
        self._tcp_mms: int | None = None
        self._lock = asyncio.Lock()
        self._retired: set[asyncio.Task] = set()
        self.stats = {"bulk-gets": 0, "block2-followups": 0, "single-gets": 0, "no-answer": 0, "split-413": 0}

    # -- plumbing ----------------------------------------------------------------------------------
    def _root(self) -> str:
        hostport = f"[{self.host}]" if ":" in self.host else self.host
        if self.port:
            hostport += f":{self.port}"
        return f"{self.scheme}://{hostport}"

    def _base(self, service_id: str) -> str:
        return f"{self._root()}/{'/'.join(self._path(service_id))}"

    def _path(self, service_id: str) -> tuple[str, ...]:
        return (*self.prefix, *API, "val-services", service_id, "ue-configurations")

    def _extra_options(self) -> list[tuple[int, bytes]]:
        if not self.gateway_id:
            return []
        return [(OPT_LAB_IDENTITY, f"gateway:{self.gateway_id}".encode())]

    def _message(self, service_id: str, query: list[str]) -> aiocoap.Message:
        msg = aiocoap.Message(code=Code.GET, uri=self._base(service_id))
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

    async def _udp_slot(self) -> _UdpSlot:
        async with self._lock:
            if len(self._slots) < self.udp_endpoints:
                ctx = await self._new_context("udp6")
                self._slots.append(_UdpSlot(ctx))
                return self._slots[-1]
            i = next(self._rr) % len(self._slots)
            slot = self._slots[i]
            now = time.monotonic()
            if now - slot.window_start > EXCHANGE_LIFETIME:
                slot.window_start, slot.sent = now, 0
            elif slot.sent >= MID_BUDGET:
                # about to wrap the 16-bit MID space within EXCHANGE_LIFETIME: new endpoint
                ctx = await self._new_context("udp6")
                self._slots[i] = _UdpSlot(ctx)
                task = asyncio.create_task(self._retire(slot.ctx))
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
                slot = self._slots[i]
            return slot

    @staticmethod
    async def _retire(ctx: aiocoap.Context) -> None:
        await asyncio.sleep(2 * MAX_TRANSMIT_WAIT)  # its exchanges are over by then
        await ctx.shutdown()

    async def _context(self) -> tuple[aiocoap.Context, _UdpSlot | None]:
        if self.transport == "tcp":
            if self._tcp is None:
                self._tcp = await self._new_context("tcpclient")
            return self._tcp, None
        slot = await self._udp_slot()
        return slot.ctx, slot

    async def _send(
        self, ctx: aiocoap.Context, slot: _UdpSlot | None, msg: aiocoap.Message, blockwise: bool
    ) -> aiocoap.Message:
        if slot is not None:
            slot.sent += 1
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
            ctx, _ = await self._context()
            probe = aiocoap.Message(code=Code.GET, uri=f"{self._root()}/.well-known/core")
            try:
                resp = await self._send(ctx, None, probe, True)
                remote = getattr(resp.remote, "underlying_address", None) or resp.remote  # OSCORE
                settings = getattr(remote, "_remote_settings", None) or {}
                self._tcp_mms = int(settings.get("max-message-size", TCP_DEFAULT_MMS))
            except Exception as e:  # no connection yet: pack conservatively, learn next time
                log.debug("Max-Message-Size probe failed: %s", e)
                return TCP_DEFAULT_MMS
        return self._tcp_mms

    # -- bulk ----------------------------------------------------------------------------------------
    async def bulk_configure(self, service_id: str, items: Sequence[BulkItem]) -> list[UpstreamOutcome]:
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
            fixed_options=request_options(self._path(service_id), self.host, self._extra_options()),
            transport=self.transport,
            max_ues=self.max_ues,
        )
        results = await asyncio.gather(*(self._bulk_adaptive(service_id, g) for g in gets))
        return [o for group in results for o in group]

    async def _bulk_adaptive(
        self, service_id: str, get: BulkGet, restarted: bool = False
    ) -> list[UpstreamOutcome]:
        outcome = await self._fetch_bulk(service_id, get)
        if outcome.code == 0x8D and len(get.ue_uris) > 1:
            # 4.13: above the SCM-S policy's per-GET maximum (D7) — halve and remember
            self.stats["split-413"] += 1
            half = len(get.ue_uris) // 2
            self.max_ues = max(1, min(self.max_ues, half))
            parts = [get.ue_uris[:half], get.ue_uris[half:]]
            results = await asyncio.gather(
                *(
                    self._bulk_adaptive(service_id, BulkGet(new_flag(), p, get.ue_vendor, get.ue_type))
                    for p in parts
                )
            )
            return [o for group in results for o in group]
        if outcome.code == 0x88 and not restarted:
            # the kept answer expired between blocks: once more from the start under a new flag
            return await self._bulk_adaptive(
                service_id, BulkGet(new_flag(), get.ue_uris, get.ue_vendor, get.ue_type), True
            )
        return [outcome]

    async def _fetch_bulk(self, service_id: str, get: BulkGet) -> UpstreamOutcome:
        """One bulk GET and its Block2 follow-ups naming only the flag (SPEC D7 b)."""
        async with self._sem:
            try:
                ctx, slot = await self._context()
                msg = self._message(service_id, get.uri_query())
                if self.transport == "udp":
                    msg.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(0, False, 6)
                self.stats["bulk-gets"] += 1
                resp = await self._send(ctx, slot, msg, False)
                payload = resp.payload
                block2 = resp.opt.block2
                etag = resp.opt.etag
                while resp.code == Code.CONTENT and block2 is not None and block2.more:
                    size = 1 << (min(block2.size_exponent, 6) + 4)
                    if block2.size_exponent < 7 and len(payload) != (block2.block_number + 1) * size:
                        return no_answer(get, None, "bulk answer blocks out of sequence")
                    follow = self._message(service_id, followup_query(get.flag))
                    follow.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(
                        len(payload) // size, False, block2.size_exponent
                    )
                    self.stats["block2-followups"] += 1
                    resp = await self._send(ctx, slot, follow, False)
                    if resp.code != Code.CONTENT:
                        break
                    if resp.opt.etag != etag:
                        return no_answer(get, None, "bulk answer changed between blocks (ETag)")
                    payload += resp.payload
                    block2 = resp.opt.block2
            except asyncio.CancelledError:
                raise
            except Exception as e:  # unreachable, timeout, connection lost: retry later
                self.stats["no-answer"] += 1
                return no_answer(get, None, f"no answer from the SCM-S: {type(e).__name__}: {e}")
            if resp.code != Code.CONTENT:
                payload = resp.payload
            return UpstreamOutcome(
                get.ue_uris,
                True,
                int(resp.code),
                payload,
                resp.opt.content_format,
                resp.opt.max_age,
                get.ue_vendor,
                get.ue_type,
            )

    # -- single ------------------------------------------------------------------------------------
    async def single_configure(self, service_id: str, query: UeQuery) -> UpstreamOutcome:
        """The UE-scoped GET of TS 24.546 6.2.3.3 on one UE's behalf (no bulk policy, D9)."""
        async with self._sem:
            try:
                ctx, slot = await self._context()
                msg = self._message(service_id, query.uri_query())
                self.stats["single-gets"] += 1
                resp = await self._send(ctx, slot, msg, True)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.stats["no-answer"] += 1
                return no_answer(None, query, f"no answer from the SCM-S: {type(e).__name__}: {e}")
            return UpstreamOutcome(
                (query.ue_uri,),
                False,
                int(resp.code),
                resp.payload,
                resp.opt.content_format,
                resp.opt.max_age,
            )

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        for slot in self._slots:
            with contextlib.suppress(Exception):
                await slot.ctx.shutdown()
        self._slots = []
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                await self._tcp.shutdown()
            self._tcp = None


def new_flag() -> str:
    """A fresh bulk configuration identifier (TS 24.538 6.2.2.x c) 3); SPEC D6): 96 random bits."""
    return secrets.token_hex(12)


# ---------------------------------------------------------------------------------------------
# SEAL-C (SPEC D10): the Gateway Client ↔ a separate configuration management client
# ---------------------------------------------------------------------------------------------

SEAL_C_PATH = ("seal-c", "v1")
SEAL_C_BULK = "bulk-configurations"
SEAL_C_SINGLE = "ue-configurations"
CF_CBOR = 60


def seal_c_bulk_body(service_id: str, items: Sequence[BulkItem]) -> dict:
    reqs = []
    for it in items:
        r: dict[str, str] = {"ueUri": it.ue_uri}
        if it.ue_vendor is not None:
            r["ueVendor"] = it.ue_vendor
        if it.ue_type is not None:
            r["ueType"] = it.ue_type
        reqs.append(r)
    return {"valServiceId": service_id, "ueRequests": reqs}


def seal_c_single_body(service_id: str, q: UeQuery) -> dict:
    body: dict[str, str] = {"valServiceId": service_id, "ueUri": q.ue_uri}
    for k, v in (("ueVendor", q.ue_vendor), ("ueType", q.ue_type), ("ueSnr", q.ue_snr)):
        if v is not None:
            body[k] = v
    return body


def _text(m: dict, key: str, required: bool = False) -> str | None:
    v = m.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key} must be a non-empty text string")
    return v


def parse_seal_c_bulk(body: Any) -> tuple[str, list[BulkItem]]:
    if not isinstance(body, dict) or not isinstance(body.get("ueRequests"), list):
        raise ValueError("expected {valServiceId, ueRequests: [...]}")
    sid = _text(body, "valServiceId", True)
    items = []
    for r in body["ueRequests"]:
        if not isinstance(r, dict):
            raise ValueError("each ueRequests entry must be a map")
        items.append(BulkItem(_text(r, "ueUri", True), _text(r, "ueVendor"), _text(r, "ueType")))
    return sid, items


def parse_seal_c_single(body: Any) -> tuple[str, UeQuery]:
    if not isinstance(body, dict):
        raise ValueError("expected {valServiceId, ueUri, ...}")
    sid = _text(body, "valServiceId", True)
    return sid, UeQuery(
        _text(body, "ueUri", True), _text(body, "ueVendor"), _text(body, "ueType"), _text(body, "ueSnr")
    )


def _problem_response(code: int, detail: str, cause: str) -> aiocoap.Message:
    return aiocoap.Message(
        code=code, payload=Problem(code, detail, cause).encode(), content_format=CF_PROBLEM
    )


class _SealCResource(aiocoap.resource.Resource):
    """FETCH on a SEAL-C resource: CBOR request in, CBOR ``{"outcomes": [...]}`` out."""

    def __init__(self, cm: CmClient, bulk: bool):
        super().__init__()
        self.cm, self.bulk = cm, bulk

    async def render_fetch(self, request: aiocoap.Message) -> aiocoap.Message:
        cf = request.opt.content_format
        if cf not in (None, CF_CBOR):
            return _problem_response(
                0x8F, "SEAL-C bodies are CBOR (Content-Format 60)", "UNSUPPORTED_CONTENT_FORMAT"
            )
        try:
            body = decode(request.payload)
            if self.bulk:
                sid, items = parse_seal_c_bulk(body)
                outcomes = await self.cm.bulk_configure(sid, items)
            else:
                sid, query = parse_seal_c_single(body)
                outcomes = [await self.cm.single_configure(sid, query)]
        except (CodecError, ValueError) as e:
            return _problem_response(0x80, f"malformed SEAL-C request: {e}", "MALFORMED_SEAL_C_REQUEST")
        payload = cbor2.dumps({"outcomes": [o.to_map() for o in outcomes]})
        return aiocoap.Message(code=Code.CONTENT, payload=payload, content_format=CF_CBOR)


class SealCServer:
    """The separate configuration management client's SEAL-C endpoint (SPEC D10): loopback CoAP
    on UDP and TCP at the same port."""

    def __init__(self, cm: CmClient, host: str = "127.0.0.1", port: int = 65403):
        self.cm, self.host, self.port = cm, host, port
        self._ctx: aiocoap.Context | None = None

    async def start(self) -> SealCServer:
        site = aiocoap.resource.Site()
        site.add_resource((*SEAL_C_PATH, SEAL_C_BULK), _SealCResource(self.cm, True))
        site.add_resource((*SEAL_C_PATH, SEAL_C_SINGLE), _SealCResource(self.cm, False))
        if self.port == 0:
            self.port = _free_port(self.host)
        self._ctx = await aiocoap.Context.create_server_context(
            site, bind=(self.host, self.port), transports=["udp6", "tcpserver"]
        )
        return self

    @property
    def uri(self) -> str:
        return f"coap://{self.host}:{self.port}"

    async def close(self) -> None:
        if self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None
        await self.cm.close()


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host``."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


class SealCClient(CmClient):
    """The Gateway Client's side of SEAL-C (SPEC D10): ``coap://`` (UDP, aiocoap block-wise in
    both directions) or ``coap+tcp://`` to a ``msgin5g cm-client``."""

    def __init__(self, uri: str, timeout: float = 120.0):
        scheme, host, port, _ = parse_server_uri(uri)
        hostport = f"[{host}]" if ":" in host else host
        self.base = f"{scheme}://{hostport}" + (f":{port}" if port else "")
        self.transport = "tcp" if scheme == "coap+tcp" else "udp"
        self.timeout = timeout
        self._ctx: aiocoap.Context | None = None
        self._lock = asyncio.Lock()

    async def _call(self, resource: str, body: dict) -> list[UpstreamOutcome]:
        async with self._lock:
            if self._ctx is None:
                self._ctx = await aiocoap.Context.create_client_context(
                    transports=["tcpclient"] if self.transport == "tcp" else ["udp6"]
                )
        msg = aiocoap.Message(
            code=Code.FETCH,
            uri=f"{self.base}/{'/'.join((*SEAL_C_PATH, resource))}",
            payload=cbor2.dumps(body),
            content_format=CF_CBOR,
        )
        resp = await asyncio.wait_for(self._ctx.request(msg).response, self.timeout)
        if resp.code != Code.CONTENT:
            raise ValueError(f"SEAL-C answered {resp.code}: {resp.payload[:200]!r}")
        answer = decode(resp.payload)
        if not isinstance(answer, dict) or not isinstance(answer.get("outcomes"), list):
            raise ValueError("SEAL-C answer has no outcomes")
        return [UpstreamOutcome.from_map(o) for o in answer["outcomes"]]

    async def bulk_configure(self, service_id: str, items: Sequence[BulkItem]) -> list[UpstreamOutcome]:
        if not items:
            return []
        try:
            outcomes = await self._call(SEAL_C_BULK, seal_c_bulk_body(service_id, items))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the cm-client is down or confused: retry later
            detail = f"no answer over SEAL-C: {type(e).__name__}: {e}"
            groups: dict[tuple, list[str]] = {}
            for it in items:
                groups.setdefault(it.group, []).append(it.ue_uri)
            return [
                UpstreamOutcome(tuple(uris), True, None, ue_vendor=v, ue_type=t, detail=detail)
                for (v, t), uris in groups.items()
            ]
        return outcomes

    async def single_configure(self, service_id: str, query: UeQuery) -> UpstreamOutcome:
        try:
            outcomes = await self._call(SEAL_C_SINGLE, seal_c_single_body(service_id, query))
            if len(outcomes) != 1:
                raise ValueError(f"{len(outcomes)} outcomes for one UE")
            return outcomes[0]
        except asyncio.CancelledError:
            raise
        except Exception as e:
            return no_answer(None, query, f"no answer over SEAL-C: {type(e).__name__}: {e}")

    async def close(self) -> None:
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                await self._ctx.shutdown()
            self._ctx = None
