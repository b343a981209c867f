"""Start and stop the SCM-S: one resource tree over UDP, TCP (RFC 8323) and WebSockets (TS 24.546 clause 5).

aiocoap binds its UDP and TCP server sockets with SO_REUSEPORT, so a second server on a taken port
would silently share it. :func:`start_server` therefore first checks, with plain sockets, that the
port is free on both transports and fails with a clear message otherwise; port 0 picks a port that
is free for both.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import ip_address

import aiocoap
from aiocoap.numbers.constants import COAP_PORT, COAPS_PORT

from ..authz import LAB_IDENTITY_OPTION
from ..coap import aiocoap_tweaks
from ..coap.aiocoap_tweaks import hardening as aiocoap_hardening
from ..coap.qblock import QBlockParams
from ..security.server import SecuredSite
from ..security.storekeys import StoreKeyring
from ..store import Store, default_db_url, open_store
from .admission import Admission, AdmissionConfig
from .changefeed import ChangeWatcher
from .profile_service import ProfileService
from .profiles import ProfileSite
from .resources import ScmSite
from .service import ScmService, ServiceConfig

log = logging.getLogger("msgin5g.server")

#: aiocoap's WebSocket server listens on the bind port + 3000 (see aiocoap.transports.ws).
AIOCOAP_WS_PORT_OFFSET = 3000


def _identify(keyring: StoreKeyring):
    """A request's identity: from its TLS client certificate (coaps+tcp, coaps+ws) or its DTLS PSK
    identity (coaps), else its OSCORE key (SPEC D12: one authorization for all of them)."""
    from ..security.dtls import dtls_identity
    from ..security.tls import tls_identity

    def identify(request):
        return tls_identity(request) or dtls_identity(request) or keyring.identify(request)

    return identify


async def _tls_server_context(running: RunningServer):
    """The TLS server context of coaps+tcp and coaps+ws: the server certificate issued by the
    store's CA for the host at start-up, client certificates of that CA required (SPEC D12)."""
    from ..security import tls

    store, host = running.store, running.host
    ca_cert, ca_key = await asyncio.to_thread(store.tls_ca, tls.new_ca)
    names = tuple(dict.fromkeys((host, "localhost", "127.0.0.1")))
    cert, key, _ = tls.issue(ca_cert, ca_key, hosts=names)
    return tls.server_context(ca_cert, cert, key)


async def _tls_listener(running: RunningServer, site) -> aiocoap.Context:
    """coaps+tcp on ``--tls-port`` (TS 24.546 C.1.1; RFC 8323) with mutual TLS."""
    from ..security import tls

    ctx = await aiocoap.Context.create_server_context(
        tls.TlsSite(site, running.store),
        # aiocoap's TLS server binds the given port + (COAPS_PORT - COAP_PORT), as for its default
        bind=(running.host, running.config.tls_port - (COAPS_PORT - COAP_PORT)),
        transports=["tlsserver"],
        _ssl_context=await _tls_server_context(running),
    )

    async def prune() -> None:  # bound aiocoap's pool of rejected handshakes
        while True:
            await asyncio.sleep(10)
            aiocoap_tweaks.prune_failed_tls_connections(ctx)

    running._background.append(asyncio.ensure_future(prune()))
    return ctx


async def _wss_listener(running: RunningServer, site) -> aiocoap.Context:
    """coaps+ws on ``--wss-port`` (TS 24.546 C.1.1; RFC 8323 §4) with mutual TLS, as coaps+tcp."""
    from ..security import tls

    ssl_context = await _tls_server_context(running)
    site = tls.TlsSite(site, running.store)
    return await aiocoap_tweaks.serve_coaps_ws(site, running.host, running.config.wss_port, ssl_context)


