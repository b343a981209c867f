"""Bulk configuration through a Gateway UE vs the same UEs one by one (TS 24.538 6.2.2.x; SPEC D7, D9).

One run, loopback only. Four processes, so that each has a CPU of its own as far as the machine
allows:

* the SCM-S (``start_server``, SQLite, UDP+TCP), provisioned with N constrained UEs: 90 % by one
  IMEI-range document with per-UE placeholders (SPEC D5), 1 % of those also by a document of their
  own; 5 % without configuration (4.04); 5 % outside the gateway's coverage (4.03);
* a **Uu tap** between gateway and SCM-S (``--tap`` mode of this script): a UDP forwarder with one
  upstream socket per gateway endpoint, and a TCP forwarder that parses RFC 8323 framing. It counts
  what crosses the gateway's upstream side — messages and bytes each way, CoAP headers included,
  CSM/ping and retransmissions included. It sits in the path in every mode alike;
* the Gateway UE, the real CLI (``msgin5g gateway``), freshly started for each measurement;
* this driver, with the N constrained UEs (:class:`msgin5g.testing.swarm.UeSwarm`: real CoAP
  requests, each UE its own token, a bounded window so that no socket buffer overflows).

For each Uu transport (UDP, TCP) the same UEs are configured with ``--bulk`` and with
``--no-bulk`` (every request forwarded on its own): wall time from the first request to the last
answer, Uu messages and bytes each way, bytes per configured UE, and the floor — the UE IDs going
up, the configurations (each UE's answer payload) coming down. Every answer is checked (code and
the UE's own ``ueServiceId``). ``--big`` adds one bulk run over TCP with many more UEs.

Each mode runs ``--rounds`` times and the fastest run is reported (the counts do not vary).

``--gateway-src DIR`` runs the gateway from another tree's ``src`` (e.g. a baseline commit checked
out with ``git worktree add``) with this tree's UEs, tap and SCM-S.

Usage: ``python bench/bench_gateway.py [--ues 10000] [--big 100000] [--rounds 3] [--uu-delay-ms 0 10]``
(``--json`` for the report alone).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import socket
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path

import cbor2

from msgin5g.model import imei_urn

try:
    from msgin5g.testing.swarm import SwarmRequest, UeSwarm
except ImportError:  # an older tree (a baseline run in its own worktree)
    from msgin5g.gateway.swarm import SwarmRequest, UeSwarm

TAC = "35209900"
GATEWAY_SRC = ""  # --gateway-src
DOMAIN = "msgin5g.example"

SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from msgin5g.server.app import ServerConfig, start_server
    from msgin5g.server.service import ServiceConfig

    async def main(port, db, bulk_max):
        srv = await start_server(ServerConfig(port=port, db_url=db, insecure=True,
                                              service=ServiceConfig(service_domains={"msgin5g": sys.argv[4]},
                                                                    bulk_max_ues=bulk_max)))
        setup = json.loads(sys.stdin.read())
        srv.store.import_docs("msgin5g", setup["docs"])
        srv.store.set_gateway("gw1", setup["coverage"])
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
    """
)


# ---------------------------------------------------------------------------------------------
# The Uu tap (runs in its own process: ``bench_gateway.py --tap LISTEN_PORT SERVER_PORT``)
# ---------------------------------------------------------------------------------------------
class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.c = {"up_msgs": 0, "up_bytes": 0, "down_msgs": 0, "down_bytes": 0}

    def add(self, direction: str, msgs: int, nbytes: int) -> None:
        self.c[f"{direction}_msgs"] += msgs
        self.c[f"{direction}_bytes"] += nbytes


def rfc8323_frames(buf: bytearray) -> int:
    """Consume complete RFC 8323 §3.2 frames from ``buf``; return how many."""
    n = 0
    while buf:
        length, tkl = buf[0] >> 4, buf[0] & 0x0F
        ext = {13: 1, 14: 2, 15: 4}.get(length, 0)
        if len(buf) < 1 + ext:
            break
        if ext:
            extra = int.from_bytes(buf[1 : 1 + ext], "big")
            length = extra + {1: 13, 2: 269, 4: 65805}[ext]
        total = 1 + ext + 1 + tkl + length
        if len(buf) < total:
            break
        del buf[:total]
        n += 1
    return n


class Delay:
    """Deliver callbacks ``delay`` seconds late, in order (one FIFO, one timer)."""

    def __init__(self, delay: float):
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.fifo: deque = deque()
        self.armed = False

    def __call__(self, fn, *args) -> None:
        if self.delay <= 0:
            fn(*args)
            return
        self.fifo.append((self.loop.time() + self.delay, fn, args))
        if not self.armed:
            self.armed = True
            self.loop.call_at(self.fifo[0][0], self._run)

    def _run(self) -> None:
        now = self.loop.time()
        while self.fifo and self.fifo[0][0] <= now:
            _, fn, args = self.fifo.popleft()
            fn(*args)
        self.armed = bool(self.fifo)
        if self.armed:
            self.loop.call_at(self.fifo[0][0], self._run)


