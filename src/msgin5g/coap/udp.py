"""The asyncio datagram shell of the CoAP message layer (RFC 7252 over UDP).

:class:`DatagramSocket` is the project's one UDP socket under asyncio: non-blocking, read in bursts
(up to :data:`READ_BURST` datagrams per readiness event, handed over together — asyncio's datagram
transport costs a loop turn per datagram, and the Gateway UE stores a whole burst in one
transaction), sends queued only while the socket buffer is full, ICMP errors reported.

:class:`CoapEndpoint` is a :class:`DatagramSocket` with one pure
:class:`~msgin5g.coap.msglayer.MessageLayer` and does only what the layer's actions say: it sends
datagrams, resolves the futures of client requests (:class:`Deliver` / :class:`Fail`), hands new
requests to ``on_request`` (:class:`Serve`), and keeps one event-loop timer armed for the layer's
earliest deadline.

A datagram the layer should not see — PC5 signalling sharing the socket (:mod:`msgin5g.pc5`) — is
claimed first by ``demux``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from collections.abc import Callable

from .msglayer import (
    Acked,
    Action,
    Addr,
    Confirmed,
    Deliver,
    Fail,
    Incoming,
    MessageLayer,
    Protection,
    Send,
    Serve,
    Unmatched,
)
from .qblock1_client import QBlock1Offer
from .qblock_client import QBlockOffer
from .wire import CoapMessage

log = logging.getLogger(__name__)

#: Datagrams read per readiness event.
READ_BURST = 256
#: Socket buffers: thousands of UEs may send within milliseconds to a relay or Gateway UE (the
#: kernel caps the value at net.core.rmem_max / wmem_max).
SOCKET_BUFFER = 4 << 20


class CoapError(Exception):
    """A request ended without a response (no acknowledgement, RST, deadline, endpoint closed);
    ``cause`` is the message layer's :attr:`~msgin5g.coap.msglayer.Fail.cause` when it has one."""

    def __init__(self, reason: str, cause: str = ""):
        super().__init__(reason)
        self.cause = cause


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class DatagramSocket:
    """One non-blocking UDP socket: ``on_burst(list of (data, addr))`` per readiness event."""

    def __init__(
        self, sock: socket.socket, on_burst: Callable[[list[tuple[bytes, Addr]]], None] | None = None
    ):
        self.sock = sock
        if on_burst is not None:
            self.on_burst = on_burst
        self.loop = asyncio.get_running_loop()
        self.peer: Addr | None = None
        with contextlib.suppress(OSError):
            self.peer = sock.getpeername()[:2]
        self.datagrams_in = 0
        self.datagrams_out = 0
        self._backlog: deque[tuple[bytes, Addr]] = deque()
        self._closed = False
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
        self.loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def bind(cls, host: str, port: int, *args, **kw):
        """A socket listening on ``host:port`` (0: any free port)."""
        sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, *args, **kw)

    @classmethod
    def connect(cls, host: str, port: int, *args, **kw):
        """A socket on a fresh port that talks to ``host:port`` only (its :attr:`peer`); ICMP
        errors about that peer are reported on it (:meth:`on_error`)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return cls(sock, *args, **kw)

    @property
    def local_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self._backlog:
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()

    def on_burst(self, burst: list[tuple[bytes, Addr]]) -> None:  # pragma: no cover — given or overridden
        pass

    def on_error(self, error: OSError) -> None:
        """An error the kernel reported on the socket (an ICMP error about an earlier datagram)."""

    def _readable(self) -> None:
        burst: list[tuple[bytes, Addr]] = []
        for _ in range(READ_BURST):
            try:
                data, addr = self.sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # an ICMP error reported on the (connected) socket
                self.on_error(e)
                if self._closed:
                    return
                continue
            burst.append((data, addr[:2]))
        if burst:
            self.datagrams_in += len(burst)
            try:
                self.on_burst(burst)
            except Exception:  # never let one burst stop the socket
                log.exception("datagrams not handled")

    def sendto(self, data: bytes, addr: Addr | None = None) -> None:
        """Send one datagram (to :attr:`peer` when ``addr`` is None); queued while the buffer is full."""
        if self._closed:
            return
        self.datagrams_out += 1
        if self._backlog:
            self._backlog.append((data, addr))
            return
        try:
            self._raw_send(data, addr)
        except (BlockingIOError, InterruptedError):
            self._backlog.append((data, addr))
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as e:  # e.g. ICMP port unreachable from an earlier datagram
            log.debug("send to %s failed: %s", addr, e)
            self.on_error(e)

    def _raw_send(self, data: bytes, addr: Addr | None) -> None:
        if addr is None or addr == self.peer:
            self.sock.send(data)
        else:
            self.sock.sendto(data, addr)

    def _writable(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                self._raw_send(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("send to %s failed: %s", addr, e)
            self._backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())


class CoapEndpoint(DatagramSocket):
    """One UDP socket driven by a :class:`MessageLayer` (the one datagram shell of the project)."""

    def __init__(
        self,
        sock: socket.socket,
        layer: MessageLayer | None = None,
        *,
        on_request: Callable[[Incoming], None] | None = None,
        on_unmatched: Callable[[CoapMessage, Addr], None] | None = None,
        on_separate: Callable[[int, str | None], None] | None = None,
        on_acked: Callable[[int], None] | None = None,
        demux: Callable[[bytes, Addr], bool] | None = None,
    ):
        self.layer = layer or MessageLayer(server=on_request is not None)
        self.on_request = on_request
        self.on_unmatched = on_unmatched
        self.on_separate = on_separate  # (handle, None | failure reason) of CON separate responses
        self.demux = demux
        self.on_acked = on_acked  # (handle) of a request whose answer follows separately
        self._futures: dict[int, asyncio.Future] = {}
        self._notify: dict[int, Callable[[CoapMessage], None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._in_error = False
        super().__init__(sock)

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._timer is not None:
            self._timer.cancel()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(CoapError("endpoint closed"))
        self._futures.clear()

    # -- client ---------------------------------------------------------------------------------------
    def request(
        self,
        msg: CoapMessage,
        addr: Addr | None = None,
        *,
        timeout: float = 93.0,
        confirmable: bool = True,
        token: bytes | None = None,
        blockwise: bool = False,
        on_notification: Callable[[CoapMessage], None] | None = None,
        qblock: QBlockOffer | None = None,
        qblock1: QBlock1Offer | None = None,
        protection: Protection | None = None,
    ) -> asyncio.Future:
        """Send a request (to :attr:`peer` when ``addr`` is None); the future gets the response or
        :class:`CoapError`. With ``on_notification`` the request registers an observation (RFC
        7641): notifications after the first response go to it until :meth:`cancel`."""
        if self._closed:
            raise CoapError("endpoint closed")
        fut = self.loop.create_future()
        handle, actions = self.layer.request(
            self.loop.time(),
            msg,
            self.peer if addr is None else addr,
            confirmable=confirmable,
            token=token,
            blockwise=blockwise,
            observe=on_notification is not None,
            deadline=self.loop.time() + timeout,
            qblock=qblock,
            qblock1=qblock1,
            protection=protection,
        )
        fut.handle = handle  # type: ignore[attr-defined]
        self._futures[handle] = fut
        if on_notification is not None:
            self._notify[handle] = on_notification
        fut.add_done_callback(lambda f, h=handle: self._done(h, f))
        self.perform(actions)
        return fut

    def _done(self, handle: int, fut: asyncio.Future) -> None:
        if fut.cancelled():  # the caller gave up: so does the layer
            self._futures.pop(handle, None)
            self.cancel(handle)

    def cancel(self, handle: int) -> None:
        """Forget a request or an observation (later answers are strays, RFC 7641 §3.6)."""
        self._notify.pop(handle, None)
        self._futures.pop(handle, None)
        self.layer.cancel(handle)
        self._arm()

    # -- server ---------------------------------------------------------------------------------------
    def accept(self, incoming: Incoming) -> None:
        self.perform(self.layer.accept(self.loop.time(), incoming))

    def respond(self, incoming: Incoming, response: CoapMessage, *, confirmable: bool = True) -> int | None:
        handle, actions = self.layer.respond(self.loop.time(), incoming, response, confirmable=confirmable)
        self.perform(actions)
        return handle

    def respond_to(
        self, addr: Addr, token: bytes, response: CoapMessage, *, confirmable: bool = True
    ) -> int | None:
        handle, actions = self.layer.respond_to(
            self.loop.time(), addr, token, response, confirmable=confirmable
        )
        self.perform(actions)
        return handle

    # -- actions --------------------------------------------------------------------------------------
    def perform(self, actions: list[Action]) -> None:
        for a in actions:
            if type(a) is Send:
                self.sendto(a.data, a.addr)
            elif type(a) is Deliver:
                fut = self._futures.get(a.handle)
                if fut is not None and not fut.done():
                    fut.set_result(a.response)
                    if a.final:
                        del self._futures[a.handle]
                    continue
                notify = self._notify.get(a.handle)
                if notify is not None:
                    notify(a.response)
                if a.final:
                    self._futures.pop(a.handle, None)
                    self._notify.pop(a.handle, None)
            elif type(a) is Fail:
                fut = self._futures.pop(a.handle, None)
                self._notify.pop(a.handle, None)
                if fut is not None and not fut.done():
                    fut.set_exception(CoapError(a.reason, a.cause))
                elif fut is None and self.on_separate is not None:
                    self.on_separate(a.handle, a.reason)
            elif type(a) is Serve:
                if self.on_request is not None:
                    self.on_request(a.request)
            elif type(a) is Confirmed:
                if self.on_separate is not None:
                    self.on_separate(a.handle, None)
            elif type(a) is Acked:
                if self.on_acked is not None:
                    self.on_acked(a.handle)
            elif type(a) is Unmatched and self.on_unmatched is not None:
                self.on_unmatched(a.message, a.addr)
        self._arm()

    def _arm(self) -> None:
        """Keep one timer for the layer's earliest deadline."""
        at = self.layer.next_deadline()
        if at is None or self._closed:
            return
        if self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._timer_at = None
        self.perform(self.layer.on_tick(self.loop.time()))

    # -- socket ---------------------------------------------------------------------------------------
    def on_burst(self, burst: list[tuple[bytes, Addr]]) -> None:
        layer, demux = self.layer, self.demux
        for data, addr in burst:
            try:
                if demux is not None and demux(data, addr):
                    continue
                self.perform(layer.on_datagram(self.loop.time(), data, addr))
            except Exception:  # never let one datagram stop the endpoint
                log.exception("datagram from %s not handled", addr)
            if self._closed:
                return

    def on_error(self, error: OSError) -> None:
        """An ICMP error the kernel reported on a connected socket (ECONNREFUSED: port unreachable,
        RFC 1122 §4.1.3.3): the requests to the peer end at once (:meth:`MessageLayer.on_unreachable`).
        An unconnected socket is not told which peer the error was for: nothing to do."""
        if self.peer is None or not isinstance(error, ConnectionRefusedError) or self._in_error:
            return
        self._in_error = True  # the requests it lets go out may meet the same error: once
        try:
            self.perform(self.layer.on_unreachable(self.loop.time(), self.peer, error.strerror or "refused"))
        finally:
            self._in_error = False
