"""The Relay UE's I/O shell: UDP sockets and a clock around :class:`.core.RelayCore` (SPEC D8, D11).

It reads datagrams, hands them to the core with the loop's clock, and performs the actions the
core returns; it decides nothing itself.

Sockets. One PC5 socket (``--listen``, 65401 by default). One upstream socket per PC5 link, opened
when the core says :class:`~.core.OpenUplink` and connected to the SCM-S, so that only the SCM-S's
datagrams arrive on it: in layer-3 mode it is bound to the relay's address with a port of its own
(a NAT's mapping), in layer-2 mode to the remote UE's own address, one of 127.0.0.0/8 when the
SCM-S is reached over IPv4 loopback (SPEC D8). When it is not (an IPv6 or off-host SCM-S there is
no spare address to give each remote UE), layer 2 falls back to a port of its own per remote UE
and says so in the log. Raw sockets and not aiocoap client contexts: the relay keeps CoAP end to
end — message IDs, tokens, block-wise transfers, Observe and OSCORE pass through — where aiocoap's
client would terminate them.

Every socket is a :class:`~msgin5g.coap.udp.DatagramSocket`, the project's one datagram shell: read
in bursts (one readiness event, many datagrams), sends queued while the socket buffer is full
rather than dropped, ICMP errors reported (and counted here). Creating one is synchronous, which
keeps performing an action a plain function call. The admin side — counters and links for
operators — is an ordinary aiocoap resource tree on a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import urllib.parse
from dataclasses import dataclass

import aiocoap
import aiocoap.resource as resource

from .. import codec, pc5
from ..coap.udp import DatagramSocket
from .core import (
    HOP,
    MODE_L2,
    MODE_L3,
    Answer,
    CloseUplink,
    Discard,
    OpenUplink,
    RelayConfig,
    RelayCore,
    SendDownlink,
    SendPc5,
    SendUplink,
)

log = logging.getLogger("msgin5g.relay")

DEFAULT_PC5_PORT = 65401  # seed 6.2.2.1; SPEC D11
DEFAULT_ADMIN_PORT = 65411


@dataclass
class RelaySettings:
    """Everything ``msgin5g relay`` is told (SPEC D8, D11)."""

    server_uri: str  # coap://HOST:PORT[/path]: the configuration management server functionality
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PC5_PORT  # 0 → any free port
    mode: str = MODE_L3
    max_links: int = 8
    auto_link: bool = False
    admin_host: str | None = "127.0.0.1"  # None → no admin side
    admin_port: int = DEFAULT_ADMIN_PORT  # 0 → any free port
    tick: float = 0.5
    keepalive: int = 20
    link_timeout: float = 60.0
    max_exchanges: int = 8  # open requests per remote UE; beyond: 5.03 + Max-Age
    reliability: str = HOP  # hop: the relay ends the UE's CON exchanges and retransmits (relay/hop.py)
    ack_timeout: float = 2.0  # RFC 7252 ACK_TIMEOUT of the relay's own CONs
    adaptive_rto: bool = True  # their first timeout: each leg's RFC 6298 RTO once measured


def parse_server_uri(uri: str) -> tuple[str, str, int]:
    """``coap://HOST:PORT[/apiRoot path]`` → (scheme, host, port). Routing uses the origin only."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme != "coap" or not parts.hostname:
        raise ValueError(
            f"--server must be a coap://HOST[:PORT] URI (the relay's Uu side is UDP), got {uri!r}"
        )
    return parts.scheme, parts.hostname.lower(), parts.port or 5683


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    return host, int(port) if port else default_port


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def _is_ipv4_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


class _Pc5Socket(DatagramSocket):
    """The PC5 socket: bursts go to :meth:`RunningRelay._on_pc5_burst`, errors are counted."""

    def __init__(self, sock: socket.socket, relay: RunningRelay):
        self.relay = relay
        super().__init__(sock)

    def on_burst(self, burst) -> None:
        self.relay._on_pc5_burst(burst)

    def on_error(self, error: OSError) -> None:
        self.relay.core.counters.errors[f"pc5-{type(error).__name__}"] += 1


class _Uplink(DatagramSocket):
    """The upstream flow of one PC5 link, connected to the SCM-S (SPEC D8): only the SCM-S's
    datagrams arrive on it; an ICMP error about the SCM-S (e.g. port unreachable while it
    restarts) is counted — the UE's own retransmissions go on being relayed."""

    def __init__(self, sock: socket.socket, relay: RunningRelay, key: int):
        self.relay = relay
        self.key = key
        super().__init__(sock)

    def on_burst(self, burst) -> None:
        self.relay._on_uplink_burst(self.key, burst)

    def on_error(self, error: OSError) -> None:
        self.relay.core.counters.errors[f"uplink-{type(error).__name__}"] += 1