async def run_tap(listen_port: int, server_port: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()
    server = ("127.0.0.1", server_port)
    later = Delay(delay_ms / 1000.0)  # one-way Uu latency, both directions

    # UDP: one upstream socket per gateway endpoint, so the SCM-S sees each endpoint separately
    class Up(asyncio.DatagramProtocol):
        def __init__(self, client):
            self.client = client

        def datagram_received(self, data, addr):
            counters.add("down", 1, len(data))
            later(front.sendto, data, self.client)

    uplinks: dict = {}
    tasks: set = set()

    class Front(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            counters.add("up", 1, len(data))
            up = uplinks.get(addr)
            if up is None:
                uplinks[addr] = up = []
                task = loop.create_task(open_uplink(addr, data))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif isinstance(up, list):
                up.append(data)
            else:
                later(up.sendto, data)

    async def open_uplink(addr, first):
        t, _ = await loop.create_datagram_endpoint(lambda: Up(addr), remote_addr=server)
        queued = uplinks[addr]
        uplinks[addr] = t
        later(t.sendto, first)
        for d in queued:
            later(t.sendto, d)

    front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", listen_port))
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        front.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)

    # TCP: byte pump with frame counting each way
    async def pump(reader, writer, direction):
        buf = bytearray()
        try:
            while data := await reader.read(1 << 16):
                buf += data
                counters.add(direction, rfc8323_frames(buf), len(data))
                later(writer.write, data)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            later(writer.close)

    async def on_conn(reader, writer):
        try:
            ur, uw = await asyncio.open_connection(*server)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, uw, "up"), pump(ur, writer, "down"))

    await asyncio.start_server(on_conn, "127.0.0.1", listen_port)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = line.decode().strip()
        if cmd == "reset":
            counters.reset()
            print("ok", flush=True)
        elif cmd == "stats":
            print(json.dumps(counters.c), flush=True)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError("no free port")


TAC_FLEET, TAC_NEW, TAC_FOREIGN = TAC, "35209901", "35209902"


def ue_class(i: int) -> str:
    """90 % provisioned, 5 % without configuration (4.04), 5 % outside the gateway's coverage (4.03)."""
    r = i % 20
    return "fleet" if r < 18 else "new" if r == 18 else "foreign"


def ue_uri(i: int) -> str:
    tac = {"fleet": TAC_FLEET, "new": TAC_NEW, "foreign": TAC_FOREIGN}[ue_class(i)]
    return imei_urn(tac, i)


def own_doc(i: int) -> bool:
    return i % 100 == 42  # also a document of its own (more specific than the fleet's, SPEC D4)


def on_network(service_id: str) -> list[dict]:
    cfg = {"msgin5gServerAddress": "coap://msgin5g.example", "ueServiceId": service_id}
    return [{"configType": "ON_NETWORK", "configData": json.dumps(cfg)}]


def setup(n: int) -> dict:
    """Documents and the gateway registry for UEs 0..n-1 (the same for any smaller n)."""
    docs = [
        {  # the fleet: one document for the whole TAC, one UE Service ID per UE (SPEC D5)
            "configName": "fleet",
            "valServiceDomain": DOMAIN,
            "valUeIds": {"imeiRanges": [{"tac": TAC_FLEET}]},
            "ueConfigs": on_network("sensor-{snr}@msgin5g.example"),
        },
        {  # configured, but not for this gateway to fetch
            "valServiceDomain": DOMAIN,
            "valUeIds": {"imeiRanges": [{"tac": TAC_FOREIGN}]},
            "ueConfigs": on_network("foreign-{snr}@msgin5g.example"),
        },
    ]
    for i in range(n):
        if own_doc(i):
            own = on_network(f"own-{i}@msgin5g.example")
            docs.append({"valServiceDomain": DOMAIN, "valUeIds": {"uris": [ue_uri(i)]}, "ueConfigs": own})
    coverage = {"imeiRanges": [{"tac": TAC_FLEET}, {"tac": TAC_NEW}]}
    return {"docs": docs, "coverage": coverage}


def check(i: int, code: int, payload: bytes) -> bool:
    cls = ue_class(i)
    if cls != "fleet":
        return code == (0x84 if cls == "new" else 0x83)
    if code != 0x45:
        return False
    doc = cbor2.loads(payload)[0]
    sid = json.loads(doc["ueConfigs"][0]["configData"])["ueServiceId"]
    return sid == (f"own-{i}@msgin5g.example" if own_doc(i) else f"sensor-{i:06d}@msgin5g.example")


