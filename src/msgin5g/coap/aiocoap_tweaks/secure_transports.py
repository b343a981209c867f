"""The coaps (DTLS) and coaps+ws (TLS) listeners' reliance on aiocoap internals (TS 24.546 C.1.1;
SPEC D12). See the package docstring for why each is needed; every function checks the shape it
relies on first (:func:`dtls_shape_problem`, :func:`coaps_ws_shape_problem`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time

log = logging.getLogger("msgin5g.coap")


# -- coaps: aiocoap's DTLS server (aiocoap.transports.tinydtls_server) ---------------------------------
def _dtls_module():
    from aiocoap.transports import tinydtls_server  # needs DTLSSocket only when a session is made

    return tinydtls_server


def dtls_available() -> str | None:
    """None when aiocoap's DTLS server can run here, else why not (one line)."""
    try:
        import DTLSSocket.dtls  # noqa: F401
    except ImportError as e:
        return (
            f"the DTLSSocket package is not installed ({e}); "
            "run 'make venv' (it builds it: needs autoconf, automake, libtool)"
        )
    return None


def dtls_shape_problem() -> str | None:
    """Why the DTLS tweaks cannot rely on aiocoap's ``tinydtls_server``, or None.

    They rely on: the server socket keeping one ``_AddressDTLS`` per client address in the
    ``OrderedDict`` ``_connections`` (moved to the end on every datagram), created in
    ``datagram_received``; ``_maybe_purge_sockets`` evicting the oldest while ``max_sockets`` are
    held (aiocoap defines it but never calls it); ``_AddressDTLS._inject_error`` ending a session
    and removing it from ``_connections``; the session's claims in ``_psk_store._claims``."""
    try:
        m = _dtls_module()
        sock, addr = m._DatagramServerSocketSimpleDTLS, m._AddressDTLS
        received = inspect.getsource(sock.datagram_received)
        purge = inspect.getsource(sock._maybe_purge_sockets)
        inject = inspect.getsource(addr._inject_error)
        init = inspect.getsource(addr.__init__)
        sock_init = inspect.getsource(sock.__init__)
    except (ImportError, AttributeError, OSError, TypeError) as e:
        return f"aiocoap's tinydtls_server changed shape ({e})"
    if "self._connections = OrderedDict()" not in sock_init:
        return "the DTLS server no longer keeps its sessions in _connections"
    in_use_order = ("self._connections.move_to_end(sockaddr)", "self._Address(self, sockaddr)")
    if any(n not in received for n in in_use_order):
        return "the DTLS server's datagram_received no longer keeps _connections in use order"
    if "len(self._connections) >= self.max_sockets" not in purge or "_inject_error(" not in purge:
        return "the DTLS server's _maybe_purge_sockets changed"
    if "self._protocol._connections.pop(" not in inject:
        return "_AddressDTLS._inject_error no longer removes the session"
    if "self._psk_store = SecurityStore(" not in init or "_claims" not in inspect.getsource(m.SecurityStore):
        return "_AddressDTLS no longer records its PSK claims in _psk_store._claims"
    return None


def dtls_psk_claim(remote):
    """What the DTLS session a request came on authenticated (the second value the server
    credentials' ``find_dtls_psk`` returned), or None (not DTLS, or no handshake)."""
    if getattr(remote, "scheme", None) != "coaps":
        return None
    store = getattr(remote, "_psk_store", None)
    return getattr(store, "_claims", None)


class DtlsSessions:
    """The bound on aiocoap's DTLS sessions: at most ``max_sessions`` (the least recently used one
    is ended when a new client address arrives at the limit) and none idle for more than
    ``idle_timeout`` seconds (:meth:`sweep`, run periodically). aiocoap never evicts them: every
    source address that ever sent a datagram keeps a tinydtls session object."""

    def __init__(self, pool, max_sessions: int, idle_timeout: float):
        self.pool = pool
        self.idle_timeout = idle_timeout
        self.seen: dict = {}
        self.evicted = 0
        pool.max_sockets = max_sessions
        original = pool.datagram_received

        def datagram_received(data, sockaddr):
            if sockaddr not in pool._connections:
                before = len(pool._connections)
                pool._maybe_purge_sockets()  # at the limit: end the least recently used session
                self.evicted += before - len(pool._connections)
            self.seen[sockaddr] = time.monotonic()
            original(data, sockaddr)

        pool.datagram_received = datagram_received

    @property
    def count(self) -> int:
        return len(self.pool._connections)

    def sweep(self, now: float | None = None) -> int:
        """End the sessions idle longer than ``idle_timeout``; returns how many."""
        from aiocoap import error

        now = time.monotonic() if now is None else now
        ended = 0
        for sockaddr, address in list(self.pool._connections.items()):  # least recently used first
            if now - self.seen.get(sockaddr, now) <= self.idle_timeout:
                break
            address._inject_error(error.LibraryShutdown("DTLS session ended after idling"))
            ended += 1
        for sockaddr in [s for s in self.seen if s not in self.pool._connections]:
            del self.seen[sockaddr]
        self.evicted += ended
        return ended


