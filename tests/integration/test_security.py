"""Authenticated identities with OSCORE, end to end over real sockets (TS 24.546 6.2.1.2; TS 33.501
Annex Y; RFC 8613; SPEC D12).

A secured SCM-S on loopback with a real SQLite file holding its documents and its keys; clients
with real key files. The authorization matrix runs every requester against every
operation, asserting the code and that no foreign configuration travels in the body. Then: one
uniform 4.01 for everything unverifiable, live revocation, the relay passing OSCORE through
(tampering and replay rejected by the server, a tampered answer rejected by the UE), the gateway
path (in test_security_gateway.py), and restarts — clean and after kill -9 — that keep replay protection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiocoap
import cbor2
import pytest
from aiocoap import Message, oscore
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption
from aiocoap.transports.oscore import OSCOREAddress

from msgin5g.api import collection_uri, config_query_uri
from msgin5g.authz import LAB_IDENTITY_OPTION, UNAUTHENTICATED
from msgin5g.codec import CF_CBOR
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.problem import CF_PROBLEM
from msgin5g.relay.shell import RelaySettings, start_relay
from msgin5g.security.credentials import KeyCredentials
from msgin5g.security.endpoint import ClientProtection, forward_proxy_request
from msgin5g.server.app import ServerConfig, start_server
from msgin5g.server.service import ServiceConfig
from msgin5g.ue.constrained import ConstrainedUe
from msgin5g.ue.via_relay import get_config_via_relay

from .conftest import DOMAIN, make_doc
from .keyhelp import revoke, store_keys
from .procs import ServerProcess

BIN = Path(sys.executable).parent
MSGIN5G = str(BIN / "msgin5g")
TAC = "35209900"
ME = imei_urn(TAC, 1)
OTHER = imei_urn(TAC, 2)
NEW = imei_urn(TAC, 3)
#: markers inside each UE's configuration: a body carrying one carries that UE's configuration
SECRET = {ME: "svc-me-7f3a", OTHER: "svc-other-91bc"}
UNAUTH_BODY = UNAUTHENTICATED.encode()
COVERS_ME = {"imeiRanges": [{"tac": TAC, "snrRange": {"low": "0", "high": "1"}}]}

IDENTITIES = {
    "ue": f"ue:{ME}",
    "other-ue": f"ue:{OTHER}",
    "gateway-covering": "gateway:gw1",
    "gateway-not-covering": "gateway:gw2",
    "admin": "admin:ops",
    "revoked": f"ue:{NEW}",
}


@dataclass
class Keyset:
    db: Path  # the store (SQLite file) holding the documents and the keys
    creds: dict[str, KeyCredentials]


@pytest.fixture
def keyset(tmp_path) -> Keyset:
    """The keys of IDENTITIES in the test's store; the key of ``revoked`` is revoked before any
    server sees it."""
    db = tmp_path / "scm.db"
    (tmp_path / "creds").mkdir()
    return Keyset(db, store_keys(db, IDENTITIES, tmp_path / "creds", revoke=["revoked"]))


async def secured_server(tmp_path, keys: Keyset | None = None, db: str = "scm.db", port: int = 0, url=None):
    """A secured SCM-S (the default: no --insecure) on the store ``tmp_path/db`` (or ``url``)."""
    return await start_server(
        ServerConfig(
            port=port,
            db_url=url or f"sqlite:///{tmp_path}/{db}",
            service=ServiceConfig(service_domains={"msgin5g": DOMAIN}),
        )
    )


@contextlib.asynccontextmanager
async def client(creds: KeyCredentials | None):
    """An aiocoap client context; with credentials every request is OSCORE-protected."""
    ctx = await aiocoap.Context.create_client_context()
    if creds is not None:
        ctx.client_credentials["*"] = creds.security_context()
    try:
        yield ctx
    finally:
        await ctx.shutdown()


async def send(ctx, msg: Message, **kw) -> tuple[Message, bool]:
    """(response, whether it was protected). An unprotected answer to a protected request is
    returned as it came (aiocoap raises it as NotAProtectedMessage)."""
    try:
        r = await asyncio.wait_for(ctx.request(msg, **kw).response, 10)
    except oscore.NotAProtectedMessage as e:
        return e.plain_message, False
    return r, isinstance(r.remote, OSCOREAddress)


def provision(srv) -> dict[str, str]:
    ids = srv.store.import_docs(
        "msgin5g",
        [make_doc(uris=[ME], service_id=SECRET[ME]), make_doc(uris=[OTHER], service_id=SECRET[OTHER])],
    )
    srv.store.set_gateway("gw1", COVERS_ME)
    srv.store.set_gateway("gw2", {"uris": ["urn:dev:nobody"]})
    return {ME: ids[0], OTHER: ids[1]}


# -- the authorization matrix -------------------------------------------------------------------------

REQUESTERS = (
    "ue",
    "other-ue",
    "gateway-covering",
    "gateway-not-covering",
    "admin",
    "unauthenticated",
    "revoked",
)
OPERATIONS = ("query-scoped", "query-unscoped", "bulk", "get", "observe", "post", "put", "delete")
C205, C201, C204, C202, C403, C401 = 0x45, 0x41, 0x44, 0x42, 0x83, 0x81
# fmt: off
EXPECTED = {
    #                        scoped  unscoped bulk  get   observe post  put   delete
    "ue":                   (C205, C403, C403, C205, C205, C403, C403, C403),
    "other-ue":             (C403, C403, C403, C403, C403, C403, C403, C403),
    "gateway-covering":     (C205, C403, C205, C403, C403, C403, C403, C403),
    "gateway-not-covering": (C403, C403, C205, C403, C403, C403, C403, C403),
    "admin":                (C205, C205, C205, C205, C205, C201, C204, C202),
    "unauthenticated":      (C401,) * 8,
    "revoked":              (C401,) * 8,
}
# fmt: on
#: whose configuration a successful answer may carry
MAY_SEE = {
    ("ue", "query-scoped"): {ME},
    ("ue", "get"): {ME},
    ("ue", "observe"): {ME},
    ("gateway-covering", "query-scoped"): {ME},
    ("gateway-covering", "bulk"): {ME},
    ("admin", "query-scoped"): {ME},
    ("admin", "query-unscoped"): {ME, OTHER},
    ("admin", "bulk"): {ME, OTHER},
    ("admin", "get"): {ME},
    ("admin", "observe"): {ME},
}
#: a bulk answer's entries for [ME, OTHER]: True = the UE's configuration, else the stub's code
BULK_ENTRIES = {
    "gateway-covering": (True, C403),
    "gateway-not-covering": (C403, C403),
    "admin": (True, True),
}


def matrix_request(srv, operation: str, ids: dict[str, str]) -> Message:
    coll = srv.collection_uri()
    if operation == "query-scoped":
        return Message(code=Code.GET, uri=f"{coll}?ue-uri={ME}")
    if operation == "query-unscoped":
        return Message(code=Code.GET, uri=coll)
    if operation == "bulk":
        m = Message(code=Code.GET, uri=coll)
        m.opt.uri_query = ("bulk-conf-flag=f1", f"ue-uri={ME}", f"ue-uri={OTHER}")
        return m
    if operation == "get":
        return Message(code=Code.GET, uri=f"{coll}/{ids[ME]}")
    if operation == "observe":
        return Message(code=Code.GET, uri=f"{coll}/{ids[ME]}", observe=0)
    if operation == "post":
        body = cbor2.dumps(make_doc(uris=[NEW], service_id="svc-new"))
        return Message(code=Code.POST, uri=coll, payload=body, content_format=CF_CBOR)
    if operation == "put":
        body = cbor2.dumps(make_doc(uris=[ME], service_id="svc-me-updated"))
        return Message(code=Code.PUT, uri=f"{coll}/{ids[ME]}", payload=body, content_format=CF_CBOR)
    assert operation == "delete"
    return Message(code=Code.DELETE, uri=f"{coll}/{ids[OTHER]}")


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("requester", REQUESTERS)
async def test_authorization_matrix(tmp_path, keyset, requester, operation):
    srv = await secured_server(tmp_path, keyset)
    try:
        ids = provision(srv)
        creds = keyset.creds.get(requester)
        async with client(creds) as ctx:
            msg = matrix_request(srv, operation, ids)
            if operation == "observe":
                req = ctx.request(msg)
                try:
                    r = await asyncio.wait_for(req.response, 10)
                    protected = isinstance(r.remote, OSCOREAddress)
                except oscore.NotAProtectedMessage as e:
                    r, protected = e.plain_message, False
                observing = srv.site.observer_count("msgin5g", ids[ME])
                with contextlib.suppress(Exception):
                    req.observation.cancel()
            else:
                r, protected = await send(ctx, msg, handle_blockwise=operation != "bulk")
        expected = EXPECTED[requester][OPERATIONS.index(operation)]
        assert int(r.code) == expected, (r, r.payload)
        if expected == C401:
            # one answer for everything unverifiable, unprotected, the same bytes every time
            assert not protected and r.payload == UNAUTH_BODY
            assert r.opt.content_format == CF_PROBLEM
        else:
            assert protected  # every authenticated answer is protected end to end
        if not r.code.is_successful():
            assert r.opt.content_format == CF_PROBLEM
        visible = MAY_SEE.get((requester, operation), set())
        for ue, marker in SECRET.items():
            if ue not in visible:
                assert marker.encode() not in r.payload, f"{ue}'s configuration leaked to {requester}"
        if operation == "observe":
            registered = expected == C205
            assert (observing == 1) == registered and (r.opt.observe is not None) == registered
        if operation == "bulk" and expected == C205:
            entries = cbor2.loads(r.payload)
            assert len(entries) == 2
            for entry, ue, want in zip(entries, (ME, OTHER), BULK_ENTRIES[requester], strict=True):
                if want is True:
                    assert SECRET[ue] in json.dumps(entry)
                else:
                    assert entry["problem"][-4] == want and entry["valUeIds"] == {"uris": [ue]}
        if requester in ("other-ue", "gateway-covering", "gateway-not-covering") and expected == C403:
            # the denial never says whether ME has a configuration
            assert cbor2.loads(r.payload)["cause"] in {
                "NOT_AUTHORIZED",
                "ADMIN_ONLY",
                "SCOPE_REQUIRED",
                "GATEWAY_ONLY",
            }
    finally:
        await srv.close()


async def test_denials_do_not_reveal_whether_a_ue_or_document_exists(tmp_path, keyset):
    """A UE asking about a configured and an unconfigured foreign UE, or about an existing and a
    missing document, reads the same 4.03 (SPEC D12)."""
    srv = await secured_server(tmp_path, keyset)
    try:
        ids = provision(srv)
        coll = srv.collection_uri()
        async with client(keyset.creds["ue"]) as ctx:
            a, _ = await send(ctx, Message(code=Code.GET, uri=f"{coll}?ue-uri={OTHER}"))
            b, _ = await send(ctx, Message(code=Code.GET, uri=f"{coll}?ue-uri={imei_urn(TAC, 777)}"))
            c, _ = await send(ctx, Message(code=Code.GET, uri=f"{coll}/{ids[OTHER]}"))
            d, _ = await send(ctx, Message(code=Code.GET, uri=f"{coll}/no-such-document"))
        assert a.code == b.code == c.code == d.code == Code.FORBIDDEN
        assert a.payload == b.payload == c.payload == d.payload
    finally:
        await srv.close()


# -- what the secured server refuses --------------------------------------------------------------------


async def test_everything_unverifiable_gets_the_same_401(tmp_path, keyset):
    """Unprotected, a malformed OSCORE option, an unknown kid, a tampered ciphertext, a replay:
    one unprotected 4.01 with the same problem details (RFC 8613 §8.2; nothing tells them apart)."""
    srv = await secured_server(tmp_path, keyset)
    (tmp_path / "elsewhere").mkdir()
    stranger = store_keys(tmp_path / "other.db", {"stranger": f"ue:{ME}"}, tmp_path / "elsewhere")["stranger"]
    try:
        provision(srv)
        uri = f"{srv.collection_uri()}?ue-uri={ME}"
        answers = []
        async with client(None) as ctx:
            answers.append((await send(ctx, Message(code=Code.GET, uri=uri)))[0])
            bogus = Message(code=Code.POST, uri=srv.collection_uri(), payload=b"\x00" * 12)
            bogus.opt.oscore = b"\x1f"  # reserved bits: not an OSCORE option
            answers.append((await send(ctx, bogus))[0])
            bogus.opt.oscore = b"\x09\x00\x7f\x7f"  # well-formed, kid 7f7f: no such key
            answers.append((await send(ctx, bogus))[0])
        async with client(stranger) as ctx:  # kid 01 of another store: wrong key
            answers.append((await send(ctx, Message(code=Code.GET, uri=uri)))[0])
        # tampered and replayed, with the project's own client to hold the exact bytes
        ue = await ConstrainedUe("127.0.0.1", srv.port).open()
        try:
            prot = ClientProtection(keyset.creds["ue"].security_context())
            plain = Message(code=Code.GET, uri=uri)
            plain.opt.uri_host = None
            outer, binding = prot.protect(plain)
            tampered = outer.copy(payload=outer.payload[:-1] + bytes([outer.payload[-1] ^ 1]))
            answers.append(await ue.exchange(tampered))
            ok = await ue.exchange(outer)
            assert prot.verify(ok, binding).code == Code.CONTENT
            answers.append(await ue.exchange(outer))  # the same protected request again
        finally:
            await ue.close(release=False)
        for a in answers:
            assert a.code == Code.UNAUTHORIZED and a.opt.oscore is None and a.payload == UNAUTH_BODY, a
    finally:
        await srv.close()


async def test_lab_identity_option_is_refused_when_secured(tmp_path, keyset):
    srv = await secured_server(tmp_path, keyset)
    try:
        provision(srv)
        async with client(keyset.creds["ue"]) as ctx:
            m = Message(code=Code.GET, uri=srv.collection_uri())
            m.opt.add_option(OpaqueOption(LAB_IDENTITY_OPTION, b"admin"))
            r, protected = await send(ctx, m)
        assert protected and r.code == Code.BAD_REQUEST
        assert cbor2.loads(r.payload)["cause"] == "LAB_IDENTITY_REFUSED"
        assert SECRET[OTHER].encode() not in r.payload
    finally:
        await srv.close()


async def test_two_servers_on_one_store_accept_a_request_once(tmp_path, store_url):
    """Two servers on one store and one key set, SQLite file and PostgreSQL (SPEC D12): each
    serves protected requests, and a request replayed to the sibling gets 4.01 (the shared replay
    window, decided after decryption, RFC 8613 §7.4)."""
    (tmp_path / "creds").mkdir()
    keyset = Keyset(tmp_path, store_keys(store_url, IDENTITIES, tmp_path / "creds", revoke=["revoked"]))
    url = store_url
    a = await secured_server(tmp_path, keyset, url=url)
    b = await secured_server(tmp_path, keyset, url=url)
    try:
        provision(a)
        prot = ClientProtection(keyset.creds["ue"].security_context())
        query = config_query_uri("coap://127.0.0.1", "msgin5g", ME)
        ue_a = await ConstrainedUe("127.0.0.1", a.port).open()
        ue_b = await ConstrainedUe("127.0.0.1", b.port).open()
        try:
            plain = Message(code=Code.GET, uri=query)
            plain.opt.uri_host = None
            outer, binding = prot.protect(plain)
            served = prot.verify(await ue_a.exchange(outer), binding)
            assert served.code == Code.CONTENT and SECRET[ME].encode() in served.payload
            replay = await ue_b.exchange(outer)  # the same protected request to the sibling
            assert replay.code == Code.UNAUTHORIZED and replay.opt.oscore is None
            assert replay.payload == UNAUTH_BODY
            for ue in (ue_b, ue_a, ue_b):  # fresh requests: served by either
                fresh = Message(code=Code.GET, uri=query)
                fresh.opt.uri_host = None
                outer2, binding2 = prot.protect(fresh)
                answer = prot.verify(await ue.exchange(outer2), binding2)
                assert answer.code == Code.CONTENT and SECRET[ME].encode() in answer.payload
        finally:
            await ue_a.close(release=False)
            await ue_b.close(release=False)
        assert a.root.counters["replays"] + b.root.counters["replays"] == 1
    finally:
        await a.close()
        await b.close()


async def test_secured_workers_serve_protected_requests_once(tmp_path, keyset):
    """``msgin5g server --workers 2`` secured (SPEC D12, D14): requests from many UDP endpoints —
    spread over the workers by the kernel — are each served, protected, and a captured request
    replayed from another endpoint gets 4.01 whichever worker it reaches."""
    provisioner = await secured_server(tmp_path, keyset)
    provision(provisioner)
    await provisioner.close()
    proc = ServerProcess(f"sqlite:///{keyset.db}", "--workers", "2", insecure=False)
    try:
        prot = ClientProtection(keyset.creds["ue"].security_context())
        query = config_query_uri("coap://127.0.0.1", "msgin5g", ME)
        captured = None
        for _ in range(8):
            ue = await ConstrainedUe("127.0.0.1", proc.port).open()  # a new source port each time
            try:
                plain = Message(code=Code.GET, uri=query)
                plain.opt.uri_host = None
                outer, binding = prot.protect(plain)
                answer = prot.verify(await ue.exchange(outer), binding)
                assert answer.code == Code.CONTENT and SECRET[ME].encode() in answer.payload
                captured = captured or outer
            finally:
                await ue.close(release=False)
        for _ in range(4):
            ue = await ConstrainedUe("127.0.0.1", proc.port).open()
            try:
                replay = await ue.exchange(captured)
                assert replay.code == Code.UNAUTHORIZED and replay.payload == UNAUTH_BODY
            finally:
                await ue.close(release=False)
    finally:
        err = proc.stop()
    assert "Traceback" not in err


async def test_server_sequence_numbers_are_leased_apart(tmp_path, keyset):
    """Two servers that protect with their own sequence numbers (notifications) never use the same
    one: each leases its block in the store first (RFC 8613 App. B.1.1)."""
    a = await secured_server(tmp_path, keyset)
    b = await secured_server(tmp_path, keyset)
    try:
        kid = keyset.creds["ue"].kid
        ctx_a, ctx_b = a.keyring.find(kid), b.keyring.find(kid)
        numbers_a = [ctx_a.new_sequence_number() for _ in range(40)]
        numbers_b = [ctx_b.new_sequence_number() for _ in range(40)]
        assert not set(numbers_a) & set(numbers_b)
        assert len(set(numbers_a)) == 40 and len(set(numbers_b)) == 40
        # a restarted server continues above everything leased before
        await a.close()
        a = await secured_server(tmp_path, keyset)
        assert a.keyring.find(kid).new_sequence_number() > max(numbers_a + numbers_b)
    finally:
        await a.close()
        await b.close()


async def test_secured_is_the_default(tmp_path, keyset):
    """Without --insecure the server is secured by the store's keys: an unprotected request is 4.01."""
    srv = await start_server(ServerConfig(port=0, db_url=f"sqlite:///{keyset.db}"))
    try:
        assert srv.secured
        async with client(None) as ctx:
            r, protected = await send(ctx, Message(code=Code.GET, uri=srv.collection_uri()))
        assert r.code == Code.UNAUTHORIZED and not protected and r.payload == UNAUTH_BODY
    finally:
        await srv.close()


