"""The SCM-S web console (SPEC D15): same process and event loop as the CoAP server (aiohttp).

Documents go through the same :class:`~msgin5g.server.service.ScmService` calls as CoAP requests,
as the administrator, so the console shows the same validation messages as ``msgin5g config`` and
observers are notified exactly as after a CoAP PUT/DELETE (RFC 7641). "What would this UE get"
is the UE-scoped resolution (TS 24.546 7.2.5; SPEC D3, D4) with, per document, why it applies.

Access (docs/operations.md): in secured mode the console needs the administrator token (printed
with its URL at start, or kept in ``--console-token-file``); the browser trades it for a session
cookie (HttpOnly, SameSite=Strict) and every state-changing call also carries a custom header, so a
foreign page cannot forge one. In ``--insecure`` mode it is open, and served on loopback only.
All assets are served from this package: no CDN, no internet.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
from pathlib import Path

from aiohttp import web

from ...applicability import RANK_NAMES, applicable, specificity
from ...authz import ADMIN
from ...codec import CF_JSON, decode
from ...model import ModelError, UeIdentity
from ...provisioning.docjson import for_people, for_wire
from .. import metrics as m

STATIC = Path(__file__).with_name("static")
SEARCH_SCAN = 50_000  # documents a search looks at, at most
COOKIE = "msgin5g_console"
CSRF_HEADER = "X-Msgin5g-Console"
WHY = {
    "uri": "lists this UE's URI in valUeIds.uris",
    "snr": "an IMEI range with this UE's TAC and serial number",
    "tac": "an IMEI range with this UE's TAC (every serial number)",
    "domain": "no valUeIds: applies to every UE of the valServiceDomain",
}


def problem_json(reply) -> web.Response:
    p = reply.problem
    status = {0x80: 400, 0x81: 401, 0x83: 403, 0x84: 404, 0x8C: 412, 0x8D: 413}.get(reply.code, 400)
    body = {
        "code": m.code_text(reply.code),
        "error": p.detail if p else "refused",
        "cause": p.cause if p else None,
    }
    return web.json_response(body, status=status)


class Console:
    def __init__(self, running, *, token: str | None, registry=None):
        self.running = running
        self.token = token
        self.registry = registry
        self.sessions: set[str] = set()
        self._closing = asyncio.Event()
        sids = tuple(running.config.service_ids)
        self._stored = m.cached(lambda: sum(running.store.count(s) for s in sids), 2.0)

    # -- access ----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        return request.cookies.get(COOKIE, "") in self.sessions

    @web.middleware
    async def guard(self, request: web.Request, handler):
        path = request.path
        if not path.startswith("/console/api/") or path in ("/console/api/login", "/console/api/whoami"):
            return await handler(request)
        if not self._authorized(request):
            return web.json_response({"error": "log in with the console token"}, status=401)
        if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != "1":
            return web.json_response({"error": f"missing {CSRF_HEADER} header"}, status=403)
        return await handler(request)

    async def login(self, request: web.Request) -> web.Response:
        if self.token is None:
            return web.json_response({"ok": True, "secured": False})
        try:
            given = str((await request.json()).get("token", ""))
        except (ValueError, AttributeError):
            given = ""
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            m.refusal_log.warning("refused console login from %s: wrong token", request.remote)
            return web.json_response({"error": "wrong token"}, status=401)
        session = secrets.token_urlsafe(24)
        self.sessions.add(session)
        resp = web.json_response({"ok": True, "secured": True})
        resp.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/console/")
        return resp

    async def whoami(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"authorized": False, "secured": self.token is not None})
        return web.json_response(
            {
                "authorized": self._authorized(request),
                "secured": self.token is not None,
                "serviceIds": list(self.running.config.service_ids),
                "listeners": self.running.listeners,
            }
        )

    # -- documents -------------------------------------------------------------------------------
    def _sid(self, request: web.Request) -> str:
        return request.query.get("service", self.running.config.service_ids[0])

    async def list_docs(self, request: web.Request) -> web.Response:
        """The first ``limit`` documents matching ``q`` (any text of the document). The scan stops
        after SEARCH_SCAN documents, so that a search in a million-document store does not hold
        the event loop (and the CoAP side) for seconds; the answer says when it stopped early."""
        sid = self._sid(request)
        q = request.query.get("q", "").strip().lower()
        try:
            limit = max(1, min(int(request.query.get("limit", "200")), 5000))
        except ValueError:
            return web.json_response({"error": "limit is a number"}, status=400)
        out: list[dict] = []
        if not q:
            for stored in self.running.store.iter_all(sid):
                if len(out) >= limit:
                    break
                out.append(for_people(stored.doc))
            return web.json_response({"total": self.running.store.count(sid), "docs": out})
        total = scanned = 0
        for stored in self.running.store.iter_all(sid):
            scanned += 1
            if scanned > SEARCH_SCAN:
                break
            if q in json.dumps(stored.doc, ensure_ascii=False).lower():
                total += 1
                if len(out) < limit:
                    out.append(for_people(stored.doc))
        return web.json_response({"total": total, "docs": out, "partial": scanned > SEARCH_SCAN})

    async def get_doc(self, request: web.Request) -> web.Response:
        reply = self.running.service.doc_get(ADMIN, self._sid(request), request.match_info["id"], CF_JSON)
        if reply.problem:
            return problem_json(reply)
        return web.json_response(for_people(decode(reply.payload, CF_JSON)))

    @staticmethod
    async def _body(request: web.Request) -> bytes:
        """The request's document with object configData made the JSON string the model carries;
        anything that is not JSON goes to the service as it is (which answers 4.00 and why)."""
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            return raw
        return json.dumps(for_wire(doc) if isinstance(doc, dict) else doc).encode()

    async def create_doc(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        reply, _ = self.running.service.collection_post(ADMIN, self._sid(request), body, CF_JSON, CF_JSON)
        if reply.problem:
            return problem_json(reply)
        return web.json_response(for_people(decode(reply.payload, CF_JSON)), status=201)

    async def put_doc(self, request: web.Request) -> web.Response:
        sid, doc_id = self._sid(request), request.match_info["id"]
        body = await self._body(request)
        reply, new = self.running.service.doc_put(ADMIN, sid, doc_id, body, CF_JSON, CF_JSON)
        if reply.problem:
            return problem_json(reply)
        if new is not None:
            self.running.site.notify(sid, doc_id)
        return web.json_response(for_people(decode(reply.payload, CF_JSON)))

    async def delete_doc(self, request: web.Request) -> web.Response:
        from ...problem import Problem
        from ...server.resources import problem_message

        sid, doc_id = self._sid(request), request.match_info["id"]
        reply, gone = self.running.service.doc_delete(ADMIN, sid, doc_id)
        if reply.problem:
            return problem_json(reply)
        if gone is not None:
            final = problem_message(Problem(0x84, "the document was deleted", "DOCUMENT_DELETED"))
            self.running.site.notify(sid, doc_id, final)
        return web.json_response({"deleted": doc_id})

    async def resolve(self, request: web.Request) -> web.Response:
        """What this UE would get (SPEC D3, D4): applicable documents, most specific first, why."""
        from ...server.service import ExpansionError, resolve_for_ue

        qs = request.query
        sid = self._sid(request)
        try:
            ue = UeIdentity.from_query(
                qs.get("ue-uri") or None,
                qs.get("ue-type") or None,
                qs.get("ue-snr") or None,
                qs.get("ue-vendor") or None,
            )
        except ModelError as e:
            return web.json_response({"error": str(e), "cause": e.cause}, status=400)
        if ue.uri is None:
            return web.json_response({"error": "give the UE's URI (MSGin5G UE ID)"}, status=400)
        rows, applied = [], None
        for stored in applicable(self.running.store.candidates(sid, ue), ue, key=lambda s: s.doc):
            rank = RANK_NAMES[specificity(stored.doc, ue)]
            row = {
                "ueConfigDocId": stored.doc_id,
                "configName": stored.doc.get("configName"),
                "match": rank,
                "why": WHY[rank],
            }
            try:
                resolved = resolve_for_ue(stored.doc, ue)
            except ExpansionError as e:
                row["skipped"] = f"placeholders cannot be filled for this UE: {e}"
            else:
                if applied is None:
                    applied = for_people(resolved)
                    row["applied"] = True
            rows.append(row)
        return web.json_response(
            {
                "ue": ue.uri,
                "documents": rows,
                "applied": applied,
                "answer": "2.05" if applied is not None else "4.04",
            }
        )

    # -- gateway registry (SPEC D6, D12) ---------------------------------------------------------
    async def list_gateways(self, request: web.Request) -> web.Response:
        return web.json_response(self.running.store.list_gateways())

    async def put_gateway(self, request: web.Request) -> web.Response:
        from ...model import validate_imei_range

        gid = request.match_info["id"]
        try:
            cov = await request.json()
        except ValueError as e:
            return web.json_response({"error": f"not JSON: {e}"}, status=400)
        if not isinstance(cov, dict) or not cov or set(cov) - {"all", "uris", "imeiRanges"}:
            return web.json_response(
                {"error": "coverage is an object with 'all': true, 'uris': [...] and/or 'imeiRanges': [...]"},
                status=400,
            )
        if "all" in cov and cov["all"] is not True:
            return web.json_response({"error": "'all' can only be true"}, status=400)
        if not isinstance(cov.get("uris", []), list) or not all(
            isinstance(u, str) for u in cov.get("uris", [])
        ):
            return web.json_response({"error": "'uris' is a list of UE URIs"}, status=400)
        try:
            for i, rng in enumerate(cov.get("imeiRanges", [])):
                validate_imei_range(rng, f"imeiRanges[{i}]")
        except (ModelError, TypeError, AttributeError) as e:
            return web.json_response({"error": str(e)}, status=400)
        self.running.store.set_gateway(gid, cov)
        return web.json_response({gid: cov})

    async def delete_gateway(self, request: web.Request) -> web.Response:
        gid = request.match_info["id"]
        if not self.running.store.delete_gateway(gid):
            return web.json_response({"error": f"no gateway {gid}"}, status=404)
        return web.json_response({"deleted": gid})

    # -- keys (SPEC D12: the OSCORE keys live in the store) -------------------------------------
    async def list_keys(self, request: web.Request) -> web.Response:
        from ...security.keys import kid_for

        if self.running.keyring is None:
            return web.json_response({"secured": False, "keys": []})
        keys = [
            {
                "kid": kid_for(r.number, r.algorithm).hex(),
                "identity": str(r.identity),
                "role": str(r.identity).split(":", 1)[0],
                "algorithm": r.algorithm,
                "created": r.created,
                "revoked": r.revoked,
                "active": r.revoked is None,
            }
            for r in self.running.store.iter_keys(include_revoked=True)
        ]
        return web.json_response({"secured": True, "keys": keys})

    async def revoke_key(self, request: web.Request) -> web.Response:
        from ...security.keys import RegistryError, parse_kid
        from ...security.storekeys import utc_now

        if self.running.keyring is None:
            return web.json_response({"error": "insecure mode: there are no keys"}, status=409)
        try:
            number = int.from_bytes(parse_kid(request.match_info["kid"]), "big")
        except RegistryError as e:
            return web.json_response({"error": str(e)}, status=400)
        done = self.running.store.revoke_keys(utc_now(), number=number)
        if not done:
            return web.json_response({"error": "no active key with that kid"}, status=404)
        return web.json_response({"revoked": [request.match_info["kid"]]})

    # -- live counters (server-sent events) ------------------------------------------------------
    def counters(self) -> dict:
        """The service's counters and the requests by outcome, from the metrics when there are
        (with ``--workers``: every worker's), else from this process's service."""
        service: dict[str, int] | None = None
        out: dict[str, int] = {}
        if self.registry is not None:
            for metric in self.registry.collect():
                totals = [s for s in metric.samples if s.name.endswith("_total")]
                if metric.name == "msgin5g_server_requests":
                    for s in totals:
                        key = f"requests.{s.labels['outcome']}"
                        out[key] = out.get(key, 0) + int(s.value)
                elif metric.name == "msgin5g_server_service_events":
                    service = service or {}
                    for s in totals:
                        service[s.labels["event"]] = service.get(s.labels["event"], 0) + int(s.value)
        if service is None:
            service = dict(self.running.service.counters)
        out.update({f"service.{k}": v for k, v in sorted(service.items())})
        out["stored_documents"] = self._stored()
        return out

    async def events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            while not self._closing.is_set():
                await resp.write(f"event: counters\ndata: {json.dumps(self.counters())}\n\n".encode())
                try:
                    await asyncio.wait_for(self._closing.wait(), 1.0)
                except TimeoutError:
                    pass
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # -- wiring ----------------------------------------------------------------------------------
    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.guard)
        r = app.router
        r.add_get("/", lambda _r: web.HTTPFound("/console/"))
        r.add_get("/console", lambda _r: web.HTTPFound("/console/"))
        r.add_get("/console/", self.index)
        r.add_get("/favicon.ico", lambda _r: web.Response(status=204))
        r.add_static("/console/static/", STATIC)
        r.add_post("/console/api/login", self.login)
        r.add_get("/console/api/whoami", self.whoami)
        r.add_get("/console/api/docs", self.list_docs)
        r.add_post("/console/api/docs", self.create_doc)
        r.add_get("/console/api/docs/{id}", self.get_doc)
        r.add_put("/console/api/docs/{id}", self.put_doc)
        r.add_delete("/console/api/docs/{id}", self.delete_doc)
        r.add_get("/console/api/resolve", self.resolve)
        r.add_get("/console/api/gateways", self.list_gateways)
        r.add_put("/console/api/gateways/{id}", self.put_gateway)
        r.add_delete("/console/api/gateways/{id}", self.delete_gateway)
        r.add_get("/console/api/keys", self.list_keys)
        r.add_post("/console/api/keys/{kid}/revoke", self.revoke_key)
        r.add_get("/console/api/events", self.events)

    async def close(self) -> None:
        self._closing.set()
