"""coaps+ws with mutual TLS (TS 24.546 C.1.1; RFC 8323 §4; SPEC D12): a real ``msgin5g server
--wss-port`` process, client certificates from ``msgin5g keys cert``, requests made by aiocoap's
WebSocket client presenting the certificate; a client without a certificate gets no connection.
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from msgin5g.coap import aiocoap_tweaks
from msgin5g.model import imei_urn
from msgin5g.security.tls import client_context
from msgin5g.store import open_store

from .conftest import make_doc
from .procs import MSGIN5G, ServerProcess

TAC = "35209900"
ME, OTHER = imei_urn(TAC, 31), imei_urn(TAC, 32)
MARK, OTHER_MARK = "svc-wss-me-41f0", "svc-wss-other-9a2d"


def msgin5g(*args) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def get(uri: str, ssl_context) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context(transports=["ws"])
    try:
        aiocoap_tweaks.present_client_certificate(ctx, ssl_context)
        return await ctx.request(aiocoap.Message(code=Code.GET, uri=uri)).response
    finally:
        await ctx.shutdown()


@pytest.fixture
def wss_server(tmp_path):
    yield from _wss_server(tmp_path)


def _wss_server(tmp_path, *extra):
    db = f"sqlite:///{tmp_path}/scm.db"
    store = open_store(db)
    store.import_docs(
        "msgin5g", [make_doc(uris=[ME], service_id=MARK), make_doc(uris=[OTHER], service_id=OTHER_MARK)]
    )
    store.close()
    for ident, d in ((f"ue:{ME}", "me"), ("admin:ops", "admin")):
        p = msgin5g("keys", "cert", ident, "--db", db, "--out", str(tmp_path / d))
        assert p.returncode == 0, p.stderr
    port = free_port()
    proc = ServerProcess(db, "--wss-port", str(port), *extra, insecure=False)
    yield db, port, tmp_path
    err = proc.stop()
    assert "Traceback" not in err


def ctx_of(d) -> ssl.SSLContext:
    return client_context((d / "ca.pem").read_text(), str(d / "cert.pem"), str(d / "key.pem"))


async def test_coaps_ws_mutual_tls_with_aiocoap_client(wss_server):
    db, port, tmp = wss_server
    base = f"coaps+ws://127.0.0.1:{port}/su-uc/v1/val-services/msgin5g/ue-configurations"
    me, admin = ctx_of(tmp / "me"), ctx_of(tmp / "admin")
    r = await get(f"{base}?ue-uri={ME}", me)
    assert r.code == Code.CONTENT and MARK.encode() in r.payload and OTHER_MARK.encode() not in r.payload
    r = await get(f"{base}?ue-uri={OTHER}", me)
    assert r.code == Code.FORBIDDEN and OTHER_MARK.encode() not in r.payload
    r = await get(base, me)  # an administrator's query with a UE's certificate
    assert r.code == Code.FORBIDDEN
    r = await get(base, admin)
    assert r.code == Code.CONTENT and MARK.encode() in r.payload and OTHER_MARK.encode() in r.payload
    p = msgin5g("keys", "revoke", f"ue:{ME}", "--db", db)
    assert p.returncode == 0, p.stderr
    r = await get(f"{base}?ue-uri={ME}", me)  # revoked: refused at its next request
    assert r.code == Code.UNAUTHORIZED and MARK.encode() not in r.payload


async def test_coaps_ws_refuses_a_client_without_certificate(wss_server):
    import websockets.asyncio.client

    _, port, tmp = wss_server
    bare = ssl.create_default_context(cadata=(tmp / "me" / "ca.pem").read_text())  # trusts, presents none
    uri = f"wss://127.0.0.1:{port}/.well-known/coap"
    with pytest.raises((OSError, ssl.SSLError, websockets.exceptions.WebSocketException)):
        async with websockets.asyncio.client.connect(uri, ssl=bare, subprotocols=["coap"]) as ws:
            # RFC 8323 §4: CSM, then a GET; the server must not answer a connection without a certificate
            await ws.send(bytes([0x00, 0xE1]))
            await ws.send(bytes([0x00, 0x01]) + b"\xbb.well-known\x04core")
            await ws.recv()
    # and the aiocoap client without a certificate gets no answer either
    with pytest.raises((aiocoap.error.Error, websockets.exceptions.WebSocketException, OSError)):
        await get(f"coaps+ws://127.0.0.1:{port}/su-uc/v1/val-services/msgin5g/ue-configurations", bare)


async def test_coaps_ws_client_rate_gets_4_29_inside_the_tls_session(tmp_path):
    """Admission (RFC 8516 4.29 + Max-Age) applies over coaps+ws as over OSCORE."""
    gen = _wss_server(tmp_path, "--client-rate", "0.2", "--client-burst", "1")
    _, port, tmp = next(gen)
    try:
        uri = f"coaps+ws://127.0.0.1:{port}/su-uc/v1/val-services/msgin5g/ue-configurations?ue-uri={ME}"
        ctx = await aiocoap.Context.create_client_context(transports=["ws"])
        try:
            aiocoap_tweaks.present_client_certificate(ctx, ctx_of(tmp / "me"))
            first = await ctx.request(aiocoap.Message(code=Code.GET, uri=uri)).response
            second = await ctx.request(aiocoap.Message(code=Code.GET, uri=uri)).response
        finally:
            await ctx.shutdown()
        assert first.code == Code.CONTENT
        assert second.code == Code.TOO_MANY_REQUESTS and second.opt.max_age >= 1
    finally:
        next(gen, None)