class CountersResource(resource.Resource):
    """``/relay/counters`` and ``/relay/links`` on the admin side: CBOR, or JSON with Accept 50."""

    def __init__(self, relay: RunningRelay, part: str):
        super().__init__()
        self.relay = relay
        self.part = part

    async def render_get(self, request):
        snap = self.relay.core.snapshot()
        value = snap["counters"] if self.part == "counters" else snap
        if request.opt.accept == codec.CF_JSON:
            return aiocoap.Message(payload=json.dumps(value).encode(), content_format=codec.CF_JSON)
        return aiocoap.Message(payload=codec.encode(value), content_format=codec.CF_CBOR)


class RunningRelay:
    """A started relay: PC5 socket, uplink sockets, tick task and admin context."""

    def __init__(self, core: RelayCore, server_addr: tuple, settings: RelaySettings):
        self.core = core
        self.settings = settings
        self._server_addr = server_addr
        self._family = _family(server_addr[0])
        self._loop = asyncio.get_running_loop()
        self._pc5: _Pc5Socket | None = None
        self._uplinks: dict[int, _Uplink] = {}
        self._bind_warned = False
        self._tick_task: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None  # the core's next retransmission (hop)
        self._admin: aiocoap.Context | None = None
        self.pc5_address: tuple[str, int] = ("", 0)
        self.admin_address: tuple[str, int] | None = None

    # ---- life cycle -------------------------------------------------------------------------

    async def _start(self) -> None:
        s = self.settings
        sock = socket.socket(_family(s.listen_host), socket.SOCK_DGRAM)
        try:
            sock.bind((s.listen_host, s.listen_port))
        except OSError:
            sock.close()
            raise
        self._pc5 = _Pc5Socket(sock, self)
        self.pc5_address = self._pc5.local_address
        self._tick_task = asyncio.create_task(self._ticker())
        if s.admin_host is not None:
            await self._start_admin(s.admin_host, s.admin_port)

    async def _start_admin(self, host: str, port: int) -> None:
        if port == 0:
            with socket.socket(_family(host), socket.SOCK_DGRAM) as probe:
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        site = resource.Site()
        site.add_resource([".well-known", "core"], resource.WKCResource(site.get_resources_as_linkheader))
        site.add_resource(["relay", "counters"], CountersResource(self, "counters"))
        site.add_resource(["relay", "links"], CountersResource(self, "links"))
        self._admin = await aiocoap.Context.create_server_context(
            site, bind=(host, port), transports=["udp6"]
        )
        self.admin_address = (host, port)

    async def close(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pc5 is not None:
            self._pc5.close()
            self._pc5 = None
        for key in list(self._uplinks):
            self._close_uplink(key)
        if self._admin is not None:
            await self._admin.shutdown()
            self._admin = None

    async def __aenter__(self) -> RunningRelay:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    def admin_uri(self) -> str | None:
        if self.admin_address is None:
            return None
        host, port = self.admin_address
        host = f"[{host}]" if ":" in host else host
        return f"coap://{host}:{port}/relay/counters"

    # ---- input --------------------------------------------------------------------------------

    def _on_pc5_burst(self, burst: list[tuple[bytes, tuple]]) -> None:
        core, now = self.core, self._loop.time()
        for data, addr in burst:
            try:
                actions = core.on_pc5(addr, data, now)
            except Exception:  # a bug must not stop the relay: log, count, go on
                log.exception("relay core failed on a PC5 datagram from %s", addr)
                core.counters.errors["core"] += 1
                continue
            self._perform(actions)
        self._arm()

    def _on_uplink_burst(self, key: int, burst: list[tuple[bytes, tuple]]) -> None:
        core, now = self.core, self._loop.time()
        for data, _ in burst:
            try:
                actions = core.on_uu(key, data, now)
            except Exception:
                log.exception("relay core failed on a Uu datagram")
                core.counters.errors["core"] += 1
                continue
            self._perform(actions)
            if key not in self._uplinks:
                break
        self._arm()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick)
            self._run_clock(self.core.on_tick, "tick")

    def _run_clock(self, step, what: str) -> None:
        """Perform what the core's ``step(now)`` returns (a bug is logged and counted, the relay goes
        on), then re-arm the timer for its next deadline."""
        try:
            self._perform(step(self._loop.time()))
        except Exception:
            log.exception("relay core failed on a %s", what)
            self.core.counters.errors["core"] += 1
        self._arm()

    def _arm(self) -> None:
        """Wake the core when its next retransmission is due (hop-by-hop), not only every ``tick``."""
        at = self.core.next_deadline()
        if at is None:
            return
        timer = self._timer
        if timer is not None:
            if timer.when() <= at:
                return
            timer.cancel()
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._run_clock(self.core.on_timer, "timer")

    # ---- output -------------------------------------------------------------------------------

    def _perform(self, actions) -> None:
        for action in actions:
            kind = type(action)
            if kind is SendUplink:
                up = self._uplinks.get(action.uplink)
                if up is None:  # its socket could not be opened (e.g. out of file descriptors)
                    self.core.counters.errors["no-uplink-socket"] += 1
                else:
                    up.sendto(action.datagram)
            elif kind is SendDownlink or kind is Answer:
                self._send_pc5(action.endpoint, action.datagram)
            elif kind is SendPc5:
                self._send_pc5(action.endpoint, pc5.encode(action.message))
            elif kind is OpenUplink:
                self._open_uplink(action.uplink, action.source)
            elif kind is CloseUplink:
                self._close_uplink(action.uplink)
            elif kind is Discard:
                log.debug("discarded: %s %s", action.reason, action.detail)

    def _send_pc5(self, endpoint, data: bytes) -> None:
        if self._pc5 is not None:
            self._pc5.sendto(data, endpoint)

    def _open_uplink(self, key: int, source: str | None) -> None:
        """The upstream flow of one PC5 link: its own port (l3) or its own address (l2), SPEC D8.

        If the layer-2 address cannot be bound (a system that does not route all of 127.0.0.0/8 to
        loopback), the flow gets a port of its own instead and the log says so once. If no socket
        can be had at all (out of file descriptors), the error is counted and logged; the link's
        requests then go unanswered until the UE releases it."""
        if key in self._uplinks:
            return
        try:
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
        except OSError as e:
            self.core.counters.errors[f"open-uplink-{type(e).__name__}"] += 1
            log.warning("cannot open an upstream socket for PC5 link %d: %s", key, e)
            return
        try:
            if source is not None:
                try:
                    sock.bind((source, 0))
                except OSError as e:
                    if not self._bind_warned:
                        self._bind_warned = True
                        log.warning(
                            "layer-2 mode: cannot bind %s (%s); remote UEs get an upstream port of their own",
                            source,
                            e,
                        )
            sock.connect(self._server_addr)  # connected: only the server's datagrams are received
        except OSError as e:
            sock.close()
            self.core.counters.errors[f"open-uplink-{type(e).__name__}"] += 1
            log.warning("cannot open an upstream socket for PC5 link %d: %s", key, e)
            return
        self._uplinks[key] = _Uplink(sock, self, key)

    def _close_uplink(self, key: int) -> None:
        up = self._uplinks.pop(key, None)
        if up is not None:
            up.close()

    @property
    def uplink_count(self) -> int:
        return len(self._uplinks)