async def _dtls_listener(running: RunningServer, site) -> aiocoap.Context:
    """coaps (DTLS 1.2, PSK) on ``--dtls-port`` (TS 24.546 C.1.1; RFC 7252 §9.1.3.1): the PSK
    identity names the identity, the PSK is derived from its OSCORE key in the store
    (:mod:`msgin5g.security.dtls`); sessions bounded in number and idle time."""
    from ..security import dtls

    config = running.config
    credentials = dtls.StorePskCredentials(running.store)
    ctx = await aiocoap.Context.create_server_context(
        dtls.DtlsSite(site, running.store),
        # aiocoap's DTLS server binds the given port + (COAPS_PORT - COAP_PORT), as for its default
        bind=(running.host, config.dtls_port - (COAPS_PORT - COAP_PORT)),
        transports=["tinydtls_server"],
        server_credentials=credentials,
    )
    try:
        running.dtls_sessions = aiocoap_tweaks.bound_dtls_sessions(
            ctx, config.dtls_max_sessions, config.dtls_idle_timeout
        )
    except RuntimeError:
        await ctx.shutdown()
        raise
    running.dtls_credentials = credentials
    sweep = running.dtls_sessions.sweep
    running._background.append(
        asyncio.ensure_future(aiocoap_tweaks.secure_transports.run_periodically(5.0, sweep))
    )
    return ctx


async def _follow_changes(running: RunningServer, config: ServerConfig) -> None:
    """Store calls off the event loop (a thread pool, for PostgreSQL by default) and the change feed
    that notifies this process's observers of changes made through any process or node (SPEC D14)."""
    pg_url = running.store.listen_url
    offload = config.offload if config.offload is not None else running.store.networked
    site = running.site
    site.loop = asyncio.get_running_loop()
    if offload:
        running.executor = ThreadPoolExecutor(config.store_threads, thread_name_prefix="msgin5g-store")
        site.executor = running.executor
    running.feed = ChangeWatcher(
        running.store, site.observed, site.feed_change, running.executor, config.feed_poll, pg_url
    )
    site.feed = running.feed
    await running.feed.start()


