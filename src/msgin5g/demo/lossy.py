"""The demo's wire: a small forwarder on every leg, which counts what crosses it and loses a share
of the datagrams (``msgin5g demo --loss P``).

The demo inserts one *leg* between each pair of actors that a radio (or the operator's network)
would separate: the PC5 side of the Relay UE, the MSGin5G-6 side of the Gateway UE, and the Uu
side of the relay, of the gateway's configuration management client and of the directly
attached UEs. Sitting on the wire, a leg measures what the endpoints really send — datagrams and
bytes each way — which is how the brief says bulk configuration is to be judged (SPEC D7: Uu
messages and bytes against per-UE configuration).

* **UDP legs** forward each datagram with probability ``1 - loss``, independently per datagram
  and direction — on every leg, both ways. The decision is seeded (``--seed``) and
  deterministic: a keyed hash of the leg, the direction, the datagram's bytes and how often the
  same bytes crossed before (so a retransmission gets a draw of its own), never of the arrival
  order, so the same datagrams meet the same fate however the endpoints' traffic interleaves.
  Every client endpoint gets an upstream socket of its own, so the far side still sees one
  endpoint per client (the relay's PC5 link table and the gateway key on it, SPEC D8,
  D9). Counters are of datagrams *sent* by the endpoints (lost ones included, they used the
  radio) and of those lost.
* **TCP legs** (``coap+tcp``, RFC 8323) are reliable by definition: nothing is lost (TCP would
  make a lost segment good itself, a delay rather than a loss the CoAP layer sees); the leg
  counts bytes and CoAP messages, the latter by following RFC 8323 §3.2 framing.

Pure parts (:class:`LossModel`, :class:`TcpFramer`) are unit-tested; the rest is a thin asyncio
shell. The process is driven by the demo over stdin/stdout, one line each way::

    udp NAME HOST PORT   →  ok NAME 127.0.0.1 LISTEN_PORT     (new leg towards HOST:PORT)
    tcp NAME HOST PORT   →  ok NAME 127.0.0.1 LISTEN_PORT
    stats                →  stats {"NAME": {"up": [datagrams, bytes], ...}, ...}

End of input (the demo has gone, however it went) ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time
from dataclasses import dataclass, field

IDLE_MAPPING = 120.0  # s without traffic after which a client's upstream socket is closed
SOCKET_BUFFER = 4 * 1024 * 1024
RECV_BATCH = 256


def raise_fd_limit(ceiling: int = 65_536) -> int:
    """Raise the soft limit of open files to the hard limit (at most ``ceiling``) — every client of
    a leg has a socket of its own — and return the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(ceiling, hard if hard != resource.RLIM_INFINITY else ceiling)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return min(soft, ceiling) if soft != resource.RLIM_INFINITY else ceiling
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    return soft


class LossModel:
    """Loss of each datagram with probability ``loss``, independently (Bernoulli), decided by a
    keyed hash (BLAKE2b, key = the seed) of the datagram and of how many times the same bytes
    were seen before. Pure and deterministic: the same seed and the same datagrams give the same
    losses, in any order and interleaving."""

    REMEMBERED = 100_000  # distinct datagrams whose repetitions are counted (oldest forgotten first)

    def __init__(self, loss: float, seed: int | str | None = None):
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss must be in [0, 1)")
        self.loss = loss
        self._key = hashlib.blake2b(str(seed).encode(), digest_size=32).digest()
        self._seen: dict[bytes, int] = {}

    def lost(self, datagram: bytes) -> bool:
        if self.loss <= 0.0:
            return False
        digest = hashlib.blake2b(datagram, digest_size=16, key=self._key).digest()
        n = self._seen.pop(digest, 0)
        self._seen[digest] = n + 1  # re-inserted: the dict keeps the most recent last
        if len(self._seen) > self.REMEMBERED:
            del self._seen[next(iter(self._seen))]
        draw = hashlib.blake2b(digest + n.to_bytes(4, "big"), digest_size=8, key=self._key).digest()
        return int.from_bytes(draw, "big") < self.loss * 2**64


class TcpFramer:
    """Counts the CoAP messages of one direction of a CoAP-over-TCP stream (RFC 8323 §3.2).

    A message is ``Len|TKL`` (one byte), an extended length of 0, 1, 2 or 4 bytes (Len 13, 14,
    15 add 13, 269, 65805), the code, the token, then options and payload of length Len.
    """

    _EXT = {13: (1, 13), 14: (2, 269), 15: (4, 65805)}

    def __init__(self) -> None:
        self._buf = bytearray()
        self.messages = 0

    def feed(self, data: bytes) -> int:
        """Add stream bytes; returns how many messages they completed."""
        self._buf += data
        done = 0
        while self._buf:
            first = self._buf[0]
            length, tkl = first >> 4, first & 0x0F
            ext_len, offset = self._EXT.get(length, (0, 0))
            head = 1 + ext_len
            if len(self._buf) < head:
                break
            if ext_len:
                length = int.from_bytes(self._buf[1:head], "big") + offset
            total = head + 1 + tkl + length
            if len(self._buf) < total:
                break
            del self._buf[:total]
            done += 1
        self.messages += done
        return done


@dataclass
class Direction:
    datagrams: int = 0
    bytes: int = 0
    lost: int = 0

    def as_list(self) -> list[int]:
        return [self.datagrams, self.bytes, self.lost]


@dataclass
class LegCounters:
    """``up`` = towards the leg's target (e.g. the SCM-S), ``down`` = back to the clients."""

    up: Direction = field(default_factory=Direction)
    down: Direction = field(default_factory=Direction)
    clients: int = 0

    def as_dict(self) -> dict:
        return {"up": self.up.as_list(), "down": self.down.as_list(), "clients": self.clients}


