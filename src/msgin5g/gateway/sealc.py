"""SEAL-C: the Gateway Client ↔ a separate configuration management client (SPEC D10; docs/seal-c.md).

When the configuration management client functionality is not collocated with the Gateway Client,
``msgin5g cm-client`` runs :class:`~.upstream.UpstreamScmc` behind :class:`SealCServer`, and the
Gateway Client reaches it through :class:`SealCClient` over a local CoAP interface on loopback: a
FETCH carrying the cached requests (CBOR), answered with the upstream outcomes, unsplit. Both sides
implement :class:`~.upstream.CmClient`, so the Gateway Client cannot tell them apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any

import aiocoap
import aiocoap.resource
import cbor2
from aiocoap.numbers.codes import Code

from .. import api
from ..bulk import BulkItem
from ..codec import CodecError, decode
from ..problem import CF_PROBLEM, Problem
from .upstream import CmClient, OnOutcome
from .upstream_rules import UpstreamOutcome
from .wire import UeQuery

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

    def __init__(self, cm: CmClient, host: str = "127.0.0.1", port: int = api.SEAL_C_PORT):
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
        root = api.parse_api_root(uri)
        self.base = root.origin
        self.transport = "tcp" if root.scheme == "coap+tcp" else "udp"
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

    async def bulk_configure(
        self, service_id: str, items: Sequence[BulkItem], on_outcome: OnOutcome | None = None
    ) -> list[UpstreamOutcome]:
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
            outcomes = [
                UpstreamOutcome(tuple(uris), True, None, ue_vendor=v, ue_type=t, detail=detail)
                for (v, t), uris in groups.items()
            ]
        if on_outcome is not None:
            for o in outcomes:
                on_outcome(o)
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
            detail = f"no answer over SEAL-C: {type(e).__name__}: {e}"
            return UpstreamOutcome((query.ue_uri,), False, None, detail=detail)

    async def close(self) -> None:
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                await self._ctx.shutdown()
            self._ctx = None