class ServerStartError(RuntimeError):
    """The server cannot start (port taken, insecure mode refused, bad configuration)."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 5683  # 0 → pick a free port (UDP and TCP)
    db_url: str | None = None  # None → sqlite file under the user's data dir
    service_ids: tuple[str, ...] = ("msgin5g",)
    api_prefix: tuple[str, ...] = ()
    ws_port: int | None = None
    tls_port: int | None = None  # coaps+tcp with mutual TLS (client certificates of the store's CA)
    wss_port: int | None = None  # coaps+ws with mutual TLS, the same certificates
    dtls_port: int | None = None  # coaps: DTLS 1.2 with PSKs derived from the store's keys
    dtls_max_sessions: int = 10_000  # DTLS sessions held at once (least recently used ended first)
    dtls_idle_timeout: float = 300.0  # s after which an idle DTLS session is ended
    tcp: bool = True
    insecure: bool = False
    insecure_anywhere: bool = False
    max_open_contexts: int = 65536  # OSCORE contexts kept in memory at once (their state is in the store)
    max_exchanges: int = 100_000  # UDP message IDs remembered for deduplication (oldest shed beyond)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # 5.03 / 4.29 policy
    service: ServiceConfig = field(default_factory=ServiceConfig)
    # Scale-out (SPEC D14)
    shared_port: bool = False  # a worker of --workers N: the port is bound by its siblings too
    offload: bool | None = None  # store calls on a thread pool; None → for PostgreSQL only
    store_threads: int = 4
    feed_poll: float = 0.05  # s between reads of the change feed on SQLite
    qblock: QBlockParams = field(default_factory=QBlockParams)  # RFC 9177 §7.2 parameters
    #: wraps the resource tree (inner) and the OSCORE layer (outer): metrics and logs (SPEC D15)
    wrap_site: Callable | None = None


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _port_free(host: str, port: int, kind: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, tcp: bool = True) -> int:
    """A port free on UDP (and TCP) of ``host``."""
    for _ in range(50):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if not tcp or _port_free(host, port, socket.SOCK_STREAM):
            return port
    raise ServerStartError(f"no free port found on {host}")


def check_port(host: str, port: int, tcp: bool) -> None:
    taken = []
    if not _port_free(host, port, socket.SOCK_DGRAM):
        taken.append("UDP")
    if tcp and not _port_free(host, port, socket.SOCK_STREAM):
        taken.append("TCP")
    if taken:
        raise ServerStartError(
            f"port {port} on {host} is already in use ({' and '.join(taken)}); "
            "stop the other server or pass --port 0 to pick a free port"
        )


def uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class RunningServer:
    config: ServerConfig
    host: str
    port: int
    ws_port: int | None
    service: ScmService
    site: ScmSite
    store: Store
    contexts: list = field(default_factory=list)
    keyring: StoreKeyring | None = None
    root: object | None = None  # what the CoAP contexts serve: the site, or SecuredSite around it
    hardening: aiocoap_hardening.Hardening | None = None  # UDP guard and bounded deduplication
    _own_store: bool = True
    _watch: asyncio.Task | None = None
    _background: list = field(default_factory=list)
    dtls_sessions: aiocoap_tweaks.DtlsSessions | None = None
    dtls_credentials: object | None = None
    feed: ChangeWatcher | None = None
    executor: ThreadPoolExecutor | None = None

    @property
    def secured(self) -> bool:
        return self.keyring is not None

    def base_uri(self, scheme: str = "coap") -> str:
        """``{apiRoot}/su-uc/v1`` for one transport scheme (coap, coap+tcp, coap+ws)."""
        port = {
            "coap+ws": self.ws_port,
            "coaps+tcp": self.config.tls_port,
            "coaps+ws": self.config.wss_port,
            "coaps": self.config.dtls_port,
        }.get(scheme, self.port)
        prefix = "".join(f"/{p}" for p in self.config.api_prefix)
        return f"{scheme}://{uri_host(self.host)}:{port}{prefix}/su-uc/v1"

    @property
    def listeners(self) -> list[str]:
        out = [self.base_uri("coap")]
        if self.config.tcp:
            out.append(self.base_uri("coap+tcp"))
        if self.ws_port is not None:
            out.append(self.base_uri("coap+ws"))
        for scheme, port in (
            ("coaps+tcp", self.config.tls_port),
            ("coaps+ws", self.config.wss_port),
            ("coaps", self.config.dtls_port),
        ):
            if port is not None:
                out.append(self.base_uri(scheme))
        return out

    def collection_uri(self, service_id: str = "msgin5g", scheme: str = "coap") -> str:
        return f"{self.base_uri(scheme)}/val-services/{service_id}/ue-configurations"

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.feed is not None:
            await self.feed.stop()
            self.feed = None
        for task in self._background:
            task.cancel()
        for ctx in self.contexts:
            aiocoap_tweaks.prune_failed_tls_connections(ctx)
            try:
                await ctx.shutdown()
            except Exception:  # shutting down regardless
                log.exception("error while shutting down a CoAP context")
        self.contexts.clear()
        if self.keyring is not None:
            self.keyring.close()
            self.keyring = None
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
        if self._own_store:
            self.store.close()


async def start_server(config: ServerConfig, store: Store | None = None) -> RunningServer:
    """Bind every listener and return once the server is ready.

    Secured unless ``config.insecure`` (TS 24.546 6.2.1.2; SPEC D12): every request must be
    OSCORE-protected with a key of the store (``msgin5g keys``), whose row names the requester's
    identity. Insecure (labs only): loopback only unless ``insecure_anywhere``, with a warning on
    every start.
    """
    for name, value in (("--tls-port", config.tls_port), ("--dtls-port", config.dtls_port)):
        if value is not None and value <= COAPS_PORT - COAP_PORT:
            raise ServerStartError(f"{name} must be above 1")
    for name, value, what in (
        ("--tls-port", config.tls_port, "mutual TLS"),
        ("--wss-port", config.wss_port, "mutual TLS"),
        ("--dtls-port", config.dtls_port, "DTLS with the store's keys"),
    ):
        if config.insecure and value is not None:
            raise ServerStartError(f"{name} serves {what}: it needs the secured mode (drop --insecure)")
    if config.dtls_port is not None:
        problem = aiocoap_tweaks.dtls_available()
        if problem is not None:
            raise ServerStartError(f"--dtls-port: {problem}")
    if config.insecure:
        if not _is_loopback(config.host) and not config.insecure_anywhere:
            raise ServerStartError(
                f"refusing to serve insecurely on non-loopback address {config.host}; "
                "pass --insecure-anywhere if you really mean it"
            )
        log.warning(
            "INSECURE MODE: requests are not authenticated; every requester is an administrator "
            "unless it claims a lab identity (option %d)",
            LAB_IDENTITY_OPTION,
        )
    aiocoap_tweaks.install_process_tweaks()
    host = config.host
    port = config.port or pick_port(host, config.tcp)
    if config.port and not config.shared_port:
        check_port(host, port, config.tcp)
    if config.ws_port is not None and config.ws_port <= AIOCOAP_WS_PORT_OFFSET:
        raise ServerStartError(f"--ws-port must be above {AIOCOAP_WS_PORT_OFFSET}")
    own = store is None
    store = store or open_store(config.db_url or default_db_url())
    svc_cfg = config.service
    svc_cfg.service_ids = tuple(config.service_ids)
    svc_cfg.api_prefix = tuple(config.api_prefix)
    service = ScmService(store, svc_cfg)
    keyring = None
    if not config.insecure:
        keyring = StoreKeyring(store, max_open=config.max_open_contexts)
        if not store.count_keys():
            log.warning("secured, and the store has no active key yet: add keys with 'msgin5g keys add'")
        site = ScmSite(
            service, identify=_identify(keyring), qblock=config.qblock, admission=Admission(config.admission)
        )
        root = SecuredSite(config.wrap_site(site) if config.wrap_site else site, keyring)
        keyring.on_change(lambda: site.recheck_observers(keyring.is_active))
    else:
        site = ScmSite(service, qblock=config.qblock, admission=Admission(config.admission))
        root = site
    profiles = ProfileSite(ProfileService(store, svc_cfg, svc_cfg.seal_profile_cf), site.prefix)
    profiles.changed = site.changed  # its changes reach observers of every process (SPEC D14)
    site.apis.append(profiles)
    if config.wrap_site is not None:
        root = config.wrap_site(root, outer=keyring is not None)
    running = RunningServer(
        config, host, port, config.ws_port, service, site, store, keyring=keyring, root=root, _own_store=own
    )
    if keyring is not None:
        running._watch = asyncio.ensure_future(keyring.watch())
    try:
        await _follow_changes(running, config)
        udp = await aiocoap.Context.create_server_context(root, bind=(host, port), transports=["udp6"])
        running.contexts.append(udp)
        aiocoap_tweaks.install_compact_duplicate_cache(udp)
        try:  # after the tweaks: the bounded cache takes over duplicate detection, compact as well
            running.hardening = aiocoap_hardening.install(udp, max_exchanges=config.max_exchanges)
            aiocoap_hardening.install_stream_guard()
        except RuntimeError as e:
            raise ServerStartError(str(e)) from None
        if config.tcp:
            running.contexts.append(
                await aiocoap.Context.create_server_context(root, bind=(host, port), transports=["tcpserver"])
            )
        if config.ws_port is not None:
            running.contexts.append(
                await aiocoap.Context.create_server_context(
                    root, bind=(host, config.ws_port - AIOCOAP_WS_PORT_OFFSET), transports=["ws"]
                )
            )
        if config.tls_port is not None:
            running.contexts.append(await _tls_listener(running, site))
        if config.wss_port is not None:
            running.contexts.append(await _wss_listener(running, site))
        if config.dtls_port is not None:
            running.contexts.append(await _dtls_listener(running, site))
    except RuntimeError as e:  # aiocoap not of the shape a listener relies on
        await running.close()
        raise ServerStartError(str(e)) from None
    except OSError as e:
        await running.close()
        raise ServerStartError(f"cannot listen on {host}:{port}: {e}") from e
    return running