def bound_dtls_sessions(ctx, max_sessions: int, idle_timeout: float) -> DtlsSessions:
    """Install :class:`DtlsSessions` on the DTLS server of the aiocoap context ``ctx``."""
    problem = dtls_shape_problem()
    if problem is not None:
        raise RuntimeError(f"{problem}; cannot bound the DTLS sessions, so coaps is not served")
    m = _dtls_module()
    for ri in getattr(ctx, "request_interfaces", ()):
        mi = getattr(getattr(ri, "token_interface", None), "message_interface", None)
        if isinstance(mi, m.MessageInterfaceTinyDTLSServer):
            return DtlsSessions(mi._pool, max_sessions, idle_timeout)
    raise RuntimeError(f"no DTLS server in {ctx!r}")


# -- coaps+ws: aiocoap's WebSocket server over TLS (aiocoap.transports.ws) -----------------------------
def coaps_ws_shape_problem() -> str | None:
    """Why :func:`serve_coaps_ws` cannot rely on aiocoap's ``WSPool``, or None.

    aiocoap starts its TLS WebSocket server only together with a plain one on the port before it
    (bind port + 3000 and + 3001); to listen on one chosen port alone, the server is started here
    the way ``WSPool.create_transport`` starts it: ``websockets.asyncio.server.serve`` with
    ``WSPool._new_connection`` (``scheme="coaps+ws"``), ``_process_request``, subprotocol
    ``coap``, no pings, kept in ``WSPool._servers`` (closed by aiocoap's shutdown)."""
    try:
        from aiocoap.transports import ws

        create = inspect.getsource(ws.WSPool.create_transport)
        shutdown = inspect.getsource(ws.WSPool.shutdown)
        params = list(inspect.signature(ws.WSPool._new_connection).parameters)
    except (ImportError, AttributeError, OSError, TypeError) as e:
        return f"aiocoap's WebSocket transport changed shape ({e})"
    for needle in (
        'functools.partial(self._new_connection, scheme="coaps+ws")',
        "process_request=self._process_request",
        'subprotocols=["coap"]',
        "ping_interval=None",
        "ssl=server_context",
        "self._servers.append(server)",
    ):
        if needle not in create:
            return f"WSPool.create_transport no longer has {needle}"
    if "_servers" not in shutdown:
        return "WSPool.shutdown no longer closes its servers"
    if params[:3] != ["self", "websocket", "path"] or "scheme" not in params:
        return "WSPool._new_connection(websocket, path, *, scheme) changed"
    return None


async def serve_coaps_ws(site, host: str, port: int, ssl_context):
    """An aiocoap context serving ``site`` over coaps+ws on ``host``:``port`` only (RFC 8323 §4;
    TS 24.546 C.1.1), TLS with ``ssl_context`` (which requires client certificates)."""
    problem = coaps_ws_shape_problem()
    if problem is not None:
        raise RuntimeError(f"{problem}; coaps+ws is not served")
    import aiocoap
    import websockets.asyncio.server
    from aiocoap.transports.ws import WSPool

    ctx = await aiocoap.Context.create_client_context(transports=["ws"])  # a WSPool, no listener
    ctx.serversite = site
    pool = next(ri.token_interface for ri in ctx.request_interfaces if isinstance(ri.token_interface, WSPool))
    try:
        server = await websockets.asyncio.server.serve(
            functools.partial(pool._new_connection, scheme="coaps+ws"),
            host,
            port,
            subprotocols=["coap"],
            process_request=pool._process_request,
            ping_interval=None,
            ssl=ssl_context,
        )
    except BaseException:
        await ctx.shutdown()
        raise
    pool._servers.append(server)
    return ctx


async def run_periodically(interval: float, action) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            action()
        except Exception:  # keep sweeping
            log.exception("periodic aiocoap housekeeping failed")


def present_client_certificate(ctx, ssl_context) -> None:
    """Make the aiocoap client context ``ctx`` use ``ssl_context`` (which holds a client
    certificate) for its coaps+tcp and coaps+ws connections: aiocoap's credentials can name a
    CA to trust (``TLSCert``) but not a certificate to present. Its TCP and WebSocket clients
    ask ``client_credentials.ssl_client_context(scheme, hostinfo)`` for every new connection."""
    creds = ctx.client_credentials
    if not callable(getattr(creds, "ssl_client_context", None)):
        raise RuntimeError("aiocoap's client credentials no longer have ssl_client_context")
    creds.ssl_client_context = lambda scheme, hostinfo: ssl_context