async def start_relay(settings: RelaySettings) -> RunningRelay:
    """Resolve the CM server, bind the PC5 port and the admin side, and return the running relay."""
    scheme, host, port = parse_server_uri(settings.server_uri)
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host}")
    server_addr = infos[0][4][:2]
    l2_loopback = _is_ipv4_loopback(server_addr[0])
    if settings.mode == MODE_L2 and not l2_loopback:
        log.warning(
            "layer-2 mode: the SCM-S %s is not on IPv4 loopback, so remote UEs cannot get addresses of "
            "their own from 127.0.0.0/8; each gets an upstream port of its own instead",
            server_addr[0],
        )
    config = RelayConfig(
        server_host=host,
        server_port=port,
        server_scheme=scheme,
        server_aliases=frozenset({server_addr[0]}),
        mode=settings.mode,
        max_links=settings.max_links,
        auto_link=settings.auto_link,
        keepalive=settings.keepalive,
        link_timeout=settings.link_timeout,
        max_exchanges=settings.max_exchanges,
        l2_loopback=l2_loopback,
        reliability=settings.reliability,
        ack_timeout=settings.ack_timeout,
        adaptive_rto=settings.adaptive_rto,
    )
    relay = RunningRelay(RelayCore(config), server_addr, settings)
    try:
        await relay._start()
    except BaseException:
        await relay.close()
        raise
    return relay