async def test_revocation_takes_effect_without_restart(tmp_path):
    """A revoked key gets 4.01 from its next request on, and its observation ends (SPEC D12)."""
    (tmp_path / "creds").mkdir()
    keys = store_keys(tmp_path / "scm.db", {"ue": f"ue:{ME}", "admin": "admin:ops"}, tmp_path / "creds")
    ue_creds, admin_creds = keys["ue"], keys["admin"]
    srv = await secured_server(tmp_path)
    try:
        ids = provision(srv)
        uri = f"{srv.collection_uri()}?ue-uri={ME}"
        async with client(ue_creds) as ctx:
            r, protected = await send(ctx, Message(code=Code.GET, uri=uri))
            assert r.code == Code.CONTENT and protected
            obs_req = ctx.request(Message(code=Code.GET, uri=f"{srv.collection_uri()}/{ids[ME]}", observe=0))
            first = await asyncio.wait_for(obs_req.response, 10)
            assert first.code == Code.CONTENT and first.opt.observe is not None
            revoke(tmp_path / "scm.db", f"ue:{ME}")  # as msgin5g keys revoke does, from outside
            # the observation ends with a 4.01 notification (the server notices the revocation)
            final = await asyncio.wait_for(obs_req.observation.__aiter__().__anext__(), 10)
            assert final.code == Code.UNAUTHORIZED and SECRET[ME].encode() not in final.payload
            r, protected = await send(ctx, Message(code=Code.GET, uri=uri))
            assert r.code == Code.UNAUTHORIZED and not protected and r.payload == UNAUTH_BODY
        async with client(admin_creds) as ctx:  # the other keys are untouched
            r, _ = await send(ctx, Message(code=Code.GET, uri=uri))
            assert r.code == Code.CONTENT
        assert srv.keyring.counters["revoked-seen"] == 1
    finally:
        await srv.close()