def gateway_env() -> dict[str, str]:
    """The gateway's environment: ``--gateway-src`` runs another tree's gateway (a baseline)
    against this tree's UEs, tap and SCM-S, so that only the gateway differs."""
    env = dict(os.environ)
    if GATEWAY_SRC:
        env["PYTHONPATH"] = GATEWAY_SRC
    return env


async def start_proc(
    *cmd: str, stdin: bytes | None = None, what: str = "", env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    env = dict(env or os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    seen = b""
    while True:  # warnings (e.g. the SCM-S's insecure-mode banner) may come first
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        seen += line
        if b"ready" in line or b"listening" in line:
            return proc
        if not line:
            raise RuntimeError(f"{what} did not start: {seen.decode()}")


async def stop(proc: asyncio.subprocess.Process) -> str:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    out = await asyncio.wait_for(proc.stdout.read(), 60)
    await proc.wait()
    return out.decode()


async def tap_command(tap: asyncio.subprocess.Process, cmd: str) -> str:
    tap.stdin.write(cmd.encode() + b"\n")
    await tap.stdin.drain()
    return (await asyncio.wait_for(tap.stdout.readline(), 30)).decode().strip()


async def measure(args, n: int, transport: str, bulk: bool, tap, tap_port: int, workdir: Path) -> dict:
    scheme = "coap+tcp" if transport == "tcp" else "coap"
    gw_port = free_port()
    mode = "bulk" if bulk else "per-UE"
    profile = []
    if args.profile:  # the gateway under cProfile, one file per run
        args.profile.mkdir(parents=True, exist_ok=True)
        runs = len(list(args.profile.glob(f"gw-{transport}-{mode}-{n}-*.prof")))
        profile = ["-m", "cProfile", "-o", str(args.profile / f"gw-{transport}-{mode}-{n}-{runs}.prof")]
    cmd = [
        sys.executable, *profile, "-m", "msgin5g.cli", "gateway",
        "--listen", f"127.0.0.1:{gw_port}",
        "--server", f"{scheme}://127.0.0.1:{tap_port}",
        "--state", str(workdir / f"gw-{transport}-{bulk}-{n}.db"),
        nstart_flag(), str(args.nstart),
        "--max-batch", str(args.max_batch),
        "--max-wait-ms", str(args.max_wait_ms),
        "--bulk" if bulk else "--no-bulk",
    ]  # fmt: skip
    gw = await start_proc(*cmd, what="gateway", env=gateway_env())
    try:
        await tap_command(tap, "reset")
        requests = [SwarmRequest(ue_uri(i)) for i in range(n)]
        async with UeSwarm("127.0.0.1", gw_port, sockets=args.sockets, window=args.window, seed=n) as swarm:
            t0 = time.perf_counter()
            results = await swarm.run(requests, timeout=args.timeout)
            wall = time.perf_counter() - t0
            await swarm.settle(0.3)
        counts = json.loads(await tap_command(tap, "stats"))
        cpu = cpu_seconds(gw.pid)
    finally:
        out = await stop(gw)
    gw_counters = {}
    for line in out.splitlines():
        if line.startswith("gateway counters at shutdown: "):
            gw_counters = json.loads(line.split(": ", 1)[1])
    answered = sum(1 for r in results if r.answers)
    correct = sum(
        1
        for i, r in enumerate(results)
        if len(r.answers) == 1 and check(i, r.answers[0].code, r.answers[0].payload)
    )
    floor_up = sum(len(r.request.ue_uri.encode()) for r in results)
    floor_down = sum(len(r.answers[0].payload) for r in results if r.answers)
    return {
        "transport": transport,
        "mode": "bulk" if bulk else "per-UE",
        "ues": n,
        "answered": answered,
        "correct": correct,
        "wall_s": round(wall, 3),
        "gateway_cpu_s": cpu,
        **counts,
        "up_bytes_per_ue": round(counts["up_bytes"] / n, 1),
        "down_bytes_per_ue": round(counts["down_bytes"] / n, 1),
        "floor_up_per_ue": round(floor_up / n, 1),
        "floor_down_per_ue": round(floor_down / n, 1),
        "gateway": {k: gw_counters.get(k) for k in (
            "bulk-operations", "single-forwards", "cm-bulk-gets", "cm-block2-followups", "cm-single-gets",
            "upstream-failures", "retransmissions", "delivered",
        )},
    }  # fmt: skip


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux /proc; None elsewhere): less
    disturbed than wall time by other work on a shared machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


@functools.cache
def nstart_flag() -> str:
    """``--nstart`` (``--uu-endpoints`` in older trees, for a baseline run)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "msgin5g.cli", "gateway", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=gateway_env(),
    ).stdout
    return "--nstart" if "--nstart" in out else "--uu-endpoints"


async def best_of(args, n: int, transport: str, bulk: bool, tap, tap_port: int, workdir: Path) -> dict:
    """The fastest of ``--rounds`` runs (the machine is shared: the best is the least disturbed);
    counts are the same in every round."""
    runs = [await measure(args, n, transport, bulk, tap, tap_port, workdir) for _ in range(args.rounds)]
    best = min(runs, key=lambda r: r["wall_s"])
    best["wall_s_rounds"] = [r["wall_s"] for r in runs]
    best["gateway_cpu_s_rounds"] = [r["gateway_cpu_s"] for r in runs]
    best["correct"] = min(r["correct"] for r in runs)
    return best


def ratios(bulk: dict, per_ue: dict) -> dict:
    msgs = {r["mode"]: r["up_msgs"] + r["down_msgs"] for r in (bulk, per_ue)}
    nbytes = {r["mode"]: r["up_bytes"] + r["down_bytes"] for r in (bulk, per_ue)}
    return {
        "transport": bulk["transport"],
        "fewer_messages_x": round(msgs["per-UE"] / max(1, msgs["bulk"]), 1),
        "faster_x": round(per_ue["wall_s"] / bulk["wall_s"], 2),
        "bytes_bulk_vs_per_ue": round(nbytes["bulk"] / max(1, nbytes["per-UE"]), 3),
    }


async def main_async(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    n_max = max([args.ues, *([args.big] if args.big else [])])
    scm_port, tap_port = free_port(), free_port()
    server = await start_proc(
        sys.executable, "-c", SERVER_SCRIPT, str(scm_port), f"sqlite:///{workdir / 'scm.db'}",
        str(args.max_batch), DOMAIN,
        stdin=json.dumps(setup(n_max)).encode(), what="SCM-S",
    )  # fmt: skip
    report: dict = {"ues": args.ues, "scenarios": []}
    try:
        for delay in args.uu_delay_ms:
            tap = await start_proc(
                sys.executable, __file__, "--tap", str(tap_port), str(scm_port), str(delay), what="Uu tap"
            )  # fmt: skip
            scenario: dict = {"uu_delay_ms": delay, "runs": [], "ratios": []}
            report["scenarios"].append(scenario)
            try:
                for transport in args.transports:
                    pair = {}
                    for bulk in (True, False):
                        r = await best_of(args, args.ues, transport, bulk, tap, tap_port, workdir)
                        r["uu_delay_ms"] = delay
                        scenario["runs"].append(r)
                        pair[bulk] = r
                        if not args.json:
                            print(json.dumps(r), flush=True)
                    scenario["ratios"].append({"uu_delay_ms": delay, **ratios(pair[True], pair[False])})
                    if not args.json:
                        print(json.dumps(scenario["ratios"][-1]), flush=True)
                if args.big and delay == args.uu_delay_ms[0]:
                    r = await measure(args, args.big, "tcp", True, tap, tap_port, workdir)
                    r["uu_delay_ms"] = delay
                    report["big"] = r
                    if not args.json:
                        print(json.dumps(r), flush=True)
            finally:
                tap.stdin.close()
                await stop(tap)
    finally:
        await stop(server)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ues", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3, help="runs per mode; the fastest is reported")
    ap.add_argument("--big", type=int, default=0, help="also one bulk run over TCP with this many UEs")
    ap.add_argument("--transports", nargs="+", default=["udp", "tcp"], choices=["udp", "tcp"])
    ap.add_argument("--sockets", type=int, default=100, help="UDP sockets the constrained UEs share")
    ap.add_argument("--window", type=int, default=1024, help="UE requests sent but not yet acknowledged")
    ap.add_argument("--nstart", type=int, default=8)
    ap.add_argument("--profile", type=Path, default=None, help="run the gateway under cProfile, files here")
    ap.add_argument("--max-batch", type=int, default=2000)
    ap.add_argument("--max-wait-ms", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--gateway-src", type=Path, default=None, help="run the gateway from this src directory")
    ap.add_argument("--json", action="store_true", help="print only the JSON report")
    ap.add_argument(
        "--uu-delay-ms",
        type=float,
        nargs="+",
        default=[0.0, 10.0],
        help="one-way Uu latency added by the tap, each value a scenario (0 = pure loopback)",
    )
    ap.add_argument(
        "--tap", nargs=3, metavar=("LISTEN_PORT", "SERVER_PORT", "DELAY_MS"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    global GATEWAY_SRC
    GATEWAY_SRC = str(args.gateway_src or "")
    if args.tap:
        asyncio.run(run_tap(int(args.tap[0]), int(args.tap[1]), float(args.tap[2])))
        return 0
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report, indent=2))
    runs = [r for sc in report["scenarios"] for r in sc["runs"]] + (
        [report["big"]] if "big" in report else []
    )
    bad = [r for r in runs if r["correct"] != r["ues"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
