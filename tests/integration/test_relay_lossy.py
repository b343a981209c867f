"""The Relay UE on lossy links and under garbage (SPEC D8, D13; TS 24.538 6.2.2.1, 6.2.2.2).

Real sockets on loopback: the SCM-S, the relay (in-process, or the ``msgin5g relay`` command where
its log is checked), constrained UEs, and between them :class:`LossyLeg` forwarders that lose a
seeded share of the datagrams on the PC5 leg and on the Uu leg. A leg decides each datagram's fate
from the seed, the leg, the direction, the datagram's bytes and how often those bytes crossed
before, so the pattern of loss depends on what the endpoints send, not on how the event loop
happens to interleave them. No timing assertions: the tests count answers and check their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import signal
import socket
import sys

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from msgin5g import pc5
from msgin5g.model import imei_urn
from msgin5g.outcome import Outcome
from msgin5g.pc5 import Pc5Message, Pc5Type
from msgin5g.relay.shell import RelaySettings, start_relay
from msgin5g.ue.reask import proxy_timed_out
from msgin5g.ue.via_relay import CoapError, ConstrainedUe, config_query_uri, get_request, result_from_response

from .conftest import make_doc

LOSS = 0.3
SEED = 20241129
UES = 20


class LossyLeg:
    """A UDP forwarder towards ``target`` that loses a seeded share of the datagrams each way.

    Every client endpoint gets an upstream socket of its own, so the far side still sees one
    endpoint per client (the relay's link table keys on it, and so does the SCM-S).
    """

    def __init__(self, name: str, target: tuple[str, int], loss: float, seed: int):
        self.name, self.target, self.loss, self.seed = name, target, loss, seed
        self.sent = {"up": 0, "down": 0}
        self.lost = {"up": 0, "down": 0}
        self._copies: dict[tuple[str, bytes], int] = {}
        self._loop = asyncio.get_running_loop()
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.setblocking(False)
        self._listen.bind(("127.0.0.1", 0))
        self.address = self._listen.getsockname()
        self._up: dict[tuple, socket.socket] = {}
        self._loop.add_reader(self._listen.fileno(), self._from_clients)

    def _drops(self, direction: str, data: bytes) -> bool:
        n = self._copies[(direction, data)] = self._copies.get((direction, data), 0) + 1
        digest = hashlib.blake2b(
            f"{self.seed}/{self.name}/{direction}/{n}/".encode() + data, digest_size=8
        ).digest()
        self.sent[direction] += 1
        if int.from_bytes(digest, "big") / 2**64 < self.loss:
            self.lost[direction] += 1
            return True
        return False

    def _from_clients(self) -> None:
        while True:
            try:
                data, addr = self._listen.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            sock = self._up.get(addr)
            if sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(self.target)
                self._up[addr] = sock
                self._loop.add_reader(sock.fileno(), self._from_target, addr, sock)
            if not self._drops("up", data):
                with contextlib.suppress(OSError):
                    sock.send(data)

    def _from_target(self, addr, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not self._drops("down", data):
                with contextlib.suppress(OSError):
                    self._listen.sendto(data, addr)

    def close(self) -> None:
        for sock in self._up.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._loop.remove_reader(self._listen.fileno())
        self._listen.close()


@pytest.fixture
async def legs():
    made: list[LossyLeg] = []

    def make(name, target, loss=LOSS, seed=SEED) -> LossyLeg:
        leg = LossyLeg(name, target, loss, seed)
        made.append(leg)
        return leg

    yield make
    for leg in made:
        leg.close()


class UeRun:
    """What one constrained UE saw: its configuration answers, and how hard it had to try."""

    def __init__(self) -> None:
        self.configs: list[str] = []  # ueServiceId of every configuration the UE was given
        self.link_attempts = 0
        self.exchanges = 0
        self.ignored = 0  # answers to nothing the UE had outstanding (duplicates, strays)


async def configure_one(pc5_addr, api_uri: str, index: int, run: UeRun) -> None:
    """One constrained UE (6.2.2.2): establish the link, ask until answered, release the link.

    The UE is an RFC 7252 client with a shorter ACK_TIMEOUT than the default (0.5 s instead of 2 s,
    so that the test takes seconds) and the default MAX_RETRANSMIT (4); when all transmissions of
    an exchange go unanswered, or the relay answers 5.04 (its own copies on Uu all went
    unanswered), it asks again with a new exchange, as the project's UE does (ue/reask.py).
    """
    ue = ConstrainedUe(
        *pc5_addr, l2_id=index + 1, user_info=f"ue{index}", ack_timeout=0.5, rng=random.Random(SEED + index)
    )
    await ue.open()
    try:
        while not ue.linked:
            run.link_attempts += 1
            with contextlib.suppress(TimeoutError):
                await ue.establish_link(timeout=8.0)
        uri = config_query_uri(api_uri, "msgin5g", imei_urn("35209900", index))
        while not run.configs:
            run.exchanges += 1
            try:
                response = await ue.request(get_request(uri, via_proxy=True), timeout=25.0)
            except CoapError:
                continue  # every transmission lost: a new exchange
            if proxy_timed_out(int(response.code), protected=False):
                continue  # the relay's 5.04: its copies to the SCM-S were all lost (ue/reask.py)
            result = result_from_response(response)
            assert result.outcome is Outcome.CONFIGURED, result.detail
            run.configs.append(result.config.ue_service_id)
        await asyncio.sleep(2.0)  # late copies of the answer (a duplicate would show up as ignored)
    finally:
        run.ignored = ue.ignored
        with contextlib.suppress(TimeoutError, CoapError):
            await ue.release_link(timeout=3.0)
        await ue.close(release=False)


@pytest.mark.parametrize("mode", ["l3", "l2"])
async def test_every_ue_configured_exactly_once_at_30_percent_loss_on_both_legs(scm_server, legs, mode):
    srv = scm_server
    for i in range(UES):
        srv.store.create("msgin5g", make_doc(uris=[imei_urn("35209900", i)], service_id=f"ue{i}@lossy"))
    uu = legs("uu", ("127.0.0.1", srv.port))
    relay = await start_relay(
        RelaySettings(
            server_uri=f"coap://127.0.0.1:{uu.address[1]}",
            listen_port=0,
            admin_host=None,
            mode=mode,
            max_links=UES,
        )
    )
    try:
        pc5_leg = legs("pc5", relay.pc5_address)
        runs = [UeRun() for _ in range(UES)]
        api = f"coap://127.0.0.1:{uu.address[1]}"
        await asyncio.wait_for(
            asyncio.gather(*(configure_one(pc5_leg.address, api, i, runs[i]) for i in range(UES))), 240
        )
        counters = relay.core.counters
    finally:
        await relay.close()
    # every UE exactly once, with its own configuration (written down: ue<i>@lossy), no duplicates
    assert [r.configs for r in runs] == [[f"ue{i}@lossy"] for i in range(UES)]
    assert [r.ignored for r in runs] == [0] * UES
    assert counters.errors.get("core", 0) == 0
    # the loss really happened on both legs, and UE retransmissions went up to the SCM-S
    assert pc5_leg.lost["up"] > 0 and pc5_leg.lost["down"] > 0 and uu.lost["up"] > 0 and uu.lost["down"] > 0
    assert counters.retransmitted_up > 0
    print(
        f"\n[{mode}] {UES} UEs at {LOSS:.0%} loss: exchanges {sum(r.exchanges for r in runs)}, "
        f"link attempts {sum(r.link_attempts for r in runs)}; PC5 sent/lost up {pc5_leg.sent['up']}/"
        f"{pc5_leg.lost['up']} down {pc5_leg.sent['down']}/{pc5_leg.lost['down']}; Uu sent/lost up "
        f"{uu.sent['up']}/{uu.lost['up']} down {uu.sent['down']}/{uu.lost['down']}; relay relayed_up "
        f"{counters.relayed_up}, retransmitted_up {counters.retransmitted_up}, relayed_down "
        f"{counters.relayed_down}, ended {dict(counters.exchanges_ended)}"
    )


# ---- one UE's loss does not hold up another -------------------------------------------------------


class BlackholeServer:
    """A bare CoAP server that never receives UE A's request (every copy is lost on its way) and
    answers everything else at once with 2.05; it records the order of what it saw."""

    def __init__(self, lost_token: bytes | None = None):
        self.lost_token = lost_token  # None: nothing is ever answered
        self.seen: list[tuple[bytes, int]] = []  # (token, MID) of every request datagram, in order
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._on_datagram)

    def _on_datagram(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return
            req = Message.decode(data)
            self.seen.append((req.token, req.mid))
            if self.lost_token is None or req.token == self.lost_token:
                continue
            answer = Message(code=Code.CONTENT, payload=b"ok:" + req.token)
            answer.mtype, answer.mid, answer.token = Type.ACK, req.mid, req.token
            self.sock.sendto(answer.encode(), addr)

    def close(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _get(mid: int, token: bytes, port: int, mtype: Type = Type.CON, path: str = "x") -> bytes:
    m = Message(code=Code.GET, proxy_uri=f"coap://127.0.0.1:{port}/su-uc/v1/{path}")
    m.mtype, m.mid, m.token = mtype, mid, token
    return m.encode()


async def _linked_socket(relay, l2id: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.bind(("127.0.0.1", 0))
    s.connect(relay.pc5_address)
    s.send(pc5.encode(Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 1, l2id=l2id, user_info="u")))
    loop = asyncio.get_running_loop()
    accept = pc5.decode(await asyncio.wait_for(loop.sock_recv(s, 2048), 5))
    assert accept.type == Pc5Type.LINK_ESTABLISHMENT_ACCEPT
    return s


@pytest.mark.parametrize("reliability", ["hop", "end-to-end"])
@pytest.mark.parametrize("mode", ["l3", "l2"])
async def test_one_ues_lost_request_does_not_hold_up_another(mode, reliability):
    """UE A's request never reaches an answer; while A keeps retransmitting it, UE B asks five
    times and is answered five times. Before SPEC D8's per-UE flows, a layer-3 relay queued B
    behind A's outstanding request (NSTART 1 on one shared flow) for up to 93 s."""
    server = BlackholeServer(lost_token=b"A")
    relay = await start_relay(
        RelaySettings(
            server_uri=f"coap://127.0.0.1:{server.port}",
            listen_port=0,
            admin_host=None,
            mode=mode,
            reliability=reliability,
        )
    )
    loop = asyncio.get_running_loop()
    a = b = None
    try:
        a = await _linked_socket(relay, 1)
        b = await _linked_socket(relay, 2)
        a.send(_get(100, b"A", server.port))
        b_answers = []
        for i in range(5):
            a.send(_get(100, b"A", server.port))  # A's retransmission (same MID): goes up too
            b.send(_get(200 + i, b"B%d" % i, server.port))
            answer = Message.decode(await asyncio.wait_for(loop.sock_recv(b, 2048), 5))
            b_answers.append((answer.mid, answer.token, answer.payload))
        assert b_answers == [(200 + i, b"B%d" % i, b"ok:B%d" % i) for i in range(5)]
        if reliability == "end-to-end":
            # every copy A sent reached the SCM-S with A's MID: the server, not the relay, deduplicates
            assert [s for s in server.seen if s[0] == b"A"] == [(b"A", 100)] * 6
        else:
            # hop-by-hop: A's copies end at the relay, which sends A's request up itself — once, and
            # again with RFC 7252's back-off (from 2-3 s on), always with A's MID — and acknowledged A
            assert list(dict.fromkeys(s for s in server.seen if s[0] == b"A")) == [(b"A", 100)]
            assert relay.core.counters.duplicates_absorbed >= 5
        got = []
        with contextlib.suppress(TimeoutError):  # and A got no answer (nothing answered it) …
            while True:
                got.append(Message.decode(await asyncio.wait_for(loop.sock_recv(a, 2048), 0.3)))
        # … only, hop-by-hop, the relay's empty ACKs of its copies (RFC 7252 §5.2.2, §4.5)
        assert {(m.mtype, m.code, m.mid) for m in got} <= {(Type.ACK, Code.EMPTY, 100)}
        assert bool(got) is (reliability == "hop")
    finally:
        for s in (a, b):
            if s is not None:
                s.close()
        await relay.close()
        server.close()


async def test_open_requests_are_bounded_with_5_03_and_max_age_and_superseded_nons_leave_no_trace():
    """SPEC D13: ten NON requests reusing one token occupy one place, not ten; when the places are
    all taken the open NON exchange yields its place; a UE with ``max_exchanges`` (2) CON requests
    open gets 5.03 + Max-Age + problem details for the next."""
    server = BlackholeServer()  # answers nothing: every exchange stays open
    relay = await start_relay(
        RelaySettings(
            server_uri=f"coap://127.0.0.1:{server.port}", listen_port=0, admin_host=None, max_exchanges=2
        )
    )
    loop = asyncio.get_running_loop()
    ue = None
    try:
        ue = await _linked_socket(relay, 1)
        for i in range(10):
            ue.send(_get(300 + i, b"n", server.port, Type.NON))
        # three different requests (the same one again would be a UE asking again, SPEC D13)
        ue.send(_get(400, b"c", server.port, path="c"))
        ue.send(_get(401, b"d", server.port, path="d"))  # places full: the open NON yields to "d"
        ue.send(_get(402, b"e", server.port, path="e"))  # two CONs open: refused by the relay itself
        answer = Message.decode(await asyncio.wait_for(loop.sock_recv(ue, 2048), 5))
        while answer.code == Code.EMPTY:  # the relay's empty ACKs of "c" and "d" (hop-by-hop)
            assert answer.mtype == Type.ACK and answer.mid in (400, 401)
            answer = Message.decode(await asyncio.wait_for(loop.sock_recv(ue, 2048), 5))
        assert (answer.code, answer.mtype, answer.mid, answer.token) == (
            Code.SERVICE_UNAVAILABLE,
            Type.ACK,
            402,
            b"e",
        )
        assert answer.opt.content_format == 257 and 1 <= answer.opt.max_age <= 93
        assert cbor2.loads(answer.payload)["cause"] == "TOO_MANY_OPEN_REQUESTS"
        # "e" did not go up; each request went up (the relay's own copies of "c" and "d", hop by
        # hop after 2-3 s, carry the same message ID and are the same request)
        assert [t for t, _ in dict.fromkeys(server.seen)] == [b"n"] * 10 + [b"c", b"d"]
        snap = relay.core.snapshot()
        assert snap["links"][0]["openExchanges"] == 2
        assert snap["counters"]["exchanges_ended"] == {"superseded": 9, "yielded": 1}
    finally:
        if ue is not None:
            ue.close()
        await relay.close()
        server.close()


# ---- a flood of garbage, then valid requests (issue 13 robustness) ---------------------------------


def _mutations(rng: random.Random, seeds: list[bytes], count: int):
    """Seeded garbage: valid datagrams with bytes flipped, cut, stretched, or replaced outright."""
    for _ in range(count):
        base = bytearray(rng.choice(seeds))
        kind = rng.randrange(5)
        if kind == 0 and base:
            for _ in range(rng.randrange(1, 4)):
                base[rng.randrange(len(base))] = rng.randrange(256)
        elif kind == 1:
            base = base[: rng.randrange(len(base) + 1)]
        elif kind == 2:
            base += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        elif kind == 3:
            base = bytearray(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120))))
        else:  # a well-formed header with random options and payload
            base = bytearray(base[:4] + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60))))
        yield bytes(base)