async def test_revocation_is_refused_at_the_next_request(tmp_path, keyset):
    """Revoked between two requests, with no time for any periodic check: the next one is 4.01."""
    srv = await secured_server(tmp_path, keyset)
    try:
        provision(srv)
        uri = f"{srv.collection_uri()}?ue-uri={ME}"
        async with client(keyset.creds["ue"]) as ctx:
            r, protected = await send(ctx, Message(code=Code.GET, uri=uri))
            assert r.code == Code.CONTENT and protected
            revoke(keyset.db, f"ue:{ME}")
            r, protected = await send(ctx, Message(code=Code.GET, uri=uri))
            assert r.code == Code.UNAUTHORIZED and not protected and r.payload == UNAUTH_BODY
    finally:
        await srv.close()


# -- through the relay: end to end --------------------------------------------------------------------


@pytest.fixture
async def relays():
    started = []

    async def start(server_uri: str, **kw):
        relay = await start_relay(RelaySettings(server_uri=server_uri, listen_port=0, admin_host=None, **kw))
        started.append(relay)
        return relay

    yield start
    for relay in started:
        await relay.close()


async def test_relay_passes_oscore_through(tmp_path, keyset, relays):
    """The constrained UE's protected request travels through the relay with the recipient in
    Proxy-Scheme + Uri-Host + Uri-Port; the answer is verified end to end (SPEC D8, D12)."""
    srv = await secured_server(tmp_path, keyset)
    try:
        provision(srv)
        server_uri = f"coap://127.0.0.1:{srv.port}"
        for mode in ("l3", "l2"):
            relay = await relays(server_uri, mode=mode)
            host, port = relay.pc5_address
            result = await get_config_via_relay(
                host, port, server_uri, ue_uri=ME, security=keyset.creds["ue"].security_context(), timeout=10
            )
            assert result.outcome is Outcome.CONFIGURED, result
            assert SECRET[ME] in result.config.ue_service_id
            foreign = await get_config_via_relay(
                host, port, server_uri, ue_uri=ME, security=keyset.creds["other-ue"].security_context()
            )
            assert foreign.outcome is Outcome.FORBIDDEN  # the server's own, verified 4.03
            assert relay.core.counters.relayed_up == 2 and relay.core.counters.relayed_down == 2
    finally:
        await srv.close()