def _udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    return s


class UdpLeg:
    """A lossy UDP forwarder: one listening socket, one upstream socket per client endpoint."""

    def __init__(
        self,
        name: str,
        target: tuple[str, int],
        loss: float,
        seed: int | str,
        host: str = "127.0.0.1",
        max_clients: int = 10_000,
    ):
        self.name = name
        self.target = target
        # each direction its own draws: towards the target (up) and back to the clients (down)
        self.loss = {
            "up": LossModel(loss, f"{seed}/{name}/up"),
            "down": LossModel(loss, f"{seed}/{name}/down"),
        }
        self.max_clients = max_clients  # beyond it the least recently active client's socket is closed
        self.counters = LegCounters()
        self._loop = asyncio.get_running_loop()
        self._listen = _udp_socket()
        self._listen.bind((host, 0))
        self.address = self._listen.getsockname()[:2]
        self._up: dict[tuple, tuple[socket.socket, list[float]]] = {}
        self._loop.add_reader(self._listen.fileno(), self._from_clients)

    def _from_clients(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                data, addr = self._listen.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            entry = self._up.pop(addr, None)  # re-inserted below: the dict keeps activity order
            if entry is None:
                if len(self._up) >= self.max_clients:
                    self._close(next(iter(self._up)))
                sock = _udp_socket()
                sock.connect(self.target)
                entry = (sock, [time.monotonic()])
                self.counters.clients += 1
                self._loop.add_reader(sock.fileno(), self._from_target, addr, sock)
            self._up[addr] = entry
            entry[1][0] = time.monotonic()
            self._forward("up", data, lambda d, s=entry[0]: s.send(d))

    def _from_target(self, addr: tuple, sock: socket.socket) -> None:
        for _ in range(RECV_BATCH):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP from the target (not listening yet or gone)
                return
            self._forward("down", data, lambda d: self._listen.sendto(d, addr))

    def _forward(self, way: str, data: bytes, send) -> None:
        direction: Direction = getattr(self.counters, way)
        direction.datagrams += 1
        direction.bytes += len(data)
        if self.loss[way].lost(data):
            direction.lost += 1
            return
        with contextlib.suppress(OSError):  # a full buffer is loss too
            send(data)

    def _close(self, addr: tuple) -> None:
        sock, _ = self._up.pop(addr)
        self._loop.remove_reader(sock.fileno())
        sock.close()

    def sweep(self, now: float) -> None:
        for addr, (_, seen) in list(self._up.items()):
            if now - seen[0] > IDLE_MAPPING:
                self._close(addr)

    def close(self) -> None:
        for sock, _ in self._up.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._up.clear()
        self._loop.remove_reader(self._listen.fileno())
        self._listen.close()


class TcpLeg:
    """A TCP forwarder that counts bytes and CoAP messages (RFC 8323) each way; loses nothing."""

    def __init__(self, name: str, target: tuple[str, int]):
        self.name = name
        self.target = target
        self.counters = LegCounters()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self, host: str = "127.0.0.1") -> TcpLeg:
        self._server = await asyncio.start_server(self._client, host, 0)
        self.address = self._server.sockets[0].getsockname()[:2]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters.clients += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, self.counters.up)),
            asyncio.ensure_future(self._pump(up_reader, writer, self.counters.down)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pumps:
                t.cancel()
                self._tasks.discard(t)
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Direction) -> None:
        framer = TcpFramer()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            direction.bytes += len(data)
            direction.datagrams += framer.feed(data)
            writer.write(data)
            await writer.drain()

    def sweep(self, now: float) -> None:
        pass

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._server is not None:
            self._server.close()


async def serve(loss: float, seed: int) -> None:
    """Run legs as the demo asks on stdin until it closes stdin."""
    loop = asyncio.get_running_loop()
    legs: dict[str, UdpLeg | TcpLeg] = {}
    max_clients = max(64, raise_fd_limit() // 2 - 64)  # two legs (PC5, MSGin5G-6) see many clients
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(10)
            for leg in legs.values():
                leg.sweep(time.monotonic())

    sweep_task = asyncio.ensure_future(sweeper())

    def reply(text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    try:
        while line := (await reader.readline()).decode():
            words = line.split()
            if not words:
                continue
            try:
                if words[0] in ("udp", "tcp") and len(words) == 4:
                    name, host, port = words[1], words[2], int(words[3])
                    if words[0] == "udp":
                        leg: UdpLeg | TcpLeg = UdpLeg(name, (host, port), loss, seed, max_clients=max_clients)
                    else:
                        leg = await TcpLeg(name, (host, port)).start()
                    legs[name] = leg
                    reply(f"ok {name} {leg.address[0]} {leg.address[1]}")
                elif words[0] == "stats":
                    reply("stats " + json.dumps({n: leg.counters.as_dict() for n, leg in legs.items()}))
                else:
                    reply(f"error unknown command {line.strip()!r}")
            except (OSError, ValueError) as e:
                reply(f"error {e}")
    finally:
        sweep_task.cancel()
        for leg in legs.values():
            leg.close()


def main(argv: list[str] | None = None) -> None:
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m msgin5g.demo.lossy", description=__doc__.split("\n")[0])
    parser.add_argument("--loss", type=float, default=0.0, help="share of UDP datagrams lost, 0 ≤ P < 1")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the demo stops us by closing stdin (or SIGTERM)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.loss, args.seed))


if __name__ == "__main__":
    main()