@pytest.mark.parametrize("mode", ["l3", "l2"])
async def test_fuzz_flood_then_valid_requests_are_answered_without_traceback(scm_server, tmp_path, mode):
    srv = scm_server
    srv.store.create("msgin5g", make_doc(uris=[imei_urn("35209900", 1)], service_id="after-flood@x"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        pc5_port = probe.getsockname()[1]
    log_path = tmp_path / "relay.log"
    with open(log_path, "wb") as log:
        relay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "msgin5g.cli", "relay", "--listen", f"127.0.0.1:{pc5_port}",
            "--server", f"coap://127.0.0.1:{srv.port}", "--mode", mode, "--admin", "none", "-v",
            stdout=log, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    fuzzers: list[socket.socket] = []
    try:
        for _ in range(100):  # until the relay listens
            if b"listening on" in log_path.read_bytes():
                break
            await asyncio.sleep(0.1)
        relay_addr = ("127.0.0.1", pc5_port)
        rng = random.Random(SEED)
        uri = config_query_uri(f"coap://127.0.0.1:{srv.port}", "msgin5g", imei_urn("35209900", 1))
        valid = get_request(uri, via_proxy=True)
        valid.mtype, valid.mid, valid.token = Type.CON, 7, b"tok"
        seeds = [
            valid.encode(),
            pc5.encode(Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 3, l2id=5, user_info="f")),
            pc5.encode(Pc5Message(Pc5Type.LINK_KEEPALIVE_REQUEST, 4, l2id=5, counter=1)),
            pc5.encode(Pc5Message(Pc5Type.LINK_RELEASE_REQUEST, 5, l2id=5, cause=2)),
            bytes.fromhex("60000001"),  # empty ACK
            bytes.fromhex("70000002"),  # RST
        ]
        for i in range(4):  # three linked fuzzers and one without a link
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            s.connect(relay_addr)
            fuzzers.append(s)
            if i < 3:
                s.send(
                    pc5.encode(
                        Pc5Message(Pc5Type.LINK_ESTABLISHMENT_REQUEST, 1, l2id=0x100 + i, user_info="z")
                    )
                )
        for n, data in enumerate(_mutations(rng, seeds, 4000)):
            with contextlib.suppress(BlockingIOError):
                fuzzers[n % len(fuzzers)].send(data)
            if n % 200 == 0:
                await asyncio.sleep(0.01)  # let the relay (and the SCM-S behind it) read
        await asyncio.sleep(0.5)
        # valid requests afterwards: a fresh UE, twice in a row, each answered correctly
        for attempt in range(2):
            ue = ConstrainedUe(*relay_addr, l2_id=0x42 + attempt, rng=random.Random(attempt))
            await ue.open()
            try:
                await ue.establish_link()
                response = await ue.request(get_request(uri, via_proxy=True), timeout=10)
                result = result_from_response(response)
                assert result.outcome is Outcome.CONFIGURED and result.config.ue_service_id == "after-flood@x"
                assert ue.ignored == 0
            finally:
                await ue.close(release=True)
        assert relay.returncode is None  # still running
    finally:
        for s in fuzzers:
            s.close()
        with contextlib.suppress(ProcessLookupError):
            relay.send_signal(signal.SIGINT)
        await asyncio.wait_for(relay.wait(), 20)
    log_text = log_path.read_text(errors="replace")
    assert "Traceback" not in log_text and "relay core failed" not in log_text, log_text[-3000:]
    counters = json.loads(log_text.split("relay counters at shutdown:", 1)[1])
    assert counters["errors"] == {} and counters["dropped_malformed"] > 0
    assert counters["relayed_up"] >= 2 and counters["relayed_down"] >= 2