async def test_relay_cannot_read_or_alter_and_replays_are_rejected(tmp_path, keyset, relays):
    """What the relay sees names the server and nothing else; a datagram altered on the way, or
    sent again, is refused by the server with 4.01 (RFC 8613 §7.4, §8.2)."""
    srv = await secured_server(tmp_path, keyset)
    try:
        provision(srv)
        server_uri = f"coap://127.0.0.1:{srv.port}"
        relay = await relays(server_uri)
        ue = ConstrainedUe(*relay.pc5_address, user_info="constrained")
        await ue.open()
        try:
            await ue.establish_link()
            plain, outer_opts = forward_proxy_request(config_query_uri(server_uri, "msgin5g", ME))
            prot = ClientProtection(keyset.creds["ue"].security_context(), outer_opts)
            outer, binding = prot.protect(plain)
            wire = outer.opt.encode() + outer.payload
            assert ME.encode() not in wire and b"ue-configurations" not in wire  # path and query inside
            assert outer.opt.proxy_scheme == "coap" and outer.opt.uri_port == srv.port
            for i in (0, len(outer.payload) // 2, len(outer.payload) - 1):
                p = bytearray(outer.payload)
                p[i] ^= 0x40
                r = await ue.exchange(outer.copy(payload=bytes(p)))
                assert r.code == Code.UNAUTHORIZED and r.opt.oscore is None and r.payload == UNAUTH_BODY
            r = await ue.exchange(outer)
            assert r.opt.oscore is not None and SECRET[ME].encode() not in r.payload  # ciphertext only
            answer = prot.verify(r, binding)
            assert answer.code == Code.CONTENT and SECRET[ME].encode() in answer.payload
            replay = await ue.exchange(outer)  # the same protected request, new MID and token
            assert replay.code == Code.UNAUTHORIZED and replay.payload == UNAUTH_BODY
            assert srv.service.counters.get("scoped-ok") == 1  # only the genuine one was served
        finally:
            await ue.close()
    finally:
        await srv.close()


class _TamperingWire(asyncio.DatagramProtocol):
    """A UDP hop between relay and server that flips the last byte of every answer."""

    def __init__(self, server: tuple[str, int]):
        self.server = server
        self.transport = None
        self.upstream: dict[tuple, asyncio.Future] = {}
        self.tasks: set[asyncio.Task] = set()

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        task = asyncio.ensure_future(self._forward(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _forward(self, data: bytes, addr) -> None:
        up = self.upstream.get(addr)
        if up is None:
            loop = asyncio.get_running_loop()
            up = self.upstream[addr] = asyncio.ensure_future(
                loop.create_datagram_endpoint(lambda: _Flipper(self.transport, addr), remote_addr=self.server)
            )
        transport, _ = await up
        transport.sendto(data)

    def close(self) -> None:
        for up in self.upstream.values():
            if up.done() and not up.exception():
                up.result()[0].close()
        self.transport.close()


class _Flipper(asyncio.DatagramProtocol):
    def __init__(self, back, addr):
        self.back, self.addr = back, addr

    def datagram_received(self, data, _):
        d = bytearray(data)
        d[-1] ^= 0x01
        self.back.sendto(bytes(d), self.addr)


async def test_ue_rejects_an_answer_altered_on_the_path(tmp_path, keyset, relays):
    srv = await secured_server(tmp_path, keyset)
    loop = asyncio.get_running_loop()
    wire_transport, wire = await loop.create_datagram_endpoint(
        lambda: _TamperingWire(("127.0.0.1", srv.port)), local_addr=("127.0.0.1", 0)
    )
    try:
        provision(srv)
        via = f"coap://127.0.0.1:{wire_transport.get_extra_info('sockname')[1]}"
        relay = await relays(via)
        result = await get_config_via_relay(
            *relay.pc5_address, via, ue_uri=ME, security=keyset.creds["ue"].security_context(), timeout=5
        )
        assert result.outcome is Outcome.ERROR and result.config is None
        assert "verification" in result.detail
    finally:
        wire.close()
        await srv.close()


# -- restarts keep replay protection (RFC 8613 Appendix B.1) -------------------------------------------


async def test_clean_restart_keeps_the_replay_window(tmp_path, keyset):
    """A clean stop writes every context's replay window back: after the restart an old request
    is still a replay, and a new one is served without any Echo round trip."""
    srv = await secured_server(tmp_path, keyset)
    provision(srv)
    uri = f"coap://127.0.0.1:{srv.port}"
    prot = ClientProtection(keyset.creds["ue"].security_context())
    query = config_query_uri(uri, "msgin5g", ME)
    ue = await ConstrainedUe("127.0.0.1", srv.port).open()
    plain = Message(code=Code.GET, uri=query)
    plain.opt.uri_host = None
    outer, binding = prot.protect(plain)
    assert prot.verify(await ue.exchange(outer), binding).code == Code.CONTENT
    await ue.close(release=False)
    await srv.close()
    srv = await secured_server(tmp_path, keyset)
    try:
        ue = await ConstrainedUe("127.0.0.1", srv.port, protection=prot).open()
        try:
            replay = await ue.exchange(outer)
            assert replay.code == Code.UNAUTHORIZED and replay.payload == UNAUTH_BODY
            fresh = Message(code=Code.GET, uri=query)
            fresh.opt.uri_host = None
            answer = await ue.request(fresh)
            assert answer.code == Code.CONTENT and SECRET[ME].encode() in answer.payload
        finally:
            await ue.close(release=False)
        assert srv.root.counters["echo-challenges"] == 0
    finally:
        await srv.close()


async def test_replay_after_kill_9_is_rejected(tmp_path):
    """After kill -9 nothing is lost: the replay window lives in the store, updated before a
    request is served, so a request captured before the crash is refused by the restarted server
    at once, and the real client goes on without any Echo round trip (RFC 8613 App. B.1.2 is not
    needed)."""
    (tmp_path / "creds").mkdir()
    db = f"sqlite:///{tmp_path}/scm.db"
    ue_creds = store_keys(tmp_path / "scm.db", {"ue": f"ue:{ME}"}, tmp_path / "creds")["ue"]
    import msgin5g.store as stores

    store = stores.open_store(db)
    store.import_docs("msgin5g", [make_doc(uris=[ME], service_id=SECRET[ME])])
    store.close()
    prot = ClientProtection(ue_creds.security_context())

    def request() -> Message:
        m = Message(code=Code.GET, uri=f"{collection_uri('coap://127.0.0.1', 'msgin5g')}?ue-uri={ME}")
        m.opt.uri_host = None
        return m

    proc = ServerProcess(db, insecure=False)
    try:
        ue = await ConstrainedUe("127.0.0.1", proc.port).open()
        captured, binding = prot.protect(request())
        first = await ue.exchange(captured)
        assert prot.verify(first, binding).code == Code.CONTENT
        await ue.close(release=False)
    finally:
        proc.kill()
    proc = ServerProcess(db, insecure=False)
    try:
        ue = await ConstrainedUe("127.0.0.1", proc.port, protection=prot).open()
        try:
            replay = await ue.exchange(captured)
            assert replay.code == Code.UNAUTHORIZED and replay.opt.oscore is None
            assert replay.payload == UNAUTH_BODY
            answer = await ue.request(request())  # served at once: no Echo challenge
            assert answer.code == Code.CONTENT and SECRET[ME].encode() in answer.payload
            assert answer.opt.echo is None
        finally:
            await ue.close(release=False)
    finally:
        err = proc.stop()
    assert "Traceback" not in err


# -- the command line ------------------------------------------------------------------------------


def msgin5g(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=timeout)


def test_keys_cli_and_secured_server_end_to_end(tmp_path):
    """keys add / import / list / revoke on the store, the server secured by default, config import
    and ue get-config with a key file and with a bundle."""
    db = f"sqlite:///{tmp_path}/scm.db"
    ue_id, ue2 = imei_urn(TAC, 7), imei_urn(TAC, 8)
    ue_file, admin_file = str(tmp_path / "ue1.json"), str(tmp_path / "admin.json")
    p = msgin5g("keys", "add", f"ue:{ue_id}", "--role", "ue", "--db", db, "--out", ue_file)
    assert p.returncode == 0, p.stderr
    p = msgin5g("keys", "add", "ops", "--role", "admin", "--db", db, "--out", admin_file)
    assert p.returncode == 0, p.stderr
    p = msgin5g("keys", "add", "ops", "--role", "admin", "--db", db, "--out", admin_file)
    assert p.returncode != 0 and "never overwritten" in p.stderr
    p = msgin5g("keys", "add", "ops", "--role", "admin", "--db", db, "--out", str(tmp_path / "a2.json"))
    assert p.returncode != 0 and "already has an active key" in p.stderr
    csv_file = tmp_path / "ids.csv"
    csv_file.write_text(f"identity\nue:{ue2}\ngateway:gw9\n")
    bundle = str(tmp_path / "fleet.jsonl")
    p = msgin5g("keys", "import", str(csv_file), "--db", db, "--out", bundle)
    assert p.returncode == 0 and "2 keys added" in p.stdout, p.stderr
    assert [json.loads(line)["identity"] for line in Path(bundle).read_text().splitlines()] == [
        f"ue:{ue2}",
        "gateway:gw9",
    ]
    listed = json.loads(msgin5g("keys", "list", "--db", db, "--json").stdout)
    assert [e["identity"] for e in listed] == [f"ue:{ue_id}", "admin:ops", f"ue:{ue2}", "gateway:gw9"]
    assert [e["kid"] for e in listed] == ["01", "02", "03", "04"]
    assert [e["role"] for e in listed] == ["ue", "admin", "ue", "gateway"]
    proc = ServerProcess(db, insecure=False)
    try:
        server = f"coap://127.0.0.1:{proc.port}"
        fleet = tmp_path / "fleet.json"
        fleet.write_text(
            json.dumps(
                [make_doc(uris=[ue_id], service_id="svc-seven"), make_doc(uris=[ue2], service_id="svc-8")]
            )
        )
        p = msgin5g("config", "import", str(fleet), "--server", server)
        assert p.returncode != 0 and "4.01" in p.stderr and "--credentials" in p.stderr  # none given
        p = msgin5g("config", "import", str(fleet), "--server", server, "--credentials", ue_file)
        assert p.returncode != 0 and "not of an administrator" in p.stderr  # a UE's key
        p = msgin5g("config", "import", str(fleet), "--server", server, "--credentials", admin_file)
        assert p.returncode == 0, p.stderr
        ue_cmd = ("ue", "get-config", "--server", server, "--ue-uri", ue_id, "--json", "--timeout", "10")
        p = msgin5g(*ue_cmd, "--credentials", ue_file)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["config"]["ueServiceId"] == "svc-seven"
        ue2_cmd = ("ue", "get-config", "--server", server, "--ue-uri", ue2, "--json", "--timeout", "10")
        p = msgin5g(*ue2_cmd, "--credentials", bundle)  # the bundle's entry ue:<--ue-uri>
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["config"]["ueServiceId"] == "svc-8"
        p = msgin5g(*ue2_cmd, "--credentials", bundle, "--key-identity", "ue:urn:gsma:imei:000")
        assert p.returncode != 0 and "holds no key of ue:urn:gsma:imei:000" in p.stderr
        p = msgin5g("keys", "revoke", f"ue:{ue_id}", "--db", db)
        assert p.returncode == 0 and "revoked" in p.stdout
        p = msgin5g(*ue_cmd, "--credentials", ue_file)
        assert p.returncode == 1 and json.loads(p.stdout)["code"] == "4.01"
        p = msgin5g("ue", "get-config", "--server", server, "--ue-uri", ue_id, "--credentials", ue_file)
        assert p.returncode == 1 and "unknown or revoked on this server" in p.stdout + p.stderr
        p = msgin5g("keys", "revoke", f"ue:{ue_id}", "--db", db)
        assert p.returncode != 0 and "no active key" in p.stderr
    finally:
        proc.stop()


def test_demo_is_secured_by_default(tmp_path):
    """``msgin5g demo`` makes keys for every identity (the SCM-S secured by its store, the Gateway UE
    with --oscore); every UE still gets exactly its outcome. ``--insecure`` runs the lab mode (SPEC D12)."""
    p = msgin5g("demo", "--ues", "40", "--report", str(tmp_path / "secured"), timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "OSCORE keys" in p.stdout and "INSECURE" not in p.stdout
    logs = (tmp_path / "secured" / "logs").glob("*")
    server_log = next(f for f in logs if f.name.startswith("server")).read_text()
    assert "INSECURE MODE" not in server_log
    p = msgin5g("demo", "--ues", "40", "--insecure", timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "INSECURE lab mode" in p.stdout and "OSCORE keys" not in p.stdout
